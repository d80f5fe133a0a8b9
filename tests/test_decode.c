/* test_decode.c - streams at bf16 and int8 (mb_stream_create_ex): the
   logits' error and each matrix kind's product error against float32 within
   the README's bounds, on random and on briefly trained weights, and feed ==
   steps bit for bit at each precision. */

/* Max and mean relative error of precision prec's logits against fp32's
   over T bytes of x: max |d| / max |l|, mean |d| / mean |l|, per step. */
static void decode_errors(const mb_model *m, int prec, const uint8_t *x, int T, double *maxrel, double *meanrel) {
    mb_stream *s0, *s1;
    double sd = 0, sl = 0;
    int t, v;
    *maxrel = 0;
    mb_stream_create(&s0, m);
    MBT_CHECK(mb_stream_create_ex(&s1, m, prec) == MB_STATUS_OK, "stream at precision %d", prec);
    for (t = 0; t < T; t++) {
        const float *a = mb_stream_step(s0, x[t]), *b = mb_stream_step(s1, x[t]);
        double md = 0, ml = 0;
        for (v = 0; v < 256; v++) {
            md = fabs(a[v] - b[v]) > md ? fabs(a[v] - b[v]) : md;
            ml = fabs(a[v]) > ml ? fabs(a[v]) : ml;
            sd += fabs(a[v] - b[v]);
            sl += fabs(a[v]);
        }
        *maxrel = md / ml > *maxrel ? md / ml : *maxrel;
    }
    *meanrel = sd / sl;
    mb_stream_free(s0);
    mb_stream_free(s1);
}

static void decode_check(const mb_model *m, const uint8_t *x, int T, const char *what, const double bound[2][2]) {
    const int precs[2] = {MB_PRECISION_BF16, MB_PRECISION_INT8};
    int i;
    for (i = 0; i < 2; i++) {
        double mx, mean;
        decode_errors(m, precs[i], x, T, &mx, &mean);
        printf("  %s %s: logits' relative error max %.2e mean %.2e\n", what, i ? "int8" : "bf16", mx, mean);
        MBT_CHECK(mx <= bound[i][0] && mean <= bound[i][1], "%s %s: max %.3g (bound %.3g) mean %.3g (bound %.3g)", what,
                  i ? "int8" : "bf16", mx, bound[i][0], mean, bound[i][1]);
        MBT_CHECK(mean > 0, "%s %s: the logits must differ from fp32's (the weights are rounded)", what, i ? "int8" : "bf16");
    }
}

/* Each matrix kind's product alone (every layer's, or the head) at bf16 and
   int8 against fp32's on the same 4 random input rows: max over rows of
   max |d| / max |y|, and sum |d| / sum |y|.  bound[kind][bf16, int8][max, mean]. */
static void decode_kinds(const mb_model *m, const char *what, const double bound[5][2][2]) {
    static const int fields[5] = {MB_TENSOR_IN_PROJ, MB_TENSOR_X_PROJ, MB_TENSOR_DT_W, MB_TENSOR_OUT_PROJ, MB_TENSOR_LM_HEAD};
    static const char *const names[5] = {"in_proj", "x_proj", "dt_proj", "out_proj", "head"};
    mb_stream *s[3];
    float x[4096], y[2][4096];
    mbt_rng rng = {11};
    int k, p, l, r, o;
    for (p = 0; p < 3; p++) mb_stream_create_ex(&s[p], m, p == 0 ? MB_PRECISION_FP32 : p == 1 ? MB_PRECISION_BF16 : MB_PRECISION_INT8);
    for (k = 0; k < 5; k++)
        for (p = 1; p < 3; p++) {
            double mx = 0, sd = 0, sy = 0;
            for (l = k == 4 ? -1 : 0; l < (k == 4 ? 0 : m->cfg.n_layer); l++) {
                const mb__packed *q = &s[0]->packed[mb__slot(l, fields[k])];
                MBT_CHECK(q->IC <= 4096 && q->OC <= 4096, "%s is %dx%d", names[k], q->OC, q->IC);
                for (r = 0; r < 4; r++) {
                    double md = 0, my = 0;
                    for (o = 0; o < q->IC; o++) x[o] = mbt_normal(&rng);
                    mb__stream_linear(s[0], l, fields[k], y[0], x, q->IC, 1);
                    mb__stream_linear(s[p], l, fields[k], y[1], x, q->IC, 1);
                    for (o = 0; o < q->OC; o++) {
                        double d = fabs((double)y[1][o] - y[0][o]);
                        md = d > md ? d : md;
                        my = fabs(y[0][o]) > my ? fabs(y[0][o]) : my;
                        sd += d;
                        sy += fabs(y[0][o]);
                    }
                    mx = md / my > mx ? md / my : mx;
                }
            }
            printf("  %s %-8s %s: relative error max %.2e mean %.2e\n", what, names[k], p == 1 ? "bf16" : "int8", mx, sd / sy);
            MBT_CHECK(mx <= bound[k][p - 1][0] && sd / sy <= bound[k][p - 1][1] && sd > 0, "%s %s %s: max %.3g (bound %.3g) mean %.3g (bound %.3g)",
                      what, names[k], p == 1 ? "bf16" : "int8", mx, bound[k][p - 1][0], sd / sy, bound[k][p - 1][1]);
        }
    for (p = 0; p < 3; p++) mb_stream_free(s[p]);
}

/* The precision's feed equals its steps bit for bit (both read each row with the same sums). */
static void decode_feed_matches_steps(const mb_model *m, const uint8_t *x, int T) {
    const int precs[3] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    float *lg = (float *)malloc((size_t)T * 256 * sizeof(float));
    int i, t, same;
    for (i = 0; i < 3; i++) {
        mb_stream *a, *b;
        mb_stream_create_ex(&a, m, precs[i]);
        mb_stream_create_ex(&b, m, precs[i]);
        MBT_CHECK(mb_stream_feed(a, x, T, lg) == MB_STATUS_OK, "feed");
        for (t = 0, same = 1; t < T; t++) same &= memcmp(mb_stream_step(b, x[t]), lg + (int64_t)t * 256, 1024) == 0;
        MBT_CHECK(same, "precision %d: feed's logits must equal the steps' bit for bit", precs[i]);
        mb_stream_free(a);
        mb_stream_free(b);
    }
    free(lg);
}

/* k streams stepped together (random subsets, one fed first) equal k
   separate streams bit for bit at each precision. */
static void decode_batched(const mb_model *m) {
    enum { K = 17 }; /* past two of the products' row tiles */
    const int precs[3] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    uint8_t bytes[K];
    int idx[K], i, j, t, n, same = 1;
    mbt_rng rng = {5};
    for (i = 0; i < 3; i++) {
        mb_streams *b;
        mb_stream *one[K];
        MBT_CHECK(mb_streams_create(&b, m, K, precs[i]) == MB_STATUS_OK, "streams");
        for (j = 0; j < K; j++) mb_stream_create_ex(&one[j], m, precs[i]);
        mb_streams_feed(b, 3, (const uint8_t *)"prefix", 6, NULL);
        mb_stream_feed(one[3], (const uint8_t *)"prefix", 6, NULL);
        for (t = 0; t < 12; t++) {
            for (j = 0, n = 0; j < K; j++)
                if (t == 0 || mbt_normal(&rng) > -0.3) idx[n] = j, bytes[n++] = (uint8_t)(97 + (j * 7 + t * 3) % 26);
            {
                const float *lg = mb_streams_step(b, idx, bytes, n);
                for (j = 0; j < n; j++) same &= memcmp(lg + j * 256, mb_stream_step(one[idx[j]], bytes[j]), 1024) == 0;
            }
        }
        MBT_CHECK(same, "precision %d: batched streams' logits must equal separate streams' bit for bit", precs[i]);
        for (j = 0; j < K; j++) mb_stream_free(one[j]);
        mb_streams_free(b);
    }
}

static void test_decode(void) {
    /* bounds: {max, mean} relative, bf16 then int8 (README, "Stream precision") */
    static const double random_bound[2][2] = {{1.2e-2, 8e-3}, {3e-2, 2e-2}}, trained_bound[2][2] = {{4e-3, 2e-3}, {2e-2, 4e-3}};
    /* per kind {bf16, int8} x {max, mean}, about 1.5x the larger of the two models' (README) */
    static const double kind_bound[5][2][2] = {{{4e-3, 2.5e-3}, {1e-2, 7e-3}},     /* in_proj */
                                               {{5.5e-3, 2.5e-3}, {1e-2, 6.5e-3}}, /* x_proj */
                                               {{3.5e-3, 2.5e-3}, {6e-3, 4.5e-3}}, /* dt_proj */
                                               {{3e-3, 2.5e-3}, {1.2e-2, 8e-3}},   /* out_proj */
                                               {{4.5e-3, 4.5e-3}, {1e-2, 9e-3}}};  /* head */
    mb_config c = mb_config_default();
    mb_model *m;
    mb_stream *s;
    uint8_t x[200];
    const char *text = "the quick brown fox jumps over the lazy dog; a stream reads every weight once per byte. ";
    int T = 64, i, step;
    c.d_model = 96;
    c.n_layer = 2;
    c.dt_rank = 6;
    for (i = 0; i < 200; i++) x[i] = (uint8_t)text[i % (int)strlen(text)];
    MBT_CHECK(mb_model_create(&m, &c, 7) == MB_STATUS_OK, "model");
    MBT_CHECK(mb_stream_create_ex(&s, m, MB_PRECISION_TF32) == MB_STATUS_INVALID_ARGUMENT && !s, "tf32 streams are refused");
    decode_check(m, x, T, "random weights", random_bound);
    decode_kinds(m, "random weights", kind_bound);
    decode_feed_matches_steps(m, x, 150);
    { /* a few dozen AdamW steps on the text: weights with structure, not only noise */
        float *am = (float *)calloc((size_t)mb_model_num_params(m), sizeof(float)), *av = (float *)calloc((size_t)mb_model_num_params(m), sizeof(float));
        int32_t y[128];
        float loss0 = 0, loss = 0;
        for (i = 0; i < 128; i++) y[i] = x[i + 1];
        for (step = 0; step < 40; step++) {
            mb_model_zero_grad(m);
            mb_model_forward(m, x, y, 1, 128, &loss);
            if (step == 0) loss0 = loss;
            mb_model_backward(m);
            mb_adamw_update(m, am, av, step + 1, 3e-3, 0.9, 0.95, 1e-8, 0.0);
        }
        MBT_CHECK(loss < 0.7f * loss0, "training must lower the loss (%.3f -> %.3f)", loss0, loss);
        free(am);
        free(av);
    }
    decode_check(m, x, T, "trained weights", trained_bound);
    decode_kinds(m, "trained weights", kind_bound);
    decode_feed_matches_steps(m, x, 150);
    decode_batched(m);
    { /* eval on a stream (reused: reset each time) equals eval from the model, field for field */
        mb_eval_result r0, r1;
        mb_stream_create_ex(&s, m, MB_PRECISION_INT8);
        mb_eval_text_ex(m, MB_PRECISION_INT8, x, 200, 150, &r0, NULL, NULL);
        mb_eval_stream(s, x, 200, 150, &r1, NULL, NULL);
        MBT_CHECK(mb_eval_stream(s, x, 200, 150, &r1, NULL, NULL) == MB_STATUS_OK && r0.chars == 150 && memcmp(&r0, &r1, sizeof r0) == 0,
                  "mb_eval_stream must equal mb_eval_text_ex (chars %lld)", (long long)r1.chars);
        mb_stream_free(s);
    }
    mb_model_free(m);
}
