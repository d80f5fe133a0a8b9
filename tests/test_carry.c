/* test_carry.c - carried state across windows (--carry-state, truncated
   BPTT): the forward over w1 then w2 equals one over w1||w2; w2's
   gradients equal finite differences of w2's loss with the carried state
   held fixed; the trainer's carried state equals a stream fed the same
   bytes; resume is bit-identical.  Included by test.c. */

/* Row b, layer l of a carried state (mb_model_set_carry's layout): its scan state, then its conv window. */
static float *carry_ssm(float *st, const mb_config *c, int B, int l, int b) {
    int64_t Di = (int64_t)c->d_model * c->expand, S = c->d_state, K = c->d_conv;
    return st + (int64_t)l * B * (S + K) * Di + b * S * Di;
}
static float *carry_win(float *st, const mb_config *c, int B, int l, int b) {
    int64_t Di = (int64_t)c->d_model * c->expand, S = c->d_state, K = c->d_conv;
    return st + (int64_t)l * B * (S + K) * Di + B * S * Di + b * K * Di;
}

/* w1 then w2 with the state carried against w1||w2 in one window: logits
   bit for bit, and w2's loss against the one window's with w1's targets
   masked.  Then w2's gradients against central differences of w2's loss
   from the same (fixed) carried state: the truncated-BPTT gradient. */
static void test_carry_exact_config(mb_config c, int T1, int T2, int chunk, const char *name) {
    enum { B = 2 };
    const int T = T1 + T2;
    mb_model *m;
    mb_tensor_info ti[64];
    uint8_t x[B * 64], x1[B * 64], x2[B * 64];
    int32_t y[B * 64], ym[B * 64], y2[B * 64];
    int64_t cf = mb_carry_floats(&c, B), i, n;
    float *st = (float *)calloc((size_t)cf, sizeof(float)), *st1 = (float *)malloc((size_t)cf * sizeof(float));
    float *whole = (float *)malloc((size_t)B * T * 256 * sizeof(float)), *g, *p, loss_m = 0, loss2 = 0;
    int b, t, same = 1, bad = 0, nt;
    MBT_CHECK(mb_model_create(&m, &c, 31) == MB_STATUS_OK, "%s: create", name);
    if (chunk) mb_model_set_scan_chunk(m, chunk);
    perturb_params(m, 32);
    random_bytes(x, y, B * T, 33);
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            int64_t j = (int64_t)b * T + t;
            ym[j] = t < T1 ? -100 : y[j];
            if (t < T1) x1[b * T1 + t] = x[j];
            else { x2[b * T2 + t - T1] = x[j]; y2[b * T2 + t - T1] = y[j]; }
        }
    mb_model_forward(m, x, ym, B, T, &loss_m);
    memcpy(whole, mb_model_logits(m), (size_t)B * T * 256 * sizeof(float));
    mb_model_set_carry(m, st);
    mb_model_forward(m, x1, NULL, B, T1, NULL);
    for (b = 0; b < B; b++) same &= !memcmp(mb_model_logits(m) + (int64_t)b * T1 * 256, whole + (int64_t)b * T * 256, (size_t)T1 * 256 * 4);
    memcpy(st1, st, (size_t)cf * sizeof(float)); /* the state between the windows */
    mb_model_zero_grad(m);
    mb_model_forward(m, x2, y2, B, T2, &loss2);
    for (b = 0; b < B; b++)
        same &= !memcmp(mb_model_logits(m) + (int64_t)b * T2 * 256, whole + ((int64_t)b * T + T1) * 256, (size_t)T2 * 256 * 4);
    MBT_CHECK(same, "%s: logits of w1 then w2 (state carried) differ from w1||w2 in one window", name);
    MBT_CHECK(fabs((double)loss2 - loss_m) <= 1e-6 * fabs((double)loss_m), "%s: w2's loss %.9g, the masked window's %.9g", name,
              loss2, loss_m);
    mb_model_backward(m);
    n = mb_model_num_params(m);
    g = (float *)malloc((size_t)n * sizeof(float));
    memcpy(g, mb_model_grads(m), (size_t)n * sizeof(float));
    p = mb_model_params(m);
    nt = mb_config_tensors(&c, ti);
    for (i = 0; i < nt; i++) { /* a random +-1 direction per tensor, as test_model_gradcheck */
        mbt_rng rng = {200 + (uint64_t)i};
        double analytic = 0.0, h = 1e-3, fp, fm;
        float lp, lm, *dir = (float *)malloc((size_t)ti[i].numel * sizeof(float));
        int64_t j, off = ti[i].offset;
        for (j = 0; j < ti[i].numel; j++) {
            dir[j] = (mbt_next(&rng) & 1) ? 1.0f : -1.0f;
            analytic += (double)g[off + j] * dir[j];
        }
        for (j = 0; j < ti[i].numel; j++) p[off + j] += (float)h * dir[j];
        memcpy(st, st1, (size_t)cf * sizeof(float));
        mb_model_forward(m, x2, y2, B, T2, &lp);
        for (j = 0; j < ti[i].numel; j++) p[off + j] -= 2 * (float)h * dir[j];
        memcpy(st, st1, (size_t)cf * sizeof(float));
        mb_model_forward(m, x2, y2, B, T2, &lm);
        for (j = 0; j < ti[i].numel; j++) p[off + j] += (float)h * dir[j];
        fp = lp; fm = lm;
        if (!(fabs((fp - fm) / (2 * h) - analytic) <= 2e-2 * fabs(analytic) + 2e-3)) {
            bad++;
            fprintf(stderr, "  carry gradcheck %s %s: finite difference %.6g, analytic %.6g\n", name, ti[i].name, (fp - fm) / (2 * h),
                    analytic);
        }
        free(dir);
    }
    MBT_CHECK(bad == 0, "%s: w2's gradient from the carried state fails the finite-difference check on %d of %d tensors", name, bad, nt);
    /* the same gradient is not the full one (through w1): the check above could fail */
    mb_model_set_carry(m, NULL);
    mb_model_zero_grad(m);
    mb_model_forward(m, x, ym, B, T, NULL);
    mb_model_backward(m);
    for (i = 0, same = 1; i < n; i++) same &= g[i] == mb_model_grads(m)[i];
    MBT_CHECK(!same, "%s: the truncated gradient should differ from the gradient through w1", name);
    free(g); free(st); free(st1); free(whole);
    mb_model_free(m);
}

static void test_carry_exact(void) {
    mb_config c = tiny_config(), r = tiny_config(), odd = tiny_config();
    r.norm = 1; /* RMSNorm */
    r.d_conv = 4;
    odd.d_model = 40; odd.d_state = 5; odd.d_conv = 3; odd.dt_rank = 3;
    test_carry_exact_config(c, 9, 11, 0, "tiny LayerNorm");
    test_carry_exact_config(c, 1, 7, 4, "tiny, w1 shorter than the conv window, chunk 4");
    test_carry_exact_config(r, 13, 6, 4, "RMSNorm d_conv 4, chunk 4");
    test_carry_exact_config(odd, 8, 8, 3, "odd widths, chunk 3");
}

/* A text of n bytes from a seed. */
static uint8_t *carry_text(int64_t n, uint64_t seed) {
    uint8_t *d = (uint8_t *)malloc((size_t)n);
    mbt_rng rng = {seed};
    int64_t i;
    for (i = 0; i < n; i++) d[i] = (uint8_t)("abcde fghij\n"[mbt_next(&rng) % 12]);
    return d;
}

static mb_train_settings carry_settings(void) {
    mb_train_settings s = mb_train_settings_default();
    s.batch = 2; s.ctx = 24; s.steps = 12; s.lr = 1e-2; s.grad_accum = 2; s.carry_state = 1;
    return s;
}

/* After each step a row's carried state is a stream's fed its window from
   the state before it, with the weights of the step's forward; a row that
   wraps starts from zero. */
static void test_carry_matches_stream(void) {
    mb_config c = tiny_config();
    mb_train_settings s = carry_settings();
    const int64_t size = 300, R = s.batch * s.grad_accum, B = s.batch, T = s.ctx;
    uint8_t *text = carry_text(size, 41);
    mb_model *m;
    mb_trainer tr;
    mb_step_result res;
    int64_t cf = mb_carry_floats(&c, R), step, r;
    float *before = (float *)malloc((size_t)cf * sizeof(float));
    int same = 1, wrapped = 0, l;
    mb_model_create(&m, &c, 42);
    MBT_CHECK(mb_trainer_init(&tr, m, &s, text, size, NULL) == MB_STATUS_OK, "carry trainer: %s", mb_last_error());
    for (step = 0; step < 12; step++) {
        mb_stream *sm;
        mb_stream_create(&sm, m); /* the weights this step's forward uses */
        memcpy(before, tr.st.carry, (size_t)cf * sizeof(float));
        mb_trainer_step(&tr, s.lr, &res);
        for (r = 0; r < R; r++) {
            int64_t mb = r / B, b = r % B, start = r * (size - T) / R, first = (size - T - 1 - start) / T + 1;
            int64_t pass = (size - T - 1) / T + 1, pos = step < first ? start + step * T : (step - first) % pass * T;
            float *blk = before + mb * mb_carry_floats(&c, B), *now = tr.st.carry + mb * mb_carry_floats(&c, B);
            int wrap = step >= first && pos == 0;
            wrapped += wrap;
            for (l = 0; l < c.n_layer; l++) { /* the stream starts from the row's state before the step */
                int64_t Di = (int64_t)c.d_model * c.expand;
                memcpy(sm->ssm_state + l * c.d_state * Di, carry_ssm(blk, &c, (int)B, l, (int)b), sizeof(float) * (size_t)(c.d_state * Di));
                memcpy(sm->conv_state + l * c.d_conv * Di, carry_win(blk, &c, (int)B, l, (int)b), sizeof(float) * (size_t)(c.d_conv * Di));
            }
            if (wrap) mb_stream_reset(sm);
            mb_stream_feed(sm, text + pos, T, NULL);
            for (l = 0; l < c.n_layer; l++) {
                int64_t Di = (int64_t)c.d_model * c.expand;
                same &= !memcmp(sm->ssm_state + l * c.d_state * Di, carry_ssm(now, &c, (int)B, l, (int)b), sizeof(float) * (size_t)(c.d_state * Di));
                same &= !memcmp(sm->conv_state + l * c.d_conv * Di, carry_win(now, &c, (int)B, l, (int)b), sizeof(float) * (size_t)(c.d_conv * Di));
            }
        }
        mb_stream_free(sm);
    }
    MBT_CHECK(same, "the carried state after a step must equal mb_stream_feed of the row's window from its state before");
    MBT_CHECK(wrapped > 0, "the rows should wrap around the 300-byte text within 12 steps");
    mb_trainer_free(&tr);
    mb_model_free(m);
    free(before);
    free(text);
}

/* 12 steps against 5, a save, a load and 7 more: parameters, moments and carried states bit for bit. */
static void test_carry_resume(void) {
    mb_config c = tiny_config();
    mb_train_settings s = carry_settings();
    const int64_t size = 300;
    uint8_t *text = carry_text(size, 51);
    mb_model *ma, *mb = NULL;
    mb_trainer ta, tb;
    mb_train_state ts;
    mb_step_result res;
    int64_t n, cf = mb_carry_floats(&c, s.batch * s.grad_accum), i;
    int has = 0, same;
    mb_model_create(&ma, &c, 52);
    mb_trainer_init(&ta, ma, &s, text, size, NULL);
    for (i = 0; i < 5; i++) mb_trainer_step(&ta, s.lr, &res);
    MBT_CHECK(mb_trainer_save(&ta, "build/t_carry.bin") == MB_STATUS_OK, "carry save: %s", mb_last_error());
    for (; i < 12; i++) mb_trainer_step(&ta, s.lr, &res);
    MBT_CHECK(mb_checkpoint_load("build/t_carry.bin", &mb, &ts, &has) == MB_STATUS_OK && has && ts.carry && ts.settings.carry_state,
              "carry load: %s", mb_last_error());
    if (!mb) return;
    MBT_CHECK(mb_trainer_init(&tb, mb, &ts.settings, text, size, &ts) == MB_STATUS_OK, "carry resume: %s", mb_last_error());
    for (i = 5; i < 12; i++) mb_trainer_step(&tb, s.lr, &res);
    n = mb_model_num_params(ma);
    same = !memcmp(mb_model_params(ma), mb_model_params(mb), 4 * (size_t)n) && !memcmp(ta.st.adam_m, tb.st.adam_m, 4 * (size_t)n) &&
           !memcmp(ta.st.carry, tb.st.carry, 4 * (size_t)cf);
    MBT_CHECK(same, "5 steps + save + load + 7 steps must equal 12 steps with --carry-state (parameters, moments, carried states)");
    {   /* without the flag the file holds no carried state: header [15] 0 */
        mb_train_settings p = s;
        mb_trainer tc;
        mb_model *mc = NULL;
        mb_train_state tcs;
        memset(&tcs, 0, sizeof tcs);
        p.carry_state = 0;
        mb_trainer_init(&tc, ma, &p, text, size, NULL);
        mb_trainer_step(&tc, p.lr, &res);
        MBT_CHECK(tc.st.carry == NULL && mb_trainer_save(&tc, "build/t_carry0.bin") == MB_STATUS_OK &&
                  mb_checkpoint_load("build/t_carry0.bin", &mc, &tcs, &has) == MB_STATUS_OK && !tcs.carry,
                  "a run without --carry-state saves and loads no carried state");
        mb_train_state_free(&tcs);
        mb_model_free(mc);
        mb_trainer_free(&tc);
    }
    mb_train_state_free(&ts);
    mb_trainer_free(&ta);
    mb_trainer_free(&tb);
    mb_model_free(ma);
    mb_model_free(mb);
    free(text);
}

static void test_carry(void) {
    test_carry_exact();
    test_carry_matches_stream();
    test_carry_resume();
}
