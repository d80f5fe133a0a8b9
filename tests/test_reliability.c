/* test_reliability.c - what survives what: SIGKILL at random moments
   (including during a save) and resume, corrupt and odd checkpoint files,
   full and read-only disks, data files larger than 4 GiB, and non-finite
   gradients.  Included by test.c after the other test files; uses
   run_cmd, file_contains, files_equal, write_train_text, small_settings
   (tests/test_train.c) and tiny_config, random_bytes (tests/test_model.c).
   What cannot be tested here (no mount permission, root ignoring file
   modes, a filesystem without sparse files) is skipped with a printed
   reason. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void rel_skip(const char *what, const char *why) {
    MBT_SKIP("reliability", "%s: %s", what, why);
}

static int rel_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int rel_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    if (n && fwrite(data, 1, n, f) != n) { fclose(f); return -1; }
    return fclose(f);
}

static unsigned char *rel_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long len;
    *n = 0;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NULL; }
    buf = (unsigned char *)malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) *n = (size_t)len;
    return buf;
}

/* Number of paths matching pattern (glob). */
static size_t rel_count_glob(const char *pattern) {
    glob_t g;
    size_t n = 0;
    if (glob(pattern, 0, NULL, &g) == 0) n = g.gl_pathc;
    globfree(&g);
    return n;
}

/* The last "step K/N" line of a training log (-1 when none). */
static int64_t rel_last_logged_step(const char *log) {
    FILE *f = fopen(log, "rb");
    char line[1024];
    long long k, n;
    int64_t last = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "step %lld/%lld", &k, &n) == 2) last = k;
    fclose(f);
    return last;
}

/* Loads a checkpoint with its training state; 1 on success. */
static int rel_load_state(const char *path, mb_model **m, mb_train_state *st) {
    int has = 0;
    *m = NULL;
    if (mb_checkpoint_load(path, m, st, &has) != MB_STATUS_OK) return 0;
    if (!has) { mb_model_free(*m); *m = NULL; return 0; }
    return 1;
}

/* Parameters, moments, step, sampler and carried states equal bit for bit. */
static int rel_same_run(const char *a, const char *b, char *why, size_t nwhy) {
    mb_model *ma, *mb;
    mb_train_state sa, sb;
    int same = 0;
    snprintf(why, nwhy, "cannot load both");
    if (!rel_load_state(a, &ma, &sa)) return 0;
    if (rel_load_state(b, &mb, &sb)) {
        int64_t n = mb_model_num_params(ma);
        size_t bytes = 4 * (size_t)n;
        int64_t rows = sa.settings.batch * sa.settings.grad_accum * sa.ranks; /* carried rows (mb_train_state.carry) */
        if (n != mb_model_num_params(mb)) snprintf(why, nwhy, "parameter counts differ");
        else if (memcmp(mb_model_params(ma), mb_model_params(mb), bytes)) snprintf(why, nwhy, "parameters differ");
        else if (memcmp(sa.adam_m, sb.adam_m, bytes) || memcmp(sa.adam_v, sb.adam_v, bytes)) snprintf(why, nwhy, "Adam moments differ");
        else if (sa.step != sb.step) snprintf(why, nwhy, "steps %lld vs %lld", (long long)sa.step, (long long)sb.step);
        else if (sa.data_rng != sb.data_rng || sa.data_pos != sb.data_pos) snprintf(why, nwhy, "sampler states differ");
        else if (!sa.carry != !sb.carry || rows != sb.settings.batch * sb.settings.grad_accum * sb.ranks ||
                 (sa.carry && memcmp(sa.carry, sb.carry, 4 * (size_t)mb_carry_floats(mb_model_config(ma), rows))))
            snprintf(why, nwhy, "carried states differ");
        else same = 1;
        mb_train_state_free(&sb);
        mb_model_free(mb);
    }
    mb_train_state_free(&sa);
    mb_model_free(ma);
    return same;
}

/* --------------------------------------------------------- crash safety */
/* SIGKILL at seeded random moments and once inside a save, resume each
   time: the checkpoint always loads, at most --save-every steps are lost,
   and the end result is bit-identical to an uninterrupted run. */
#define REL_CRASH_FLAGS "--data build/t_text.txt --d-model 32 --n-layer 2 --d-state 4 --batch 4 --ctx 64 --steps 80 " \
                        "--lr 1e-2 --eval-chars 0 --threads 1 --log-every 1"

static void rel_crash_cmd(char *cmd, size_t n, int save_every, const char *log) {
    const char *out = "build/t_crash.bin";
    snprintf(cmd, n, "./mambabyte train " REL_CRASH_FLAGS " --save-every %d --out %s%s%s > %s 2>&1", save_every, out,
             rel_exists(out) ? " --resume " : "", rel_exists(out) ? out : "", log);
}

static char rel_kill_log[512]; /* "logged/checkpoint" step pairs, for the summary */

/* After a kill: the checkpoint (if any) loads, never goes back, and lags
   the last logged step by at most save_every.  *ck is updated. */
static void rel_check_after_kill(const char *what, int save_every, int64_t *ck) {
    const char *out = "build/t_crash.bin";
    int64_t logged = rel_last_logged_step("build/t_crash.out"), now = 0;
    if (logged < 0) logged = *ck; /* killed before its first step */
    if (rel_exists(out)) {
        mb_model *m;
        mb_train_state st;
        int ok = rel_load_state(out, &m, &st);
        MBT_CHECK(ok, "%s: the checkpoint must load after SIGKILL: %s", what, mb_last_error());
        if (ok) {
            now = st.step;
            mb_train_state_free(&st);
            mb_model_free(m);
        }
    }
    MBT_CHECK(now >= *ck && now <= logged && logged - now <= save_every,
              "%s: checkpoint at step %lld, last logged step %lld, previous checkpoint %lld: at most --save-every %d steps may be lost",
              what, (long long)now, (long long)logged, (long long)*ck, save_every);
    *ck = now;
    {
        size_t used = strlen(rel_kill_log);
        if (used + 32 < sizeof rel_kill_log)
            snprintf(rel_kill_log + used, sizeof rel_kill_log - used, " %lld/%lld", (long long)logged, (long long)now);
    }
}

static void test_crash_resume(void) {
    char cmd[2048], why[128];
    mbt_rng rng = {20240607};
    int64_t ck = 0;
    int kills = 0, in_save = 0, tries, rc = -1, i, finished = 0;
    pid_t killed[16];
    int nkilled = 0;
    double t0 = mb_clock_seconds(), ref_s;
    rel_kill_log[0] = '\0';
    remove("build/t_crash.bin");
    remove("build/t_crash_ref.bin");
    mbt_run("rm -f build/t_crash.bin.tmp.* build/t_crash_ref.bin.tmp.*");

    /* the uninterrupted reference; its duration scales the kill moments */
    ref_s = mb_clock_seconds();
    rc = mbt_run("./mambabyte train " REL_CRASH_FLAGS " --save-every 2 --out build/t_crash_ref.bin > build/t_crash_ref.out 2>&1");
    MBT_CHECK(rc == 0, "reference run failed (%d): see build/t_crash_ref.out", rc);
    ref_s = mb_clock_seconds() - ref_s;
    MBT_CHECK(rel_count_glob("build/t_crash_ref.bin.tmp.*") == 0, "a clean run must leave no temporary file");

    /* kills at random moments (save every 2 steps): 8% to 25% of the
       reference run's time after the start, so a sanitizer build (slower)
       is interrupted at comparable points */
    for (i = 0; i < 4 && !finished; i++) {
        double ms = 1000.0 * ref_s * (0.08 + 0.17 * mbt_uniform(&rng));
        pid_t pid;
        double t;
        char what[64];
        rel_crash_cmd(cmd, sizeof cmd, 2, "build/t_crash.out");
        pid = mbt_spawn(cmd);
        t = mb_clock_seconds();
        while (!mbt_poll(pid, &rc) && mb_clock_seconds() - t < ms / 1000.0) mbt_sleep_ms(1);
        if (mb_clock_seconds() - t >= ms / 1000.0) {
            kill(pid, SIGKILL);
            rc = mbt_wait(pid);
        }
        if (rc == 128 + SIGKILL) {
            if (nkilled < 16) killed[nkilled++] = pid;
            kills++;
        } else {
            finished = rc == 0; /* it ended on its own */
        }
        snprintf(what, sizeof what, "kill %d after %.0f ms", i + 1, ms);
        rel_check_after_kill(what, 2, &ck);
    }
    MBT_CHECK(kills >= 3, "crash test: only %d of 4 runs were killed before finishing (too fast?)", kills);

    /* a kill inside a save: save every step, and SIGKILL the moment its
       temporary file appears; the temporary file still being there after
       the kill proves the save was cut short */
    for (tries = 0; tries < 20 && !in_save && !finished; tries++) {
        char tmp[256];
        pid_t pid;
        double t;
        rel_crash_cmd(cmd, sizeof cmd, 1, "build/t_crash.out");
        pid = mbt_spawn(cmd);
        snprintf(tmp, sizeof tmp, "build/t_crash.bin.tmp.%ld", (long)pid);
        t = mb_clock_seconds();
        while (!mbt_poll(pid, &rc)) {
            if (access(tmp, F_OK) == 0 || mb_clock_seconds() - t > 10.0) {
                kill(pid, SIGKILL);
                rc = mbt_wait(pid);
                if (rc == 128 + SIGKILL) {
                    if (nkilled < 16) killed[nkilled++] = pid;
                    in_save = access(tmp, F_OK) == 0;
                }
                break;
            }
        }
        if (rc == 0) finished = 1;
        rel_check_after_kill(in_save ? "kill inside a save" : "kill near a save", 1, &ck);
    }
    if (!in_save && !finished) rel_skip("kill inside a save", "20 tries never caught a save in progress");
    MBT_CHECK(in_save || !finished, "the run finished before a kill inside a save was achieved");

    /* resume to the end */
    for (tries = 0; tries < 3 && !finished; tries++) {
        rel_crash_cmd(cmd, sizeof cmd, 2, "build/t_crash.out");
        rc = mbt_run(cmd);
        finished = rc == 0;
    }
    MBT_CHECK(finished, "the resumed run did not finish: exit %d, see build/t_crash.out", rc);
    MBT_CHECK(mbt_file_contains("build/t_crash.out", "done: 80 steps"), "the last resumed run must reach step 80");
    MBT_CHECK(rel_same_run("build/t_crash_ref.bin", "build/t_crash.bin", why, sizeof why),
              "after %d kills (one inside a save: %s) and resumes, the result must equal the uninterrupted run: %s", kills + (in_save ? 1 : 0),
              in_save ? "yes" : "no", why);
    {   /* temporary files: only the killed processes' may remain */
        glob_t g;
        size_t k, stray = 0, stale = 0;
        if (glob("build/t_crash.bin.tmp.*", 0, NULL, &g) == 0) {
            for (k = 0; k < g.gl_pathc; k++) {
                long pid = atol(strrchr(g.gl_pathv[k], '.') + 1);
                int j, was_killed = 0;
                for (j = 0; j < nkilled; j++) was_killed |= (long)killed[j] == pid;
                if (was_killed) stale++; else stray++;
                remove(g.gl_pathv[k]);
            }
        }
        globfree(&g);
        MBT_CHECK(stray == 0, "%zu temporary files left by runs that were not killed", stray);
        if (stale) printf("reliability: note: %zu stale temporary file(s) left by SIGKILLed saves (removed)\n", stale);
    }
    printf("reliability: crash test: %d random kills, kill inside a save: %s (logged/checkpoint step after each kill:%s), %.1f s\n",
           kills, in_save ? "yes" : "no", rel_kill_log, mb_clock_seconds() - t0);
}

/* ------------------------------------------------- checkpoint robustness */
/* Beyond test_checkpoint_files: every header field 2..12 out of range,
   sizes that do not match, a bad training-state block, +-Inf parameters,
   odd file types, unreadable paths.  Library and CLI. */

/* The CLI must refuse path with exit 1 and a message naming it. */
static int rel_cli_refuses(const char *path, const char *needle) {
    char cmd[1024];
    int rc;
    snprintf(cmd, sizeof cmd, "timeout 20 ./mambabyte eval --model '%s' --data build/t_text.txt --chars 10 > build/t_rel_cli.out 2>&1", path);
    rc = mbt_run(cmd);
    return rc == 1 && mbt_file_contains("build/t_rel_cli.out", needle) && mbt_file_contains("build/t_rel_cli.out", "mambabyte eval:");
}

/* The library must refuse path: status want (or any error when want is
   MB_STATUS_OK), no model, and a message containing needle. */
static int rel_lib_refuses(const char *path, mb_status want, const char *needle) {
    mb_model *m = (mb_model *)&m; /* garbage the loader must overwrite */
    mb_train_state st;
    int has = 7;
    mb_status s = mb_checkpoint_load(path, &m, &st, &has);
    int ok = s != MB_STATUS_OK && (want == MB_STATUS_OK || s == want) && m == NULL && has == 0 && strstr(mb_last_error(), needle) != NULL;
    if (!ok) fprintf(stderr, "  %s: status %s, message '%s' (wanted '%s')\n", path, mb_status_string(s), mb_last_error(), needle);
    if (s == MB_STATUS_OK) {
        if (has) mb_train_state_free(&st);
        mb_model_free(m);
    }
    return ok;
}

/* Where the value of the named setting `key` lies in a checkpoint with a training state (nm: the bytes before it). */
static size_t rel_setting_at(const unsigned char *file, size_t nm, const char *key) {
    int32_t count;
    size_t i;
    memcpy(&count, file + 4 * 14, 4);
    for (i = 0; i < (size_t)count; i++)
        if (!strcmp((const char *)file + nm + 40 + 32 * i, key)) break;
    return nm + 40 + 32 * i + 24;
}

static void test_checkpoint_robustness(void) {
    const char *model_path = "build/t_rel_model.bin", *state_path = "build/t_rel_state.bin", *bad = "build/t_rel_bad.bin";
    mb_config c = tiny_config();
    mb_model *m;
    mb_trainer tr;
    mb_train_settings set = small_settings();
    mb_step_result r;
    uint8_t text[2000];
    unsigned char *model, *state, *b;
    size_t nm, ns;
    int64_t n;
    int field, k, lib_bad = 0, cli_bad = 0, cases = 0;

    mb_model_create(&m, &c, 11);
    n = mb_model_num_params(m);
    MBT_CHECK(mb_model_save(m, model_path) == MB_STATUS_OK, "save: %s", mb_last_error());
    random_bytes(text, NULL, sizeof text, 5);
    set.batch = 2; set.ctx = 16;
    mb_trainer_init(&tr, m, &set, text, sizeof text, NULL);
    mb_trainer_step(&tr, 1e-3, &r);
    MBT_CHECK(mb_trainer_save(&tr, state_path) == MB_STATUS_OK, "save with state: %s", mb_last_error());
    mb_trainer_free(&tr);
    mb_model_free(m);
    model = rel_read_file(model_path, &nm);
    state = rel_read_file(state_path, &ns);
    if (!model || !state || nm != (size_t)(1024 + 4 * n)) {
        MBT_CHECK(0, "cannot read back the checkpoints");
        free(model);
        free(state);
        return;
    }
    b = (unsigned char *)malloc(ns);

    /* every header field 2..12, one at a time: negative, zero, huge, and
       just past the top of its range; values that are valid for that field
       are left out */
    {
        static const int32_t values[] = {-1, 0, 2147483647, -2147483647 - 1, 257, 65537, 1025, 17, 2};
        for (field = 2; field <= 12; field++) {
            for (k = 0; k < (int)(sizeof values / sizeof values[0]); k++) {
                int32_t v = values[k], orig;
                memcpy(&orig, model + 4 * field, 4);
                if (v == orig) continue;
                if (field == 12 && v == 1) continue; /* a state flag on a model-only file: a size case, below */
                if ((field == 9 || field == 11) && v == 0) continue;
                memcpy(b, model, nm);
                memcpy(b + 4 * field, &v, 4);
                rel_write_file(bad, b, nm);
                cases++;
                if (!rel_lib_refuses(bad, MB_STATUS_BAD_FORMAT, bad)) { lib_bad++; fprintf(stderr, "  (header field [%d] = %d)\n", field, v); }
                if (k < 4 && !rel_cli_refuses(bad, bad)) { cli_bad++; fprintf(stderr, "  CLI accepted header field [%d] = %d\n", field, v); }
            }
        }
        MBT_CHECK(lib_bad == 0, "%d of %d header-field cases were not a clear BAD_FORMAT naming the file", lib_bad, cases);
        MBT_CHECK(cli_bad == 0, "%d header-field cases were not refused by the CLI with exit 1", cli_bad);
    }

    /* sizes that do not match the header */
    {
        struct { const char *name; const unsigned char *src; size_t len; int flag; const char *needle; } sz[] = {
            {"one trailing byte", NULL, 0, -1, "trailing data"},
            {"state flag set, no state", NULL, 0, 1, "truncated"},
            {"state flag clear, state present", NULL, 0, 0, "trailing data"},
            {"state cut inside the moments", NULL, 0, -1, "truncated"},
        };
        sz[0].src = model; sz[0].len = nm + 1;
        sz[1].src = model; sz[1].len = nm;
        sz[2].src = state; sz[2].len = ns;
        sz[3].src = state; sz[3].len = ns - 4 * (size_t)n;
        for (k = 0; k < 4; k++) {
            size_t have = sz[k].src == model ? nm : ns;
            memset(b, 'x', ns);
            memcpy(b, sz[k].src, sz[k].len < have ? sz[k].len : have);
            if (sz[k].flag >= 0) memcpy(b + 48, &sz[k].flag, 4);
            rel_write_file(bad, b, sz[k].len);
            MBT_CHECK(rel_lib_refuses(bad, MB_STATUS_BAD_FORMAT, sz[k].needle), "size case '%s'", sz[k].name);
            MBT_CHECK(rel_cli_refuses(bad, sz[k].needle), "CLI, size case '%s'", sz[k].name);
        }
    }

    /* the training-state block: bad magic, bad version, negative step */
    {
        struct { const char *name; size_t off; int64_t v; int bytes; const char *needle; } st[] = {
            {"state magic", 0, 0x0BADF00D, 4, "training-state block has magic"},
            {"state version", 4, 2, 4, "version 2"},
            {"negative step", 8, -5, 8, "negative step"},
        };
        for (k = 0; k < 3; k++) {
            memcpy(b, state, ns);
            memcpy(b + nm + st[k].off, &st[k].v, (size_t)st[k].bytes); /* little-endian: the low bytes */
            rel_write_file(bad, b, ns);
            MBT_CHECK(rel_lib_refuses(bad, MB_STATUS_BAD_FORMAT, st[k].needle), "training-state case '%s'", st[k].name);
            {   /* train --resume must refuse it too (eval does not read the state) */
                char cmd[512];
                int rc;
                snprintf(cmd, sizeof cmd, "./mambabyte train --data build/t_text.txt --resume %s --out build/t_rel_x.bin > build/t_rel_cli.out 2>&1", bad);
                rc = mbt_run(cmd);
                MBT_CHECK(rc == 1 && mbt_file_contains("build/t_rel_cli.out", st[k].needle), "train --resume with a bad %s: exit %d", st[k].name, rc);
            }
        }
    }

    /* settings and sampler state out of range: refused, or accepted and
       harmless; never undefined behaviour (the sanitizer build checks
       that) and never a crash of a resumed run */
    {
        double slot_values[] = {NAN, INFINITY, -INFINITY, 1e300, -1e300, 9.3e18, -1.0, 0.5};
        const char *keys[] = {"batch", "ctx", "steps", "grad_accum", "save_every", "seed", "schedule", "sequential"};
        size_t slots[8];
        int64_t pos_values[] = {-1, -100000000, INT64_MAX, INT64_MAX - 10, INT64_MIN};
        size_t s1, s2;
        int crashed = 0, rc;
        pid_t pid;
        /* in a child, so that a sanitizer report (exit 86/87 in make
           test-asan) fails this check instead of ending the suite */
        for (s1 = 0; s1 < 8; s1++) slots[s1] = rel_setting_at(state, nm, keys[s1]);
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid == 0) {
            int wrong = 0;
            for (s1 = 0; s1 < sizeof slots / sizeof slots[0]; s1++)
                for (s2 = 0; s2 < sizeof slot_values / sizeof slot_values[0]; s2++) {
                    mb_model *mm = NULL;
                    mb_train_state ts;
                    int has = 0;
                    mb_status s;
                    memcpy(b, state, ns);
                    memcpy(b + slots[s1], &slot_values[s2], 8);
                    rel_write_file(bad, b, ns);
                    s = mb_checkpoint_load(bad, &mm, &ts, &has);
                    if (s != MB_STATUS_OK && s != MB_STATUS_BAD_FORMAT) {
                        wrong++;
                        fprintf(stderr, "  setting %s = %g: status %s\n", keys[s1], slot_values[s2], mb_status_string(s));
                    }
                    if (s == MB_STATUS_OK && has) mb_train_state_free(&ts);
                    mb_model_free(mm);
                }
            _exit(wrong ? 1 : 0);
        }
        rc = mbt_wait(pid);
        MBT_CHECK(rc == 0, "settings out of range (NaN, Inf, 1e300, 9.3e18, -1, 0.5) must load or be BAD_FORMAT, without "
                  "undefined behaviour: child exit %d%s", rc, rc >= 86 ? " (a sanitizer report, see above)" : "");
        for (s1 = 0; s1 < sizeof pos_values / sizeof pos_values[0]; s1++) {
            double seq = 1.0;
            char cmd[512];
            int rc;
            memcpy(b, state, ns);
            memcpy(b + nm + 24, &pos_values[s1], 8);
            memcpy(b + slots[7], &seq, 8); /* sequential windows: data_pos is used */
            rel_write_file(bad, b, ns);
            snprintf(cmd, sizeof cmd, "./mambabyte train --data build/t_text.txt --resume %s --stop-at 3 --out build/t_rel_x.bin "
                     "--eval-chars 0 > build/t_rel_cli.out 2>&1", bad);
            rc = mbt_run(cmd);
            if (rc != 0 && rc != 1 && rc != 2) {
                crashed++;
                fprintf(stderr, "  train --resume with data_pos %lld: exit %d\n", (long long)pos_values[s1], rc);
            }
        }
        MBT_CHECK(crashed == 0, "%d resumes from a checkpoint with an out-of-range sampler position crashed", crashed);
    }

    /* a non-finite Adam moment: refused at load, or at least never turned
       into a saved checkpoint that does not load (NaN moments make NaN
       parameters after one update, which a later save would write) */
    {
        float nanv = NAN;
        char cmd[512];
        int rc;
        mb_model *back = NULL;
        memcpy(b, state, ns);
        memcpy(b + ns - 4 * (size_t)n + 40, &nanv, 4); /* adam_v[10] */
        rel_write_file(bad, b, ns);
        remove("build/t_rel_x.bin");
        snprintf(cmd, sizeof cmd, "./mambabyte train --data build/t_text.txt --resume %s --save-every 1 --out build/t_rel_x.bin "
                 "--eval-chars 0 > build/t_rel_cli.out 2>&1", bad);
        rc = mbt_run(cmd);
        MBT_CHECK(rc <= 2 && (!rel_exists("build/t_rel_x.bin") || mb_model_load(&back, "build/t_rel_x.bin") == MB_STATUS_OK),
                  "resuming from a NaN Adam moment (exit %d) must not save a checkpoint that does not load: %s", rc, mb_last_error());
        mb_model_free(back);
        remove("build/t_rel_x.bin");
    }

    /* +Inf and -Inf parameters, named by tensor */
    {
        mb_tensor_info t[64];
        int nt = mb_config_tensors(&c, t), ti;
        float infs[2] = {INFINITY, -INFINITY};
        for (ti = 0; ti < nt; ti++)
            if (!strcmp(t[ti].name, "layers.1.mixer.A_log")) break;
        for (k = 0; k < 2 && ti < nt; k++) {
            char needle[96];
            memcpy(b, model, nm);
            memcpy(b + 1024 + 4 * (size_t)(t[ti].offset + 3), &infs[k], 4);
            rel_write_file(bad, b, nm);
            snprintf(needle, sizeof needle, "%s[3] is not finite", t[ti].name);
            MBT_CHECK(rel_lib_refuses(bad, MB_STATUS_NON_FINITE, needle), "%cInf in a parameter must be NON_FINITE naming %s",
                      k ? '-' : '+', needle);
            MBT_CHECK(rel_cli_refuses(bad, "not finite"), "CLI: %cInf parameter", k ? '-' : '+');
        }
        MBT_CHECK(ti < nt, "tensor layers.1.mixer.A_log not found");
    }

    /* odd file types and unreadable paths */
    {
        const char *fifo = "build/t_rel_fifo";
        remove(fifo);
        if (mkfifo(fifo, 0644) == 0) {
            /* a loader that opened a FIFO before checking would block: run it in
               a child with an alarm */
            pid_t pid;
            int rc;
            fflush(stdout);
            fflush(stderr);
            pid = fork();
            if (pid == 0) {
                alarm(10);
                _exit(rel_lib_refuses(fifo, MB_STATUS_IO_ERROR, "not a regular file") ? 0 : 1);
            }
            rc = mbt_wait(pid);
            MBT_CHECK(rc == 0, "a FIFO must be refused as not a regular file (child exit %d)", rc);
            MBT_CHECK(rel_cli_refuses(fifo, "not a regular file"), "CLI: a FIFO checkpoint");
            remove(fifo);
        } else {
            rel_skip("FIFO checkpoint", strerror(errno));
        }
        MBT_CHECK(rel_lib_refuses("/dev/null", MB_STATUS_IO_ERROR, "/dev/null"), "/dev/null as a checkpoint");
        MBT_CHECK(rel_cli_refuses("/dev/null", "not a regular file"), "CLI: /dev/null as a checkpoint");
        MBT_CHECK(rel_cli_refuses("build", "not a regular file"), "CLI: a directory as a checkpoint");
        MBT_CHECK(rel_lib_refuses("build/no_such_dir/m.bin", MB_STATUS_IO_ERROR, "No such file"), "a path in a missing folder");
        MBT_CHECK(rel_cli_refuses("build/no_such_dir/m.bin", "No such file"), "CLI: a path in a missing folder");
        MBT_CHECK(rel_lib_refuses("build/t_rel_model.bin/x", MB_STATUS_IO_ERROR, "Not a directory"), "a path through a file");
        MBT_CHECK(rel_cli_refuses("", "cannot open"), "CLI: an empty path");
        if (geteuid() != 0) {
            rel_write_file(bad, model, nm);
            chmod(bad, 0);
            MBT_CHECK(rel_lib_refuses(bad, MB_STATUS_IO_ERROR, "Permission denied"), "an unreadable file (mode 000)");
            MBT_CHECK(rel_cli_refuses(bad, "Permission denied"), "CLI: an unreadable file (mode 000)");
            chmod(bad, 0644);
        } else {
            rel_skip("mode-000 checkpoint", "running as root, which reads it anyway; a path in a missing folder is tested instead");
        }
    }
    free(b);
    free(model);
    free(state);
    remove(bad);
    remove(model_path);
    remove(state_path);
    remove("build/t_rel_x.bin");
}

/* ----------------------------------------------------------- disk errors */
/* A full or read-only disk: the save fails with a clear message and the
   previous checkpoint stays, bit for bit. */

/* Saves model m over path (which holds keep_bytes); must fail with needle
   and leave path unchanged and loadable. */
static void rel_save_must_fail(const char *what, const mb_model *m, const char *path, const unsigned char *keep, size_t keep_n,
                               const char *needle) {
    size_t n2;
    unsigned char *now;
    mb_model *back = NULL;
    mb_status s = mb_model_save(m, path);
    MBT_CHECK(s == MB_STATUS_IO_ERROR && strstr(mb_last_error(), needle) && strstr(mb_last_error(), path),
              "%s: the save must fail naming the file and '%s': status %s, '%s'", what, needle, mb_status_string(s), mb_last_error());
    now = rel_read_file(path, &n2);
    MBT_CHECK(now && n2 == keep_n && !memcmp(now, keep, keep_n), "%s: the previous checkpoint must be unchanged", what);
    MBT_CHECK(mb_model_load(&back, path) == MB_STATUS_OK, "%s: the previous checkpoint must load: %s", what, mb_last_error());
    mb_model_free(back);
    free(now);
}

static void test_disk_errors(void) {
    const char *dir = "build/t_mnt", *path = "build/t_mnt/m.bin";
    const char *cli = "./mambabyte train --data build/t_text.txt --d-model 8 --n-layer 2 --d-state 4 --d-conv 3 --batch 2 --ctx 32 "
                      "--steps 2 --eval-chars 0 --threads 1";
    char cmd[1024];
    mb_config c = tiny_config(); /* 35 KB: one fits in 64 KB, two do not */
    mb_model *m;
    unsigned char *keep;
    size_t keep_n;
    int rc;
    mb_model_create(&m, &c, 21);

    /* CLI under `ulimit -f` (the library-level RLIMIT_FSIZE case is in
       test_train.c): exit 1 with a message, the old checkpoint unchanged */
    rc = mbt_run("./mambabyte train --data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 --batch 2 --ctx 32 --steps 2 "
                 "--eval-chars 0 --threads 1 --out build/t_fsize.bin > build/t_fsize.out 2>&1");
    MBT_CHECK(rc == 0, "first run for the ulimit test: exit %d", rc);
    keep = rel_read_file("build/t_fsize.bin", &keep_n);
    rc = mbt_run("sh -c 'ulimit -f 40 && exec ./mambabyte train --data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 "
                 "--batch 2 --ctx 32 --steps 3 --eval-chars 0 --threads 1 --out build/t_fsize.bin' > build/t_fsize.out 2>&1");
    {
        size_t n2;
        unsigned char *now = rel_read_file("build/t_fsize.bin", &n2);
        MBT_CHECK(rc == 1 && mbt_file_contains("build/t_fsize.out", "build/t_fsize.bin") && mbt_file_contains("build/t_fsize.out", "intact"),
                  "train under ulimit -f must exit 1 with a message naming the file (exit %d%s); see build/t_fsize.out", rc,
                  rc == 128 + SIGXFSZ ? ": killed by SIGXFSZ, which the CLI must ignore" : "");
        MBT_CHECK(keep && now && n2 == keep_n && !memcmp(now, keep, keep_n), "ulimit -f: the previous checkpoint must be unchanged");
        MBT_CHECK(rel_count_glob("build/t_fsize.bin.tmp.*") == 0, "ulimit -f: the failed save must remove its temporary file");
        mbt_run("rm -f build/t_fsize.bin.tmp.*");
        free(now);
    }
    free(keep);
    remove("build/t_fsize.bin");

    /* a read-only folder by permissions: only meaningful when not root */
    if (geteuid() != 0) {
        const char *ro = "build/t_ro_dir", *rp = "build/t_ro_dir/m.bin";
        mkdir(ro, 0755);
        chmod(ro, 0755);
        mb_model_save(m, rp);
        keep = rel_read_file(rp, &keep_n);
        chmod(ro, 0555);
        mb_model_params(m)[0] += 1.0f;
        rel_save_must_fail("read-only folder (mode 555)", m, rp, keep, keep_n, "Permission denied");
        chmod(ro, 0755);
        free(keep);
        remove(rp);
        rmdir(ro);
    } else {
        rel_skip("read-only folder by mode 555", "running as root, which writes there anyway; a read-only mount is used instead");
    }

    /* a tiny tmpfs (disk full) that is then remounted read-only: needs
       mount permission */
    mbt_run("umount build/t_mnt > /dev/null 2>&1"); /* a previous run that died half way */
    mkdir(dir, 0755);
    if (geteuid() != 0) {
        rel_skip("full and read-only tmpfs", "mount needs root");
    } else if (mbt_run("mount -t tmpfs -o size=64k,mode=0755 mb_test_tmpfs build/t_mnt > build/t_mnt.out 2>&1") != 0) {
        char why[300];
        FILE *f = fopen("build/t_mnt.out", "r");
        size_t got = f ? fread(why, 1, sizeof why - 1, f) : 0;
        why[got] = 0;
        if (got && why[got - 1] == '\n') why[got - 1] = 0;
        if (f) fclose(f);
        rel_skip("full and read-only tmpfs", got ? why : "mount failed");
    } else {
        MBT_CHECK(mb_model_save(m, path) == MB_STATUS_OK, "the first save into the 64 KB tmpfs: %s", mb_last_error());
        keep = rel_read_file(path, &keep_n);
        mb_model_params(m)[0] += 1.0f;
        rel_save_must_fail("disk full (64 KB tmpfs)", m, path, keep, keep_n, "No space left");
        MBT_CHECK(rel_count_glob("build/t_mnt/*.tmp.*") == 0, "disk full: the failed save must remove its temporary file");
        free(keep);

        /* the CLI on a full disk: a checkpoint with training state (43 KB) */
        remove(path);
        snprintf(cmd, sizeof cmd, "%s --out %s > build/t_mnt_cli.out 2>&1", cli, path);
        MBT_CHECK(mbt_run(cmd) == 0, "CLI: the first save into the tmpfs");
        keep = rel_read_file(path, &keep_n);
        snprintf(cmd, sizeof cmd, "%s --steps 3 --out %s > build/t_mnt_cli.out 2>&1", cli, path);
        rc = mbt_run(cmd);
        MBT_CHECK(rc == 1 && mbt_file_contains("build/t_mnt_cli.out", "No space left") && mbt_file_contains("build/t_mnt_cli.out", "intact"),
                  "CLI on a full disk: exit %d, see build/t_mnt_cli.out", rc);
        {
            size_t n2;
            unsigned char *now = rel_read_file(path, &n2);
            MBT_CHECK(keep && now && n2 == keep_n && !memcmp(now, keep, keep_n), "CLI on a full disk: the previous checkpoint must be unchanged");
            free(now);
        }
        free(keep);

        /* read-only */
        if (mbt_run("mount -o remount,ro build/t_mnt > build/t_mnt.out 2>&1") == 0) {
            keep = rel_read_file(path, &keep_n);
            rel_save_must_fail("read-only mount (library)", m, path, keep, keep_n, "Read-only file system");
            snprintf(cmd, sizeof cmd, "%s --steps 3 --out %s > build/t_mnt_cli.out 2>&1", cli, path);
            rc = mbt_run(cmd);
            MBT_CHECK(rc == 1 && mbt_file_contains("build/t_mnt_cli.out", "Read-only file system") &&
                      mbt_file_contains("build/t_mnt_cli.out", path), "CLI on a read-only mount: exit %d, see build/t_mnt_cli.out", rc);
            {
                size_t n2;
                unsigned char *now = rel_read_file(path, &n2);
                MBT_CHECK(keep && now && n2 == keep_n && !memcmp(now, keep, keep_n), "CLI on a read-only mount: the checkpoint must be unchanged");
                free(now);
            }
            free(keep);
        } else {
            rel_skip("read-only remount", "mount -o remount,ro failed");
        }
        if (mbt_run("umount build/t_mnt > /dev/null 2>&1") != 0) printf("reliability: note: could not unmount build/t_mnt\n");
    }
    rmdir(dir);
    mb_model_free(m);
}

/* ------------------------------------------------------ 64-bit offsets */
/* A sparse file of 4600 MiB (no disk) with text at its start, at the start
   of its last 5% (beyond 2^32: where the CLI's held-out evaluation starts)
   and at its very end. */
#define REL_SPARSE_SIZE ((int64_t)4600 << 20)

static void test_large_file(void) {
    const char *path = "build/t_sparse.txt";
    static const char head[] = "the start of a very large and mostly empty file. ";
    static const char tail_text[] = "beyond four gibibytes the bytes are still text, and the model reads them. ";
    static const char end_text[] = "the very last bytes of the file: 0123456789";
    const int64_t tail_at = REL_SPARSE_SIZE - REL_SPARSE_SIZE / 20, end_at = REL_SPARSE_SIZE - (int64_t)(sizeof end_text - 1);
    struct stat st;
    int fd, ok;
    mb_mapped_file f;
    char cmd[1024];
    int rc;
    remove(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { rel_skip("4 GiB sparse file", strerror(errno)); return; }
    ok = ftruncate(fd, (off_t)REL_SPARSE_SIZE) == 0;
    if (!ok) {
        rel_skip("4 GiB sparse file", strerror(errno));
        close(fd);
        remove(path);
        return;
    }
    ok = pwrite(fd, head, sizeof head - 1, 0) == (ssize_t)(sizeof head - 1) &&
         pwrite(fd, tail_text, sizeof tail_text - 1, (off_t)tail_at) == (ssize_t)(sizeof tail_text - 1) &&
         pwrite(fd, end_text, sizeof end_text - 1, (off_t)end_at) == (ssize_t)(sizeof end_text - 1);
    close(fd);
    if (!ok || stat(path, &st) != 0 || (int64_t)st.st_size != REL_SPARSE_SIZE || (int64_t)st.st_blocks * 512 > ((int64_t)64 << 20)) {
        rel_skip("4 GiB sparse file", "the filesystem refused it or does not make it sparse");
        remove(path);
        return;
    }
    MBT_CHECK(tail_at > ((int64_t)1 << 32), "the held-out part must start beyond 2^32");

    /* library: the mapping and the sampler address bytes beyond 2^32 */
    if (mb_map_file(&f, path) != MB_STATUS_OK) {
        MBT_CHECK(0, "mb_map_file on a 4.5 GiB file: %s", mb_last_error());
    } else {
        mb_batcher s;
        uint8_t in[64];
        int32_t tg[64];
        int T = (int)(sizeof end_text - 2), t, good = 1;
        mb_eval_result ev;
        mb_config c = tiny_config();
        mb_model *m;
        MBT_CHECK(f.size == REL_SPARSE_SIZE, "mapped size %lld", (long long)f.size);
        MBT_CHECK(!memcmp(f.data + end_at, end_text, sizeof end_text - 1) && !memcmp(f.data + tail_at, tail_text, sizeof tail_text - 1),
                  "the mapping must show the text written beyond 2^32");
        mb_batcher_init(&s, f.data, f.size, 1, 1);
        s.pos = end_at; /* the last window of the file */
        MBT_CHECK(mb_batcher_next(&s, in, tg, 1, T) == MB_STATUS_OK, "sampler near the end: %s", mb_last_error());
        for (t = 0; t < T; t++) good &= in[t] == (uint8_t)end_text[t] && tg[t] == (uint8_t)end_text[t + 1];
        MBT_CHECK(good && s.pos == end_at + T, "a sequential window at offset %lld must return the bytes written there", (long long)end_at);
        mb_batcher_init(&s, f.data, f.size, 99, 0);
        for (t = 0, good = 1; t < 200; t++) good &= mb_batcher_next(&s, in, tg, 1, 32) == MB_STATUS_OK;
        MBT_CHECK(good, "random windows over 4.5 GiB");
        mb_model_create(&m, &c, 2);
        MBT_CHECK(mb_eval_text(m, f.data + tail_at, f.size - tail_at, (int64_t)sizeof tail_text - 1, &ev, NULL, NULL) == MB_STATUS_OK &&
                  ev.chars == (int64_t)sizeof tail_text - 1, "eval of the text beyond 2^32");
        mb_model_free(m);
        mb_unmap_file(&f);
    }

    /* CLI: train 2 steps on it with a small eval file, then with the
       held-out 5% (which starts beyond 2^32), and evaluate on it */
    rc = mbt_run("./mambabyte train --data build/t_sparse.txt --eval-data build/t_text.txt --d-model 16 --n-layer 1 --d-state 4 "
                 "--batch 2 --ctx 64 --steps 2 --eval-chars 100 --threads 2 --out build/t_sparse.bin > build/t_sparse.out 2>&1");
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_sparse.out", "4823449600 bytes") && mbt_file_contains("build/t_sparse.out", "char accuracy"),
              "train on a 4.5 GiB sparse file with --eval-data: exit %d, see build/t_sparse.out", rc);
    snprintf(cmd, sizeof cmd, "./mambabyte train --data build/t_sparse.txt --d-model 16 --n-layer 1 --d-state 4 --batch 2 --ctx 64 "
             "--steps 2 --eval-chars %d --threads 2 --out build/t_sparse.bin > build/t_sparse.out 2>&1", (int)sizeof tail_text - 1);
    rc = mbt_run(cmd);
    snprintf(cmd, sizeof cmd, "held-out 5%%: %d chars, %d bytes", (int)sizeof tail_text - 1, (int)sizeof tail_text - 1);
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_sparse.out", cmd),
              "train on a 4.5 GiB sparse file, held-out eval beyond 2^32: exit %d, want '%s', see build/t_sparse.out", rc, cmd);
    {   /* the CLI's held-out accuracy is the library's on the text written there */
        mb_model *m = NULL;
        mb_eval_result ev;
        char want[64];
        if (mb_model_load(&m, "build/t_sparse.bin") == MB_STATUS_OK &&
            mb_eval_text(m, (const uint8_t *)tail_text, (int64_t)sizeof tail_text - 1, -1, &ev, NULL, NULL) == MB_STATUS_OK) {
            snprintf(want, sizeof want, "char accuracy  %.4f", (double)ev.chars_correct / (double)ev.chars);
            MBT_CHECK(mbt_file_contains("build/t_sparse.out", want), "the held-out evaluation must read the text beyond 2^32 ('%s')", want);
        } else {
            MBT_CHECK(0, "cannot load build/t_sparse.bin: %s", mb_last_error());
        }
        mb_model_free(m);
    }
    snprintf(cmd, sizeof cmd, "./mambabyte eval --model build/t_sparse.bin --data %s --chars 100 > build/t_sparse.out 2>&1", path);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_sparse.out", "100 chars"), "eval on the sparse file: exit %d", rc);
    remove(path);
    remove("build/t_sparse.bin");
}

/* -------------------------------------------------------- NaN injection */
static void test_nan_guard_library(void) {
    enum { LEN = 4000 };
    mb_config c = tiny_config();
    mb_train_settings s = small_settings();
    mb_model *a, *b;
    mb_trainer ta, tb;
    mb_step_result ra, rb;
    uint8_t text[LEN];
    float *p0, *m0, *v0;
    int64_t n, k;
    int all_skipped = 1, unchanged;
    random_bytes(text, NULL, LEN, 77);
    s.batch = 2; s.ctx = 32;
    mb_model_create(&a, &c, 9);
    mb_model_create(&b, &c, 9);
    n = mb_model_num_params(a);
    mb_trainer_init(&ta, a, &s, text, LEN, NULL);
    mb_trainer_init(&tb, b, &s, text, LEN, NULL);
    for (k = 0; k < 3; k++) {
        mb_trainer_step(&ta, 1e-3, &ra);
        mb_trainer_step(&tb, 1e-3, &rb);
    }
    p0 = (float *)malloc(4 * (size_t)n);
    m0 = (float *)malloc(4 * (size_t)n);
    v0 = (float *)malloc(4 * (size_t)n);
    memcpy(p0, mb_model_params(a), 4 * (size_t)n);
    memcpy(m0, ta.st.adam_m, 4 * (size_t)n);
    memcpy(v0, ta.st.adam_v, 4 * (size_t)n);

    ta.inject_nonfinite_step = 3; /* 0-based: this step */
    mb_trainer_step(&ta, 1e-3, &ra);
    mb_trainer_step(&tb, 1e-3, &rb);
    MBT_CHECK(ra.applied == 0 && !isfinite(ra.grad_norm), "a poisoned step must be reported as skipped (applied %d, norm %g)", ra.applied,
              ra.grad_norm);
    MBT_CHECK(!memcmp(mb_model_params(a), p0, 4 * (size_t)n) && !memcmp(ta.st.adam_m, m0, 4 * (size_t)n) &&
              !memcmp(ta.st.adam_v, v0, 4 * (size_t)n), "a skipped step must leave parameters and moments bit-identical");
    MBT_CHECK(ta.st.step == 4 && ta.batcher.rng == tb.batcher.rng && rb.applied == 1 &&
              memcmp(mb_model_params(b), p0, 4 * (size_t)n) != 0,
              "a skipped step still advances the step count and the data (step %lld)", (long long)ta.st.step);

    /* ten in a row: nothing changes; the next clean step applies */
    for (k = 0; k < 10; k++) {
        ta.inject_nonfinite_step = ta.st.step;
        mb_trainer_step(&ta, 1e-3, &ra);
        all_skipped &= ra.applied == 0;
    }
    unchanged = !memcmp(mb_model_params(a), p0, 4 * (size_t)n);
    MBT_CHECK(all_skipped && unchanged && ta.st.step == 14, "10 poisoned steps in a row: all skipped, parameters unchanged");
    mb_trainer_step(&ta, 1e-3, &ra);
    MBT_CHECK(ra.applied == 1 && memcmp(mb_model_params(a), p0, 4 * (size_t)n) != 0 && isfinite(mb_grad_norm(mb_model_params(a), n)),
              "after the poisoned run a clean step applies again");
    free(p0);
    free(m0);
    free(v0);
    mb_trainer_free(&ta);
    mb_trainer_free(&tb);
    mb_model_free(a);
    mb_model_free(b);
}

static void test_nan_guard_cli(void) {
    const char *flags = "--data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 --batch 2 --ctx 32 --eval-chars 0 --threads 1 --log-every 1";
    char cmd[1024];
    int rc;
    mb_model *m = NULL;
    mb_train_state st;
    int has = 0;
    remove("build/t_nan.csv");
    /* one poisoned step (0-based 3, the 4th step, logged as step 4) */
    snprintf(cmd, sizeof cmd, "MB_TEST_INJECT_NAN_STEP=3 ./mambabyte train %s --steps 8 --log build/t_nan.csv --out build/t_nan.bin "
             "> build/t_nan.out 2>&1", flags);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 0, "a run with one non-finite step must still finish: exit %d, see build/t_nan.out", rc);
    MBT_CHECK(mbt_file_contains("build/t_nan.out", "step 4: non-finite") && mbt_file_contains("build/t_nan.out", "update skipped"),
              "the skipped step must be reported: see build/t_nan.out");
    MBT_CHECK(mbt_file_contains("build/t_nan.csv", "\n3,") && !mbt_file_contains("build/t_nan.csv", "\n4,") && mbt_file_contains("build/t_nan.csv", "\n5,"),
              "the CSV must lack the skipped step's row");
    MBT_CHECK(mb_checkpoint_load("build/t_nan.bin", &m, &st, &has) == MB_STATUS_OK && has && st.step == 8,
              "the final checkpoint must load (so it is finite) at step 8: %s", mb_last_error());
    if (has) mb_train_state_free(&st);
    mb_model_free(m);
    m = NULL;
    has = 0;

    /* every step non-finite from 0-based step 6 on: stops after 10 in a row,
       exit 1, the last checkpoint (step 6) kept */
    remove("build/t_nan.bin");
    snprintf(cmd, sizeof cmd, "MB_TEST_INJECT_NAN_FROM=6 ./mambabyte train %s --steps 40 --save-every 2 --out build/t_nan.bin "
             "> build/t_nan.out 2>&1", flags);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 1 && mbt_file_contains("build/t_nan.out", "10 non-finite steps"),
              "10 non-finite steps in a row must stop the run with exit 1 (exit %d; the CLI must honour MB_TEST_INJECT_NAN_FROM)", rc);
    rc = mb_checkpoint_load("build/t_nan.bin", &m, &st, &has) == MB_STATUS_OK;
    MBT_CHECK(rc && has && st.step == 6, "the last good checkpoint (step 6) must be kept: %s %lld", rc ? "it is at step" : mb_last_error(),
              has ? (long long)st.step : -1LL);
    if (has) mb_train_state_free(&st);
    mb_model_free(m);
    remove("build/t_nan.bin");
}

static void test_reliability(void) {
    write_train_text("build/t_text.txt");
    test_nan_guard_library();
    test_checkpoint_robustness();
    test_nan_guard_cli();
    test_large_file();
    test_disk_errors();
    test_crash_resume();
}
