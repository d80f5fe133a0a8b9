/* test_model.c - the CPU model: PyTorch parity, finite-difference gradients,
   the chunked scan against a float64 step-by-step recurrence, streaming
   against the batch forward, initial loss, checkpoints.  Included by test.c. */

static mb_config tiny_config(void) {
    mb_config c = mb_config_default();
    c.d_model = 16; c.n_layer = 2; c.d_state = 4; c.d_conv = 3; c.expand = 2; c.dt_rank = 2;
    return c;
}

/* Non-trivial weights on top of the default init: random A_log, D, biases. */
static void perturb_params(mb_model *m, uint64_t seed) {
    mbt_rng rng = {seed};
    mb_tensor_info t[64];
    const mb_config *c = mb_model_config(m);
    int n = mb_config_tensors(c, t), i;
    float *p = mb_model_params(m);
    for (i = 0; i < n; i++) {
        int64_t j;
        int vector = t[i].ndim == 1 || strstr(t[i].name, "A_log") != NULL;
        for (j = 0; j < t[i].numel; j++) {
            float *x = p + t[i].offset + j;
            if (strstr(t[i].name, "embedding")) *x = (float)(0.5 * mbt_normal(&rng));
            else if (vector) *x += (float)(0.2 * mbt_normal(&rng));
            else *x *= (float)(1.0 + 0.3 * mbt_normal(&rng));
        }
    }
}

static void random_bytes(uint8_t *x, int32_t *y, int64_t n, uint64_t seed) {
    mbt_rng rng = {seed};
    int64_t i;
    uint8_t prev = (uint8_t)(mbt_next(&rng) & 255);
    for (i = 0; i < n; i++) {
        x[i] = prev;
        prev = (uint8_t)(mbt_next(&rng) & 255);
        if (y) y[i] = prev;
    }
}

/* ---------------------------------------------------------------- scan */
/* The plain recurrence in float64, with no chunks: the reference. */
typedef struct {
    int B, T, Di, S, R;
    double *u, *delta, *bias, *A_log, *xdbl, *D, *z; /* z: (B,T,Di) */
} scan_case;

static double ref_scan_objective(const scan_case *c, const double *wout /* (B,T,Di) */, double *out) {
    int X = c->R + 2 * c->S, b, t, d, n;
    double total = 0.0;
    for (b = 0; b < c->B; b++)
        for (d = 0; d < c->Di; d++) {
            double h[64] = {0};
            for (t = 0; t < c->T; t++) {
                int64_t tok = (int64_t)b * c->T + t;
                double x = c->delta[tok * c->Di + d] + c->bias[d], dt = x > 20 ? x : log1p(exp(x));
                double ut = c->u[tok * c->Di + d], y = c->D[d] * ut, z = c->z[tok * c->Di + d];
                for (n = 0; n < c->S; n++) {
                    double A = -exp(c->A_log[d * c->S + n]);
                    h[n] = exp(dt * A) * h[n] + dt * c->xdbl[tok * X + c->R + n] * ut;
                    y += c->xdbl[tok * X + c->R + c->S + n] * h[n];
                }
                y *= z / (1.0 + exp(-z));
                if (out) out[tok * c->Di + d] = y;
                total += y * wout[tok * c->Di + d];
            }
        }
    return total;
}

static void to_float(float *dst, const double *src, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++) dst[i] = (float)src[i];
}

static void test_scan_vs_recurrence(void) {
    enum { B = 2, T = 45, Di = 3, S = 4, R = 2, X = R + 2 * S };
    static double u[B * T * Di], delta[B * T * Di], bias[Di], A_log[Di * S], xdbl[B * T * X], D[Di], z[B * T * Di];
    static double wout[B * T * Di], ref_out[B * T * Di];
    static float fu[B * T * Di], fdelta[B * T * Di], fbias[Di], fA[Di * S], fx[B * T * X], fD[Di], fxz[B * T * 2 * Di];
    static float out[B * T * Di], out2[B * T * Di], states[B * T * Di * S], fw[B * T * Di];
    static float du[B * T * Di], ddelta[B * T * Di], dbias[Di], dA[Di * S], dx[B * T * X], dD[Di], dxz[B * T * 2 * Di];
    static float scratch[B * (Di * S + 2 * Di)];
    scan_case c = {B, T, Di, S, R, u, delta, bias, A_log, xdbl, D, z};
    mbt_rng rng = {99};
    int64_t i;
    int chunk, k;
    for (i = 0; i < B * T * Di; i++) {
        u[i] = mbt_normal(&rng);
        z[i] = 2.0 * mbt_normal(&rng);
        wout[i] = mbt_normal(&rng);
        /* most dt small; every 7th large so that dt*A reaches about -50 */
        delta[i] = i % 7 == 0 ? 8.0 + 2.0 * mbt_uniform(&rng) : -4.0 + 3.0 * mbt_normal(&rng);
    }
    for (i = 0; i < Di; i++) { bias[i] = 0.3 * mbt_normal(&rng); D[i] = 1.0 + 0.3 * mbt_normal(&rng); }
    for (i = 0; i < Di * S; i++) A_log[i] = log((double)(i % S + 1)) + 0.1 * mbt_normal(&rng);
    for (i = 0; i < B * T * X; i++) xdbl[i] = mbt_normal(&rng);
    /* round the inputs to float first, so reference and test see the same numbers */
    to_float(fu, u, B * T * Di); to_float(fdelta, delta, B * T * Di); to_float(fbias, bias, Di);
    to_float(fA, A_log, Di * S); to_float(fx, xdbl, B * T * X); to_float(fD, D, Di); to_float(fw, wout, B * T * Di);
    for (i = 0; i < B * T * Di; i++) { u[i] = fu[i]; delta[i] = fdelta[i]; wout[i] = fw[i]; z[i] = (float)z[i]; }
    for (i = 0; i < Di; i++) { bias[i] = fbias[i]; D[i] = fD[i]; }
    for (i = 0; i < Di * S; i++) A_log[i] = fA[i];
    for (i = 0; i < B * T * X; i++) xdbl[i] = fx[i];
    for (i = 0; i < B * T; i++) {
        int d;
        for (d = 0; d < Di; d++) { fxz[i * 2 * Di + d] = 0.0f; fxz[i * 2 * Di + Di + d] = (float)z[i * Di + d]; }
    }
    {   /* dt*A really reaches about -50 somewhere */
        double most = 0;
        for (i = 0; i < B * T * Di; i++) {
            double x = delta[i] + bias[i % Di], dt = x > 20 ? x : log1p(exp(x));
            if (-dt * exp(A_log[(i % Di) * S + S - 1]) < most) most = -dt * exp(A_log[(i % Di) * S + S - 1]);
        }
        MBT_CHECK(most < -40.0, "scan test should reach dt*A near -50, got %g", most);
    }
    ref_scan_objective(&c, wout, ref_out);
    {
        static float ref_f[B * T * Di];
        to_float(ref_f, ref_out, B * T * Di);
        mb__scan_forward(out, states, fu, fdelta, fbias, fA, fx, fD, fxz, B, T, Di, S, R, 8);
        MBT_CHECK(mbt_rel_l2(out, ref_f, B * T * Di) < 1e-6, "scan forward vs float64 recurrence: rel L2 %g", mbt_rel_l2(out, ref_f, B * T * Di));
    }
    /* gradients against central differences of the float64 recurrence */
    {
        static double ref_g[5][B * T * X];
        static float got[5][B * T * X];
        double *vars[5] = {u, delta, A_log, xdbl, z};
        int64_t sizes[5] = {B * T * Di, B * T * Di, Di * S, B * T * X, B * T * Di};
        const char *names[5] = {"u", "delta", "A_log", "B/C", "z"};
        int v;
        for (v = 0; v < 5; v++)
            for (i = 0; i < sizes[v]; i++) {
                double keep = vars[v][i], h = 1e-6 * (fabs(keep) > 1 ? fabs(keep) : 1), fp, fm;
                if (v == 3 && i % X < R) { ref_g[v][i] = 0; continue; } /* dt_low columns: not scan inputs */
                vars[v][i] = keep + h; fp = ref_scan_objective(&c, wout, NULL);
                vars[v][i] = keep - h; fm = ref_scan_objective(&c, wout, NULL);
                vars[v][i] = keep;
                ref_g[v][i] = (fp - fm) / (2 * h);
            }
        for (chunk = 1; chunk <= T + 3; chunk += (chunk < 8 ? 3 : 19)) {
            memset(du, 0, sizeof du); memset(dbias, 0, sizeof dbias); memset(dA, 0, sizeof dA);
            memset(dx, 0, sizeof dx); memset(dD, 0, sizeof dD); memset(dxz, 0, sizeof dxz);
            mb__scan_forward(out2, states, fu, fdelta, fbias, fA, fx, fD, fxz, B, T, Di, S, R, chunk);
            MBT_CHECK(memcmp(out, out2, sizeof out) == 0, "scan forward with chunk %d differs from chunk 8", chunk);
            mb__scan_backward(du, ddelta, dbias, dA, dx, dD, dxz, scratch, fw, states, fu, fdelta, fbias, fA, fx, fD, fxz,
                              B, T, Di, S, R, chunk);
            memcpy(got[0], du, sizeof du);
            memcpy(got[1], ddelta, sizeof ddelta);
            memcpy(got[2], dA, sizeof dA);
            memcpy(got[3], dx, sizeof dx);
            for (i = 0; i < B * T * Di; i++) got[4][i] = dxz[(i / Di) * 2 * Di + Di + i % Di];
            for (v = 0; v < 5; v++) {
                static float ref_f[B * T * X];
                double err;
                to_float(ref_f, ref_g[v], sizes[v]);
                err = mbt_rel_l2(got[v], ref_f, sizes[v]);
                MBT_CHECK(err < 1e-5, "scan grad d%s (chunk %d) vs float64 finite differences: rel L2 %g", names[v], chunk, err);
            }
            {   /* dt_bias and D: sums of the per-token terms */
                double gb[Di] = {0}, gd[Di] = {0};
                float fgb[Di], fgd[Di];
                for (i = 0; i < B * T * Di; i++) {
                    double zz = z[i], silu = zz / (1 + exp(-zz));
                    gb[i % Di] += ref_g[1][i];
                    gd[i % Di] += wout[i] * silu * u[i];
                }
                to_float(fgb, gb, Di);
                to_float(fgd, gd, Di);
                MBT_CHECK(mbt_rel_l2(dbias, fgb, Di) < 1e-5 && mbt_rel_l2(dD, fgd, Di) < 1e-5,
                          "scan dt_bias/D grads (chunk %d): %g %g", chunk, mbt_rel_l2(dbias, fgb, Di), mbt_rel_l2(dD, fgd, Di));
            }
            for (k = 0; k < B * T * Di; k++)
                if (!isfinite(du[k]) || !isfinite(ddelta[k])) break;
            MBT_CHECK(k == B * T * Di, "scan gradients must be finite with dt*A near -50");
        }
    }
}

/* --------------------------------------------------------- whole model */
static double model_loss(mb_model *m, const uint8_t *x, const int32_t *y, int B, int T) {
    float loss;
    mb_model_forward(m, x, y, B, T, &loss);
    return loss;
}

static void test_model_gradcheck_config(mb_config c, const char *name) {
    enum { B = 2, T = 13 };
    mb_model *m;
    mb_tensor_info t[64];
    uint8_t x[B * T];
    int32_t y[B * T];
    float *p, *g, *dir;
    int n, i, bad = 0;
    MBT_CHECK(mb_model_create(&m, &c, 5) == MB_STATUS_OK, "create tiny model");
    mb_model_set_scan_chunk(m, 4); /* T = 13 spans four chunks */
    perturb_params(m, 6);
    random_bytes(x, y, B * T, 8);
    n = mb_config_tensors(&c, t);
    p = mb_model_params(m);
    g = mb_model_grads(m);
    mb_model_zero_grad(m);
    model_loss(m, x, y, B, T);
    mb_model_backward(m);
    dir = (float *)malloc(sizeof(float) * (size_t)mb_model_num_params(m));
    /* per tensor: the directional derivative along a random +-1 direction,
       by central differences, against g . direction */
    for (i = 0; i < n; i++) {
        mbt_rng rng = {100 + (uint64_t)i};
        double analytic = 0.0, fd, h = 1e-3, fp, fm;
        int64_t j, off = t[i].offset;
        for (j = 0; j < t[i].numel; j++) {
            dir[j] = (mbt_next(&rng) & 1) ? 1.0f : -1.0f;
            analytic += (double)g[off + j] * dir[j];
        }
        for (j = 0; j < t[i].numel; j++) p[off + j] += (float)h * dir[j];
        fp = model_loss(m, x, y, B, T);
        for (j = 0; j < t[i].numel; j++) p[off + j] -= 2 * (float)h * dir[j];
        fm = model_loss(m, x, y, B, T);
        for (j = 0; j < t[i].numel; j++) p[off + j] += (float)h * dir[j];
        fd = (fp - fm) / (2 * h);
        if (!(fabs(fd - analytic) <= 2e-2 * fabs(analytic) + 2e-3)) {
            bad++;
            fprintf(stderr, "  gradcheck %s: finite difference %.6g, analytic %.6g\n", t[i].name, fd, analytic);
        }
    }
    MBT_CHECK(bad == 0, "%s: finite-difference gradient check failed on %d of %d tensors", name, bad, n);
    free(dir);
    mb_model_free(m);
}
static void test_model_gradcheck(void) { test_model_gradcheck_config(tiny_config(), "tiny config"); }

static void test_model_pytorch_parity(void) {
    mbfx f;
    mb_model *m = NULL;
    const mbfx_entry *ein, *etg, *elog, *eloss;
    mb_tensor_info t[64];
    int B, T, i, n;
    uint8_t *x;
    float loss;
    mb_status s;
    if (mbfx_load(&f, "tests/fixtures/model_tiny.mbfx") != 0) { MBT_CHECK(0, "tests/fixtures/model_tiny.mbfx missing"); return; }
    s = mb_model_load(&m, "tests/fixtures/model_tiny.bin");
    MBT_CHECK(s == MB_STATUS_OK, "load tests/fixtures/model_tiny.bin: %s", mb_last_error());
    if (s != MB_STATUS_OK) { mbfx_free(&f); return; }
    ein = mbfx_get(&f, "inputs"); etg = mbfx_get(&f, "targets"); elog = mbfx_get(&f, "logits"); eloss = mbfx_get(&f, "loss");
    if (!ein || !etg || !elog || !eloss) { MBT_CHECK(0, "model fixture incomplete"); mbfx_free(&f); mb_model_free(m); return; }
    B = (int)ein->dims[0]; T = (int)ein->dims[1];
    x = (uint8_t *)malloc((size_t)(B * T));
    for (i = 0; i < B * T; i++) x[i] = (uint8_t)((const int32_t *)ein->data)[i];
    mb_model_set_scan_chunk(m, 16); /* T = 70: five chunks */
    mb_model_zero_grad(m);
    MBT_CHECK(mb_model_forward(m, x, (const int32_t *)etg->data, B, T, &loss) == MB_STATUS_OK, "parity forward");
    MBT_CHECK(mb_model_backward(m) == MB_STATUS_OK, "parity backward");
    MBT_CHECK(mbt_rel_l2(mb_model_logits(m), (const float *)elog->data, elog->numel) < 1e-5,
              "logits vs PyTorch: rel L2 %g", mbt_rel_l2(mb_model_logits(m), (const float *)elog->data, elog->numel));
    MBT_CHECK(fabs(loss - ((const float *)eloss->data)[0]) < 1e-5 * fabs(((const float *)eloss->data)[0]),
              "loss %.8g vs PyTorch %.8g", loss, ((const float *)eloss->data)[0]);
    n = mb_config_tensors(mb_model_config(m), t);
    for (i = 0; i < n; i++) {
        char name[96];
        const mbfx_entry *eg;
        double err;
        snprintf(name, sizeof name, "grad.%.63s", t[i].name);
        eg = mbfx_get(&f, name);
        if (!eg || eg->numel != t[i].numel) { MBT_CHECK(0, "fixture %s missing or wrong size", name); continue; }
        err = mbt_rel_l2(mb_model_grads(m) + t[i].offset, (const float *)eg->data, t[i].numel);
        MBT_CHECK(err < 1e-4, "gradient %s vs PyTorch: rel L2 %g", t[i].name, err);
    }
    free(x);
    mb_model_free(m);
    mbfx_free(&f);
}

static void test_stream_matches_forward_config(mb_config c, const char *name) {
    enum { T = 300 };
    mb_model *m;
    mb_stream *s, *s2;
    uint8_t x[T];
    int t, worst_t = -1, first_diff = -1;
    double worst = 0.0;
    mb_model_create(&m, &c, 21);
    perturb_params(m, 22);
    random_bytes(x, NULL, T, 23);
    mb_model_forward(m, x, NULL, 1, T, NULL);
    mb_stream_create(&s, m);
    mb_stream_create(&s2, m);
    for (t = 0; t < T; t++) {
        const float *lg = mb_stream_step(s, x[t]);
        double e = mbt_rel_l2(lg, mb_model_logits(m) + (int64_t)t * 256, 256);
        if (e > worst) { worst = e; worst_t = t; }
        if (first_diff < 0 && memcmp(lg, mb_model_logits(m) + (int64_t)t * 256, 256 * sizeof(float)) != 0) first_diff = t;
        if (t == 150) mb_stream_copy(s2, s);
    }
    /* the same operations per element in both paths: equal, not just close */
    MBT_CHECK(first_diff < 0, "%s: streaming logits differ from the parallel forward from t=%d (worst rel L2 %g at t=%d)",
              name, first_diff, worst, worst_t);
    {   /* a copied stream continues exactly like the original */
        float a[256];
        const float *b2;
        mb_stream_reset(s);
        for (t = 0; t <= 150; t++) mb_stream_step(s, x[t]);
        memcpy(a, mb_stream_step(s, 'q'), sizeof a);
        b2 = mb_stream_step(s2, 'q');
        MBT_CHECK(memcmp(a, b2, sizeof a) == 0, "%s: mb_stream_copy branch should continue bit-identically", name);
    }
    mb_stream_free(s);
    mb_stream_free(s2);
    mb_model_free(m);
}

static void test_stream_matches_forward(void) {
    mb_config c = tiny_config();
    c.d_conv = 4;
    test_stream_matches_forward_config(c, "tiny config");
    test_stream_matches_forward_config(mb_config_default(), "default config");
    c.d_model = 40; /* widths that are not multiples of the vector panels */
    c.d_state = 5;
    c.d_conv = 3;
    c.dt_rank = 3;
    test_stream_matches_forward_config(c, "odd widths");
}

/* ------------------------------------------- stream snapshot and prefill */
/* A stream is a snapshot of all of the model: after every weight of the
   model changes, its logits are those of the original weights, bit for bit;
   and it keeps working after its model is freed. */
static void test_stream_snapshot(void) {
    enum { T = 200 };
    mb_config c = tiny_config();
    mb_model *m, *orig, *m2;
    mb_stream *s, *s2, *s3;
    uint8_t x[T];
    float *p, *before;
    int64_t np, i, changed = 0;
    int t, same_orig = 1, same_new = 1, same_freed = 1;
    c.d_conv = 4;
    mb_model_create(&m, &c, 31);
    perturb_params(m, 32);
    np = mb_model_num_params(m);
    p = mb_model_params(m);
    mb_model_create(&orig, &c, 1);
    memcpy(mb_model_params(orig), p, (size_t)np * sizeof(float));
    before = (float *)malloc((size_t)np * sizeof(float));
    memcpy(before, p, (size_t)np * sizeof(float));
    random_bytes(x, NULL, T, 33);
    mb_stream_create(&s, m);
    {   /* change every weight: vectors (embedding, norms, biases, D, A_log) and matrices */
        mbt_rng rng = {34};
        for (i = 0; i < np; i++) p[i] += (float)(0.05 + 0.02 * mbt_normal(&rng) * (mbt_normal(&rng) > 0 ? 1 : 0));
        for (i = 0; i < np; i++) changed += p[i] != before[i];
    }
    MBT_CHECK(changed == np, "snapshot test: every weight must change (%lld of %lld did)", (long long)changed, (long long)np);
    mb_model_forward(orig, x, NULL, 1, T, NULL);
    for (t = 0; t < T; t++)
        same_orig &= memcmp(mb_stream_step(s, x[t]), mb_model_logits(orig) + (int64_t)t * 256, 256 * sizeof(float)) == 0;
    MBT_CHECK(same_orig, "a stream created before the weights changed must give the original weights' logits bit for bit");
    mb_model_forward(m, x, NULL, 1, T, NULL);
    mb_stream_reset(s);
    for (t = 0; t < T; t++)
        same_new &= memcmp(mb_stream_step(s, x[t]), mb_model_logits(m) + (int64_t)t * 256, 256 * sizeof(float)) == 0;
    MBT_CHECK(!same_new, "the stream's logits must differ from the changed model's");
    {   /* a new stream follows the new weights */
        int same = 1;
        mb_stream_create(&s3, m);
        for (t = 0; t < T; t++)
            same &= memcmp(mb_stream_step(s3, x[t]), mb_model_logits(m) + (int64_t)t * 256, 256 * sizeof(float)) == 0;
        MBT_CHECK(same, "a stream created after the change must follow the new weights");
    }
    /* the model may be freed: step and feed from the snapshot alone (ASan checks the reads) */
    mb_model_create(&m2, &c, 2);
    memcpy(mb_model_params(m2), before, (size_t)np * sizeof(float));
    mb_stream_create(&s2, m2);
    mb_model_free(m2);
    {
        float *lg = (float *)malloc((size_t)T * 256 * sizeof(float));
        for (t = 0; t < T / 2; t++)
            same_freed &= memcmp(mb_stream_step(s2, x[t]), mb_model_logits(orig) + (int64_t)t * 256, 256 * sizeof(float)) == 0;
        same_freed &= mb_stream_feed(s2, x + T / 2, T - T / 2, lg) == MB_STATUS_OK;
        same_freed &= memcmp(lg, mb_model_logits(orig) + (int64_t)(T / 2) * 256, (size_t)(T - T / 2) * 256 * sizeof(float)) == 0;
        free(lg);
    }
    MBT_CHECK(same_freed, "a stream whose model was freed must step and feed with the snapshot's weights");
    /* copy: the same config is enough (different weights: dst keeps its own); a different config is refused */
    {
        mb_config c2 = c;
        mb_model *m4;
        mb_stream *s4;
        float a[256];
        mb_stream *s5;
        mb_stream_create(&s5, m); /* the new weights, like s3 */
        mb_stream_reset(s);
        mb_stream_reset(s3);
        for (t = 0; t < 50; t++) mb_stream_step(s, x[t]);
        MBT_CHECK(mb_stream_copy(s3, s) == MB_STATUS_OK && mb_stream_copy(s5, s) == MB_STATUS_OK,
                  "copy between streams of one config: %s", mb_last_error());
        MBT_CHECK(memcmp(s3->conv_state, s->conv_state, (size_t)s->state_floats * sizeof(float)) == 0, "copy: dst holds src's state");
        memcpy(a, mb_stream_step(s3, 'a'), sizeof a);
        MBT_CHECK(memcmp(a, mb_stream_step(s5, 'a'), sizeof a) == 0 && memcmp(a, mb_stream_step(s, 'a'), sizeof a) != 0,
                  "copy: dst continues from src's state with its own weights");
        mb_stream_free(s5);
        c2.d_state = 5;
        mb_model_create(&m4, &c2, 3);
        mb_stream_create(&s4, m4);
        MBT_CHECK(mb_stream_copy(s4, s) == MB_STATUS_INVALID_ARGUMENT && strstr(mb_last_error(), "config"),
                  "copy between different configs must be refused: '%s'", mb_last_error());
        mb_stream_free(s4);
        mb_model_free(m4);
    }
    mb_stream_free(s);
    mb_stream_free(s2);
    mb_stream_free(s3);
    free(before);
    mb_model_free(orig);
    mb_model_free(m);
}

/* The stream state as bytes (the test sees the implementation). */
static int stream_state_equal(const mb_stream *a, const mb_stream *b) {
    return a->state_floats == b->state_floats && memcmp(a->conv_state, b->conv_state, (size_t)a->state_floats * sizeof(float)) == 0;
}

/* mb_stream_feed against mb_stream_step: logits and state bit for bit,
   however the bytes are split between feeds and steps. */
static void test_stream_feed_config(mb_config c, const char *name) {
    enum { T = 2600 }; /* more than one feed pass (MB__FEED_CHUNK) */
    mb_model *m;
    mb_stream *ref, *s;
    uint8_t *x = (uint8_t *)malloc(T);
    float *want = (float *)malloc((size_t)T * 256 * sizeof(float));
    float *got = (float *)malloc((size_t)T * 256 * sizeof(float));
    static const int64_t splits[][12] = {
        {T},                                       /* one feed */
        {1, 1, 7, 31, 33, 64, 1, 1029, 2, -1},     /* odd pieces, n = 1, across the pass boundary; -1: the rest */
        {5, 0, 3, 1024, 0, 1, -1},                 /* n = 0 in between */
        {31, 32, 33, 95, 97, 127, 129, 511, -1},   /* around scan-chunk multiples */
        {3, 2100, -1},                             /* a pass boundary inside a feed that starts from a state */
    };
    size_t v;
    int t;
    mb_model_create(&m, &c, 41);
    perturb_params(m, 42);
    random_bytes(x, NULL, T, 43);
    mb_stream_create(&ref, m);
    mb_stream_create(&s, m);
    for (t = 0; t < T; t++) memcpy(want + (int64_t)t * 256, mb_stream_step(ref, x[t]), 256 * sizeof(float));
    for (v = 0; v < sizeof splits / sizeof splits[0]; v++) {
        int64_t at = 0;
        int k, ok = 1;
        mb_stream_reset(s);
        memset(got, 0, (size_t)T * 256 * sizeof(float));
        for (k = 0; k < 12 && at < T; k++) {
            int64_t n = splits[v][k] < 0 ? T - at : splits[v][k];
            if (n > T - at) n = T - at;
            ok &= mb_stream_feed(s, x + at, n, got + at * 256) == MB_STATUS_OK;
            at += n;
        }
        if (at < T) ok &= mb_stream_feed(s, x + at, T - at, got + at * 256) == MB_STATUS_OK;
        MBT_CHECK(ok, "%s: feed split %d failed: %s", name, (int)v, mb_last_error());
        MBT_CHECK(memcmp(got, want, (size_t)T * 256 * sizeof(float)) == 0,
                  "%s: feed split %d: logits differ from stepping (first at %lld, rel L2 there %g)", name, (int)v,
                  (long long)(mbt_first_mismatch(got, want, (int64_t)T * 256, 0, 0) / 256),
                  mbt_rel_l2(got + mbt_first_mismatch(got, want, (int64_t)T * 256, 0, 0) / 256 * 256,
                             want + mbt_first_mismatch(got, want, (int64_t)T * 256, 0, 0) / 256 * 256, 256));
        MBT_CHECK(stream_state_equal(s, ref), "%s: feed split %d: state after the feeds differs from stepping", name, (int)v);
    }
    {   /* steps and feeds interleaved (feed then step, step then feed), some feeds without logits */
        int64_t at = 0;
        int k = 0, ok = 1, same = 1;
        mb_stream_reset(s);
        while (at < T) {
            int64_t n = 1 + (k * 37) % 150;
            if (n > T - at) n = T - at;
            if (k % 3 == 0) {
                int64_t j;
                for (j = 0; j < n; j++)
                    same &= memcmp(mb_stream_step(s, x[at + j]), want + (at + j) * 256, 256 * sizeof(float)) == 0;
            } else if (k % 3 == 1) {
                ok &= mb_stream_feed(s, x + at, n, got) == MB_STATUS_OK;
                same &= memcmp(got, want + at * 256, (size_t)n * 256 * sizeof(float)) == 0;
            } else {
                ok &= mb_stream_feed(s, x + at, n, NULL) == MB_STATUS_OK; /* state only */
            }
            at += n;
            k++;
        }
        MBT_CHECK(ok && same, "%s: interleaved steps and feeds must match stepping bit for bit", name);
        MBT_CHECK(stream_state_equal(s, ref), "%s: interleaved: final state differs from stepping", name);
    }
    {   /* n = 0 changes nothing; bad arguments are refused and change nothing */
        int ok = mb_stream_feed(s, x, 0, got) == MB_STATUS_OK && mb_stream_feed(s, NULL, 0, NULL) == MB_STATUS_OK;
        ok &= mb_stream_feed(s, x, -1, got) == MB_STATUS_INVALID_ARGUMENT;
        ok &= mb_stream_feed(s, NULL, 3, got) == MB_STATUS_INVALID_ARGUMENT;
        MBT_CHECK(ok && stream_state_equal(s, ref), "%s: feed n=0 / bad arguments must leave the state as it is", name);
    }
    mb_stream_free(s);
    mb_stream_free(ref);
    mb_model_free(m);
    free(x);
    free(want);
    free(got);
}

static void test_stream_feed(void) {
    mb_config c = tiny_config();
    c.d_conv = 4;
    test_stream_feed_config(c, "feed tiny config");
    test_stream_feed_config(mb_config_default(), "feed default config");
    c.d_model = 40; /* widths that are not multiples of the vector panels */
    c.d_state = 5;
    c.d_conv = 3;
    c.dt_rank = 3;
    test_stream_feed_config(c, "feed odd widths");
}

/* mb_eval_text (through mb_stream_feed) against the stepwise reference:
   the same result field for field, nll_bits included, and the same progress calls. */
typedef struct { int n; int64_t done[16], total[16]; } eval_calls;
static void record_progress(void *user, int64_t done, int64_t total) {
    eval_calls *e = (eval_calls *)user;
    if (e->n < 16) { e->done[e->n] = done; e->total[e->n] = total; }
    e->n++;
}
static void test_eval_feed_matches_stepwise(void) {
    static const char *pieces[] = {"The quick brown fox, ", "h\xc3\xa9llo w\xc3\xb6rld ", "\xe6\x97\xa5\xe6\x9c\xac ",
                                   "\xf0\x9f\x98\x80 ", "= = Heading = =\n", "123 456. "};
    mb_config c = mb_config_default();
    mb_model *m;
    uint8_t *text = (uint8_t *)malloc(8192);
    int64_t len = 0, limits[] = {-1, 0, 1, 1023, 1024, 1025, 2047};
    size_t k;
    mbt_rng rng = {51};
    mb_model_create(&m, &c, 52);
    perturb_params(m, 53);
    while (len < 3000) { /* about 2600 characters, mixed widths */
        const char *pc = pieces[mbt_next(&rng) % 6];
        size_t n = strlen(pc);
        memcpy(text + len, pc, n);
        len += (int64_t)n;
    }
    for (k = 0; k < sizeof limits / sizeof limits[0]; k++) {
        mb_eval_result a, b;
        eval_calls ca, cb;
        mb_status sa, sb;
        memset(&ca, 0, sizeof ca);
        memset(&cb, 0, sizeof cb);
        sa = mb__eval_text_ref(m, text, len, limits[k], &a, record_progress, &ca);
        sb = mb_eval_text(m, text, len, limits[k], &b, record_progress, &cb);
        MBT_CHECK(sa == MB_STATUS_OK && sb == MB_STATUS_OK && a.chars == b.chars && a.chars_correct == b.chars_correct &&
                      a.bytes == b.bytes && a.bytes_correct == b.bytes_correct && a.nll_bits == b.nll_bits,
                  "eval max_chars=%lld: fast %lld/%lld chars %lld/%lld bytes %.17g bits vs stepwise %lld/%lld %lld/%lld %.17g",
                  (long long)limits[k], (long long)b.chars_correct, (long long)b.chars, (long long)b.bytes_correct,
                  (long long)b.bytes, b.nll_bits, (long long)a.chars_correct, (long long)a.chars,
                  (long long)a.bytes_correct, (long long)a.bytes, a.nll_bits);
        MBT_CHECK(ca.n == cb.n && memcmp(ca.done, cb.done, sizeof ca.done) == 0 && memcmp(ca.total, cb.total, sizeof ca.total) == 0,
                  "eval max_chars=%lld: progress calls differ (%d vs %d)", (long long)limits[k], cb.n, ca.n);
    }
    {   /* invalid UTF-8 inside the evaluated prefix: refused before any work, result zeroed */
        mb_eval_result r;
        eval_calls cr;
        memset(&cr, 0, sizeof cr);
        text[1500] = 0xFF;
        MBT_CHECK(mb_eval_text(m, text, len, -1, &r, record_progress, &cr) == MB_STATUS_BAD_FORMAT && cr.n == 0 &&
                      r.bytes == 0 && strstr(mb_last_error(), "1500"),
                  "eval of invalid UTF-8: '%s', %d progress calls", mb_last_error(), cr.n);
    }
    free(text);
    mb_model_free(m);
}

/* cmd_sample's draw as it was in main.c: the reference mb_sample_byte must equal. */
static int ref_sample_byte(const float *logits, double temp, int top_k, uint64_t *rng) {
    int b;
    if (temp <= 0.0) {
        b = mb__argmax(logits, 256);
    } else {
        float p[256], scaled[256], cut = -INFINITY;
        double u, acc = 0.0;
        int v;
        for (v = 0; v < 256; v++) scaled[v] = (float)(logits[v] / temp);
        if (top_k > 0 && top_k < 256) {
            float sorted[256];
            int a, c;
            memcpy(sorted, scaled, sizeof sorted);
            for (a = 0; a < top_k; a++)
                for (c = a + 1; c < 256; c++)
                    if (sorted[c] > sorted[a]) { float t = sorted[a]; sorted[a] = sorted[c]; sorted[c] = t; }
            cut = sorted[top_k - 1];
            for (v = 0; v < 256; v++) if (scaled[v] < cut) scaled[v] = -INFINITY;
        }
        mb_softmax(p, scaled, 1, 256);
        u = mb__rng_uniform(rng);
        for (b = 0; b < 255; b++) { acc += p[b]; if (u < acc) break; }
    }
    return b;
}

static void test_sample_byte(void) {
    mbt_rng r = {61};
    float lg[256];
    int i, v, ok_greedy = 1, ok_top1 = 1, ok_ref = 1;
    for (i = 0; i < 200; i++) {
        static const double temps[] = {0.05, 0.3, 0.8, 1.0, 2.5, 100.0};
        static const int ks[] = {0, 1, 2, 5, 40, 255, 256, 300};
        uint64_t r1 = 1000 + (uint64_t)i, r2 = r1, r0;
        double tp = temps[i % 6];
        int k = ks[(i / 6) % 8], a;
        for (v = 0; v < 256; v++) lg[v] = (float)(3.0 * mbt_normal(&r));
        if (i % 7 == 3) for (v = 0; v < 256; v += 3) lg[v] = lg[0]; /* ties, also at the top-k cut */
        a = mb__argmax(lg, 256);
        r0 = r1;
        ok_greedy &= mb_sample_byte(lg, 0.0, k, &r1) == a && mb_sample_byte(lg, -1.0, k, &r1) == a && r1 == r0;
        if (i % 7 != 3) {
            uint64_t r3 = r0, adv = r0;
            (void)mb__rng_uniform(&adv);
            ok_top1 &= mb_sample_byte(lg, tp, 1, &r3) == a && r3 == adv; /* one uniform drawn */
        }
        for (v = 0; v < 20; v++) ok_ref &= mb_sample_byte(lg, tp, k, &r1) == ref_sample_byte(lg, tp, k, &r2) && r1 == r2;
    }
    MBT_CHECK(ok_greedy, "mb_sample_byte: temperature <= 0 must be the argmax and draw nothing");
    MBT_CHECK(ok_top1, "mb_sample_byte: top_k = 1 must be the argmax at any temperature, drawing one uniform");
    MBT_CHECK(ok_ref, "mb_sample_byte must equal cmd_sample's draw (same bytes, same rng states)");
    {   /* the draw distribution: softmax(logits / T) over the top k, within 5 sigma per byte */
        enum { N = 200000 };
        static int count[256];
        float scaled[256], p[256];
        uint64_t rng = 7;
        int k, worst = -1, ok = 1, outside = 0;
        double worst_z = 0.0;
        for (v = 0; v < 256; v++) lg[v] = (float)(1.5 * mbt_normal(&r));
        for (k = 0; k <= 8; k += 8) {
            float cut = -INFINITY;
            memset(count, 0, sizeof count);
            for (i = 0; i < N; i++) count[mb_sample_byte(lg, 0.7, k, &rng)]++;
            for (v = 0; v < 256; v++) scaled[v] = (float)(lg[v] / 0.7);
            if (k > 0) {
                float sorted[256];
                int a, b2;
                memcpy(sorted, scaled, sizeof sorted);
                for (a = 0; a < k; a++)
                    for (b2 = a + 1; b2 < 256; b2++)
                        if (sorted[b2] > sorted[a]) { float t = sorted[a]; sorted[a] = sorted[b2]; sorted[b2] = t; }
                cut = sorted[k - 1];
                for (v = 0; v < 256; v++) if (scaled[v] < cut) scaled[v] = -INFINITY;
            }
            mb_softmax(p, scaled, 1, 256);
            for (v = 0; v < 256; v++) {
                double e = (double)p[v] * N, sd = sqrt(e * (1.0 - p[v])) + 1.0, z = fabs(count[v] - e) / sd;
                if (p[v] == 0.0f) outside += count[v];
                if (z > worst_z) { worst_z = z; worst = v; }
                ok &= z < 5.0;
            }
        }
        MBT_CHECK(ok && outside == 0, "mb_sample_byte distribution: worst byte %d at %.1f sigma, %d draws outside the top k",
                  worst, worst_z, outside);
        MBT_CHECK(rng != 7, "mb_sample_byte must advance the rng");
    }
}

static void test_initial_loss(void) {
    enum { B = 4, T = 128 };
    mb_config c = mb_config_default();
    mb_model *m;
    uint8_t x[B * T];
    int32_t y[B * T];
    float loss;
    int64_t n;
    MBT_CHECK(mb_model_create(&m, &c, 1234) == MB_STATUS_OK, "create default model");
    n = mb_model_num_params(m);
    MBT_CHECK(n > 1000000 && n < 1100000, "default config should have about 1.06M parameters, has %lld", (long long)n);
    random_bytes(x, y, B * T, 77);
    mb_model_forward(m, x, y, B, T, &loss);
    {   /* the expected loss over uniformly random targets, free of sampling
           noise: mean over positions of logsumexp(logits) - mean(logits) */
        static float lse[B * T];
        const float *lg = mb_model_logits(m);
        double expected = 0.0;
        int i, v;
        mb_logsumexp(lse, lg, B * T, 256);
        for (i = 0; i < B * T; i++) {
            double mean = 0.0;
            for (v = 0; v < 256; v++) mean += lg[i * 256 + v];
            expected += lse[i] - mean / 256.0;
        }
        expected /= B * T;
        MBT_CHECK(fabs(expected - log(256.0)) < 0.05, "initial expected loss %.4f should be ln 256 = %.4f +- 0.05", expected, log(256.0));
        MBT_CHECK(fabs(loss - expected) < 0.15, "sampled initial loss %.4f far from its expectation %.4f", loss, expected);
    }
    mb_model_free(m);
}

static void test_determinism(void) {
    enum { B = 3, T = 40 };
    mb_config c = tiny_config();
    mb_model *m;
    uint8_t x[B * T];
    int32_t y[B * T];
    float *g1;
    int64_t n;
    mb_model_create(&m, &c, 31);
    perturb_params(m, 32);
    random_bytes(x, y, B * T, 33);
    n = mb_model_num_params(m);
    g1 = (float *)malloc(sizeof(float) * (size_t)n);
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    mb_model_zero_grad(m);
    model_loss(m, x, y, B, T);
    mb_model_backward(m);
    memcpy(g1, mb_model_grads(m), sizeof(float) * (size_t)n);
#ifdef _OPENMP
    omp_set_num_threads(omp_get_num_procs() > 1 ? omp_get_num_procs() : 2);
#endif
    mb_model_zero_grad(m);
    model_loss(m, x, y, B, T);
    mb_model_backward(m);
    MBT_CHECK(memcmp(g1, mb_model_grads(m), sizeof(float) * (size_t)n) == 0, "gradients differ between 1 thread and many");
    free(g1);
    mb_model_free(m);
}

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite(data, 1, n, f);
    return fclose(f);
}

static void test_checkpoint_files(void) {
    mb_config c = tiny_config();
    mb_model *m, *m2 = NULL;
    const char *path = "build/test_ckpt.bin", *bad = "build/test_ckpt_bad.bin";
    int64_t n, size;
    unsigned char *buf;
    FILE *f;
    mb_status s;
    int32_t hdr[256];
    mb_model_create(&m, &c, 41);
    perturb_params(m, 42);
    n = mb_model_num_params(m);
    MBT_CHECK(mb_model_save(m, path) == MB_STATUS_OK, "save: %s", mb_last_error());
    s = mb_model_load(&m2, path);
    MBT_CHECK(s == MB_STATUS_OK, "load: %s", mb_last_error());
    if (m2) {
        MBT_CHECK(mb_model_num_params(m2) == n && memcmp(mb_model_params(m), mb_model_params(m2), (size_t)n * 4) == 0,
                  "save -> load must be bit-exact");
        MBT_CHECK(memcmp(mb_model_config(m), mb_model_config(m2), sizeof(mb_config)) == 0, "config round trip");
        mb_model_free(m2);
    }
    size = 1024 + 4 * n;
    buf = (unsigned char *)malloc((size_t)size);
    f = fopen(path, "rb");
    MBT_CHECK(f && fread(buf, 1, (size_t)size, f) == (size_t)size, "read back checkpoint");
    if (f) fclose(f);
    memcpy(hdr, buf, sizeof hdr);
    MBT_CHECK(hdr[0] == 0x4D425954 && hdr[1] == 1 && hdr[3] == 16 && hdr[8] == 2 && hdr[10] == 1, "header fields as documented");
    {
        struct { int field; int32_t value; const char *expect; } cases[] = {
            {0, 0x12345678, "not a mambabyte checkpoint"}, {1, 2, "version"}, {2, 300, "vocab_size"},
            {3, 17, "bytes, but its header"}, {5, 0, "d_state"}, {9, 2, "norm kind"}, {10, 2, "tied-head"}, {11, 1, "dtype"},
            /* a flipped norm kind or head flag changes the layout: the size no longer fits */
            {9, 1, "bytes, but its header"}, {10, 0, "bytes, but its header"},
            {12, 1, "training state"}, {200, 5, "reserved"}};
        size_t k;
        for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            int32_t keep = ((int32_t *)buf)[cases[k].field];
            ((int32_t *)buf)[cases[k].field] = cases[k].value;
            write_bytes(bad, buf, (size_t)size);
            ((int32_t *)buf)[cases[k].field] = keep;
            m2 = NULL;
            s = mb_model_load(&m2, bad);
            MBT_CHECK(s != MB_STATUS_OK && m2 == NULL && strstr(mb_last_error(), cases[k].expect),
                      "header field [%d] = %d: status %d, message '%s' (expected '%s')", cases[k].field, cases[k].value, s,
                      mb_last_error(), cases[k].expect);
        }
    }
    {   /* truncation at many points, including inside the header */
        int64_t cuts[] = {0, 3, 1000, 1024, 1025, size / 2, size - 1};
        size_t k;
        int ok = 1;
        for (k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
            write_bytes(bad, buf, (size_t)cuts[k]);
            m2 = NULL;
            s = mb_model_load(&m2, bad);
            ok &= s == MB_STATUS_BAD_FORMAT && m2 == NULL && strstr(mb_last_error(), "truncated") != NULL;
        }
        MBT_CHECK(ok, "every truncation must be reported as truncated (last: '%s')", mb_last_error());
    }
    {   /* a NaN parameter is a corrupt checkpoint, named */
        float nan = NAN;
        memcpy(buf + 1024 + 4 * 300, &nan, 4);
        write_bytes(bad, buf, (size_t)size);
        s = mb_model_load(&m2, bad);
        MBT_CHECK(s == MB_STATUS_NON_FINITE && strstr(mb_last_error(), "not finite"), "NaN parameter: '%s'", mb_last_error());
    }
    s = mb_model_load(&m2, "build/does_not_exist.bin");
    MBT_CHECK(s == MB_STATUS_IO_ERROR && strstr(mb_last_error(), "does_not_exist"), "missing file: '%s'", mb_last_error());
    s = mb_model_load(&m2, "build");
    MBT_CHECK(s == MB_STATUS_IO_ERROR && strstr(mb_last_error(), "not a regular file"), "directory: '%s'", mb_last_error());
    free(buf);
    remove(bad);
    remove(path);
    mb_model_free(m);
}

/* The parameter table in checkpoint order against names, shapes and decay
   flags written out here by hand (the PyTorch state_dict), for odd widths;
   the CPU weight and gradient pointers land on the tensors of those names. */
static void test_tensor_table(void) {
    static const struct { const char *name; int ndim; int64_t d0, d1, d2; int decay; } layer[] = {
        /* C = 7, Di = 21, S = 5, K = 3, R = 3, X = 13 */
        {"norm.weight", 1, 7, 1, 1, 0},           {"norm.bias", 1, 7, 1, 1, 0},
        {"mixer.in_proj.weight", 2, 42, 7, 1, 1}, {"mixer.conv1d.weight", 3, 21, 1, 3, 1},
        {"mixer.conv1d.bias", 1, 21, 1, 1, 0},    {"mixer.x_proj.weight", 2, 13, 21, 1, 1},
        {"mixer.dt_proj.weight", 2, 21, 3, 1, 1}, {"mixer.dt_proj.bias", 1, 21, 1, 1, 0},
        {"mixer.A_log", 2, 21, 5, 1, 0},          {"mixer.D", 1, 21, 1, 1, 0},
        {"mixer.out_proj.weight", 2, 7, 21, 1, 1},
    };
    mb_config c = mb_config_default();
    mb_tensor_info t[64];
    mb_model *m = NULL;
    int n, l, k, i = 0, bad = 0, bad_ptr = 0;
    int64_t off = 0;
    c.d_model = 7; c.n_layer = 3; c.d_state = 5; c.d_conv = 3; c.expand = 3; c.dt_rank = 3;
    MBT_CHECK(mb_model_create(&m, &c, 3) == MB_STATUS_OK, "tensor table: create: %s", mb_last_error());
    if (!m) return;
    n = mb_config_tensors(mb_model_config(m), t);
    MBT_CHECK(n == 1 + 11 * 3 + 2, "tensor table: %d tensors, expected 36", n);
    if (n != 36) { mb_model_free(m); return; }
#define MBT_EXPECT_TENSOR(nm, nd, a, b, cc, wd)                                                                  \
    do {                                                                                                         \
        const mb_tensor_info *ti_ = &t[i++];                                                                     \
        if (strcmp(ti_->name, nm) != 0 || ti_->ndim != (nd) || ti_->shape[0] != (a) || ti_->shape[1] != (b) ||   \
            ti_->shape[2] != (cc) || ti_->numel != (int64_t)(a) * (b) * (cc) || ti_->weight_decay != (wd) ||      \
            ti_->offset != off) {                                                                                \
            fprintf(stderr, "  tensor %d: got %s, expected %s\n", i - 1, ti_->name, nm);                         \
            bad++;                                                                                               \
        }                                                                                                        \
        off += (int64_t)(a) * (b) * (cc);                                                                        \
    } while (0)
    MBT_EXPECT_TENSOR("embedding.weight", 2, 256, 7, 1, 1);
    for (l = 0; l < 3; l++) {
        const mb_layer_weights *W = &m->w.layer[l], *G = &m->g.layer[l];
        const float *pw[11], *pg[11];
        pw[0] = W->norm_w; pw[1] = W->norm_b; pw[2] = W->in_proj; pw[3] = W->conv_w; pw[4] = W->conv_b; pw[5] = W->x_proj;
        pw[6] = W->dt_proj_w; pw[7] = W->dt_proj_b; pw[8] = W->A_log; pw[9] = W->D; pw[10] = W->out_proj;
        pg[0] = G->norm_w; pg[1] = G->norm_b; pg[2] = G->in_proj; pg[3] = G->conv_w; pg[4] = G->conv_b; pg[5] = G->x_proj;
        pg[6] = G->dt_proj_w; pg[7] = G->dt_proj_b; pg[8] = G->A_log; pg[9] = G->D; pg[10] = G->out_proj;
        for (k = 0; k < 11; k++) {
            char name[64];
            snprintf(name, sizeof name, "layers.%d.%s", l, layer[k].name);
            bad_ptr += pw[k] != mb_model_params(m) + off || pg[k] != mb_model_grads(m) + off;
            MBT_EXPECT_TENSOR(name, layer[k].ndim, layer[k].d0, layer[k].d1, layer[k].d2, layer[k].decay);
        }
    }
    bad_ptr += m->w.norm_f_w != mb_model_params(m) + off || m->g.norm_f_w != mb_model_grads(m) + off;
    MBT_EXPECT_TENSOR("norm_f.weight", 1, 7, 1, 1, 0);
    bad_ptr += m->w.norm_f_b != mb_model_params(m) + off || m->g.norm_f_b != mb_model_grads(m) + off;
    MBT_EXPECT_TENSOR("norm_f.bias", 1, 7, 1, 1, 0);
#undef MBT_EXPECT_TENSOR
    bad_ptr += m->w.wte != mb_model_params(m) || m->g.wte != mb_model_grads(m);
    MBT_CHECK(bad == 0, "tensor table: %d tensors differ from the PyTorch state_dict order", bad);
    MBT_CHECK(bad_ptr == 0, "tensor table: %d weight/gradient pointers miss their tensor", bad_ptr);
    MBT_CHECK(off == mb_model_num_params(m) && off == mb_config_num_params(&c), "tensor table: %lld floats", (long long)off);
    mb_model_free(m);
}

/* The activation block: the carving ends exactly at the measured total, the
   buffers tile it in list order, and the total equals the sum of the buffer
   sizes written out here by hand; for odd widths, a chunk that does not
   divide T, and a batch smaller than the allocated one. */
static void test_act_layout(void) {
    static const int32_t cfgs[][6] = { /* d_model n_layer d_state d_conv expand dt_rank */
        {7, 3, 5, 3, 3, 3}, {16, 2, 4, 3, 2, 2}, {9, 1, 1, 1, 1, 1}, {13, 2, 7, 4, 1, 5},
    };
    static const int shapes[][3] = {{2, 13, 0}, {2, 13, 4}, {3, 5, 3}, {1, 3, 0}}; /* B, T, scan chunk (0: default) */
    size_t ci, si;
    for (ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        mb_config c = mb_config_default();
        mb_model *m = NULL;
        c.d_model = cfgs[ci][0]; c.n_layer = cfgs[ci][1]; c.d_state = cfgs[ci][2];
        c.d_conv = cfgs[ci][3]; c.expand = cfgs[ci][4]; c.dt_rank = cfgs[ci][5];
        MBT_CHECK(mb_model_create(&m, &c, 11) == MB_STATUS_OK, "act layout: create: %s", mb_last_error());
        if (!m) continue;
        for (si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int B = shapes[si][0], T = shapes[si][1];
            uint8_t x[64];
            int32_t y[64];
            float loss = 0.0f;
            int64_t N = (int64_t)B * T, C = c.d_model, Di = C * c.expand, S = c.d_state, X = c.dt_rank + 2 * S, V = 256;
            int64_t K = c.d_conv, nchunks, hand, measured;
            const float *next;
            int l, ok = 1;
            if (shapes[si][2]) mb_model_set_scan_chunk(m, shapes[si][2]);
            random_bytes(x, y, N, 100 + si);
            MBT_CHECK(mb_model_forward(m, x, y, B, T, &loss) == MB_STATUS_OK && mb_model_backward(m) == MB_STATUS_OK,
                      "act layout: forward/backward B=%d T=%d: %s", B, T, mb_last_error());
            nchunks = (T + m->scan_chunk - 1) / m->scan_chunk;
            measured = mb__layout_acts(m, NULL, B, T);
            next = m->act_block;
#define MBT_WALK_L(ptr, n, bf16) if ((n) != 0) { ok &= a->ptr == next; next += (n); }
#define MBT_WALK_M(ptr, n, who) if ((who) & 1) { ok &= m->ma.ptr == next; next += (n); } /* the CPU's */
            for (l = 0; l <= c.n_layer; l++) { /* the layers', then the gradients' (no states) */
                const mb_layer_acts *a = l < c.n_layer ? &m->acts[l] : &m->dacts;
                const int64_t nch = l < c.n_layer ? nchunks : 0;
                MB_LAYER_ACTS(MBT_WALK_L)
            }
            MB_MODEL_ACTS(MBT_WALK_M)
#undef MBT_WALK_L
#undef MBT_WALK_M
            hand = c.n_layer * (N * (2 * C + 2 + 2 * Di + Di + X + Di + Di) + B * nchunks * Di * S) +
                   N * (C + C + 2 + V + C) + N * (C + C + 2 + 2 * Di + Di + X + Di + Di + V) + B * (Di * S + 2 * Di) +
                   (c.n_layer + 1) * B * K * Di; /* conv_in, the layers' and the gradients' */
            MBT_CHECK(ok, "act layout cfg %d B=%d T=%d: buffers do not tile the block in list order", (int)ci, B, T);
            MBT_CHECK(m->act_used == measured && next == m->act_block + m->act_used && m->act_used <= m->act_floats,
                      "act layout cfg %d B=%d T=%d: carved %lld, measured %lld, walked %lld, block %lld", (int)ci, B, T,
                      (long long)m->act_used, (long long)measured, (long long)(next - m->act_block), (long long)m->act_floats);
            MBT_CHECK(measured == hand, "act layout cfg %d B=%d T=%d: %lld floats, by hand %lld", (int)ci, B, T,
                      (long long)measured, (long long)hand);
            if (si == 3) MBT_CHECK(m->act_used < m->act_floats, "act layout: a smaller batch reuses the larger block");
        }
        mb_model_free(m);
    }
}

/* mb_stream_generate is what it says: the 0x00 start, the prompt, then n
   draws of mb_sample_byte, each fed back; early stop; argument errors.
   And mb_model_hash: equal weights, equal hash; one changed bit, another. */
typedef struct { int calls, stop_after; } gen_probe;
static int gen_on_byte(void *user, int b) {
    gen_probe *g = (gen_probe *)user;
    (void)b;
    return ++g->calls == g->stop_after;
}
static void test_generate(void) {
    mb_config c = mb_config_default();
    mb_model *m;
    mb_stream *s, *ref;
    static const uint8_t prompt[] = "The cat sat on the";
    const int64_t plen = (int64_t)sizeof prompt - 1, n = 40;
    uint8_t got[40], want[40];
    const float *lg;
    uint64_t r1 = 7, r2 = 7, h0;
    int64_t i, made = -1;
    gen_probe g = {0, 5};
    int same;
    float *p;
    c.d_model = 32; c.n_layer = 2; c.d_state = 8; c.dt_rank = 2;
    mb_model_create(&m, &c, 5);
    perturb_params(m, 6);
    mb_stream_create(&s, m);
    mb_stream_create(&ref, m);
    mb_stream_step(s, 'x'); /* generate resets it first */
    MBT_CHECK(mb_stream_generate(s, prompt, plen, n, 0.9, 20, &r1, got, NULL, NULL, &made) == MB_STATUS_OK && made == n,
              "mb_stream_generate: %s (made %lld)", mb_last_error(), (long long)made);
    lg = mb_stream_step(ref, 0x00);
    for (i = 0; i < plen; i++) lg = mb_stream_step(ref, prompt[i]);
    for (i = 0; i < n; i++) {
        want[i] = (uint8_t)mb_sample_byte(lg, 0.9, 20, &r2);
        lg = mb_stream_step(ref, want[i]);
    }
    MBT_CHECK(!memcmp(got, want, (size_t)n) && r1 == r2, "mb_stream_generate must equal stepping the prompt and sampling by hand");
    MBT_CHECK(stream_state_equal(s, ref), "after mb_stream_generate the state must include every byte drawn");
    r1 = 7;
    same = mb_stream_generate(s, prompt, plen, n, 0.9, 20, &r1, NULL, gen_on_byte, &g, &made) == MB_STATUS_OK;
    MBT_CHECK(same && g.calls == 5 && made == 5, "on_byte returning nonzero stops the generation: %d calls, %lld made", g.calls,
              (long long)made);
    MBT_CHECK(mb_stream_generate(s, NULL, 3, 1, 0.0, 0, &r1, NULL, NULL, NULL, NULL) == MB_STATUS_INVALID_ARGUMENT &&
                  mb_stream_generate(s, prompt, plen, -1, 0.0, 0, &r1, NULL, NULL, NULL, NULL) == MB_STATUS_INVALID_ARGUMENT &&
                  mb_stream_generate(s, prompt, plen, 1, 0.0, 0, NULL, NULL, NULL, NULL, NULL) == MB_STATUS_INVALID_ARGUMENT,
              "mb_stream_generate: a NULL prompt with a length, n < 0 or no rng must be refused");
    h0 = mb_model_hash(m);
    MBT_CHECK(h0 == mb_model_hash(m), "mb_model_hash must be a function of the weights");
    p = mb_model_params(m);
    p[mb_model_num_params(m) - 1] = -p[mb_model_num_params(m) - 1];
    MBT_CHECK(mb_model_hash(m) != h0, "mb_model_hash must change when a weight changes");
    mb_stream_free(s);
    mb_stream_free(ref);
    mb_model_free(m);
}

/* The lines the CLI and the Python package print come from the library. */
static void test_describe_lines(void) {
    mb_config c = mb_config_default();
    mb_train_settings st = mb_train_settings_default();
    mb_model *m;
    mb_trainer tr;
    mb_train_report rep;
    mb_eval_exact_result ev;
    mb_train_progress pr;
    char buf[2048], path[256];
    static uint8_t text[4096];
    int k;
    memset(text, 'a', sizeof text);
    c.d_model = 32; c.n_layer = 2; c.d_state = 8; c.dt_rank = 2;
    st.batch = 2; st.ctx = 16; st.steps = 10; st.time_budget = 30;
    mb_model_create(&m, &c, 1);
    memset(&tr, 0, sizeof tr);
    MBT_CHECK(mb_trainer_init(&tr, m, &st, text, sizeof text, NULL) == MB_STATUS_OK, "trainer: %s", mb_last_error());
    k = mb_trainer_describe(buf, sizeof buf, &tr, "old.bin");
    MBT_CHECK(k > 0 && strstr(buf, "model: d_model 32, 2 layers, d_state 8") && strstr(buf, "\ntrain: batch 2 x ctx 16 x accum 1, 10 steps (resumed)") &&
                  strstr(buf, "time budget 30.0 s") && strstr(buf, "\nresumed from old.bin at step 0"),
              "mb_trainer_describe: '%s'", buf);
    memset(&rep, 0, sizeof rep);
    rep.outcome = MB_TRAIN_TIME_BUDGET; rep.steps_run = 3; rep.tokens = 96; rep.last_loss = 2.5f; rep.elapsed_s = 29.5;
    mb_train_report_describe(buf, sizeof buf, &tr, &rep);
    MBT_CHECK(strstr(buf, "time budget: stopping at step 0 after 29.5 s (budget 30.0 s)\ndone: 0 steps, 96 tokens, final loss 2.5000") != NULL,
              "mb_train_report_describe: '%s'", buf);
    k = mb_train_report_describe(buf, 8, &tr, &rep);
    MBT_CHECK(k > 8 && strlen(buf) == 7, "a short buffer is cut, with the full length returned (%d, '%s')", k, buf);
    memset(&pr, 0, sizeof pr);
    pr.step = 4; pr.loss = NAN; pr.nonfinite_run = 2;
    mb_train_progress_line(buf, sizeof buf, &pr);
    MBT_CHECK(!strcmp(buf, "step 4: non-finite loss (loss nan, grad norm 0): update skipped (2 in a row)"), "non-finite line: '%s'", buf);
    memset(&ev, 0, sizeof ev);
    ev.base.chars = 4; ev.base.chars_correct = 1; ev.base.bytes = 4; ev.base.bytes_correct = 2; ev.base.nll_bits = 8;
    mb_eval_describe(buf, sizeof buf, "x.txt", &ev, 0, 2.0);
    MBT_CHECK(strstr(buf, "eval on x.txt: 4 chars, 4 bytes\n  char accuracy  0.2500\n  bits per byte  2.0000\n  byte accuracy  0.5000\n  2 chars/s") != NULL,
              "mb_eval_describe: '%s'", buf);
    MBT_CHECK(mb_dataset_split_path(path, sizeof path, "tests", "test") == 1 && !strcmp(path, "tests/wiki.test.raw") &&
                  mb_dataset_split_path(path, sizeof path, "data/sample.txt", "test") == 0 && !strcmp(path, "data/sample.txt"),
              "mb_dataset_split_path: '%s'", path);
    mb_trainer_free(&tr);
    mb_model_free(m);
}

static void test_model(void) {
    test_scan_vs_recurrence();
    test_model_gradcheck();
    test_model_pytorch_parity();
    test_stream_matches_forward();
    test_stream_snapshot();
    test_stream_feed();
    test_eval_feed_matches_stepwise();
    test_sample_byte();
    test_generate();
    test_describe_lines();
    test_initial_loss();
    test_determinism();
    test_checkpoint_files();
    test_tensor_table();
    test_act_layout();
}
