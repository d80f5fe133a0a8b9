/* test_spec.c - speculative generation (mb_stream_generate_spec): greedy
   output and final state equal to mb_stream_generate's for every drafter,
   sampling's distribution equal to the target's, and bad drafts refused.
   Included by test.c after test_model.c (perturb_params, stream_state_equal). */

static mb_model *spec_model(int d_model, int n_layer, int d_state, uint64_t seed) {
    mb_config c = mb_config_default();
    mb_model *m;
    c.d_model = d_model; c.n_layer = n_layer; c.d_state = d_state; c.dt_rank = 2;
    mb_model_create(&m, &c, seed);
    perturb_params(m, seed + 1);
    return m;
}

typedef struct { int calls, stop_after; } spec_probe;
static int spec_on_byte(void *user, int b) {
    spec_probe *g = (spec_probe *)user;
    (void)b;
    return ++g->calls == g->stop_after;
}

/* Greedy: for each target, drafter (a smaller model, one whose logits are all
   zero so it always drafts 0x00 and never agrees, the target's own weights so
   it always agrees, prompt lookup), prompt and draft length: the bytes and the
   final state of plain generation, also when on_byte stops it early. */
static void test_spec_greedy(void) {
    static const char *prompts[] = {"", "a", "The cat sat on the mat. The cat sat on the", "abcabcabcabcabcab"};
    enum { N = 70 };
    mb_model *targets[2], *small = spec_model(16, 1, 4, 40), *zero = spec_model(16, 1, 4, 41);
    mb_stream *s, *ref, *ds;
    uint8_t want[N], got[N];
    int ti, di, pi, li, stops;
    memset(zero->w.norm_f_w, 0, sizeof(float) * (size_t)zero->cfg.d_model); /* logits 0: argmax 0x00 */
    targets[0] = spec_model(32, 2, 8, 50);
    targets[1] = spec_model(48, 3, 4, 60);
    for (ti = 0; ti < 2; ti++) {
        mb_stream_create(&s, targets[ti]);
        mb_stream_create(&ref, targets[ti]);
        for (di = 0; di < 4; di++) {
            mb_model *dm = di == 0 ? small : di == 1 ? zero : di == 2 ? targets[ti] : NULL;
            ds = NULL;
            if (dm) mb_stream_create(&ds, dm);
            for (pi = 0; pi < 4; pi++)
                for (li = 0; li < 3; li++) {
                    const uint8_t *p = (const uint8_t *)prompts[pi];
                    const int64_t pl = (int64_t)strlen(prompts[pi]);
                    mb_spec_options o;
                    uint64_t r1 = 1, r2 = 1;
                    int64_t made = -1, zeros = 0, i;
                    spec_probe g = {0, 23};
                    memset(&o, 0, sizeof o);
                    o.draft = ds;
                    o.draft_len = li == 0 ? 1 : li == 1 ? 3 : 0; /* 0: the default */
                    o.fixed = li == 1;
                    mb_stream_generate(ref, p, pl, N, 0.0, 0, &r2, want, NULL, NULL, NULL);
                    MBT_CHECK(mb_stream_generate_spec(s, p, pl, N, 0.0, 0, &r1, got, NULL, NULL, &made, &o) == MB_STATUS_OK && made == N,
                              "spec greedy t%d d%d p%d l%d: %s", ti, di, pi, li, mb_last_error());
                    MBT_CHECK(!memcmp(got, want, N) && r1 == 1, "spec greedy t%d d%d p%d l%d: bytes differ from plain generation", ti, di, pi, li);
                    MBT_CHECK(stream_state_equal(s, ref), "spec greedy t%d d%d p%d l%d: final state differs from plain's", ti, di, pi, li);
                    for (i = 0; i < N; i++) zeros += want[i] == 0;
                    MBT_CHECK(o.accepted <= o.drafted && o.rounds <= N && o.rounds + o.accepted >= N, /* a round gives accepted + 1 */
                              "spec greedy t%d d%d p%d l%d: %lld rounds + %lld accepted must cover %d bytes", ti, di, pi, li,
                              (long long)o.rounds, (long long)o.accepted, N);
                    if (di == 1 && zeros == 0) MBT_CHECK(o.accepted == 0, "a draft that always disagrees: %lld accepted", (long long)o.accepted);
                    if (di == 2) MBT_CHECK(o.accepted == o.drafted && o.drafted > 0, "the target as its own draft: %lld of %lld accepted",
                                           (long long)o.accepted, (long long)o.drafted);
                    if (li != 2) continue;
                    /* stopped by on_byte after 23 bytes: the state of plain generation stopped there */
                    for (stops = 0; stops < 2; stops++) {
                        spec_probe *gp = &g;
                        gp->calls = 0;
                        r1 = r2 = 1;
                        if (stops) mb_stream_generate(ref, p, pl, 23, 0.0, 0, &r2, want, NULL, NULL, NULL);
                        else mb_stream_generate(ref, p, pl, N, 0.0, 0, &r2, want, spec_on_byte, gp, NULL), gp->calls = 0;
                        mb_stream_generate_spec(s, p, pl, stops ? 23 : N, 0.0, 0, &r1, got, stops ? NULL : spec_on_byte, gp, &made, &o);
                        MBT_CHECK(made == 23 && !memcmp(got, want, 23) && stream_state_equal(s, ref),
                                  "spec greedy t%d d%d p%d: %s after 23 bytes: %lld made, state %s", ti, di, pi,
                                  stops ? "n" : "on_byte", (long long)made, stream_state_equal(s, ref) ? "equal" : "differs");
                    }
                }
            mb_stream_free(ds);
        }
        mb_stream_free(s);
        mb_stream_free(ref);
    }
    mb_model_free(targets[0]);
    mb_model_free(targets[1]);
    mb_model_free(small);
    mb_model_free(zero);
}

/* Sampling: the empirical joint distribution of the first two bytes over
   R seeded runs against the target's exact one (temperature 6, top-k 6:
   36 outcomes, none above 0.5).  Sampling error alone gives a total
   variation around 0.02 at R = 12000 (plain: 0.022); the bound is 0.05 (a
   residual drawn from p instead of max(0, p - q) gives 0.136), and the draft's own distribution
   is checked to be much farther than that, so a sampler that kept the
   draft's bytes would fail. */
static void test_spec_sampling(void) {
    enum { R = 12000 };
    static const uint8_t prompt[] = "xyzab xyzab xyz";
    const int64_t pl = (int64_t)sizeof prompt - 1;
    const double temp = 6.0, bound = 0.05; /* the perturbed models' logits are large: spread them */
    mb_model *tm = spec_model(32, 2, 8, 70), *dm = spec_model(16, 1, 4, 71);
    mb_stream *s, *ds, *br;
    static double exact[256 * 256], dexact[256 * 256], emp[256 * 256];
    float p1[256], p2[256];
    const float *lg;
    int x, y, di;
    mb_stream_create(&s, tm);
    mb_stream_create(&br, tm);
    mb_stream_create(&ds, dm);
    for (di = 0; di < 2; di++) { /* the exact joint of the target (di 0) and of the draft (di 1) */
        mb_stream *e = di ? ds : s, *b2 = di ? NULL : br;
        double *out = di ? dexact : exact;
        uint8_t last;
        mb_stream *tmp = NULL;
        if (di) mb_stream_create(&tmp, dm), b2 = tmp;
        mb__stream_prime(e, prompt, pl, &last);
        mb__sample_probs(p1, lg = mb_stream_step(e, last), temp, 6);
        for (x = 0; x < 256; x++) {
            if (p1[x] == 0.0f) continue;
            mb_stream_copy(b2, e);
            mb__sample_probs(p2, mb_stream_step(b2, (uint8_t)x), temp, 6);
            for (y = 0; y < 256; y++) out[x * 256 + y] = (double)p1[x] * p2[y];
        }
        mb_stream_free(tmp);
    }
    for (di = 0; di < 3; di++) { /* plain, the draft model, lookup */
        double tv = 0.0, tvd = 0.0;
        int64_t r, acc = 0, drafted = 0;
        mb_spec_options o;
        memset(emp, 0, sizeof emp);
        memset(&o, 0, sizeof o);
        o.draft = di == 1 ? ds : NULL;
        o.draft_len = 3;
        for (r = 0; r < R; r++) {
            uint8_t got[2];
            uint64_t rng = (uint64_t)r + 1;
            if (di == 0) mb_stream_generate(s, prompt, pl, 2, temp, 6, &rng, got, NULL, NULL, NULL);
            else mb_stream_generate_spec(s, prompt, pl, 2, temp, 6, &rng, got, NULL, NULL, NULL, &o), acc += o.accepted, drafted += o.drafted;
            emp[got[0] * 256 + got[1]] += 1.0 / R;
        }
        double top = 0.0;
        for (x = 0; x < 256 * 256; x++) tv += 0.5 * fabs(emp[x] - exact[x]), tvd += 0.5 * fabs(dexact[x] - exact[x]), top = fmax(top, exact[x]);
        MBT_CHECK(top < 0.5, "spec sampling: the target's two-byte distribution must be spread (largest %.3f)", top);
        MBT_CHECK(tv < bound, "spec sampling (%s): total variation %.4f from the target's distribution (bound %.2f)",
                  di == 0 ? "plain" : di == 1 ? "draft model" : "lookup", tv, bound);
        if (di == 1) MBT_CHECK(tvd > 4 * bound && acc > 0 && acc < drafted,
                               "spec sampling: the draft must differ from the target (tv %.3f) and be partly accepted (%lld of %lld)",
                               tvd, (long long)acc, (long long)drafted);
        if (di == 2) MBT_CHECK(drafted > 0, "spec sampling: lookup must draft from the repeated prompt");
    }
    (void)lg;
    mb_stream_free(s);
    mb_stream_free(br);
    mb_stream_free(ds);
    mb_model_free(tm);
    mb_model_free(dm);
}

/* Bad input: the library refuses a draft that is the target's own stream or
   a draft length past MB_SPEC_MAX_DRAFT; the CLI names a draft file that does
   not load (missing, another vocabulary size) and an unknown self-speculation precision. */
static void test_spec_errors(void) {
    mb_model *m = spec_model(16, 1, 4, 80);
    mb_stream *s;
    mb_spec_options o;
    uint64_t rng = 1;
    FILE *f;
    int32_t h[256];
    int rc, i;
    static const struct { const char *flags; int rc; const char *msg; } cli[] = {
        {"--draft build/t_spec_vocab.bin", 1, "--draft build/t_spec_vocab.bin: "},
        {"--draft build/t_spec_vocab.bin", 1, "vocab_size must be 256"},
        {"--draft build/no_such_draft.bin", 1, "no_such_draft.bin"},
        {"--draft self:int4", 2, "self-speculation is self:int8 or self:bf16"},
        {"--draft lookup --draft-len 65", 2, "--draft-len"},
    };
    mb_stream_create(&s, m);
    memset(&o, 0, sizeof o);
    o.draft = s;
    MBT_CHECK(mb_stream_generate_spec(s, NULL, 0, 5, 0.0, 0, &rng, NULL, NULL, NULL, NULL, &o) == MB_STATUS_INVALID_ARGUMENT &&
                  strstr(mb_last_error(), "draft model"), "spec: the target's own stream as draft must be refused: %s", mb_last_error());
    o.draft = NULL;
    o.draft_len = MB_SPEC_MAX_DRAFT + 1;
    MBT_CHECK(mb_stream_generate_spec(s, NULL, 0, 5, 0.0, 0, &rng, NULL, NULL, NULL, NULL, &o) == MB_STATUS_INVALID_ARGUMENT,
              "spec: a draft length past MB_SPEC_MAX_DRAFT must be refused");
    /* a checkpoint whose header says vocab 512 */
    mb_model_save(m, "build/t_spec.bin");
    mb_model_save(m, "build/t_spec_vocab.bin");
    f = fopen("build/t_spec_vocab.bin", "r+b");
    if (f && fread(h, sizeof h, 1, f) == 1) {
        h[2] = 512;
        fseek(f, 0, SEEK_SET);
        fwrite(h, sizeof h, 1, f);
    }
    if (f) fclose(f);
    for (i = 0; i < (int)(sizeof cli / sizeof cli[0]); i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "./mambabyte sample --model build/t_spec.bin --bytes 5 %s > build/t_spec_err.out 2>&1", cli[i].flags);
        rc = mbt_run(cmd);
        MBT_CHECK(rc == cli[i].rc && mbt_file_contains("build/t_spec_err.out", cli[i].msg), "`%s`: rc %d (want %d), no '%s'", cmd, rc,
                  cli[i].rc, cli[i].msg);
    }
    /* the CLI's greedy bytes: the same with and without a drafter */
    rc = mbt_run("./mambabyte sample --model build/t_spec.bin --prompt 'abab' --bytes 50 --temperature 0 > build/t_spec_a.out && "
                 "./mambabyte sample --model build/t_spec.bin --prompt 'abab' --bytes 50 --temperature 0 --draft lookup --draft-len 4 "
                 "> build/t_spec_b.out 2> build/t_spec_b.err && "
                 "./mambabyte sample --model build/t_spec.bin --prompt 'abab' --bytes 50 --temperature 0 --draft build/t_spec.bin "
                 "> build/t_spec_c.out 2>> build/t_spec_b.err && "
                 "./mambabyte sample --model build/t_spec.bin --prompt 'abab' --bytes 50 --temperature 0 --draft self:int8 "
                 "> build/t_spec_d.out 2>> build/t_spec_b.err && "
                 "./mambabyte sample --model build/t_spec.bin --prompt 'abab' --bytes 50 --temperature 0 --draft self:bf16 "
                 "> build/t_spec_e.out 2>> build/t_spec_b.err");
    MBT_CHECK(rc == 0 && mbt_files_equal("build/t_spec_a.out", "build/t_spec_b.out") && mbt_files_equal("build/t_spec_a.out", "build/t_spec_c.out") &&
                  mbt_files_equal("build/t_spec_a.out", "build/t_spec_d.out") && mbt_files_equal("build/t_spec_a.out", "build/t_spec_e.out") &&
                  mbt_file_contains("build/t_spec_b.err", "accepted per round") && mbt_file_contains("build/t_spec_b.err", "bytes/s"),
              "sample --draft: greedy output must equal plain sample's, with the statistics on stderr (rc %d)", rc);
    mb_stream_free(s);
    mb_model_free(m);
}

static void test_spec(void) {
    test_spec_greedy();
    test_spec_sampling();
    test_spec_errors();
}
