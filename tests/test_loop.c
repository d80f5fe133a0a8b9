/* test_loop.c - the library's training loop (mb_train_run) and what moved
   into it from the CLI: seed 000's settings, resume reconciliation, the
   callback and its stop, the non-finite guard, the time budget, saves; the
   library equals `./mambabyte train` bit for bit; Ctrl-C / SIGTERM save a
   checkpoint that resumes bit-identically.  Included by test.c after
   test_train.c and test_reliability.c, whose write_train_text and
   rel_same_run it uses. */

/* The trainer's warm-up for settings s (MB_WARMUP_AUTO resolved by mb_trainer_init). */
static int64_t loop_resolved_warmup(const mb_train_settings *s) {
    static const uint8_t text[80] = "the trainer resolves the warm-up from the steps, as the CLI and Python do.";
    mb_config c = mb_config_default();
    mb_model *m = NULL;
    mb_trainer tr;
    int64_t w = -2;
    c.d_model = 8; c.n_layer = 1; c.d_state = 2;
    if (mb_model_create(&m, &c, 1) == MB_STATUS_OK) {
        mb_train_settings t = *s;
        t.batch = 1; t.ctx = 8;
        if (mb_trainer_init(&tr, m, &t, text, sizeof text, NULL) == MB_STATUS_OK) w = tr.st.settings.warmup;
        mb_trainer_free(&tr);
    }
    mb_model_free(m);
    return w;
}

static void test_settings_default(void) {
    mb_train_settings s = mb_train_settings_default();
    mb_config c = mb_config_default();
    mb_model *m = NULL;
    int f, same = 1;
    MBT_CHECK(s.batch == 16 && s.ctx == 1024 && s.steps == 4000 && s.lr == 3e-4 && s.beta1 == 0.9 && s.beta2 == 0.95 &&
              s.eps == 1e-8 && s.weight_decay == 0.1 && s.clip == 1.0 && s.warmup == MB_WARMUP_AUTO && s.schedule == 0 &&
              s.grad_accum == 1 && s.time_budget == 0 && s.save_every == 0,
              "mb_train_settings_default must be seed 000's recipe");
    /* the warm-up follows the steps (5%, rounded), unless it is set */
    MBT_CHECK(loop_resolved_warmup(&s) == 200, "4000 steps warm up over 200");
    s.steps = 30;
    MBT_CHECK(loop_resolved_warmup(&s) == 2, "30 steps warm up over floor(1.5 + 0.5) = 2, not 200");
    s.steps = 9;
    MBT_CHECK(loop_resolved_warmup(&s) == 0, "9 steps: floor(0.45 + 0.5) = 0");
    s.warmup = 7;
    MBT_CHECK(loop_resolved_warmup(&s) == 7, "a warm-up that is set is kept");
    /* dt_rank follows d_model, and the checkpoint records the resolved value */
    MBT_CHECK(c.dt_rank == 0 && mb_config_num_params(&c) > 1000000, "mb_config_default's dt_rank is derived (0)");
    c.d_model = 64;
    MBT_CHECK(mb_model_create(&m, &c, 1) == MB_STATUS_OK && mb_model_config(m)->dt_rank == 4 &&
                  mb_config_num_params(&c) == mb_model_num_params(m),
              "d_model 64 gets dt_rank ceil(64/16) = 4 (%d)", m ? mb_model_config(m)->dt_rank : -1);
    if (m && mb_model_save(m, "build/t_dtrank.bin") == MB_STATUS_OK) {
        size_t n = 0;
        char *b = mbt_slurp("build/t_dtrank.bin", &n);
        int32_t h8 = 0;
        if (b && n > 40) memcpy(&h8, b + 32, 4);
        MBT_CHECK(h8 == 4, "the checkpoint's header [8] holds the resolved dt_rank 4 (%d)", h8);
        free(b);
    }
    mb_model_free(m);
    /* the table: every field's get and set meet, by its keyword and kind */
    s = mb_train_settings_default();
    c = mb_config_default();
    for (f = 0; f < MB_FIELD_COUNT; f++) {
        const mb_train_field_info *d = mb_train_field_desc(f);
        double v = d->kind == MB_KIND_NUM ? 0.25 : d->kind == MB_KIND_INT ? 3 : 1;
        same &= mb_train_field_set(&s, &c, f, v) == MB_STATUS_OK && mb_train_field_get(&s, &c, f) == v;
    }
    MBT_CHECK(same && mb_train_field_count() == MB_FIELD_COUNT && mb_train_field_desc(MB_FIELD_COUNT) == NULL &&
                  isnan(mb_train_field_get(&s, &c, MB_FIELD_COUNT)) &&
                  mb_train_field_set(&s, &c, MB_FIELD_COUNT, 1) == MB_STATUS_INVALID_ARGUMENT && s.lr == 0.25 &&
                  s.sequential == 1 && c.expand == 3 && !strcmp(mb_train_field_desc(MB_FIELD_GRAD_ACCUM)->key, "grad_accum"),
              "get and set of every field, by the table");
    MBT_CHECK(!strcmp(mb_train_field_flag(MB_FIELD_TIME_BUDGET), "--time-budget") &&
              !strcmp(mb_train_field_flag(MB_FIELD_WEIGHT_DECAY), "--weight-decay") &&
              !strcmp(mb_train_field_flag(MB_FIELD_D_MODEL), "--d-model") && mb_train_field_flag(MB_FIELD_COUNT) == NULL &&
              mb_train_field_flag(-1) == NULL, "field flags are spelled as the user types them");
}

static void test_resume_rules(void) {
    mb_train_settings ck = mb_train_settings_default(), s;
    mb_config cc = mb_config_default(), c;
    mb_status st;
    mb_config_validate(&cc);
    ck.save_every = 100;
    /* nothing given: everything is the checkpoint's */
    s = mb_train_settings_default();
    s.lr = 1.0; s.batch = 3; s.time_budget = 77;
    c = cc;
    c.d_model = 8;
    st = mb_train_settings_resume(&s, &c, 0, &ck, &cc);
    MBT_CHECK(st == MB_STATUS_OK && s.lr == ck.lr && s.batch == ck.batch && s.time_budget == 0 && s.save_every == 100 &&
              c.d_model == cc.d_model, "flags not given take the checkpoint's values");
    /* the same value given is fine; a different one names the flag */
    s = ck;
    c = cc;
    MBT_CHECK(mb_train_settings_resume(&s, &c, MB_GIVEN(MB_FIELD_LR) | MB_GIVEN(MB_FIELD_D_MODEL), &ck, &cc) == MB_STATUS_OK,
              "giving the checkpoint's own values is not an error");
    s.lr = 0.5;
    st = mb_train_settings_resume(&s, &c, MB_GIVEN(MB_FIELD_LR), &ck, &cc);
    MBT_CHECK(st == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "--lr is 0.00029999999999999997 in the checkpoint but 0.5 here"),
              "another lr: '%s'", mb_last_error());
    {   /* every trajectory field is checked, by its flag */
        static const int traj[] = {MB_FIELD_BATCH, MB_FIELD_CTX, MB_FIELD_STEPS, MB_FIELD_WARMUP, MB_FIELD_GRAD_ACCUM, MB_FIELD_SEED,
                                   MB_FIELD_SCHEDULE, MB_FIELD_SEQUENTIAL, MB_FIELD_WEIGHT_DECAY, MB_FIELD_CLIP, MB_FIELD_BETA1,
                                   MB_FIELD_BETA2, MB_FIELD_EPS};
        size_t k;
        int refused = 0;
        for (k = 0; k < sizeof traj / sizeof traj[0]; k++) {
            char want[64];
            s = ck;
            c = cc;
            mb_train_field_set(&s, &c, traj[k], traj[k] == MB_FIELD_SCHEDULE || traj[k] == MB_FIELD_SEQUENTIAL ? 1 : 0.5);
            snprintf(want, sizeof want, "%s is ", mb_train_field_flag(traj[k]));
            refused += mb_train_settings_resume(&s, &c, MB_GIVEN(traj[k]), &ck, &cc) == MB_STATUS_INVALID_ARGUMENT &&
                       strstr(mb_last_error(), want) != NULL;
        }
        MBT_CHECK(refused == (int)(sizeof traj / sizeof traj[0]), "%d of %d trajectory fields refused with their flag", refused,
                  (int)(sizeof traj / sizeof traj[0]));
    }
    s = ck;
    c = cc;
    c.d_model = 32;
    st = mb_train_settings_resume(&s, &c, MB_GIVEN(MB_FIELD_D_MODEL), &ck, &cc);
    MBT_CHECK(st == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "--d-model 32 differs from the checkpoint's 192"),
              "another model width: '%s'", mb_last_error());
    /* stop conditions may change: a budget and a save cadence under the step schedule */
    s = ck;
    c = cc;
    s.time_budget = 5;
    s.save_every = 7;
    st = mb_train_settings_resume(&s, &c, MB_GIVEN(MB_FIELD_TIME_BUDGET) | MB_GIVEN(MB_FIELD_SAVE_EVERY), &ck, &cc);
    MBT_CHECK(st == MB_STATUS_OK && s.time_budget == 5 && s.save_every == 7, "--time-budget / --save-every may change on resume");
    /* ...but under the time schedule the budget shapes the lr: refused */
    ck.schedule = 1;
    ck.time_budget = 300;
    s = ck;
    c = cc;
    s.time_budget = 5;
    st = mb_train_settings_resume(&s, &c, MB_GIVEN(MB_FIELD_TIME_BUDGET), &ck, &cc);
    MBT_CHECK(st == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "--time-budget is 300 in the checkpoint but 5 here"),
              "the time schedule's budget is part of the trajectory: '%s'", mb_last_error());
}

/* A small run: the CLI flags and the library settings below describe the same one. */
#define LOOP_CLI "./mambabyte train --data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 --batch 2 --ctx 32 --lr 1e-2 --threads 2"
static mb_config loop_config(void) {
    mb_config c = mb_config_default();
    c.d_model = 16; c.n_layer = 2; c.d_state = 4; c.dt_rank = 0;
    return c;
}
static mb_train_settings loop_settings(int64_t steps) {
    mb_train_settings s = mb_train_settings_default();
    s.batch = 2; s.ctx = 32; s.lr = 1e-2; s.steps = steps; /* warmup: the library's default, as the CLI's */
    return s;
}

typedef struct {
    float loss[64];
    int n, stop_after, saved, skipped, by_time;
    double last_elapsed;
} loop_log;
static int loop_record(void *user, const mb_train_progress *p) {
    loop_log *l = (loop_log *)user;
    if (p->applied && l->n < 64) l->loss[l->n++] = p->loss;
    l->skipped += !p->applied;
    l->saved += p->saves;
    l->by_time |= p->by_time;
    l->last_elapsed = p->elapsed_s;
    return l->stop_after > 0 && p->step >= l->stop_after;
}

/* Trains from scratch on build/t_text.txt's first 95% through the library;
   every step from poison_from on gets a NaN gradient (-1: none). */
static mb_status loop_train_poisoned(mb_model **m, mb_trainer *tr, const mb_train_settings *s, const mb_train_options *opt,
                                     mb_train_report *rep, mb_dataset *d, int64_t poison_from) {
    mb_config c = loop_config();
    mb_status st = mb_dataset_open(d, "build/t_text.txt", NULL);
    memset(tr, 0, sizeof *tr);
    if (st == MB_STATUS_OK) st = mb_model_create(m, &c, (uint64_t)s->seed);
    if (st == MB_STATUS_OK) st = mb_trainer_init(tr, *m, s, d->train, d->train_size, NULL);
    tr->inject_nonfinite_from = poison_from;
    if (st == MB_STATUS_OK) st = mb_train_run(tr, opt, rep);
    return st;
}
static mb_status loop_train(mb_model **m, mb_trainer *tr, const mb_train_settings *s, const mb_train_options *opt,
                            mb_train_report *rep, mb_dataset *d) {
    return loop_train_poisoned(m, tr, s, opt, rep, d, -1);
}

/* Two checkpoints hold the same parameters, moments, step and batcher. */
static int loop_same_checkpoints(const char *a, const char *b) {
    char why[128];
    return rel_same_run(a, b, why, sizeof why);
}

static void test_library_equals_cli(void) {
    mb_model *m = NULL;
    mb_trainer tr;
    mb_train_report rep;
    mb_dataset d;
    loop_log log;
    mb_train_settings s = loop_settings(10);
    mb_train_options opt = {"build/t_loop_lib.bin", 0, loop_record, NULL};
    mb_status st;
    int rc, k, same_losses = 1;
    FILE *f;
    char line[256];
    memset(&log, 0, sizeof log);
    opt.user = &log;
    rc = mbt_run(LOOP_CLI " --steps 10 --eval-chars 0 --log build/t_loop_cli.csv --out build/t_loop_cli.bin > build/t_loop_cli.out 2>&1");
    MBT_CHECK(rc == 0, "the CLI run failed (%d): see build/t_loop_cli.out", rc);
    st = loop_train(&m, &tr, &s, &opt, &rep, &d);
    MBT_CHECK(st == MB_STATUS_OK && rep.outcome == MB_TRAIN_FINISHED && rep.steps_run == 10 && rep.saved && log.n == 10,
              "library run: status %d (%s), outcome %d, %lld steps, %d callbacks", (int)st, mb_last_error(), (int)rep.outcome,
              (long long)rep.steps_run, log.n);
    MBT_CHECK(loop_same_checkpoints("build/t_loop_lib.bin", "build/t_loop_cli.bin"),
              "the library and ./mambabyte train must end with bit-identical parameters, moments and batcher");
    f = fopen("build/t_loop_cli.csv", "r");
    for (k = 0; f && fgets(line, sizeof line, f);) {
        char want[64];
        const char *comma = strchr(line, ',');
        if (!comma || !isdigit((unsigned char)line[0])) continue;
        snprintf(want, sizeof want, ",%.6f,", k < log.n ? log.loss[k] : NAN);
        same_losses &= strncmp(comma, want, strlen(want)) == 0;
        k++;
    }
    if (f) fclose(f);
    MBT_CHECK(k == 10 && same_losses, "the CLI's logged losses must be the library's (%d rows)", k);
    MBT_CHECK(tr.st.settings.warmup == 1 && mbt_file_contains("build/t_loop_cli.out", "warm-up 1 steps, cosine to 0, step schedule"),
              "10 steps: the library and the CLI warm up over floor(0.5 + 0.5) = 1 step (%lld)", (long long)tr.st.settings.warmup);
    MBT_CHECK(!mbt_file_contains("build/t_loop_cli.out", "GPU energy"), "a CPU run says nothing about GPU energy");
    MBT_CHECK(mb_model_params(m) == mb_model_params(tr.model), "the trainer trains the caller's model");
    mb_trainer_free(&tr);
    mb_model_free(m);
    mb_dataset_close(&d);
}

/* The callback stops the run; it saves, and a resume continues bit-identically. */
static void test_callback_stop_and_resume(void) {
    mb_model *m = NULL, *m2 = NULL;
    mb_trainer tr, tr2;
    mb_train_report rep;
    mb_dataset d;
    mb_train_state ts;
    loop_log log;
    mb_train_settings s = loop_settings(10);
    mb_train_options opt = {"build/t_loop_stop.bin", 0, loop_record, NULL};
    int has = 0;
    mb_status st;
    memset(&log, 0, sizeof log);
    log.stop_after = 4;
    opt.user = &log;
    st = loop_train(&m, &tr, &s, &opt, &rep, &d);
    MBT_CHECK(st == MB_STATUS_OK && rep.outcome == MB_TRAIN_INTERRUPTED && tr.st.step == 4 && rep.saved,
              "a callback that asks to stop ends the run at once and saves: outcome %d at step %lld", (int)rep.outcome,
              (long long)tr.st.step);
    mb_trainer_free(&tr);
    mb_model_free(m);
    st = mb_checkpoint_load("build/t_loop_stop.bin", &m2, &ts, &has);
    MBT_CHECK(st == MB_STATUS_OK && has && ts.step == 4, "the stop's checkpoint resumes from step 4");
    if (st == MB_STATUS_OK && has) {
        mb_train_options o2 = {"build/t_loop_stop.bin", 0, NULL, NULL};
        st = mb_trainer_init(&tr2, m2, &ts.settings, d.train, d.train_size, &ts);
        if (st == MB_STATUS_OK) st = mb_train_run(&tr2, &o2, &rep);
        MBT_CHECK(st == MB_STATUS_OK && rep.outcome == MB_TRAIN_FINISHED && rep.steps_run == 6, "the resumed run finishes");
        MBT_CHECK(loop_same_checkpoints("build/t_loop_stop.bin", "build/t_loop_lib.bin"),
                  "4 steps, a stop, and a resume must equal 10 steps bit for bit");
        mb_trainer_free(&tr2);
        mb_train_state_free(&ts);
    }
    mb_model_free(m2);
    mb_dataset_close(&d);
}

static void test_loop_guard_budget_saves(void) {
    mb_model *m = NULL;
    mb_trainer tr;
    mb_train_report rep;
    mb_dataset d;
    loop_log log;
    mb_train_settings s = loop_settings(40);
    mb_train_options opt = {"build/t_loop_nan.bin", 0, loop_record, NULL};
    mb_status st;
    mb_model *back = NULL;
    mb_train_state ts;
    int has = 0;
    /* every step non-finite from step 6: saves at 2, 4, 6; 10 skipped, then stop */
    memset(&log, 0, sizeof log);
    opt.user = &log;
    s.save_every = 2;
    remove("build/t_loop_nan.bin");
    st = loop_train_poisoned(&m, &tr, &s, &opt, &rep, &d, 6);
    MBT_CHECK(st == MB_STATUS_NON_FINITE && rep.outcome == MB_TRAIN_NON_FINITE && log.skipped == 10 && log.saved == 3 &&
              tr.st.step == 16 && !rep.saved && strstr(mb_last_error(), "10 non-finite steps in a row"),
              "10 non-finite steps stop the run: status %d outcome %d, %d skipped, %d saves, step %lld: %s", (int)st,
              (int)rep.outcome, log.skipped, log.saved, (long long)tr.st.step, mb_last_error());
    MBT_CHECK(mb_checkpoint_load("build/t_loop_nan.bin", &back, &ts, &has) == MB_STATUS_OK && has && ts.step == 6,
              "the last good checkpoint (step 6) is kept");
    if (has) mb_train_state_free(&ts);
    mb_model_free(back);
    mb_trainer_free(&tr);
    mb_model_free(m);
    mb_dataset_close(&d);

    /* a time budget under the step schedule: stops before it, progress by time */
    memset(&log, 0, sizeof log);
    s = loop_settings(1000000);
    s.time_budget = 1.0;
    opt.out = NULL;
    st = loop_train(&m, &tr, &s, &opt, &rep, &d);
    MBT_CHECK(st == MB_STATUS_OK && rep.outcome == MB_TRAIN_TIME_BUDGET && rep.elapsed_s < 1.0 && rep.steps_run > 0 && log.by_time &&
              !rep.saved, "the budget ends the run cleanly before 1 s: outcome %d after %.3f s, by_time %d", (int)rep.outcome,
              rep.elapsed_s, log.by_time);
    mb_trainer_free(&tr);
    mb_model_free(m);
    mb_dataset_close(&d);

    /* the time schedule without a budget is refused before any step */
    s = loop_settings(10);
    s.schedule = 1;
    memset(&log, 0, sizeof log);
    st = loop_train(&m, &tr, &s, &opt, &rep, &d);
    MBT_CHECK(st == MB_STATUS_INVALID_ARGUMENT && log.n == 0 && tr.st.step == 0, "the time schedule needs a budget");
    mb_trainer_free(&tr);
    mb_model_free(m);
    mb_dataset_close(&d);
}

/* Waits up to timeout_s for pid (then kills it: -1). */
static int loop_wait(pid_t pid, double timeout_s) {
    double t0 = mb_clock_seconds();
    int rc;
    while (mb_clock_seconds() - t0 < timeout_s) {
        if (mbt_poll(pid, &rc)) return rc;
        mbt_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    mbt_wait(pid);
    return -1;
}

/* Lines of a file (0 if it does not exist). */
static int loop_lines(const char *path) {
    char *buf = mbt_slurp(path, NULL), *p;
    int n = 0;
    for (p = buf; p && *p; p++) n += *p == '\n';
    free(buf);
    return n;
}

static void test_interrupt_saves(void) {
    const char *common = LOOP_CLI " --steps 300 --eval-chars 0 --log-every 1";
    char cmd[2048];
    double t0;
    pid_t pid;
    int rc;
    /* the reference: 300 uninterrupted steps */
    snprintf(cmd, sizeof cmd, "%s --out build/t_sig_ref.bin > build/t_sig_ref.out 2>&1", common);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 0, "reference run: exit %d", rc);
    /* SIGTERM once the run is under way: it saves, says how to resume, exits 130 */
    remove("build/t_sig.bin");
    remove("build/t_sig.csv");
    snprintf(cmd, sizeof cmd, "%s --out build/t_sig.bin --log build/t_sig.csv > build/t_sig.out 2>&1", common);
    pid = mbt_spawn(cmd);
    for (t0 = mb_clock_seconds(); loop_lines("build/t_sig.csv") < 4 && mb_clock_seconds() - t0 < 60;) mbt_sleep_ms(5);
    kill(pid, SIGTERM);
    rc = loop_wait(pid, 60);
    MBT_CHECK(rc == 130 && mbt_file_contains("build/t_sig.out", "interrupted: step") &&
              mbt_file_contains("build/t_sig.out", "to continue: ./mambabyte train --resume build/t_sig.bin"),
              "SIGTERM: exit %d (want 130), see build/t_sig.out", rc);
    {
        mb_model *m = NULL;
        mb_train_state ts;
        int has = 0;
        MBT_CHECK(mb_checkpoint_load("build/t_sig.bin", &m, &ts, &has) == MB_STATUS_OK && has && ts.step >= 3 && ts.step < 300,
                  "the interrupted run's checkpoint holds its state mid-run (step %lld)", has ? (long long)ts.step : -1LL);
        if (has) mb_train_state_free(&ts);
        mb_model_free(m);
    }
    rc = mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_sig.bin --out build/t_sig.bin --eval-chars 0 "
                 "--threads 2 > build/t_sig2.out 2>&1");
    MBT_CHECK(rc == 0 && loop_same_checkpoints("build/t_sig.bin", "build/t_sig_ref.bin"),
              "interrupted + resumed must equal the uninterrupted run bit for bit (exit %d)", rc);
    /* two SIGINTs: the second ends the process at once; what is on disk still loads */
    remove("build/t_sig.bin");
    remove("build/t_sig.csv");
    pid = mbt_spawn(cmd);
    for (t0 = mb_clock_seconds(); loop_lines("build/t_sig.csv") < 4 && mb_clock_seconds() - t0 < 60;) mbt_sleep_ms(5);
    kill(pid, SIGINT);
    kill(pid, SIGINT);
    rc = loop_wait(pid, 60);
    {
        mb_model *m = NULL;
        MBT_CHECK(rc == 130 && (mbt_run("test -e build/t_sig.bin") != 0 || mb_model_load(&m, "build/t_sig.bin") == MB_STATUS_OK),
                  "two SIGINTs: exit %d (want 130), and no broken checkpoint", rc);
        mb_model_free(m);
    }
}

/* The short-budget recipe: only with a budget, only the fields not given,
   one line saying what it chose; the CLI prints it and a resume does not
   apply it. */
static void test_budget_recipe(void) {
    mb_train_settings s = mb_train_settings_default(), d = s;
    char why[512];
    int n;
    MBT_CHECK(mb_train_settings_for_budget(&s, 0, why, sizeof why) == 0 && !memcmp(&s, &d, sizeof s) && why[0] == 0,
              "no time budget: the seed's settings stay, nothing said");
    s.time_budget = 300;
    n = mb_train_settings_for_budget(&s, 0, why, sizeof why);
    MBT_CHECK(n == 5 && s.schedule == 1 && s.lr == 2e-3 && s.batch == 4 && s.ctx == 256 && s.steps == 1000000 &&
                  s.weight_decay == d.weight_decay && s.clip == d.clip && s.seed == d.seed,
              "a budget alone: the recipe (%d changed: schedule %d lr %g batch %lld ctx %lld steps %lld)", n, s.schedule, s.lr,
              (long long)s.batch, (long long)s.ctx, (long long)s.steps);
    MBT_CHECK(strstr(why, "time budget 300 s, so --schedule time --lr 0.002 --batch 4 --ctx 256 --steps 1000000") != NULL,
              "the recipe's line: '%s'", why);
    s = d;
    s.time_budget = 60; s.lr = 1e-3; s.batch = 32; s.schedule = 0;
    n = mb_train_settings_for_budget(&s, MB_GIVEN(MB_FIELD_LR) | MB_GIVEN(MB_FIELD_BATCH) | MB_GIVEN(MB_FIELD_SCHEDULE), why, sizeof why);
    MBT_CHECK(n == 1 && s.lr == 1e-3 && s.batch == 32 && s.schedule == 0 && s.ctx == 256 && s.steps == d.steps &&
                  !strstr(why, "--lr") && strstr(why, "--ctx 256"),
              "given flags are kept (the step schedule keeps its steps): %d changed, '%s'", n, why);
    n = mb_train_settings_for_budget(&s, 0, NULL, 0);
    MBT_CHECK(n > 0, "why may be NULL");
    MBT_CHECK(mbt_run("./mambabyte train --data data/sample.txt --d-model 16 --n-layer 1 --time-budget 0.5 --eval-chars 0 "
                      "--out build/t_recipe.bin > build/t_recipe.out 2>&1") == 0 &&
                  mbt_file_contains("build/t_recipe.out", "time budget 0.5 s, so --schedule time --lr 0.002 --batch 4 --ctx 256") &&
                  mbt_file_contains("build/t_recipe.out", "batch 4 x ctx 256"),
              "the CLI applies and prints the recipe (build/t_recipe.out)");
    MBT_CHECK(mbt_run("./mambabyte train --data data/sample.txt --d-model 16 --n-layer 1 --time-budget 0.5 --eval-chars 0 "
                      "--resume build/t_recipe.bin --out build/t_recipe2.bin > build/t_recipe.out 2>&1") == 0 &&
                  !mbt_file_contains("build/t_recipe.out", "short-budget recipe"),
              "a resume keeps the checkpoint's settings: no recipe (build/t_recipe.out)");
}

/* A checkpoint written by fdfeb08 (16 unnamed settings; tests/fixtures/README.md):
   it loads bit for bit, saves with named settings, and both resume alike. */
static void test_v1_checkpoint(void) {
    static const struct { const char *key; double v; } want[] = {
        {"batch", 3}, {"ctx", 16}, {"steps", 10}, {"warmup", 3}, {"grad_accum", 2}, {"save_every", 4}, {"seed", 7},
        {"schedule", 0}, {"sequential", 1}, {"lr", 0.01}, {"weight_decay", 0.05}, {"clip", 0.5}, {"beta1", 0.8},
        {"beta2", 0.9}, {"eps", 1e-7}, {"time_budget", 1000}};
    mb_train_settings dflt = mb_train_settings_default();
    const char *path = "tests/fixtures/ckpt_v1_state.bin";
    mb_model *m = NULL, *m2 = NULL;
    mb_train_state ts, ts2;
    mb_trainer tr;
    mb_train_report rep;
    mb_dataset d;
    size_t bytes = 0;
    char *file = mbt_slurp(path, &bytes), why[128] = "";
    int has = 0, has2 = 0, f, same = 1;
    int64_t n;
    mb_status st = mb_checkpoint_load(path, &m, &ts, &has);
    MBT_CHECK(st == MB_STATUS_OK && has && file, "the fdfeb08 checkpoint loads: %s", mb_last_error());
    if (st != MB_STATUS_OK || !has || !file) { free(file); mb_model_free(m); return; }
    n = mb_model_num_params(m);
    for (f = 0; f < MB_FIELD_COUNT && mb_train_field_desc(f)->offset >= 0; f++) { /* by name: the old slots, else the default */
        size_t k = 0;
        while (k < sizeof want / sizeof want[0] && strcmp(want[k].key, mb_train_field_desc(f)->key)) k++;
        same &= mb_train_field_get(&ts.settings, NULL, f) ==
                (k < sizeof want / sizeof want[0] ? want[k].v : mb_train_field_get(&dflt, NULL, f));
    }
    MBT_CHECK(same && ts.step == 4 && ts.ranks == 1 && bytes == (size_t)(1024 + 4 * n + 40 + 128 + 8 * n) &&
                  !memcmp(mb_model_params(m), file + 1024, 4 * (size_t)n) && !memcmp(ts.adam_m, file + 1024 + 4 * n + 168, 4 * (size_t)n) &&
                  !memcmp(ts.adam_v, file + 1024 + 8 * n + 168, 4 * (size_t)n),
              "the old settings slots, step, parameters and moments load bit for bit");
    MBT_CHECK(mb_checkpoint_save("build/t_v2.bin", m, &ts) == MB_STATUS_OK &&
                  mb_checkpoint_load("build/t_v2.bin", &m2, &ts2, &has2) == MB_STATUS_OK && has2 &&
                  !memcmp(&ts2.settings, &ts.settings, sizeof ts.settings) && ts2.elapsed_s == ts.elapsed_s &&
                  rel_same_run(path, "build/t_v2.bin", why, sizeof why),
              "saved again (named settings) it loads the same: %s %s", why, mb_last_error());
    if (has2) mb_train_state_free(&ts2);
    mb_model_free(m2);
    /* resumed to the end by the library and by the CLI, from the old file: the same run */
    st = mb_dataset_open(&d, "data/sample.txt", NULL);
    if (st == MB_STATUS_OK) st = mb_trainer_init(&tr, m, &ts.settings, d.train, d.train_size, &ts);
    if (st == MB_STATUS_OK) {
        mb_train_options opt = {"build/t_v1_lib.bin", 0, NULL, NULL};
        st = mb_train_run(&tr, &opt, &rep);
        mb_trainer_free(&tr);
    }
    MBT_CHECK(st == MB_STATUS_OK && rep.steps_run == 6, "the old checkpoint resumes to step 10: %s", mb_last_error());
    MBT_CHECK(mbt_run("cp tests/fixtures/ckpt_v1_state.bin build/t_v1_cli.bin && ./mambabyte train --data data/sample.txt "
                      "--resume build/t_v1_cli.bin --out build/t_v1_cli.bin --eval-chars 0 > build/t_v1_cli.out 2>&1") == 0 &&
                  rel_same_run("build/t_v1_lib.bin", "build/t_v1_cli.bin", why, sizeof why),
              "the CLI resumes the old checkpoint as the library does: %s (build/t_v1_cli.out)", why);
    mb_dataset_close(&d);
    mb_train_state_free(&ts);
    mb_model_free(m);
    free(file);
}

/* A resume already at or past --stop-at trains nothing, writes nothing and says what to do. */
static void test_resume_past_stop(void) {
    int rc;
    remove("build/t_past.bin");
    rc = mbt_run("cp tests/fixtures/ckpt_v1_state.bin build/t_past_in.bin && ./mambabyte train --data data/sample.txt "
                 "--resume build/t_past_in.bin --stop-at 3 --out build/t_past.bin > build/t_past.out 2>&1");
    MBT_CHECK(rc == 2 && mbt_file_contains("build/t_past.out", "--resume build/t_past_in.bin is at step 4, already at or past "
                                                                "--stop-at 3: nothing to train, nothing written. Give a --stop-at "
                                                                "above 4, or leave it out to train to step 10") &&
                  mbt_run("test -e build/t_past.bin") != 0 && !mbt_file_contains("build/t_past.out", "final loss nan"),
              "resume past --stop-at: exit %d, see build/t_past.out", rc);
}

static void test_loop(void) {
    write_train_text("build/t_text.txt");
    test_settings_default();
    test_budget_recipe();
    test_resume_rules();
    test_library_equals_cli();
    test_callback_stop_and_resume();
    test_loop_guard_budget_saves();
    test_interrupt_saves();
    test_v1_checkpoint();
    test_resume_past_stop();
}
