/* test_predict.c - the exact greedy character (mb_stream_predict_char,
   mb_stream_top_chars, mb_eval_text_exact): brute force over every valid
   UTF-8 character on random tiny models, the stream left as it was, the
   ASCII rule as a special case, and a trained model that predicts
   multi-byte characters.  Included by test.c. */

/* Every valid character's score from the stream's current state, by
   stepping copies with shared prefixes (about 17,700 steps); the scores
   are summed exactly as the search sums them.  Returns the number found. */
typedef struct { mb_char_score *all; int n; } mbt_chars;
static void mbt_add_char(mbt_chars *c, const uint8_t *b, int len, double logp) {
    mb_char_score *e = &c->all[c->n++];
    memset(e, 0, sizeof *e);
    memcpy(e->bytes, b, (size_t)len);
    e->len = len;
    e->logp = logp;
}
static double mbt_byte_logp(const mb__row *r, const float *logits, int b) {
    double lp = mb__row_logp(r, logits[b], 256);
    return lp != lp ? -INFINITY : lp;
}
/* level d stream holds the state after bytes[0..d); its logits are lg. */
static void mbt_enumerate(mbt_chars *c, mb_stream **lv, uint8_t *bytes, int d, int need, const float *lg, double logp,
                          int64_t *steps) {
    int lo = 0x80, hi = 0xBF, b;
    mb__row row = mb__row_stats(lg, 256);
    if (d == 1) {
        if (bytes[0] == 0xE0) lo = 0xA0;
        if (bytes[0] == 0xED) hi = 0x9F;
        if (bytes[0] == 0xF0) lo = 0x90;
        if (bytes[0] == 0xF4) hi = 0x8F;
    }
    for (b = lo; b <= hi; b++) {
        double lp = logp + mbt_byte_logp(&row, lg, b);
        bytes[d] = (uint8_t)b;
        if (d + 1 == need) { mbt_add_char(c, bytes, need, lp); continue; }
        {
            float next[256];
            mb_stream_copy(lv[d + 1], lv[d]);
            memcpy(next, mb_stream_step(lv[d + 1], (uint8_t)b), sizeof next);
            (*steps)++;
            mbt_enumerate(c, lv, bytes, d + 1, need, next, lp, steps);
        }
    }
}
static int64_t mbt_all_chars(mbt_chars *c, mb_stream **lv, const float *root) {
    uint8_t bytes[4];
    int b;
    int64_t steps = 0;
    mb__row row = mb__row_stats(root, 256);
    c->n = 0;
    for (b = 0; b < 128; b++) { bytes[0] = (uint8_t)b; mbt_add_char(c, bytes, 1, mbt_byte_logp(&row, root, b)); }
    for (b = 0xC2; b <= 0xF4; b++) {
        float lg[256];
        double lp = mbt_byte_logp(&row, root, b);
        bytes[0] = (uint8_t)b;
        mb_stream_copy(lv[1], lv[0]);
        memcpy(lg, mb_stream_step(lv[1], (uint8_t)b), sizeof lg);
        steps++;
        mbt_enumerate(c, lv, bytes, 1, b <= 0xDF ? 2 : b <= 0xEF ? 3 : 4, lg, lp, &steps);
    }
    return steps;
}
/* The documented order: higher score first; equal scores: ASCII by logit
   (then the smaller byte), else the smaller code point. */
static const float *mbt_root_for_sort;
static int mbt_cmp_chars(const void *pa, const void *pb) {
    const mb_char_score *a = (const mb_char_score *)pa, *b = (const mb_char_score *)pb;
    if (a->logp != b->logp) return a->logp > b->logp ? -1 : 1;
    if (a->len == 1 && b->len == 1) {
        float x = mbt_root_for_sort[a->bytes[0]], y = mbt_root_for_sort[b->bytes[0]];
        if (x != y) return x > y ? -1 : 1;
    }
    return memcmp(a->bytes, b->bytes, 4) < 0 ? -1 : memcmp(a->bytes, b->bytes, 4) > 0;
}

/* Moves the 8 best (in that order) to the front of c->all. */
static void mbt_top8(mbt_chars *c) {
    int i, j;
    for (i = 0; i < 8; i++)
        for (j = i + 1; j < c->n; j++)
            if (mbt_cmp_chars(&c->all[j], &c->all[i]) < 0) { mb_char_score t = c->all[i]; c->all[i] = c->all[j]; c->all[j] = t; }
}

/* A random tiny model whose embedding is scaled up, so its next-byte
   distributions are peaked, and (boost > 0) whose bytes >= 0x80 get about
   `boost` more logit, so that multi-byte characters often win. */
static mb_model *mbt_peaked_model(uint64_t seed, float scale, float boost) {
    mb_config c = mb_config_default();
    mb_model *m;
    const mb_tensor_info *ti;
    mb_tensor_info t[64];
    int64_t i;
    c.d_model = 8; c.n_layer = 1; c.d_state = 4; c.dt_rank = 0;
    if (mb_model_create(&m, &c, seed) != MB_STATUS_OK) return NULL;
    mb_config_tensors(mb_model_config(m), t);
    ti = &t[mb_tensor_index(mb_model_config(m), -1, MB_TENSOR_EMBEDDING)];
    for (i = 0; i < ti->numel; i++) mb_model_params(m)[ti->offset + i] *= scale;
    if (boost > 0) { /* the final norm's output is about its bias u: add boost * u / |u|^2 to the high bytes' rows */
        float *u = mb_model_params(m) + t[mb_tensor_index(mb_model_config(m), -1, MB_TENSOR_NORM_F_B)].offset;
        float *w = mb_model_params(m) + t[mb_tensor_index(mb_model_config(m), -1, MB_TENSOR_NORM_F_W)].offset;
        float *e = mb_model_params(m) + ti->offset;
        double uu = 0;
        int j, b;
        for (j = 0; j < c.d_model; j++) { u[j] = (float)(j % 2 ? 1.0 : -0.5); w[j] *= 0.3f; uu += (double)u[j] * u[j]; }
        for (b = 0x80; b < 256; b++)
            for (j = 0; j < c.d_model && (boost < 6 || b < 0xC0 || b >= 0xE0); j++) /* a larger boost skips the 2-byte leads */ e[b * c.d_model + j] += (float)(boost * u[j] / uu);
    }
    return m;
}

static void test_predict_brute_force(void) {
    static const char *prefix[] = {"", "caf", "Nara \xe5\xa5", "x\xf0\x9f"};
    mbt_chars c;
    int models = 0, multibyte_wins = 0, longest = 1, agree = 0, top_agree = 0, cases = 0, mi, pi;
    int64_t brute_steps = 0;
    c.all = (mb_char_score *)malloc(sizeof(mb_char_score) * 1200000);
    for (mi = 0; mi < 4; mi++) {
        static const float scale[4] = {1, 8, 6, 10}, boost[4] = {0, 0, 4, 8};
        mb_model *m = mbt_peaked_model(100 + (uint64_t)mi, scale[mi], boost[mi]);
        mb_stream *s, *lv[4];
        int l;
        if (!m) { MBT_CHECK(0, "model: %s", mb_last_error()); continue; }
        mb_stream_create(&s, m);
        for (l = 0; l < 4; l++) mb_stream_create(&lv[l], m);
        models++;
        for (pi = 0; pi < 4; pi++) {
            const char *p = prefix[pi];
            float root[256];
            const float *lg = mb_stream_step(s, 0x00);
            mb_char_score best, top[8];
            size_t k;
            mb_stream_reset(s);
            lg = mb_stream_step(s, 0x00);
            for (k = 0; k < strlen(p); k++) lg = mb_stream_step(s, (uint8_t)p[k]);
            memcpy(root, lg, sizeof root);
            mb_stream_copy(lv[0], s);
            brute_steps += mbt_all_chars(&c, lv, root);
            mbt_root_for_sort = root;
            mbt_top8(&c);
            cases++;
            MBT_CHECK(c.n == 1112064, "brute force enumerated %d characters, want 1112064", c.n);
            if (mb_stream_predict_char(s, lg, &best) != MB_STATUS_OK) { MBT_CHECK(0, "predict: %s", mb_last_error()); continue; }
            agree += best.len == c.all[0].len && !memcmp(best.bytes, c.all[0].bytes, (size_t)best.len) && best.logp == c.all[0].logp;
            multibyte_wins += c.all[0].len > 1;
            longest = c.all[0].len > longest ? c.all[0].len : longest;
            if (mb_stream_top_chars(s, lg, 8, top) == MB_STATUS_OK) {
                int i, ok = 1;
                for (i = 0; i < 8; i++) ok &= top[i].len == c.all[i].len && !memcmp(top[i].bytes, c.all[i].bytes, (size_t)top[i].len) &&
                                          top[i].logp == c.all[i].logp;
                top_agree += ok;
            }
            /* the caller's logits buffer and the state are as before */
            MBT_CHECK(memcmp(lg, root, sizeof root) == 0, "predict changed the stream's logits buffer");
            {
                float a[256];
                memcpy(a, mb_stream_step(s, 'e'), sizeof a);
                MBT_CHECK(memcmp(a, mb_stream_step(lv[0], 'e'), sizeof a) == 0, "predict changed the stream's state");
            }
        }
        for (l = 0; l < 4; l++) mb_stream_free(lv[l]);
        mb_stream_free(s);
        mb_model_free(m);
    }
    MBT_CHECK(agree == cases, "exact char: %d of %d cases agree with brute force (%lld brute-force steps)", agree, cases,
              (long long)brute_steps);
    MBT_CHECK(top_agree == cases, "top 8 chars: %d of %d cases agree with brute force", top_agree, cases);
    MBT_CHECK(multibyte_wins >= 3 && longest >= 3, "only %d of %d brute-force cases have a multi-byte winner (longest %d bytes): "
              "the test is too easy", multibyte_wins, cases, longest);
    free(c.all);
}

/* Ties: a constant row makes every byte equally likely; the answer is the
   smallest code point and, on an ASCII answer, the protocol's argmax. */
static void test_predict_ties_and_args(void) {
    mb_model *m = mbt_peaked_model(7, 1.0f, 0.0f);
    mb_stream *s;
    float flat[256], rnd[256];
    mb_char_score b, top[3];
    mbt_rng r = {5};
    int i, same = 1;
    if (!m) { MBT_CHECK(0, "model"); return; }
    mb_stream_create(&s, m);
    mb_stream_step(s, 0);
    for (i = 0; i < 256; i++) flat[i] = 0.0f;
    MBT_CHECK(mb_stream_predict_char(s, flat, &b) == MB_STATUS_OK && b.len == 1 && b.bytes[0] == 0, "flat row: U+0000");
    MBT_CHECK(mb_stream_top_chars(s, flat, 3, top) == MB_STATUS_OK && top[1].bytes[0] == 1 && top[2].bytes[0] == 2,
              "flat row: ties in code point order");
    flat[0xC3] = 50.0f; /* a lead that must be expanded: the answer is then the stream's own Ã-row argmax */
    MBT_CHECK(mb_stream_predict_char(s, flat, &b) == MB_STATUS_OK && b.len == 2 && b.bytes[0] == 0xC3, "peaked lead 0xC3 wins");
    for (i = 0; i < 2000 && same; i++) { /* ASCII answers are mb__argmax over 0..127 */
        int j;
        for (j = 0; j < 256; j++) rnd[j] = (float)(mbt_uniform(&r) * 4.0) - (j >= 128 ? 3.0f : 0.0f);
        if (i % 7 == 0) rnd[3] = rnd[90] = 9.0f; /* equal maxima: the first */
        mb_stream_predict_char(s, rnd, &b);
        if (b.len == 1) same &= b.bytes[0] == mb__argmax(rnd, 128);
    }
    MBT_CHECK(same, "an ASCII answer differs from the protocol's argmax (row %d)", i);
    MBT_CHECK(mb_stream_top_chars(s, flat, 0, top) == MB_STATUS_INVALID_ARGUMENT, "k = 0 is refused");
    mb_stream_free(s);
    mb_model_free(m);
}

/* A model trained on text full of é, – and 奈 predicts them: the exact rule
   scores them, the ASCII rule cannot; both rules agree except where the
   exact one predicts a multi-byte character; base equals mb_eval_text. */
static void test_predict_trained_multibyte(void) {
    static const char *unit = "caf\xc3\xa9 au lait \xe2\x80\x93 Nara \xe5\xa5\x88\xe8\x89\xaf; ";
    size_t ul = strlen(unit);
    int64_t len = 120 * (int64_t)ul, i;
    uint8_t *text = (uint8_t *)malloc((size_t)len);
    mb_config c = mb_config_default();
    mb_train_settings set = mb_train_settings_default();
    mb_model *m;
    mb_trainer tr;
    mb_step_result r;
    mb_eval_result ev;
    mb_eval_exact_result ex;
    mb_stream *s;
    const float *lg;
    int64_t pos, differ_ascii = 0, mismatch = 0;
    double t0 = mb_clock_seconds();
    for (i = 0; i < len; i++) text[i] = (uint8_t)unit[i % (int64_t)ul];
    c.d_model = 32; c.n_layer = 2; c.d_state = 8; c.dt_rank = 0;
    set.batch = 4; set.ctx = 64; set.steps = 90; set.warmup = 8; set.lr = 1e-2; set.seed = 9;
    mb_model_create(&m, &c, 21);
    MBT_CHECK(mb_trainer_init(&tr, m, &set, text, len, NULL) == MB_STATUS_OK, "trainer: %s", mb_last_error());
    for (i = 0; i < set.steps; i++) mb_trainer_step(&tr, mb_lr_at_step(set.lr, i, set.warmup, set.steps), &r);
    MBT_CHECK(mb_eval_text(m, text, len, 600, &ev, NULL, NULL) == MB_STATUS_OK, "eval");
    MBT_CHECK(mb_eval_text_exact(m, text, len, 600, &ex, NULL, NULL) == MB_STATUS_OK, "eval exact: %s", mb_last_error());
    MBT_CHECK(ex.base.chars == ev.chars && ex.base.chars_correct == ev.chars_correct && ex.base.bytes == ev.bytes &&
                  ex.base.bytes_correct == ev.bytes_correct && ex.base.nll_bits == ev.nll_bits,
              "mb_eval_text_exact's base differs from mb_eval_text (%lld vs %lld correct)", (long long)ex.base.chars_correct,
              (long long)ev.chars_correct);
    MBT_CHECK(ex.exact_multibyte_correct >= 30 && ex.exact_correct > ex.base.chars_correct,
              "exact rule: %lld right (%lld multi-byte right of %lld), ASCII rule %lld of %lld chars (loss %.3f)",
              (long long)ex.exact_correct, (long long)ex.exact_multibyte_correct, (long long)ex.exact_multibyte,
              (long long)ex.base.chars_correct, (long long)ex.base.chars, r.loss);
    /* position by position: the rules differ only where the exact one is multi-byte */
    mb_stream_create(&s, m);
    lg = mb_stream_step(s, 0);
    for (pos = 0, i = 0; i < 600; i++) {
        int k = mb_utf8_char_len(text + pos, len - pos), j;
        mb_char_score b;
        mb_stream_predict_char(s, lg, &b);
        if (b.len == 1) mismatch += b.bytes[0] != mb__argmax(lg, 128);
        else differ_ascii++;
        for (j = 0; j < k; j++) lg = mb_stream_step(s, text[pos + j]);
        pos += k;
    }
    MBT_CHECK(mismatch == 0 && differ_ascii == ex.exact_multibyte, "%lld ASCII answers differ from the ASCII rule; %lld vs %lld multi-byte",
              (long long)mismatch, (long long)differ_ascii, (long long)ex.exact_multibyte);
    printf("predict: trained on é – 奈 text (%.1f s): ASCII rule %.3f, exact rule %.3f (%lld multi-byte right), %lld search steps\n",
           mb_clock_seconds() - t0, (double)ex.base.chars_correct / (double)ex.base.chars,
           (double)ex.exact_correct / (double)ex.base.chars, (long long)ex.exact_multibyte_correct, (long long)ex.search_steps);
    /* the CLI reports both rules with the library's numbers */
    {
        FILE *f = fopen("build/predict_text.txt", "wb");
        char want[64], *json;
        size_t n;
        if (f) { fwrite(text, 1, (size_t)len, f); fclose(f); }
        MBT_CHECK(mb_model_save(m, "build/predict_model.bin") == MB_STATUS_OK, "save: %s", mb_last_error());
        MBT_CHECK(mbt_run("./mambabyte eval --model build/predict_model.bin --data build/predict_text.txt --chars 600 --predict exact "
                          "--json build/predict_eval.json > build/predict_eval.out 2>&1") == 0, "eval --predict exact failed");
        json = mbt_slurp("build/predict_eval.json", &n);
        snprintf(want, sizeof want, "\"exact_char_accuracy\": %.6f", (double)ex.exact_correct / (double)ex.base.chars);
        MBT_CHECK(json && strstr(json, want), "eval --predict exact JSON lacks %s", want);
        MBT_CHECK(mbt_file_contains("build/predict_eval.out", "char accuracy (ASCII rule)"), "eval --predict exact output");
        free(json);
    }
    mb_stream_free(s);
    mb_trainer_free(&tr);
    mb_model_free(m);
    free(text);
}

static void test_predict(void) {
    double t0 = mb_clock_seconds();
    test_predict_ties_and_args();
    test_predict_brute_force();
    printf("predict: brute force %.1f s\n", mb_clock_seconds() - t0);
    test_predict_trained_multibyte();
}
