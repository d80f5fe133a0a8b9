/* test_train.c - the trainer and evaluator: tiny overfit, PyTorch AdamW
   trajectory, grad accumulation, schedule, the eval protocol, UTF-8, exact
   resume and the CLI's error paths.  Included by test.c. */

static mb_train_settings small_settings(void) {
    mb_train_settings s = mb_train_settings_default();
    s.batch = 4; s.ctx = 64; s.steps = 300; s.warmup = 15; s.seed = 3; s.lr = 1e-2;
    return s;
}

static void test_tiny_overfit(void) {
    static const char *fox = "the quick brown fox jumps over the lazy dog. ";
    size_t flen = strlen(fox);
    int64_t len = 200 * (int64_t)flen, i;
    uint8_t *text = (uint8_t *)malloc((size_t)len);
    mb_config c = mb_config_default();
    mb_train_settings s = small_settings();
    mb_model *m;
    mb_trainer tr;
    mb_step_result r;
    mb_eval_result ev;
    double acc;
    for (i = 0; i < len; i++) text[i] = (uint8_t)fox[i % (int64_t)flen];
    c.d_model = 32; c.n_layer = 2; c.d_state = 8; c.dt_rank = 0;
    mb_model_create(&m, &c, 17);
    MBT_CHECK(mb_trainer_init(&tr, m, &s, text, len, NULL) == MB_STATUS_OK, "trainer init: %s", mb_last_error());
    for (i = 0; i < s.steps; i++) mb_trainer_step(&tr, mb_lr_at_step(s.lr, i, s.warmup, s.steps), &r);
    mb_eval_text(m, text, len, 2000, &ev, NULL, NULL);
    acc = (double)ev.chars_correct / (double)ev.chars;
    MBT_CHECK(acc >= 0.95, "tiny overfit: char accuracy %.4f after %lld steps (loss %.4f), want >= 0.95", acc, (long long)s.steps, r.loss);
    mb_trainer_free(&tr);
    mb_model_free(m);
    free(text);
}

/* torch.optim.AdamW + clip_grad_norm_ + our schedule for 20 steps, float64
   (tools/torch_reference.py): every step's loss within 1e-5 absolute. */
static void test_adamw_trajectory(void) {
    mbfx f;
    mb_model *m = NULL;
    mb_trainer tr;
    mb_train_settings s = small_settings();
    const mbfx_entry *ein, *etg, *el, *en, *elr, *ehp, *efin;
    const float *hp;
    int steps, B, T, k, i;
    double worst_loss = 0, worst_norm = 0, worst_lr = 0;
    uint8_t x[4096];
    if (mbfx_load(&f, "tests/fixtures/model_tiny.mbfx") != 0 || mb_model_load(&m, "tests/fixtures/model_tiny.bin") != MB_STATUS_OK) {
        MBT_CHECK(0, "model fixtures missing");
        return;
    }
    ein = mbfx_get(&f, "traj.inputs"); etg = mbfx_get(&f, "traj.targets"); el = mbfx_get(&f, "traj.losses");
    en = mbfx_get(&f, "traj.grad_norms"); elr = mbfx_get(&f, "traj.lrs"); ehp = mbfx_get(&f, "traj.hparams");
    efin = mbfx_get(&f, "traj.final_params");
    if (!ein || !etg || !el || !en || !elr || !ehp || !efin) { MBT_CHECK(0, "trajectory fixture incomplete"); mbfx_free(&f); mb_model_free(m); return; }
    steps = (int)ein->dims[0]; B = (int)ein->dims[1]; T = (int)ein->dims[2];
    hp = (const float *)ehp->data; /* lr_max, beta1, beta2, eps, weight_decay, clip, warmup, total */
    s.batch = B; s.ctx = T; s.lr = hp[0]; s.beta1 = hp[1]; s.beta2 = hp[2]; s.eps = hp[3]; s.weight_decay = hp[4];
    s.clip = hp[5]; s.warmup = (int64_t)hp[6]; s.steps = (int64_t)hp[7];
    for (i = 0; i < B * T; i++) x[i] = (uint8_t)((const int32_t *)ein->data)[i];
    mb_trainer_init(&tr, m, &s, x, B * T, NULL);
    mb_model_set_scan_chunk(m, 8);
    for (k = 0; k < steps; k++) {
        mb_step_result r;
        float loss;
        double lr = mb_lr_at_step(s.lr, k, s.warmup, s.steps);
        for (i = 0; i < B * T; i++) x[i] = (uint8_t)((const int32_t *)ein->data)[k * B * T + i];
        mb_model_zero_grad(m);
        mb_model_forward(m, x, (const int32_t *)etg->data + k * B * T, B, T, &loss);
        mb_model_backward(m);
        mb_trainer_apply(&tr, lr, loss, &r);
        if (fabs(r.loss - ((const float *)el->data)[k]) > worst_loss) worst_loss = fabs(r.loss - ((const float *)el->data)[k]);
        if (fabs(r.grad_norm / ((const float *)en->data)[k] - 1) > worst_norm) worst_norm = fabs(r.grad_norm / ((const float *)en->data)[k] - 1);
        if (fabs(lr / ((const float *)elr->data)[k] - 1) > worst_lr) worst_lr = fabs(lr / ((const float *)elr->data)[k] - 1);
    }
    MBT_CHECK(worst_loss < 1e-5, "AdamW trajectory: worst |loss - PyTorch| over %d steps = %.3g", steps, worst_loss);
    MBT_CHECK(worst_norm < 1e-4, "AdamW trajectory: worst relative grad-norm difference %.3g", worst_norm);
    MBT_CHECK(worst_lr < 1e-6, "schedule vs the reference's lr: worst relative difference %.3g", worst_lr);
    MBT_CHECK(mbt_rel_l2(mb_model_params(m), (const float *)efin->data, efin->numel) < 1e-4,
              "parameters after 20 steps vs PyTorch: rel L2 %.3g", mbt_rel_l2(mb_model_params(m), (const float *)efin->data, efin->numel));
    mb_trainer_free(&tr);
    mb_model_free(m);
    mbfx_free(&f);
}

static void test_grad_accum(void) {
    enum { LEN = 5000 };
    mb_config c = mb_config_default();
    mb_train_settings s = small_settings();
    mb_model *a, *b;
    mb_trainer ta, tb;
    mb_step_result ra, rb;
    uint8_t text[LEN];
    int64_t n;
    random_bytes(text, NULL, LEN, 91);
    c.d_model = 16; c.n_layer = 2; c.d_state = 4; c.dt_rank = 0;
    mb_model_create(&a, &c, 5);
    mb_model_create(&b, &c, 5);
    n = mb_model_num_params(a);
    s.batch = 8; s.ctx = 32; s.lr = 1e-3;
    mb_trainer_init(&ta, a, &s, text, LEN, NULL);
    s.batch = 2; s.grad_accum = 4; /* the same 8 windows, in the same order */
    mb_trainer_init(&tb, b, &s, text, LEN, NULL);
    mb_trainer_step(&ta, 1e-3, &ra);
    mb_trainer_step(&tb, 1e-3, &rb);
    MBT_CHECK(fabs(ra.loss - rb.loss) < 1e-6 && fabs(ra.grad_norm / rb.grad_norm - 1) < 1e-5,
              "grad accum 4 x batch 2 vs batch 8: loss %.8g vs %.8g, norm %.8g vs %.8g", ra.loss, rb.loss, ra.grad_norm, rb.grad_norm);
    MBT_CHECK(mbt_rel_l2(mb_model_params(b), mb_model_params(a), n) < 1e-6, "grad accum: parameters after one step differ: %g",
              mbt_rel_l2(mb_model_params(b), mb_model_params(a), n));
    mb_trainer_free(&ta);
    mb_trainer_free(&tb);
    mb_model_free(a);
    mb_model_free(b);
}

static void test_schedule(void) {
    MBT_CHECK(fabs(mb_lr_at_step(3e-4, 0, 200, 4000) - 1.5e-6) < 1e-12, "warm-up starts at lr/W");
    MBT_CHECK(fabs(mb_lr_at_step(3e-4, 199, 200, 4000) - 3e-4) < 1e-12, "warm-up ends at the peak");
    MBT_CHECK(fabs(mb_lr_at_step(3e-4, 200, 200, 4000) - 3e-4) < 1e-12, "cosine starts at the peak");
    MBT_CHECK(fabs(mb_lr_at_step(3e-4, 2100, 200, 4000) - 1.5e-4) < 1e-12, "cosine midpoint is half the peak");
    MBT_CHECK(mb_lr_at_step(3e-4, 4000, 200, 4000) == 0.0 && mb_lr_at_step(3e-4, 3999, 200, 4000) < 1e-9, "cosine reaches 0 at the end");
    MBT_CHECK(mb_lr_at_fraction(1.0, 0.0, 0.05) == 0.0 && fabs(mb_lr_at_fraction(1.0, 0.05, 0.05) - 1.0) < 1e-12 &&
              fabs(mb_lr_at_fraction(1.0, 0.525, 0.05) - 0.5) < 1e-12 && mb_lr_at_fraction(1.0, 1.0, 0.05) == 0.0,
              "time schedule: 0 -> peak at the warm-up fraction -> half at the middle -> 0 at the deadline");
    MBT_CHECK(mb_clip_coef(4.0, 1.0) == (float)(1.0 / (4.0 + 1e-6)) && mb_clip_coef(0.5, 1.0) == 1.0f, "clip coefficient");
}

static void test_utf8(void) {
    struct { const char *s; int n, want; } c[] = {
        {"a", 1, 1}, {"\xC3\xA9", 2, 2}, {"\xE2\x82\xAC", 3, 3}, {"\xF0\x9F\x98\x80", 4, 4},
        {"\xC0\x80", 2, 0} /* overlong */, {"\xC1\xBF", 2, 0}, {"\xE0\x80\xAF", 3, 0} /* overlong */,
        {"\xED\xA0\x80", 3, 0} /* surrogate */, {"\xF4\x90\x80\x80", 4, 0} /* > U+10FFFF */,
        {"\xF5\x80\x80\x80", 4, 0}, {"\x80", 1, 0} /* stray continuation */, {"\xC3", 1, 0} /* truncated */,
        {"\xE2\x82", 2, 0}, {"\xC3\x28", 2, 0}, {"\xEF\xBF\xBF", 3, 3}, {"\xF4\x8F\xBF\xBF", 4, 4}};
    size_t i;
    int bad = 0;
    for (i = 0; i < sizeof c / sizeof c[0]; i++)
        if (mb_utf8_char_len((const uint8_t *)c[i].s, c[i].n) != c[i].want) {
            bad++;
            fprintf(stderr, "  utf8 case %zu: got %d want %d\n", i, mb_utf8_char_len((const uint8_t *)c[i].s, c[i].n), c[i].want);
        }
    MBT_CHECK(bad == 0, "UTF-8 decoder: %d cases wrong", bad);
}

/* A model with every parameter 0 gives logits that are exactly 0: argmax 0,
   every byte costs exactly 8 bits.  So the protocol's counts are known. */
static void test_eval_protocol(void) {
    static const uint8_t text[] = {0x00, 'a', 0x00, 0xC3, 0xA9, 0x00, 0xE2, 0x82, 0xAC, 'b'};
    static const uint8_t bad_text[] = {'o', 'k', 0xC3, 0x28, 'x'};
    mb_config c = tiny_config();
    mb_model *m;
    mb_eval_result r;
    mb_status s;
    mb_model_create(&m, &c, 1);
    memset(mb_model_params(m), 0, sizeof(float) * (size_t)mb_model_num_params(m));
    s = mb_eval_text(m, text, sizeof text, -1, &r, NULL, NULL);
    MBT_CHECK(s == MB_STATUS_OK && r.chars == 7 && r.bytes == 10, "eval: 7 chars (NUL a NUL é NUL € b) in 10 bytes, got %lld in %lld",
              (long long)r.chars, (long long)r.bytes);
    MBT_CHECK(r.chars_correct == 3 && r.bytes_correct == 3, "eval: argmax 0 is right exactly on the 3 NULs: %lld chars, %lld bytes",
              (long long)r.chars_correct, (long long)r.bytes_correct);
    MBT_CHECK(fabs(r.nll_bits / (double)r.bytes - 8.0) < 1e-6, "uniform logits cost 8 bits per byte, got %g", r.nll_bits / (double)r.bytes);
    s = mb_eval_text(m, text, sizeof text, 4, &r, NULL, NULL);
    MBT_CHECK(s == MB_STATUS_OK && r.chars == 4 && r.bytes == 5 && r.chars_correct == 2, "eval of the first 4 chars: %lld chars %lld bytes",
              (long long)r.chars, (long long)r.bytes);
    s = mb_eval_text(m, bad_text, sizeof bad_text, -1, &r, NULL, NULL);
    MBT_CHECK(s == MB_STATUS_BAD_FORMAT && strstr(mb_last_error(), "offset 2"), "invalid UTF-8 must name offset 2: '%s'", mb_last_error());
    s = mb_eval_text(m, bad_text, sizeof bad_text, 2, &r, NULL, NULL);
    MBT_CHECK(s == MB_STATUS_OK && r.chars == 2, "the first 2 chars are valid even though byte 2 is not");
    mb_model_free(m);
}

/* ------------------------------------------------------------------ CLI */
/* About 24 KB of varied text (not the smoke-mode size) written by the test. */
static void write_train_text(const char *path) {
    static const char *words[] = {"state", "space", "model", "bytes", "river", "stone", "light", "over", "the", "a",
                                  "quickly", "under", "numbers", "café", "naïve", "soft", "max", "scan", "=", "\n"};
    FILE *f = fopen(path, "wb");
    mbt_rng rng = {2024};
    int i;
    for (i = 0; i < 4000; i++) fprintf(f, "%s ", words[mbt_next(&rng) % 20]);
    fclose(f);
}

static void test_cli_train(void) {
    const char *common = "./mambabyte train --data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 --batch 2 --ctx 32 "
                         "--steps 12 --lr 1e-2 --eval-chars 200 --threads 2";
    char cmd[2048];
    int rc;
    write_train_text("build/t_text.txt");
    /* one run of 12 steps, and 6 + resume + 6 (with a mid-run save) */
    snprintf(cmd, sizeof cmd, "%s --out build/t_full.bin --log build/t_full.csv --json build/t_full.json > build/t_full.out 2>&1", common);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 0, "train run failed (%d): see build/t_full.out", rc);
    MBT_CHECK(mbt_file_contains("build/t_full.json", "\"steps\": 12") && mbt_file_contains("build/t_full.json", "\"training_energy_J\": null") &&
              mbt_file_contains("build/t_full.json", "\"tokens_per_s\""), "train --json keys");
    MBT_CHECK(mbt_file_contains("build/t_full.out", "char accuracy") && mbt_file_contains("build/t_full.out", "last 5%"),
              "train should evaluate on the held-out 5%% and say so");
    snprintf(cmd, sizeof cmd, "%s --stop-at 6 --save-every 3 --out build/t_half.bin --log build/t_half.csv > build/t_half.out 2>&1", common);
    MBT_CHECK(mbt_run(cmd) == 0, "first half failed: see build/t_half.out");
    MBT_CHECK(!mbt_file_contains("build/t_half.out", "char accuracy"), "a run paused by --stop-at is not evaluated");
    MBT_CHECK(mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_half.bin --out build/t_half.bin --log build/t_half.csv "
                      "--eval-chars 0 --threads 2 > build/t_resume.out 2>&1") == 0,
              "resume failed: see build/t_resume.out");
    {   /* everything but the wall-clock time and the save interval must be bit-identical */
        mb_model *ma = NULL, *mb = NULL;
        mb_train_state sa, sb;
        int ha = 0, hb = 0, same = 0;
        if (mb_checkpoint_load("build/t_full.bin", &ma, &sa, &ha) == MB_STATUS_OK &&
            mb_checkpoint_load("build/t_half.bin", &mb, &sb, &hb) == MB_STATUS_OK && ha && hb) {
            int64_t n = mb_model_num_params(ma);
            same = n == mb_model_num_params(mb) && !memcmp(mb_model_params(ma), mb_model_params(mb), 4 * (size_t)n) &&
                   !memcmp(sa.adam_m, sb.adam_m, 4 * (size_t)n) && !memcmp(sa.adam_v, sb.adam_v, 4 * (size_t)n) &&
                   sa.step == 12 && sb.step == 12 && sa.data_rng == sb.data_rng && sa.data_pos == sb.data_pos;
            mb_train_state_free(&sa);
            mb_train_state_free(&sb);
        }
        MBT_CHECK(same, "6 steps + resume + 6 steps must give bit-identical parameters, moments and sampler state to 12 steps");
        mb_model_free(ma);
        mb_model_free(mb);
    }
    /* the step rows (not the evaluation row, whose loss field is empty) */
    MBT_CHECK(0 == mbt_run("awk -F, '$2 != \"\"' build/t_full.csv | cut -d, -f1-4 > build/t_a.csv && "
                           "awk -F, '$2 != \"\"' build/t_half.csv | cut -d, -f1-4 > build/t_b.csv && cmp -s build/t_a.csv build/t_b.csv && "
                           "test $(wc -l < build/t_a.csv) -eq 13"),
              "the resumed run's losses must equal the single run's (13 lines: header and 12 steps)");
    MBT_CHECK(mbt_file_contains("build/t_full.csv", "step,loss,lr,grad_norm,seconds,val_char_accuracy\n") &&
              0 == mbt_run("tail -n 1 build/t_full.csv | grep -Eq '^12,,,,[0-9.]+,0\\.[0-9]{6}$'"),
              "the CSV ends with the held-out char accuracy of the finished run");
    /* resume with a different config or setting is refused */
    rc = mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_half.bin --d-model 32 --out build/t_x.bin > build/t_err.out 2>&1");
    MBT_CHECK(rc == 2 && mbt_file_contains("build/t_err.out", "--d-model 32 differs"), "resume with another --d-model: rc %d", rc);
    rc = mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_half.bin --lr 0.5 --out build/t_x.bin > build/t_err.out 2>&1");
    MBT_CHECK(rc == 2 && mbt_file_contains("build/t_err.out", "--lr is 0.01 in the checkpoint but 0.5 here"), "resume with another --lr: rc %d", rc);
    /* stop conditions may change: "another 5 minutes" on a run trained without a budget */
    rc = mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_half.bin --time-budget 5 --steps 12 --save-every 4 "
                 "--eval-chars 0 --out build/t_x.bin > build/t_err.out 2>&1");
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_err.out", "resumed from"), "resume with a new --time-budget under the step schedule: rc %d", rc);
    /* a time budget stops cleanly and saves; the time schedule needs one */
    rc = mbt_run("./mambabyte train --data build/t_text.txt --d-model 16 --n-layer 1 --batch 2 --ctx 32 --steps 1000000 "
                 "--time-budget 1.5 --schedule time --sequential --eval-chars 50 --log-every 1 --out build/t_budget.bin > build/t_budget.out 2>&1");
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_budget.out", "time budget: stopping") && mbt_file_contains("build/t_budget.out", "sequential"),
              "--time-budget should stop cleanly: rc %d", rc);
    MBT_CHECK(mbt_file_contains("build/t_budget.out", "% of the time budget)") && !mbt_file_contains("build/t_budget.out", "/1000000 |"),
              "a run the budget ends shows its progress against the budget, not against the million steps");
    MBT_CHECK(mbt_file_contains("build/t_budget.out", "until the time budget ends (at most 1000000 steps), lr 0.002 (warm-up over the "
                                                      "first 5% of the time budget, cosine to 0 at its end, time schedule)") &&
                  !mbt_file_contains("build/t_budget.out", "warm-up 50000 steps"),
              "the time schedule's banner says what happens: the budget, not the million steps, shapes the lr (build/t_budget.out)");
    MBT_CHECK(mbt_file_contains("build/t_budget.out", "char accuracy"),
              "a run ended by its time budget is finished, so it is evaluated (--eval-chars)");
    {
        mb_model *mt = NULL;
        mb_train_state st;
        int has = 0;
        MBT_CHECK(mb_checkpoint_load("build/t_budget.bin", &mt, &st, &has) == MB_STATUS_OK && has && st.elapsed_s < 1.5 &&
                  st.settings.sequential == 1 && st.settings.schedule == 1 && st.step > 0,
                  "the budgeted run's checkpoint should hold its state (elapsed < budget, sequential, time schedule)");
        if (has) mb_train_state_free(&st);
        mb_model_free(mt);
    }
    /* eval and sample on the checkpoint */
    rc = mbt_run("./mambabyte eval --model build/t_full.bin --data build/t_text.txt --chars 300 --json build/t_eval.json > build/t_eval.out 2>&1");
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_eval.json", "\"val_char_accuracy\"") && mbt_file_contains("build/t_eval.json", "\"chars\": 300") &&
              mbt_file_contains("build/t_eval.json", "\"bits_per_byte\""), "eval --json: rc %d", rc);
    rc = mbt_run("./mambabyte sample --model build/t_full.bin --prompt 'the ' --bytes 40 --seed 3 > build/t_sample1.out 2> build/t_sample.err && "
                 "./mambabyte sample --model build/t_full.bin --prompt 'the ' --bytes 40 --seed 3 > build/t_sample2.out 2> /dev/null");
    MBT_CHECK(rc == 0 && mbt_files_equal("build/t_sample1.out", "build/t_sample2.out") && mbt_file_contains("build/t_sample1.out", "the "),
              "sample: same seed, same text (the timing line goes to stderr)");
    MBT_CHECK(mbt_file_contains("build/t_sample.err", "40 bytes in ") && mbt_file_contains("build/t_sample.err", " bytes/s"),
              "sample reports its speed on stderr (build/t_sample.err)");
}

static void test_cli_errors(void) {
    struct { const char *cmd; int rc; const char *msg; } c[] = {
        {"./mambabyte", 2, "usage"},
        {"./mambabyte frobnicate", 2, "unknown command"},
        {"./mambabyte train --bogus 1", 2, "unknown flag"},
        {"./mambabyte train --steps", 2, "needs a value"},
        {"./mambabyte train --steps -5", 2, "bad value"},
        {"./mambabyte train --steps 2.5", 2, "bad value"},
        {"./mambabyte train --stpes 5", 2, "unknown flag '--stpes'; did you mean --steps?"},
        {"./mambabyte train --time-budjet 5", 2, "did you mean --time-budget?"},
        {"./mambabyte train --batch 0", 2, "bad value '0' for --batch (an integer in [1, 1048576])"},
        {"./mambabyte train --seed -1", 2, "(an integer in [0, 9007199254740992])"},
        {"./mambabyte train --help", 0, "given alone, it also changes the lr, batch, ctx, schedule and steps"},
        {"./mambabyte train --lr nan", 2, "bad value"},
        {"./mambabyte train --schedule sometimes", 2, "--schedule"},
        {"./mambabyte train --schedule time --data build/t_text.txt", 2, "--time-budget"},
        {"./mambabyte train --data build/no_such_file.txt", 1, "no_such_file.txt"},
        {"./mambabyte train --data build/t_text.txt --ctx 100000 --steps 1", 1, "fewer than ctx+1"},
        {"./mambabyte train --data build/t_text.txt --resume build/no_such.bin", 1, "no_such.bin"},
        {"./mambabyte train --data build/t_text.txt --resume build/t_text.txt", 1, "not a mambabyte checkpoint"},
        {"./mambabyte eval --model build/t_full.bin", 2, "--data are required"},
        {"./mambabyte eval --model build/no_such.bin --data build/t_text.txt", 1, "no_such.bin"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_bad_utf8.txt", 1, "invalid UTF-8 at byte offset 3"},
        {"./mambabyte sample --bytes 5", 2, "--model is required"},
        {"./mambabyte train --data build/t_text.txt --steps 1 --d-model 16 --n-layer 1 --eval-chars 0 --out build/no_dir/x.bin", 1, "cannot create"},
    };
    size_t i;
    FILE *f = fopen("build/t_bad_utf8.txt", "wb");
    fputs("abc\xC3\x28 and more", f);
    fclose(f);
    for (i = 0; i < sizeof c / sizeof c[0]; i++) {
        char cmd[1024];
        int rc;
        snprintf(cmd, sizeof cmd, "%s > build/t_cli.out 2>&1", c[i].cmd);
        rc = mbt_run(cmd);
        MBT_CHECK(rc == c[i].rc && mbt_file_contains("build/t_cli.out", c[i].msg), "'%s': exit %d (want %d), output lacks '%s'?", c[i].cmd, rc,
                  c[i].rc, c[i].msg);
    }
    MBT_CHECK(mbt_run("./mambabyte train --qwertyuiop 1 > build/t_cli.out 2>&1") == 2 &&
                  mbt_file_contains("build/t_cli.out", "unknown flag '--qwertyuiop'\nusage:") &&
                  !mbt_file_contains("build/t_cli.out", "did you mean") && !mbt_file_contains("build/t_cli.out", "--grad-accum"),
              "a flag like none: no guess, and no flag list dumped (build/t_cli.out)");
}

/* Inputs are checked before any work, and every message says what it is
   about: empty texts, a non-UTF-8 or empty evaluation text, an unwritable
   output, smoke mode's actual run, and where each evaluated text comes from
   (needs build/t_full.bin and build/t_text.txt from test_cli_train). */
static void test_cli_inputs(void) {
#define TINY " --steps 1 --d-model 16 --n-layer 1 --batch 2 --ctx 32 --threads 2"
    struct { const char *cmd; int rc; const char *msg; } c[] = {
        {"./mambabyte train --data build/t_empty.txt", 1, "build/t_empty.txt is empty: there is no text to train on"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_empty.txt", 1, "the start of build/t_empty.txt (not held out) is empty: there is no text to evaluate"},
        {"./mambabyte train --data build/t_text.txt --eval-data build/t_empty.txt" TINY, 1, "build/t_empty.txt (--eval-data) is empty"},
        {"./mambabyte train --data build/t_text.txt --eval-data build/t_bad_utf8.txt" TINY, 1,
         "build/t_bad_utf8.txt (--eval-data): invalid UTF-8 at byte offset 3 (byte 0xc3); the evaluation reads UTF-8 text (--eval-chars 0 skips it)"},
        {"./mambabyte train --data build/t_text.txt --out build/no_dir/x.bin" TINY, 1, "--out build/no_dir/x.bin: cannot create a file in build/no_dir/"},
        {"./mambabyte train --data build/t_text.txt --json build" TINY, 1, "--json build is a folder: give a file path"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_text.txt --split test", 2, "--split test needs a WikiText folder, and build/t_text.txt is a file"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_wiki --split tail", 2, "--split tail is a single file's held-out 5%; build/t_wiki is a folder"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_text.txt --chars 50", 0, "eval on the start of build/t_text.txt (not held out): 50 chars"},
        {"./mambabyte eval --model build/t_full.bin --data build/t_wiki --split test --chars 20", 0, "eval on the test split (build/t_wiki/wiki.test.raw): 20 chars"},
        {"./mambabyte train --data build/t_wiki --eval-chars 30 --out build/t_in.bin" TINY, 0, "eval on the valid split (build/t_wiki/wiki.valid.raw): 30 chars"},
        {"./mambabyte train --data build/t_text.txt --eval-data build/t_wiki/wiki.test.raw --eval-chars 30 --out build/t_in.bin" TINY, 0,
         "eval on build/t_wiki/wiki.test.raw (--eval-data): 30 chars"},
        {"./mambabyte train --data build/t_small.txt --steps 3 --d-model 24 --eval-chars 0 --threads 2 --out build/t_in.bin", 0,
         "smoke mode (training data under 10,000 bytes): d_model 24, 2 layers, d_state 8, ctx 64, batch 2, 3 steps (flags given win); MB_SMOKE=0 turns it off"},
        {"MB_SMOKE=1 ./mambabyte train --data build/t_text.txt --eval-chars 0 --threads 2 --out build/t_in.bin", 0,
         "smoke mode (MB_SMOKE=1): d_model 32, 2 layers, d_state 8, ctx 64, batch 2, 2 steps (flags given win); unsetting MB_SMOKE turns it off"},
    };
    size_t i;
    int rc;
    char cmd[1024];
    mbt_run("mkdir -p build/t_wiki && : > build/t_empty.txt && head -c 5000 build/t_text.txt > build/t_small.txt && cp build/t_text.txt build/t_wiki/wiki.train.raw && "
            "head -c 3000 build/t_text.txt > build/t_wiki/wiki.valid.raw && tail -c 3000 build/t_text.txt > build/t_wiki/wiki.test.raw && rm -f build/t_in.bin");
    for (i = 0; i < sizeof c / sizeof c[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s > build/t_cli.out 2>&1", c[i].cmd);
        rc = mbt_run(cmd);
        MBT_CHECK(rc == c[i].rc && mbt_file_contains("build/t_cli.out", c[i].msg), "'%s': exit %d (want %d), output lacks '%s'?", cmd, rc, c[i].rc, c[i].msg);
        MBT_CHECK(rc == 0 || (!mbt_file_contains("build/t_cli.out", "step ") && !mbt_file_contains("build/t_cli.out", "model:")),
                  "'%s' must fail before building the model", cmd);
    }
    MBT_CHECK(mbt_run("MB_SMOKE=0 ./mambabyte train --data build/t_small.txt --eval-chars 0 --out build/t_in.bin --steps 1 --d-model 16 "
                      "--n-layer 1 --batch 2 --ctx 32 --threads 2 > build/t_cli.out 2>&1") == 0 && !mbt_file_contains("build/t_cli.out", "smoke") &&
              mbt_file_contains("build/t_cli.out", "d_state 16"), "MB_SMOKE=0 turns smoke mode off on a small file");
    /* the demo runs from any folder: data/ is found beside the binary */
    MBT_CHECK(mbt_run("cd build && MB_SMOKE=1 ../mambabyte train --eval-chars 0 --threads 2 --out t_demo.bin > t_demo.out 2>&1") == 0 &&
              mbt_file_contains("build/t_demo.out", "/data/sample.txt (first 95%"), "the demo from another folder: see build/t_demo.out");
    /* eval --split tail scores exactly the 5% that train held out (and says so) */
    rc = mbt_run("grep -A2 \"^eval on build/t_text.txt's held-out 5%: 200 chars\" build/t_full.out > build/t_tail_a.out && "
                 "./mambabyte eval --model build/t_full.bin --data build/t_text.txt --split tail --chars 200 --threads 2 > build/t_cli.out 2>&1 && "
                 "grep -A2 '^eval on' build/t_cli.out > build/t_tail_b.out && test -s build/t_tail_a.out");
    MBT_CHECK(rc == 0 && mbt_files_equal("build/t_tail_a.out", "build/t_tail_b.out"), "eval --split tail must repeat train's held-out figures");
#undef TINY
}

/* Saving into a "full disk" (RLIMIT_FSIZE) fails cleanly and keeps the old file. */
static void test_save_failure_keeps_old(void) {
    mb_config c = tiny_config();
    mb_model *m, *back = NULL;
    struct rlimit old, small;
    const char *path = "build/t_keep.bin";
    mb_status s;
    float original;
    mb_model_create(&m, &c, 3);
    MBT_CHECK(mb_model_save(m, path) == MB_STATUS_OK, "first save");
    original = mb_model_params(m)[0];
    mb_model_params(m)[0] = original + 1.0f;
    getrlimit(RLIMIT_FSIZE, &old);
    small = old;
    small.rlim_cur = 2000; /* smaller than the checkpoint */
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    s = mb_model_save(m, path);
    setrlimit(RLIMIT_FSIZE, &old);
    MBT_CHECK(s == MB_STATUS_IO_ERROR && strstr(mb_last_error(), "intact"), "a failed save must be an error: '%s'", mb_last_error());
    s = mb_model_load(&back, path);
    MBT_CHECK(s == MB_STATUS_OK && back && mb_model_params(back)[0] == original,
              "the previous checkpoint must survive a failed save");
    MBT_CHECK(mbt_run("ls build/t_keep.bin.tmp.* > /dev/null 2>&1") != 0, "a failed save must not leave its temporary file");
    mb_model_free(back);
    mb_model_free(m);
}

static void test_train(void) {
    test_schedule();
    test_utf8();
    test_eval_protocol();
    test_grad_accum();
    test_adamw_trajectory();
    test_tiny_overfit();
    test_save_failure_keeps_old();
    test_cli_train();
    test_cli_errors();
    test_cli_inputs();
}
