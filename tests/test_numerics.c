/* test_numerics.c - softmax / log_softmax / logsumexp / cross-entropy:
   shift invariance, seed 003's adversarial battery against a naive float32
   version, a long-double reference, PyTorch fixtures, CE semantics and a
   finite-difference gradient check.  Included by test.c. */

/* ---- the naive float32 forms seed 003 asks us to break (tests only) ---- */
static void naive_softmax(float *out, const float *x, int64_t V) {
    float s = 0.0f;
    int64_t i;
    for (i = 0; i < V; i++) s += expf(x[i]);
    for (i = 0; i < V; i++) out[i] = expf(x[i]) / s;
}

/* ---- long-double references (finite rows only) ---- */
static long double ld_logsumexp(const float *x, int64_t V) {
    long double m = -INFINITY, s = 0.0L;
    int64_t i;
    for (i = 0; i < V; i++) if (x[i] > m) m = x[i];
    for (i = 0; i < V; i++) s += expl((long double)x[i] - m);
    return m + logl(s);
}

static int row_has_nan(const float *x, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++) if (isnan(x[i])) return 1;
    return 0;
}

static double row_sum(const float *x, int64_t n) {
    double s = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) s += x[i];
    return s;
}

static void test_shift_invariance(void) {
    /* x on a 1/64 grid in [-8, 8] and integer shifts up to 1e4: x + c is
       exact in float32, so the max-shift makes the results bit-identical. */
    mbt_rng rng = {1};
    float x[300], xc[300], a[300], b[300];
    int trial, bad = 0;
    for (trial = 0; trial < 200; trial++) {
        int64_t V = 1 + (int64_t)(mbt_next(&rng) % 300), i;
        float c = (float)((int)(mbt_next(&rng) % 20001) - 10000);
        for (i = 0; i < V; i++) {
            x[i] = (float)((int)(mbt_next(&rng) % 1025) - 512) / 64.0f;
            xc[i] = x[i] + c;
        }
        mb_log_softmax(a, x, 1, V);
        mb_log_softmax(b, xc, 1, V);
        if (memcmp(a, b, (size_t)V * sizeof(float)) != 0) bad++;
    }
    MBT_CHECK(bad == 0, "log_softmax(x+c) != log_softmax(x) in %d of 200 rows", bad);
}

/* Seed 003 Block C plus the two stress rows. */
typedef struct { const char *name; float x[600]; int64_t V; } battery_case;

static int make_battery(battery_case *c) {
    int n = 0;
    int64_t i;
    static const float rows5[6][5] = {
        {0.1f, 0.2f, 0.3f, 0.4f, 0.5f},
        {-3.0f, 0.0f, 1.0f, 2.0f, 5.0f},
        {1.0f, 92.0f, 3.0f, 0.0f, 2.0f},
        {-100.0f, -200.0f, -300.0f, -400.0f, -500.0f},
        {5.0f, 5.0f, 5.0f, 5.0f, 5.0f},
        {1.0f, -INFINITY, 3.0f, 0.0f, 2.0f}};
    static const char *names5[6] = {"small magnitudes", "mixed magnitudes", "large positive",
                                     "large negative", "all identical", "masked entry"};
    for (; n < 6; n++) {
        c[n].name = names5[n];
        c[n].V = 5;
        memcpy(c[n].x, rows5[n], sizeof rows5[n]);
    }
    c[n].name = "single element"; c[n].V = 1; c[n].x[0] = 42.0f; n++;
    c[n].name = "verb vocabulary"; c[n].V = 600;
    for (i = 0; i < 600; i++) c[n].x[i] = 0.0f;
    n++;
    c[n].name = "[1000,1001,1002]"; c[n].V = 3; c[n].x[0] = 1000; c[n].x[1] = 1001; c[n].x[2] = 1002; n++;
    c[n].name = "[-1000,-999,-998]"; c[n].V = 3; c[n].x[0] = -1000; c[n].x[1] = -999; c[n].x[2] = -998; n++;
    return n;
}

static void test_adversarial_battery(void) {
    static battery_case c[10];
    static float pad[10 * 600], sm_b[10 * 600], lsm_b[10 * 600];
    float sm[600], lsm[600], naive[600], lse, lse_b[10], ce, ce_b[10];
    int32_t tgt_b[10];
    int n = make_battery(c), k;
    int64_t i;
    mb_ce_options none = mb_ce_options_default();
    none.reduction = MB_REDUCTION_NONE;
    for (k = 0; k < n; k++) {
        int64_t V = c[k].V;
        int naive_nan, expect_naive_nan;
        mb_softmax(sm, c[k].x, 1, V);
        mb_log_softmax(lsm, c[k].x, 1, V);
        mb_logsumexp(&lse, c[k].x, 1, V);
        naive_softmax(naive, c[k].x, V);
        naive_nan = row_has_nan(naive, V);
        /* Seed 003 predicts NaN for "large positive" (exp(92) overflows: inf/inf)
           and "large negative" (0/0).  Measured in IEEE float32 the second is
           wrong: expf(-100) = 3.8e-44 is subnormal, not 0, so the naive row is
           [1,0,0,0,0].  0/0 needs every x < -103.98 (below half the smallest
           subnormal), as in the stress row [-1000,-999,-998]. */
        expect_naive_nan = !strcmp(c[k].name, "large positive") || c[k].name[0] == '[';
        if (!strcmp(c[k].name, "large negative"))
            MBT_CHECK(naive[0] == 1.0f && naive[1] == 0.0f && expf(-100.0f) > 0.0f && expf(-104.0f) == 0.0f,
                      "naive 'large negative' should survive on subnormals and underflow below -103.98");
        MBT_CHECK(naive_nan == expect_naive_nan, "naive softmax NaN=%d on '%s', expected %d", naive_nan, c[k].name, expect_naive_nan);
        MBT_CHECK(!row_has_nan(sm, V) && !row_has_nan(lsm, V) && !isnan(lse), "stable output NaN on '%s'", c[k].name);
        MBT_CHECK(fabs(row_sum(sm, V) - 1.0) < 1e-6, "softmax sum %.9f on '%s'", row_sum(sm, V), c[k].name);
        {   /* against the long-double reference (finite entries) */
            long double ref_lse = ld_logsumexp(c[k].x, V);
            int ok = mbt_close(lse, (double)ref_lse, 1e-6, 0);
            for (i = 0; i < V; i++) {
                long double lp = (long double)c[k].x[i] - ref_lse;
                ok &= mbt_close(lsm[i], (double)lp, 1e-6, 1e-7);
                ok &= mbt_close(sm[i], (double)expl(lp), 1e-6, 1e-30);
            }
            MBT_CHECK(ok, "battery '%s' differs from long-double reference", c[k].name);
        }
        if (V > 1) {
            int32_t y = 1;
            long double ref = ld_logsumexp(c[k].x, V) - (long double)c[k].x[1];
            MBT_CHECK(mb_cross_entropy_forward(&ce, c[k].x, &y, 1, V, NULL) == MB_STATUS_OK, "ce status on '%s'", c[k].name);
            MBT_CHECK(mbt_close(ce, (double)ref, 1e-6, 1e-7), "ce '%s' = %.9g, ref %.9Lg", c[k].name, ce, ref);
        } else {
            int32_t y = 1; /* V = 1: class 1 does not exist */
            ce = 123.0f;
            MBT_CHECK(mb_cross_entropy_forward(&ce, c[k].x, &y, 1, V, NULL) == MB_STATUS_INVALID_ARGUMENT && ce == 123.0f,
                      "ce with y=1 on a 1-class row must be rejected untouched");
        }
        /* the same row as part of one batch padded with -inf to V=600 */
        for (i = 0; i < 600; i++) pad[k * 600 + i] = i < V ? c[k].x[i] : -INFINITY;
        tgt_b[k] = V > 1 ? 1 : -100;
    }
    mb_softmax(sm_b, pad, n, 600);
    mb_log_softmax(lsm_b, pad, n, 600);
    mb_logsumexp(lse_b, pad, n, 600);
    MBT_CHECK(mb_cross_entropy_forward(ce_b, pad, tgt_b, n, 600, &none) == MB_STATUS_OK, "batched ce status");
    for (k = 0; k < n; k++) {
        int64_t V = c[k].V;
        int ok = 1;
        mb_softmax(sm, c[k].x, 1, V);
        mb_log_softmax(lsm, c[k].x, 1, V);
        mb_logsumexp(&lse, c[k].x, 1, V);
        for (i = 0; i < 600; i++) {
            ok &= i < V ? mbt_close(sm_b[k * 600 + i], sm[i], 1e-6, 0) : sm_b[k * 600 + i] == 0.0f;
            ok &= i < V ? mbt_close(lsm_b[k * 600 + i], lsm[i], 1e-6, 1e-7) : lsm_b[k * 600 + i] == -INFINITY;
        }
        ok &= mbt_close(lse_b[k], lse, 1e-6, 0);
        if (V > 1) {
            int32_t y = 1;
            mb_cross_entropy_forward(&ce, c[k].x, &y, 1, V, NULL);
            ok &= mbt_close(ce_b[k], ce, 1e-6, 1e-7);
        } else {
            ok &= ce_b[k] == 0.0f; /* ignored row */
        }
        MBT_CHECK(ok, "batched battery row '%s' differs from the single-row result", c[k].name);
    }
}

static void test_special_rows(void) {
    float x[4], out[4], lse, ce, d[4], one = 1.0f;
    int32_t y = 2;
    int i;
    /* all -inf: uniform, -log V, -inf, log V with the uniform gradient */
    for (i = 0; i < 4; i++) x[i] = -INFINITY;
    mb_softmax(out, x, 1, 4);
    MBT_CHECK(out[0] == 0.25f && out[3] == 0.25f, "all -inf softmax should be uniform");
    mb_log_softmax(out, x, 1, 4);
    MBT_CHECK(fabsf(out[1] + logf(4.0f)) < 1e-7f, "all -inf log_softmax should be -log V");
    mb_logsumexp(&lse, x, 1, 4);
    MBT_CHECK(lse == -INFINITY, "all -inf logsumexp should be -inf");
    mb_cross_entropy_forward(&ce, x, &y, 1, 4, NULL);
    MBT_CHECK(fabsf(ce - logf(4.0f)) < 1e-7f, "all -inf ce should be log V, got %g", ce);
    mb_cross_entropy_backward(d, &one, x, &y, 1, 4, NULL);
    MBT_CHECK(d[0] == 0.25f && d[2] == -0.75f, "all -inf ce gradient should be uniform - onehot");
    /* +inf entries share the mass */
    x[0] = INFINITY; x[1] = 3.0f; x[2] = INFINITY; x[3] = -INFINITY;
    mb_softmax(out, x, 1, 4);
    MBT_CHECK(out[0] == 0.5f && out[1] == 0.0f && out[2] == 0.5f && out[3] == 0.0f, "+inf entries should split the mass");
    mb_logsumexp(&lse, x, 1, 4);
    MBT_CHECK(lse == INFINITY, "+inf logsumexp should be +inf");
    mb_cross_entropy_forward(&ce, x, &y, 1, 4, NULL);
    MBT_CHECK(fabsf(ce - logf(2.0f)) < 1e-7f, "ce on one of two +inf entries should be log 2, got %g", ce);
    /* NaN is never hidden */
    x[0] = 1.0f; x[1] = NAN; x[2] = 2.0f; x[3] = 0.0f;
    mb_softmax(out, x, 1, 4);
    MBT_CHECK(isnan(out[0]) && isnan(out[2]), "NaN in a row must make the softmax row NaN");
    mb_logsumexp(&lse, x, 1, 4);
    MBT_CHECK(isnan(lse), "NaN in a row must make logsumexp NaN");
    mb_cross_entropy_forward(&ce, x, &y, 1, 4, NULL);
    MBT_CHECK(isnan(ce), "NaN in a row must make the loss NaN");
    /* -inf at the target costs +inf */
    x[0] = 1.0f; x[1] = 0.0f; x[2] = -INFINITY; x[3] = 0.5f;
    mb_cross_entropy_forward(&ce, x, &y, 1, 4, NULL);
    MBT_CHECK(ce == INFINITY, "-inf target logit should give +inf loss, got %g", ce);
}

/* Long-double reference of one row's smoothed CE and its gradient. */
static long double ld_ce_row(const float *x, int64_t V, int32_t y, double eps, long double *grad /* V, or NULL */) {
    long double lse = ld_logsumexp(x, V), loss = (1.0L - eps) * (lse - x[y]), s = 0.0L;
    int64_t i;
    for (i = 0; i < V; i++) {
        s += lse - x[i];
        if (grad) grad[i] = expl((long double)x[i] - lse) - (eps / (long double)V + (i == y ? 1.0L - eps : 0.0L));
    }
    return loss + eps * s / (long double)V;
}

static void test_long_double_reference(void) {
    mbt_rng rng = {7};
    static float x[64 * 257], sm[64 * 257], lsm[64 * 257], lse[64];
    int trial, bad_sm = 0, bad_lsm = 0, bad_lse = 0;
    for (trial = 0; trial < 50; trial++) {
        int64_t rows = 1 + (int64_t)(mbt_next(&rng) % 64), V = 1 + (int64_t)(mbt_next(&rng) % 257), r, i;
        double scale = trial % 3 == 0 ? 10.0 : 1.0;
        for (i = 0; i < rows * V; i++) x[i] = (float)(scale * mbt_normal(&rng));
        mb_softmax(sm, x, rows, V);
        mb_log_softmax(lsm, x, rows, V);
        mb_logsumexp(lse, x, rows, V);
        for (r = 0; r < rows; r++) {
            long double ref = ld_logsumexp(x + r * V, V);
            bad_lse += !mbt_close(lse[r], (double)ref, 1e-6, 0);
            for (i = 0; i < V; i++) {
                long double lp = (long double)x[r * V + i] - ref;
                bad_lsm += !mbt_close(lsm[r * V + i], (double)lp, 1e-6, 1e-7);
                bad_sm += !mbt_close(sm[r * V + i], (double)expl(lp), 1e-6, 1e-30);
            }
        }
    }
    MBT_CHECK(bad_sm == 0, "softmax: %d entries off the long-double reference by > 1e-6 rel", bad_sm);
    MBT_CHECK(bad_lsm == 0, "log_softmax: %d entries off the long-double reference", bad_lsm);
    MBT_CHECK(bad_lse == 0, "logsumexp: %d rows off the long-double reference", bad_lse);
}

static void test_ce_semantics(void) {
    enum { R = 6, V = 7 };
    mbt_rng rng = {11};
    float x[R * V], loss[R], l1, d[R * V], dfd, dl = 1.0f, poison[R];
    int32_t t[R] = {3, -100, 0, 6, -100, 2}, t_all[R] = {-100, -100, -100, -100, -100, -100}, t_bad[R] = {3, 1, 7, 0, 1, 2};
    mb_ce_options o = mb_ce_options_default();
    long double ref_sum = 0.0L, g[V];
    int i, r, ok;
    for (i = 0; i < R * V; i++) x[i] = (float)(2.0 * mbt_normal(&rng));
    for (r = 0; r < R; r++) if (t[r] >= 0) ref_sum += ld_ce_row(x + r * V, V, t[r], 0.0, NULL);
    /* MEAN divides by the 4 non-ignored rows; SUM does not; NONE writes 0 for ignored rows */
    mb_cross_entropy_forward(&l1, x, t, R, V, &o);
    MBT_CHECK(mbt_close(l1, (double)(ref_sum / 4), 1e-6, 0), "MEAN with ignored rows: %g vs %Lg", l1, ref_sum / 4);
    o.reduction = MB_REDUCTION_SUM;
    mb_cross_entropy_forward(&l1, x, t, R, V, &o);
    MBT_CHECK(mbt_close(l1, (double)ref_sum, 1e-6, 0), "SUM with ignored rows: %g vs %Lg", l1, ref_sum);
    o.reduction = MB_REDUCTION_NONE;
    mb_cross_entropy_forward(loss, x, t, R, V, &o);
    ok = loss[1] == 0.0f && loss[4] == 0.0f;
    for (r = 0; r < R; r++) if (t[r] >= 0) ok &= mbt_close(loss[r], (double)ld_ce_row(x + r * V, V, t[r], 0.0, NULL), 1e-6, 0);
    MBT_CHECK(ok, "NONE reduction per-row losses");
    /* all ignored: NaN under MEAN, 0 under SUM, zero gradient */
    o.reduction = MB_REDUCTION_MEAN;
    mb_cross_entropy_forward(&l1, x, t_all, R, V, &o);
    MBT_CHECK(isnan(l1), "MEAN over all-ignored rows should be NaN, got %g", l1);
    o.reduction = MB_REDUCTION_SUM;
    mb_cross_entropy_forward(&l1, x, t_all, R, V, &o);
    MBT_CHECK(l1 == 0.0f, "SUM over all-ignored rows should be 0, got %g", l1);
    mb_cross_entropy_backward(d, &dl, x, t_all, R, V, &o);
    ok = 1;
    for (i = 0; i < R * V; i++) ok &= d[i] == 0.0f;
    MBT_CHECK(ok, "all-ignored gradient should be zero");
    /* invalid target: rejected, nothing written */
    o = mb_ce_options_default();
    o.reduction = MB_REDUCTION_NONE;
    for (r = 0; r < R; r++) poison[r] = loss[r] = 777.0f;
    MBT_CHECK(mb_cross_entropy_forward(loss, x, t_bad, R, V, &o) == MB_STATUS_INVALID_ARGUMENT, "target 7 with V=7 must be invalid");
    MBT_CHECK(memcmp(loss, poison, sizeof loss) == 0, "invalid target must leave the output untouched");
    MBT_CHECK(strstr(mb_last_error(), "target 7") != NULL, "error message should name the bad target: '%s'", mb_last_error());
    /* label smoothing and its gradient against long double, MEAN over valid rows */
    o = mb_ce_options_default();
    o.label_smoothing = 0.2f;
    mb_cross_entropy_forward(&l1, x, t, R, V, &o);
    mb_cross_entropy_backward(d, &dl, x, t, R, V, &o);
    {
        long double ref = 0.0L;
        ok = 1;
        for (r = 0; r < R; r++) {
            if (t[r] < 0) { for (i = 0; i < V; i++) ok &= d[r * V + i] == 0.0f; continue; }
            ref += ld_ce_row(x + r * V, V, t[r], 0.2, g);
            for (i = 0; i < V; i++) ok &= mbt_close(d[r * V + i], (double)(g[i] / 4), 1e-5, 1e-7);
        }
        MBT_CHECK(mbt_close(l1, (double)(ref / 4), 1e-6, 0), "label smoothing loss %g vs %Lg", l1, ref / 4);
        MBT_CHECK(ok, "label smoothing gradient vs long double");
    }
    /* finite differences of the library's own forward, for each reduction */
    {
        mb_reduction reds[3] = {MB_REDUCTION_MEAN, MB_REDUCTION_SUM, MB_REDUCTION_NONE};
        float up[R] = {0.3f, -1.0f, 0.7f, 1.1f, 2.0f, -0.4f};
        int k, worst_i = -1;
        double worst = 0.0;
        for (k = 0; k < 3; k++) {
            o = mb_ce_options_default();
            o.reduction = reds[k];
            o.label_smoothing = k == 1 ? 0.1f : 0.0f;
            mb_cross_entropy_backward(d, k == 2 ? up : &dl, x, t, R, V, &o);
            for (i = 0; i < R * V; i++) {
                float keep = x[i], h = 1e-2f;
                double fp = 0, fm = 0;
                x[i] = keep + h;
                mb_cross_entropy_forward(loss, x, t, R, V, &o);
                for (r = 0; r < (k == 2 ? R : 1); r++) fp += (double)loss[r] * (k == 2 ? up[r] : 1.0);
                x[i] = keep - h;
                mb_cross_entropy_forward(loss, x, t, R, V, &o);
                for (r = 0; r < (k == 2 ? R : 1); r++) fm += (double)loss[r] * (k == 2 ? up[r] : 1.0);
                x[i] = keep;
                dfd = (float)((fp - fm) / (2.0 * h));
                if (fabs(dfd - d[i]) > worst) { worst = fabs(dfd - d[i]); worst_i = k * 1000 + i; }
            }
        }
        MBT_CHECK(worst < 3e-4, "CE finite-difference gradient: worst |fd - analytic| = %g at %d", worst, worst_i);
    }
}

/* PyTorch 1.13 values from tools/make_fixtures.py (committed). */
static void test_numerics_fixtures(void) {
    mbfx f;
    int k, n;
    const mbfx_entry *e;
    if (mbfx_load(&f, "tests/fixtures/numerics.mbfx") != 0) {
        MBT_CHECK(0, "tests/fixtures/numerics.mbfx missing or unreadable (run make test from the repo root)");
        return;
    }
    e = mbfx_get(&f, "ncases");
    n = e ? ((const int32_t *)e->data)[0] : 0;
    MBT_CHECK(n >= 8, "numerics fixture should hold at least 8 cases, has %d", n);
    for (k = 0; k < n; k++) {
        char name[64];
        const mbfx_entry *ex, *et;
        const float *x;
        const int32_t *t;
        int64_t rows, V, bad;
        float *out, *d, one = 1.0f;
        mb_ce_options o = mb_ce_options_default();
        struct { const char *suffix; int which; } outs[] = {
            {"softmax", 0}, {"log_softmax", 1}, {"logsumexp", 2}, {"ce_mean", 3}, {"ce_sum", 4},
            {"ce_none", 5}, {"ce_smooth_mean", 6}, {"ce_smooth_none", 7}, {"dce_mean", 8}, {"dce_smooth_mean", 9}};
        int j;
        snprintf(name, sizeof name, "case%d.x", k);
        ex = mbfx_get(&f, name);
        snprintf(name, sizeof name, "case%d.targets", k);
        et = mbfx_get(&f, name);
        if (!ex || !et || ex->ndim != 2) { MBT_CHECK(0, "fixture case%d incomplete", k); continue; }
        rows = ex->dims[0]; V = ex->dims[1];
        x = (const float *)ex->data; t = (const int32_t *)et->data;
        out = (float *)calloc((size_t)(rows * V), sizeof(float));
        d = (float *)calloc((size_t)(rows * V), sizeof(float));
        for (j = 0; j < 10; j++) {
            const mbfx_entry *want;
            int64_t n_out = rows;
            snprintf(name, sizeof name, "case%d.%s", k, outs[j].suffix);
            want = mbfx_get(&f, name);
            if (!want) { MBT_CHECK(0, "fixture %s missing", name); continue; }
            o = mb_ce_options_default();
            switch (outs[j].which) {
            case 0: mb_softmax(out, x, rows, V); n_out = rows * V; break;
            case 1: mb_log_softmax(out, x, rows, V); n_out = rows * V; break;
            case 2: mb_logsumexp(out, x, rows, V); break;
            case 3: mb_cross_entropy_forward(out, x, t, rows, V, &o); n_out = 1; break;
            case 4: o.reduction = MB_REDUCTION_SUM; mb_cross_entropy_forward(out, x, t, rows, V, &o); n_out = 1; break;
            case 5: o.reduction = MB_REDUCTION_NONE; mb_cross_entropy_forward(out, x, t, rows, V, &o); break;
            case 6: o.label_smoothing = 0.1f; mb_cross_entropy_forward(out, x, t, rows, V, &o); n_out = 1; break;
            case 7: o.label_smoothing = 0.1f; o.reduction = MB_REDUCTION_NONE; mb_cross_entropy_forward(out, x, t, rows, V, &o); break;
            case 8: mb_cross_entropy_backward(out, &one, x, t, rows, V, &o); n_out = rows * V; break;
            case 9: o.label_smoothing = 0.1f; mb_cross_entropy_backward(out, &one, x, t, rows, V, &o); n_out = rows * V; break;
            }
            MBT_CHECK(want->numel == n_out, "%s: size %lld vs %lld", name, (long long)want->numel, (long long)n_out);
            if (want->numel != n_out) continue;
            /* 1e-6 relative; log-probabilities near 0 and gradients near 0 get a 1e-7 floor */
            bad = mbt_first_mismatch(out, (const float *)want->data, n_out, 1e-6, 1e-7);
            MBT_CHECK(bad < 0, "%s differs from PyTorch at %lld: %.9g vs %.9g", name, (long long)bad,
                      bad < 0 ? 0.0 : out[bad], bad < 0 ? 0.0 : ((const float *)want->data)[bad]);
        }
        free(out);
        free(d);
    }
    mbfx_free(&f);
}

static void test_numerics(void) {
    test_shift_invariance();
    test_adversarial_battery();
    test_special_rows();
    test_long_double_reference();
    test_ce_semantics();
    test_numerics_fixtures();
}
