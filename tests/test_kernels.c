/* test_kernels.c - the optimised CPU kernels against plain reference loops
   (double accumulation): matrix products (tiled and row paths, odd sizes,
   row stride > IC, both dw layouts), the packed and plain matrix-vector
   products bit for bit against a row of the batch product, the conv, the
   scan (partial channel blocks, chunks split into tiles, tiles shorter
   than d_state, other d_state; the AVX-512 pieces against their portable
   twins), the streaming conv and scan steps bit for bit against the batch
   forward, the vectorisable exp / softplus / sigmoid, and independence of
   the thread count.  Included by test.c. */

static void kt_fill(float *x, int64_t n, mbt_rng *r, double scale) {
    int64_t i;
    for (i = 0; i < n; i++) x[i] = (float)(scale * mbt_normal(r));
}

static void kt_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
static int kt_max_threads(void) {
#ifdef _OPENMP
    return omp_get_num_procs() > 1 ? omp_get_num_procs() : 2;
#else
    return 1;
#endif
}

/* |got - ref| <= tol * scale elementwise, scale the sum of |terms| (the
   size a float32 rounding error can take). */
static int kt_close(const float *got, const double *ref, const double *scale, int64_t n, double tol, int64_t *where) {
    int64_t i;
    for (i = 0; i < n; i++)
        if (!(fabs((double)got[i] - ref[i]) <= tol * scale[i] + 1e-30)) {
            *where = i;
            return 0;
        }
    *where = -1;
    return 1;
}

/* ------------------------------------------------------ matrix products */
static void kt_matmul_case(int64_t N, int IC, int OC, int64_t ldi) {
    mbt_rng r = {(uint64_t)(N * 1000003 + IC * 1009 + OC)};
    float *x = (float *)malloc(sizeof(float) * (size_t)(N * ldi)), *w = (float *)malloc(sizeof(float) * (size_t)IC * OC);
    float *out = (float *)malloc(sizeof(float) * (size_t)(N * OC)), *row = (float *)malloc(sizeof(float) * (size_t)OC);
    float *g = (float *)malloc(sizeof(float) * (size_t)(N * OC)), *dx = (float *)malloc(sizeof(float) * (size_t)(N * ldi));
    float *dw = (float *)malloc(sizeof(float) * (size_t)IC * OC), *dx0 = (float *)malloc(sizeof(float) * (size_t)(N * ldi));
    float *dw0 = (float *)malloc(sizeof(float) * (size_t)IC * OC);
    float *wp = (float *)malloc(sizeof(float) * (size_t)mb__matvec_packed_floats(IC, OC));
    double *ref = (double *)malloc(sizeof(double) * (size_t)(N * ldi + (int64_t)IC * OC + N * OC));
    double *scl = (double *)malloc(sizeof(double) * (size_t)(N * ldi + (int64_t)IC * OC + N * OC));
    int64_t n, where;
    int o, i, same_mv = 1, same_packed = 1, pad_ok = 1;
    kt_fill(x, N * ldi, &r, 1.0);
    kt_fill(w, (int64_t)IC * OC, &r, 0.5);
    kt_fill(g, N * OC, &r, 1.0);
    kt_fill(dx0, N * ldi, &r, 1.0);
    kt_fill(dw0, (int64_t)IC * OC, &r, 1.0);
    /* forward */
    mb__matmul_forward(out, x, ldi, w, N, IC, OC);
    for (n = 0; n < N; n++)
        for (o = 0; o < OC; o++) {
            double s = 0.0, a = 0.0;
            for (i = 0; i < IC; i++) {
                s += (double)x[n * ldi + i] * w[(int64_t)o * IC + i];
                a += fabs((double)x[n * ldi + i] * w[(int64_t)o * IC + i]);
            }
            ref[n * OC + o] = s;
            scl[n * OC + o] = a;
        }
    MBT_CHECK(kt_close(out, ref, scl, N * OC, 4e-7 * (IC > 16 ? 16 + IC / 16 : IC), &where),
              "matmul forward N=%lld IC=%d OC=%d ldi=%lld: element %lld is %g, reference %g", (long long)N, IC, OC,
              (long long)ldi, (long long)where, where >= 0 ? out[where] : 0.0, where >= 0 ? ref[where] : 0.0);
    /* the streaming products: the same float result as a row of the batch one */
    mb__matvec_pack(wp, w, IC, OC);
    for (n = 0; n < N; n++) {
        mb__dot_rows(row, x + n * ldi, w, IC, OC);
        same_mv &= memcmp(row, out + n * OC, sizeof(float) * (size_t)OC) == 0;
        mb__matvec_packed(row, x + n * ldi, wp, IC, OC);
        same_packed &= memcmp(row, out + n * OC, sizeof(float) * (size_t)OC) == 0;
    }
    MBT_CHECK(same_mv, "mb__dot_rows differs from a row of mb__matmul_forward (N=%lld IC=%d OC=%d)", (long long)N, IC, OC);
    MBT_CHECK(same_packed, "mb__matvec_packed differs from a row of mb__matmul_forward (N=%lld IC=%d OC=%d)", (long long)N,
              IC, OC);
    /* backward: dinp += dout @ w (padding columns untouched), dw += dout^T @ inp */
    memcpy(dx, dx0, sizeof(float) * (size_t)(N * ldi));
    memcpy(dw, dw0, sizeof(float) * (size_t)IC * OC);
    mb__matmul_backward(dx, dw, g, x, ldi, w, N, IC, OC);
    for (n = 0; n < N; n++)
        for (i = 0; i < ldi; i++) {
            double s = dx0[n * ldi + i], a = fabs(s);
            if (i >= IC) {
                pad_ok &= dx[n * ldi + i] == dx0[n * ldi + i];
                ref[n * ldi + i] = s; scl[n * ldi + i] = a;
                continue;
            }
            for (o = 0; o < OC; o++) {
                s += (double)g[n * OC + o] * w[(int64_t)o * IC + i];
                a += fabs((double)g[n * OC + o] * w[(int64_t)o * IC + i]);
            }
            ref[n * ldi + i] = s;
            scl[n * ldi + i] = a;
        }
    MBT_CHECK(pad_ok, "matmul backward must leave columns IC..ldi of dinp alone");
    MBT_CHECK(kt_close(dx, ref, scl, N * ldi, 4e-7 * (OC + 1), &where),
              "matmul backward dinp N=%lld IC=%d OC=%d: element %lld is %g, reference %g", (long long)N, IC, OC,
              (long long)where, where >= 0 ? dx[where] : 0.0, where >= 0 ? ref[where] : 0.0);
    for (o = 0; o < OC; o++)
        for (i = 0; i < IC; i++) {
            double s = dw0[(int64_t)o * IC + i], a = fabs(s);
            for (n = 0; n < N; n++) {
                s += (double)g[n * OC + o] * x[n * ldi + i];
                a += fabs((double)g[n * OC + o] * x[n * ldi + i]);
            }
            ref[(int64_t)o * IC + i] = s;
            scl[(int64_t)o * IC + i] = a;
        }
    MBT_CHECK(kt_close(dw, ref, scl, (int64_t)IC * OC, 4e-7 * (double)(N + 1), &where),
              "matmul backward dw N=%lld IC=%d OC=%d: element %lld is %g, reference %g", (long long)N, IC, OC,
              (long long)where, where >= 0 ? dw[where] : 0.0, where >= 0 ? ref[where] : 0.0);
    {   /* no dinp: dw alone, the same values */
        float *dw2 = (float *)malloc(sizeof(float) * (size_t)IC * OC);
        memcpy(dw2, dw0, sizeof(float) * (size_t)IC * OC);
        mb__matmul_backward(NULL, dw2, g, x, ldi, w, N, IC, OC);
        MBT_CHECK(memcmp(dw2, dw, sizeof(float) * (size_t)IC * OC) == 0, "matmul backward with dinp NULL: dw differs");
        free(dw2);
    }
    free(x); free(w); free(out); free(row); free(g); free(dx); free(dw); free(dx0); free(dw0); free(wp); free(ref); free(scl);
}

/* The same call on 1 thread and on several: bit for bit. */
static void kt_matmul_threads(int64_t N, int IC, int OC, int64_t ldi) {
    mbt_rng r = {77};
    float *x = (float *)malloc(sizeof(float) * (size_t)(N * ldi)), *w = (float *)malloc(sizeof(float) * (size_t)IC * OC);
    float *g = (float *)malloc(sizeof(float) * (size_t)(N * OC));
    float *o1 = (float *)malloc(sizeof(float) * (size_t)(N * OC)), *o2 = (float *)malloc(sizeof(float) * (size_t)(N * OC));
    float *dx1 = (float *)calloc((size_t)(N * ldi), sizeof(float)), *dx2 = (float *)calloc((size_t)(N * ldi), sizeof(float));
    float *dw1 = (float *)calloc((size_t)IC * OC, sizeof(float)), *dw2 = (float *)calloc((size_t)IC * OC, sizeof(float));
    kt_fill(x, N * ldi, &r, 1.0);
    kt_fill(w, (int64_t)IC * OC, &r, 0.5);
    kt_fill(g, N * OC, &r, 1.0);
    kt_threads(1);
    mb__matmul_forward(o1, x, ldi, w, N, IC, OC);
    mb__matmul_backward(dx1, dw1, g, x, ldi, w, N, IC, OC);
    kt_threads(kt_max_threads() + 1); /* an odd count too */
    mb__matmul_forward(o2, x, ldi, w, N, IC, OC);
    mb__matmul_backward(dx2, dw2, g, x, ldi, w, N, IC, OC);
    MBT_CHECK(memcmp(o1, o2, sizeof(float) * (size_t)(N * OC)) == 0 &&
                  memcmp(dx1, dx2, sizeof(float) * (size_t)(N * ldi)) == 0 &&
                  memcmp(dw1, dw2, sizeof(float) * (size_t)IC * OC) == 0,
              "matmul N=%lld IC=%d OC=%d: results depend on the thread count", (long long)N, IC, OC);
    kt_threads(kt_max_threads());
    free(x); free(w); free(g); free(o1); free(o2); free(dx1); free(dx2); free(dw1); free(dw2);
}

/* A stream's products (mb__packed_linear) at each precision: T rows at once
   equal each row alone bit for bit (float32: and mb__matmul_forward's
   rows), on one thread and on several; bf16 / int8 equal their plain C
   kernel (the AVX-512 one where it runs). */
static void kt_krows_case(int64_t T, int IC, int OC, int64_t ldi) {
    const int precs[3] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    mbt_rng r = {(uint64_t)(T * 7919 + IC * 31 + OC)};
    float *x = (float *)malloc(sizeof(float) * (size_t)(T * ldi)), *w = (float *)malloc(sizeof(float) * (size_t)IC * OC);
    float *all = (float *)malloc(sizeof(float) * (size_t)(T * OC)), *all2 = (float *)malloc(sizeof(float) * (size_t)(T * OC));
    float *ref = (float *)malloc(sizeof(float) * (size_t)(T * OC)), *row = (float *)malloc(sizeof(float) * (size_t)OC);
    const size_t rb = sizeof(float) * (size_t)OC;
    int i;
    int64_t n;
    kt_fill(x, T * ldi, &r, 1.0);
    kt_fill(w, (int64_t)IC * OC, &r, 0.5);
    mb__matmul_forward(ref, x, ldi, w, T, IC, OC);
    for (i = 0; i < 3; i++) {
        mb__packed q;
        void *buf;
        int same = 1, same_ref = 1;
        memset(&q, 0, sizeof q);
        q.IC = IC, q.OC = OC, q.prec = precs[i];
        if (precs[i] == MB_PRECISION_FP32) {
            buf = malloc(sizeof(float) * (size_t)mb__matvec_packed_floats(IC, OC));
            mb__matvec_pack((float *)buf, w, IC, OC);
            q.w = (const float *)buf;
        } else {
            buf = malloc((size_t)mb__qbytes(IC, OC, precs[i]));
            mb__quantize(&q, buf, w);
        }
        kt_threads(1);
        mb__packed_linear(all, x, ldi, T, &q);
        kt_threads(kt_max_threads() + 1);
        mb__packed_linear(all2, x, ldi, T, &q);
        kt_threads(kt_max_threads());
        for (n = 0; n < T; n++) {
            mb__packed_linear(row, x + n * ldi, ldi, 1, &q);
            same &= memcmp(row, all + n * OC, rb) == 0;
#if defined(__FMA__) /* the twins agree where MB__FMA fuses */
            if (precs[i] != MB_PRECISION_FP32)
                mb__krows_portable(row, OC, x + n * ldi, ldi, &q, 0, 1, (OC + 15) / 16);
#endif
            same_ref &= memcmp(row, precs[i] == MB_PRECISION_FP32 ? ref + n * OC : all + n * OC, rb) == 0;
        }
        MBT_CHECK(same && memcmp(all, all2, rb * (size_t)T) == 0,
                  "stream product precision %d T=%lld IC=%d OC=%d: rows together differ from rows alone or by thread count", precs[i],
                  (long long)T, IC, OC);
        MBT_CHECK(same_ref, "stream product precision %d T=%lld IC=%d OC=%d: differs from %s", precs[i], (long long)T, IC, OC,
                  precs[i] == MB_PRECISION_FP32 ? "mb__matmul_forward" : "the plain C kernel");
        free(buf);
    }
    free(x); free(w); free(all); free(all2); free(ref); free(row);
}

/* Short feeds (the batched step on one state) and the long path past
   MB__KROWS_MAX leave the logits and the state of as many steps, bit for
   bit, at each precision. */
static void kt_short_feeds(void) {
    const int precs[3] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8}, lens[5] = {1, 2, 7, MB__KROWS_MAX, MB__KROWS_MAX + 1};
    mb_config c = mb_config_default();
    mb_model *m;
    uint8_t x[MB__KROWS_MAX + 1];
    float *lg = (float *)malloc(sizeof(float) * 256 * (MB__KROWS_MAX + 1));
    int i, j, t;
    c.d_model = 40, c.n_layer = 2;
    for (t = 0; t <= MB__KROWS_MAX; t++) x[t] = (uint8_t)(" feeds and steps agree"[t % 22] + t / 22);
    MBT_CHECK(mb_model_create(&m, &c, 11) == MB_STATUS_OK, "model");
    for (i = 0; i < 3; i++)
        for (j = 0; j < 5; j++) {
            mb_stream *a, *b;
            int same = 1;
            mb_stream_create_ex(&a, m, precs[i]);
            mb_stream_create_ex(&b, m, precs[i]);
            mb_stream_feed(a, x, 3, NULL); /* from a state that is not zero */
            for (t = 0; t < 3; t++) mb_stream_step(b, x[t]);
            MBT_CHECK(mb_stream_feed(a, x, lens[j], lg) == MB_STATUS_OK, "feed");
            for (t = 0; t < lens[j]; t++) same &= memcmp(mb_stream_step(b, x[t]), lg + t * 256, 1024) == 0;
            same &= memcmp(a->conv_state, b->conv_state, sizeof(float) * (size_t)a->state_floats) == 0;
            MBT_CHECK(same, "precision %d: a feed of %d bytes differs from its steps (logits or state)", precs[i], lens[j]);
            mb_stream_free(a);
            mb_stream_free(b);
        }
    mb_model_free(m);
    free(lg);
}

static void test_kernels_matmul(void) {
    /* N around the row tile and the one-row path; IC below, at and off 16;
       the model's shapes; a row stride wider than IC; long rows (chunked
       steps, then the row path); narrow IC (dw along outputs) */
    static const int cases[][4] = {
        {1, 5, 3, 5},      {5, 19, 13, 25},    {11, 16, 1, 16},   {12, 17, 33, 20},  {13, 33, 70, 40},
        {37, 192, 71, 192}, {40, 384, 44, 384}, {41, 12, 384, 44}, {29, 7, 65, 9},    {67, 600, 41, 601},
        {13, 8300, 3, 8300}, {50, 40, 600, 44}, {23, 31, 32, 31},  {19, 64, 96, 65},  {7, 1, 1, 1},
    };
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) kt_matmul_case(cases[k][0], cases[k][1], cases[k][2], cases[k][3]);
    kt_matmul_threads(101, 192, 77, 200);
    kt_matmul_threads(53, 12, 96, 44);
    kt_matmul_threads(7, 33, 40, 33);
    { /* rows in groups of 1..6 (and past MB__KROWS_MAX), IC off 16 and past an int8 group, OC off 16 and 128 */
        static const int kr[][4] = {{2, 37, 45, 40}, {3, 192, 71, 192}, {4, 5, 3, 5},     {5, 12, 384, 44}, {7, 384, 44, 384},
                                    {16, 33, 130, 33}, {17, 64, 96, 65}, {33, 200, 260, 201}, {13, 130, 31, 130}, {65, 40, 50, 40}};
        for (k = 0; k < sizeof kr / sizeof kr[0]; k++) kt_krows_case(kr[k][0], kr[k][1], kr[k][2], kr[k][3]);
    }
    kt_short_feeds();
}

/* ------------------------------------------------------------------ conv */
static void test_kernels_conv(void) {
    static const int cases[][4] = {{2, 9, 37, 4}, {1, 3, 16, 4}, {3, 20, 5, 1}, {2, 17, 48, 3}, {1, 6, 33, 7}};
    size_t q;
    for (q = 0; q < sizeof cases / sizeof cases[0]; q++) {
        int B = cases[q][0], T = cases[q][1], Di = cases[q][2], K = cases[q][3], b, t, d, k;
        int64_t N = (int64_t)B * T, where;
        mbt_rng r = {500 + q};
        float *xz = (float *)malloc(sizeof(float) * (size_t)(N * 2 * Di)), *w = (float *)malloc(sizeof(float) * (size_t)(Di * K));
        float *bias = (float *)malloc(sizeof(float) * (size_t)Di), *out = (float *)malloc(sizeof(float) * (size_t)(N * Di));
        float *g = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *dxz = (float *)malloc(sizeof(float) * (size_t)(N * 2 * Di));
        float *dw = (float *)malloc(sizeof(float) * (size_t)(Di * K)), *db = (float *)malloc(sizeof(float) * (size_t)Di);
        float *o1 = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *dxz1 = (float *)malloc(sizeof(float) * (size_t)(N * 2 * Di));
        double *ro = (double *)calloc((size_t)(N * Di), sizeof(double)), *rdx = (double *)calloc((size_t)(N * 2 * Di), sizeof(double));
        double *rdw = (double *)calloc((size_t)(Di * K), sizeof(double)), *rdb = (double *)calloc((size_t)Di, sizeof(double));
        double *so = (double *)malloc(sizeof(double) * (size_t)(N * 2 * Di + Di * K + Di));
        kt_fill(xz, N * 2 * Di, &r, 1.0);
        kt_fill(w, (int64_t)Di * K, &r, 0.5);
        kt_fill(bias, Di, &r, 0.3);
        kt_fill(g, N * Di, &r, 1.0);
        kt_fill(dxz, N * 2 * Di, &r, 1.0);
        kt_fill(dw, (int64_t)Di * K, &r, 1.0);
        kt_fill(db, Di, &r, 1.0);
        for (d = 0; d < N * 2 * Di; d++) rdx[d] = dxz[d];
        for (d = 0; d < Di * K; d++) rdw[d] = dw[d];
        for (d = 0; d < Di; d++) rdb[d] = db[d];
        for (b = 0; b < B; b++)
            for (t = 0; t < T; t++)
                for (d = 0; d < Di; d++) {
                    double pre = bias[d], s, dpre;
                    int64_t tok = (int64_t)b * T + t;
                    for (k = 0; k < K; k++) {
                        int ts = t - (K - 1) + k;
                        if (ts >= 0) pre += (double)w[d * K + k] * xz[((int64_t)b * T + ts) * 2 * Di + d];
                    }
                    s = 1.0 / (1.0 + exp(-pre));
                    ro[tok * Di + d] = pre * s;
                    dpre = g[tok * Di + d] * s * (1.0 + pre * (1.0 - s));
                    rdb[d] += dpre;
                    for (k = 0; k < K; k++) {
                        int ts = t - (K - 1) + k;
                        if (ts < 0) continue;
                        rdw[d * K + k] += dpre * xz[((int64_t)b * T + ts) * 2 * Di + d];
                        rdx[((int64_t)b * T + ts) * 2 * Di + d] += dpre * w[d * K + k];
                    }
                }
        kt_threads(1);
        mb__conv1d_forward(o1, xz, w, bias, B, T, Di, K);
        memcpy(dxz1, dxz, sizeof(float) * (size_t)(N * 2 * Di));
        {
            float *dw1 = (float *)malloc(sizeof(float) * (size_t)(Di * K)), *db1 = (float *)malloc(sizeof(float) * (size_t)Di);
            memcpy(dw1, dw, sizeof(float) * (size_t)(Di * K));
            memcpy(db1, db, sizeof(float) * (size_t)Di);
            mb__conv1d_backward(dxz1, dw1, db1, g, xz, w, bias, B, T, Di, K);
            kt_threads(kt_max_threads() + 1);
            mb__conv1d_forward(out, xz, w, bias, B, T, Di, K);
            mb__conv1d_backward(dxz, dw, db, g, xz, w, bias, B, T, Di, K);
            kt_threads(kt_max_threads());
            MBT_CHECK(memcmp(o1, out, sizeof(float) * (size_t)(N * Di)) == 0 &&
                          memcmp(dxz1, dxz, sizeof(float) * (size_t)(N * 2 * Di)) == 0 &&
                          memcmp(dw1, dw, sizeof(float) * (size_t)(Di * K)) == 0 && memcmp(db1, db, sizeof(float) * (size_t)Di) == 0,
                      "conv1d B=%d T=%d Di=%d K=%d: results depend on the thread count", B, T, Di, K);
            free(dw1);
            free(db1);
        }
        for (d = 0; d < N * 2 * Di; d++) so[d] = 1.0 + fabs(rdx[d]);
        MBT_CHECK(kt_close(out, ro, so, N * Di, 1e-5, &where), "conv1d forward B=%d T=%d Di=%d K=%d: element %lld is %g, reference %g",
                  B, T, Di, K, (long long)where, where >= 0 ? out[where] : 0.0, where >= 0 ? ro[where] : 0.0);
        MBT_CHECK(kt_close(dxz, rdx, so, N * 2 * Di, 1e-5, &where), "conv1d dxz B=%d T=%d Di=%d K=%d: element %lld", B, T, Di, K,
                  (long long)where);
        for (d = 0; d < Di * K; d++) so[d] = 1.0 + fabs(rdw[d]) + (double)N;
        MBT_CHECK(kt_close(dw, rdw, so, (int64_t)Di * K, 1e-6, &where), "conv1d dw B=%d T=%d Di=%d K=%d: element %lld", B, T, Di,
                  K, (long long)where);
        MBT_CHECK(kt_close(db, rdb, so, Di, 1e-6, &where), "conv1d dbias B=%d T=%d Di=%d K=%d: element %lld", B, T, Di, K,
                  (long long)where);
        free(xz); free(w); free(bias); free(out); free(g); free(dxz); free(dw); free(db); free(o1); free(dxz1);
        free(ro); free(rdx); free(rdw); free(rdb); free(so);
    }
}

/* ------------------------------------------------------------------ scan */
/* The plain recurrence with every intermediate in double: out, and the
   gradients of sum(out * g) (du, ddelta, ddt_bias, dA_log, dB/dC, dD, dz). */
static void kt_scan_ref(double *out, double *du, double *ddelta, double *dbias, double *dA, double *dxdbl, double *dD,
                        double *dz, const float *u, const float *delta, const float *bias, const float *A_log,
                        const float *xdbl, const float *Dp, const float *xz, const float *g, int B, int T, int Di, int S,
                        int R) {
    int X = R + 2 * S, b, d, t, n;
    double *h = (double *)malloc(sizeof(double) * (size_t)(T + 1) * S), *dh = (double *)malloc(sizeof(double) * (size_t)S);
    for (b = 0; b < B; b++)
        for (d = 0; d < Di; d++) {
            for (n = 0; n < S; n++) h[n] = 0.0;
            for (t = 0; t < T; t++) { /* forward, keeping every h */
                int64_t tok = (int64_t)b * T + t;
                double x = (double)delta[tok * Di + d] + bias[d], dt = x > 20 ? x : log1p(exp(x)), ut = u[tok * Di + d];
                double z = xz[tok * 2 * Di + Di + d], y = Dp[d] * ut;
                for (n = 0; n < S; n++) {
                    double A = -exp((double)A_log[d * S + n]);
                    h[(t + 1) * S + n] = exp(dt * A) * h[t * S + n] + dt * xdbl[tok * X + R + n] * ut;
                    y += xdbl[tok * X + R + S + n] * h[(t + 1) * S + n];
                }
                out[tok * Di + d] = y * z / (1.0 + exp(-z));
            }
            for (n = 0; n < S; n++) dh[n] = 0.0;
            for (t = T - 1; t >= 0; t--) {
                int64_t tok = (int64_t)b * T + t;
                double x = (double)delta[tok * Di + d] + bias[d], dt = x > 20 ? x : log1p(exp(x)), ut = u[tok * Di + d];
                double z = xz[tok * 2 * Di + Di + d], sz = 1.0 / (1.0 + exp(-z)), y = Dp[d] * ut, dy, ddt = 0.0, dut;
                for (n = 0; n < S; n++) y += xdbl[tok * X + R + S + n] * h[(t + 1) * S + n];
                dz[tok * Di + d] = g[tok * Di + d] * y * sz * (1.0 + z * (1.0 - sz));
                dy = g[tok * Di + d] * z * sz;
                dD[d] += dy * ut;
                dut = dy * Dp[d];
                for (n = 0; n < S; n++) {
                    double A = -exp((double)A_log[d * S + n]), a = exp(dt * A), Bn = xdbl[tok * X + R + n];
                    double Cn = xdbl[tok * X + R + S + n], hp = h[t * S + n], dhn = dh[n] + dy * Cn;
                    dxdbl[tok * X + R + S + n] += dy * h[(t + 1) * S + n];
                    ddt += dhn * (A * a * hp + Bn * ut);
                    dA[d * S + n] += dhn * dt * a * hp * A;
                    dxdbl[tok * X + R + n] += dhn * dt * ut;
                    dut += dhn * dt * Bn;
                    dh[n] = dhn * a;
                }
                du[tok * Di + d] = dut;
                ddt *= x > 20 ? 1.0 : 1.0 / (1.0 + exp(-x));
                ddelta[tok * Di + d] = ddt;
                dbias[d] += ddt;
            }
        }
    free(h);
    free(dh);
}

static double kt_rel_l2d(const float *a, const double *b, int64_t n, int64_t stride, int64_t off, int64_t len) {
    /* over elements i with (i % stride) in [off, off + len) */
    double num = 0.0, den = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        double d;
        if (i % stride < off || i % stride >= off + len) continue;
        d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

static void kt_scan_case(int B, int T, int Di, int S, int R, int chunk) {
    int X = R + 2 * S;
    int64_t N = (int64_t)B * T, nch = (T + chunk - 1) / chunk, i;
    mbt_rng r = {(uint64_t)(B * 7 + T * 131 + Di * 17 + S * 3 + chunk)};
    float *u = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *delta = (float *)malloc(sizeof(float) * (size_t)(N * Di));
    float *bias = (float *)malloc(sizeof(float) * (size_t)Di), *A_log = (float *)malloc(sizeof(float) * (size_t)(Di * S));
    float *xdbl = (float *)malloc(sizeof(float) * (size_t)(N * X)), *Dp = (float *)malloc(sizeof(float) * (size_t)Di);
    float *xz = (float *)malloc(sizeof(float) * (size_t)(N * 2 * Di)), *g = (float *)malloc(sizeof(float) * (size_t)(N * Di));
    float *out = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *states = (float *)malloc(sizeof(float) * (size_t)(B * nch * Di * S));
    float *du = (float *)calloc((size_t)(N * Di), sizeof(float)), *ddelta = (float *)malloc(sizeof(float) * (size_t)(N * Di));
    float *dbias = (float *)calloc((size_t)Di, sizeof(float)), *dA = (float *)calloc((size_t)(Di * S), sizeof(float));
    float *dxdbl = (float *)calloc((size_t)(N * X), sizeof(float)), *dD = (float *)calloc((size_t)Di, sizeof(float));
    float *dxz = (float *)calloc((size_t)(N * 2 * Di), sizeof(float));
    float *scratch = (float *)malloc(sizeof(float) * (size_t)B * (size_t)(Di * S + 2 * Di));
    double *ro = (double *)malloc(sizeof(double) * (size_t)(N * Di)), *rdu = (double *)malloc(sizeof(double) * (size_t)(N * Di));
    double *rdd = (double *)malloc(sizeof(double) * (size_t)(N * Di)), *rdb = (double *)calloc((size_t)Di, sizeof(double));
    double *rdA = (double *)calloc((size_t)(Di * S), sizeof(double)), *rdx = (double *)calloc((size_t)(N * X), sizeof(double));
    double *rdD = (double *)calloc((size_t)Di, sizeof(double)), *rdz = (double *)malloc(sizeof(double) * (size_t)(N * Di));
    float *dz = (float *)malloc(sizeof(float) * (size_t)(N * Di));
    double e[8];
    for (i = 0; i < N * Di; i++) {
        u[i] = (float)mbt_normal(&r);
        g[i] = (float)mbt_normal(&r);
        /* most dt small, every 7th large (dt*A near -50 and beyond), a few past 20 */
        delta[i] = (float)(i % 7 == 0 ? 8.0 + 2.0 * mbt_uniform(&r) : i % 53 == 0 ? 25.0 : -4.0 + 3.0 * mbt_normal(&r));
    }
    for (i = 0; i < N * 2 * Di; i++) xz[i] = (float)(2.0 * mbt_normal(&r));
    for (i = 0; i < Di; i++) { bias[i] = (float)(0.3 * mbt_normal(&r)); Dp[i] = (float)(1.0 + 0.3 * mbt_normal(&r)); }
    for (i = 0; i < Di * S; i++) A_log[i] = (float)(log((double)(i % S + 1)) + 0.1 * mbt_normal(&r));
    for (i = 0; i < N * X; i++) xdbl[i] = (float)mbt_normal(&r);
    kt_scan_ref(ro, rdu, rdd, rdb, rdA, rdx, rdD, rdz, u, delta, bias, A_log, xdbl, Dp, xz, g, B, T, Di, S, R);
    {   /* the fast paths against the header's plain float32 references */
        float *no = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *ndu = (float *)calloc((size_t)(N * Di), sizeof(float));
        float *ndd = (float *)malloc(sizeof(float) * (size_t)(N * Di)), *ndb = (float *)calloc((size_t)Di, sizeof(float));
        float *ndA = (float *)calloc((size_t)(Di * S), sizeof(float)), *ndx = (float *)calloc((size_t)(N * X), sizeof(float));
        float *ndD = (float *)calloc((size_t)Di, sizeof(float)), *ndz = (float *)calloc((size_t)(N * 2 * Di), sizeof(float));
        float *fdu = (float *)calloc((size_t)(N * Di), sizeof(float)), *fdd = (float *)malloc(sizeof(float) * (size_t)(N * Di));
        float *fdb = (float *)calloc((size_t)Di, sizeof(float)), *fdA = (float *)calloc((size_t)(Di * S), sizeof(float));
        float *fdx = (float *)calloc((size_t)(N * X), sizeof(float)), *fdD = (float *)calloc((size_t)Di, sizeof(float));
        float *fdz = (float *)calloc((size_t)(N * 2 * Di), sizeof(float));
        double w = 0.0, v;
        mb__scan_forward_ref(no, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di, S, R);
        mb__scan_forward(out, states, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di, S, R, chunk);
        MBT_CHECK(mb__scan_backward_ref(ndu, ndd, ndb, ndA, ndx, ndD, ndz, g, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di, S,
                                        R) == MB_STATUS_OK, "scan reference backward");
        mb__scan_backward(fdu, fdd, fdb, fdA, fdx, fdD, fdz, scratch, g, states, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di, S,
                          R, chunk);
#define KT_WORST(a, b, n) (v = mbt_rel_l2(a, b, n), w = v > w || v != v ? v : w)
        KT_WORST(out, no, N * Di); KT_WORST(fdu, ndu, N * Di); KT_WORST(fdd, ndd, N * Di); KT_WORST(fdb, ndb, Di);
        KT_WORST(fdA, ndA, Di * S); KT_WORST(fdx, ndx, N * X); KT_WORST(fdD, ndD, Di); KT_WORST(fdz, ndz, N * 2 * Di);
#undef KT_WORST
        MBT_CHECK(w < 2e-5, "scan B=%d T=%d Di=%d S=%d chunk=%d: fast path vs mb__scan_*_ref, worst rel L2 %.2g", B, T, Di, S,
                  chunk, w);
        free(no); free(ndu); free(ndd); free(ndb); free(ndA); free(ndx); free(ndD); free(ndz);
        free(fdu); free(fdd); free(fdb); free(fdA); free(fdx); free(fdD); free(fdz);
    }
    mb__scan_backward(du, ddelta, dbias, dA, dxdbl, dD, dxz, scratch, g, states, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di,
                      S, R, chunk);
    for (i = 0; i < N * Di; i++) dz[i] = dxz[(i / Di) * 2 * Di + Di + i % Di];
    e[0] = kt_rel_l2d(out, ro, N * Di, N * Di, 0, N * Di);
    e[1] = kt_rel_l2d(du, rdu, N * Di, N * Di, 0, N * Di);
    e[2] = kt_rel_l2d(ddelta, rdd, N * Di, N * Di, 0, N * Di);
    e[3] = kt_rel_l2d(dbias, rdb, Di, Di, 0, Di);
    e[4] = kt_rel_l2d(dA, rdA, Di * S, Di * S, 0, Di * S);
    e[5] = kt_rel_l2d(dxdbl, rdx, N * X, X, R, 2 * S);
    e[6] = kt_rel_l2d(dD, rdD, Di, Di, 0, Di);
    e[7] = kt_rel_l2d(dz, rdz, N * Di, N * Di, 0, N * Di);
    MBT_CHECK(e[0] < 2e-6 && e[1] < 1e-5 && e[2] < 1e-5 && e[3] < 1e-5 && e[4] < 1e-5 && e[5] < 1e-5 && e[6] < 1e-5 && e[7] < 1e-5,
              "scan B=%d T=%d Di=%d S=%d chunk=%d vs double reference (rel L2): out %.2g du %.2g ddelta %.2g dbias %.2g "
              "dA_log %.2g dB/dC %.2g dD %.2g dz %.2g", B, T, Di, S, chunk, e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]);
    {   /* and bit for bit the same on one thread */
        float *du1 = (float *)calloc((size_t)(N * Di), sizeof(float)), *dd1 = (float *)malloc(sizeof(float) * (size_t)(N * Di));
        float *db1 = (float *)calloc((size_t)Di, sizeof(float)), *dA1 = (float *)calloc((size_t)(Di * S), sizeof(float));
        float *dx1 = (float *)calloc((size_t)(N * X), sizeof(float)), *dD1 = (float *)calloc((size_t)Di, sizeof(float));
        float *dxz1 = (float *)calloc((size_t)(N * 2 * Di), sizeof(float)), *o1 = (float *)malloc(sizeof(float) * (size_t)(N * Di));
        kt_threads(1);
        mb__scan_forward(o1, states, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di, S, R, chunk);
        mb__scan_backward(du1, dd1, db1, dA1, dx1, dD1, dxz1, scratch, g, states, u, delta, bias, A_log, xdbl, Dp, xz, B, T, Di,
                          S, R, chunk);
        kt_threads(kt_max_threads());
        MBT_CHECK(!memcmp(o1, out, sizeof(float) * (size_t)(N * Di)) && !memcmp(du1, du, sizeof(float) * (size_t)(N * Di)) &&
                      !memcmp(dd1, ddelta, sizeof(float) * (size_t)(N * Di)) && !memcmp(db1, dbias, sizeof(float) * (size_t)Di) &&
                      !memcmp(dA1, dA, sizeof(float) * (size_t)(Di * S)) && !memcmp(dx1, dxdbl, sizeof(float) * (size_t)(N * X)) &&
                      !memcmp(dD1, dD, sizeof(float) * (size_t)Di) && !memcmp(dxz1, dxz, sizeof(float) * (size_t)(N * 2 * Di)),
                  "scan B=%d T=%d Di=%d S=%d chunk=%d: results depend on the thread count", B, T, Di, S, chunk);
        free(du1); free(dd1); free(db1); free(dA1); free(dx1); free(dD1); free(dxz1); free(o1);
    }
    free(u); free(delta); free(bias); free(A_log); free(xdbl); free(Dp); free(xz); free(g); free(out); free(states);
    free(du); free(ddelta); free(dbias); free(dA); free(dxdbl); free(dD); free(dxz); free(scratch);
    free(ro); free(rdu); free(rdd); free(rdb); free(rdA); free(rdx); free(rdD); free(rdz); free(dz);
}

static void test_kernels_scan(void) {
    /* the 16-channel block path: full and partial blocks, S 16 and others,
       one chunk and several, a short last chunk */
    kt_scan_case(2, 70, 48, 16, 4, 32);
    kt_scan_case(3, 41, 37, 16, 2, 16);
    kt_scan_case(1, 30, 5, 4, 3, 8);
    kt_scan_case(2, 33, 20, 5, 2, 40);
    kt_scan_case(2, 9, 16, 16, 2, 32);
    /* tiles shorter than S (each block through all tiles), chunks split
       into tiles (chunk * S over a tile's rows, their starts kept), a large
       state */
    kt_scan_case(2, 40, 19, 16, 2, 4);
    kt_scan_case(1, 50, 17, 24, 2, 24);
    kt_scan_case(1, 90, 9, 16, 2, 40);
    kt_scan_case(2, 3, 18, 40, 2, 8);
    kt_scan_case(1, 45, 20, 64, 2, 32);
    kt_scan_case(1, 40, 16, 128, 2, 32); /* every third tile start of a chunk kept */
}

/* The streaming steps: T calls of mb__conv_step / mb__scan_step give the
   batch forward's outputs bit for bit (one sequence). */
static void kt_steps_case(int T, int Di, int S, int K, int R) {
    int X = R + 2 * S, t, d, n, k, same_u = 1, same_y = 1;
    mbt_rng r = {(uint64_t)(T * 31 + Di * 7 + S)};
    float *xz = (float *)malloc(sizeof(float) * (size_t)T * 2 * Di), *w = (float *)malloc(sizeof(float) * (size_t)Di * K);
    float *wT = (float *)malloc(sizeof(float) * (size_t)Di * K), *cb = (float *)malloc(sizeof(float) * (size_t)Di);
    float *u = (float *)malloc(sizeof(float) * (size_t)T * Di), *delta = (float *)malloc(sizeof(float) * (size_t)T * Di);
    float *bias = (float *)malloc(sizeof(float) * (size_t)Di), *A_log = (float *)malloc(sizeof(float) * (size_t)Di * S);
    float *AT = (float *)malloc(sizeof(float) * (size_t)Di * S), *xdbl = (float *)malloc(sizeof(float) * (size_t)T * X);
    float *Dp = (float *)malloc(sizeof(float) * (size_t)Di), *out = (float *)malloc(sizeof(float) * (size_t)T * Di);
    float *states = (float *)malloc(sizeof(float) * (size_t)T * Di * S), *win = (float *)calloc((size_t)K * Di, sizeof(float));
    float *h = (float *)calloc((size_t)S * Di, sizeof(float)), *us = (float *)malloc(sizeof(float) * (size_t)Di);
    float *dt = (float *)malloc(sizeof(float) * (size_t)Di), *ys = (float *)malloc(sizeof(float) * (size_t)Di);
    kt_fill(xz, (int64_t)T * 2 * Di, &r, 1.0);
    kt_fill(w, (int64_t)Di * K, &r, 0.5);
    kt_fill(cb, Di, &r, 0.3);
    kt_fill(delta, (int64_t)T * Di, &r, 2.0);
    kt_fill(bias, Di, &r, 0.3);
    kt_fill(xdbl, (int64_t)T * X, &r, 1.0);
    kt_fill(Dp, Di, &r, 1.0);
    for (d = 0; d < Di * S; d++) A_log[d] = (float)(log((double)(d % S + 1)) + 0.1 * mbt_normal(&r));
    for (d = 0; d < Di; d++)
        for (k = 0; k < K; k++) wT[k * Di + d] = w[d * K + k];
    for (d = 0; d < Di; d++)
        for (n = 0; n < S; n++) AT[n * Di + d] = -mb__exp(A_log[d * S + n]);
    mb__conv1d_forward(u, xz, w, cb, 1, T, Di, K);
    mb__scan_forward(out, states, u, delta, bias, A_log, xdbl, Dp, xz, 1, T, Di, S, R, T);
    for (t = 0; t < T; t++) {
        mb__conv_step(us, win, xz + (int64_t)t * 2 * Di, wT, cb, Di, K);
        same_u &= memcmp(us, u + (int64_t)t * Di, sizeof(float) * (size_t)Di) == 0;
        memcpy(dt, delta + (int64_t)t * Di, sizeof(float) * (size_t)Di);
        mb__scan_step(ys, h, dt, AT, bias, u + (int64_t)t * Di, xdbl + (int64_t)t * X + R, xdbl + (int64_t)t * X + R + S, Dp,
                      xz + (int64_t)t * 2 * Di + Di, Di, S);
        same_y &= memcmp(ys, out + (int64_t)t * Di, sizeof(float) * (size_t)Di) == 0;
    }
    MBT_CHECK(same_u, "mb__conv_step differs from mb__conv1d_forward (T=%d Di=%d K=%d)", T, Di, K);
    MBT_CHECK(same_y, "mb__scan_step differs from mb__scan_forward (T=%d Di=%d S=%d)", T, Di, S);
    free(xz); free(w); free(wT); free(cb); free(u); free(delta); free(bias); free(A_log); free(AT); free(xdbl); free(Dp);
    free(out); free(states); free(win); free(h); free(us); free(dt); free(ys);
}

static void test_kernels_steps(void) {
    kt_steps_case(40, 384, 16, 4, 12);
    kt_steps_case(23, 37, 5, 3, 2);
    kt_steps_case(9, 16, 16, 1, 1);
}

/* ------------------------------------------------------ vectorised math */
static void test_kernels_math(void) {
    int bad_exp = 0, bad_sp = 0, bad_sg = 0, i;
    float x;
    for (i = 0; i <= 200000; i++) {
        double e, ref;
        x = (float)(-87.0 + 175.0 * i / 200000.0);
        if (x < 88.3f) { /* exp: within 2 ulp on its range */
            ref = exp((double)x);
            e = fabs(mb__exp(x) - ref) / (ref * 1.1920928955078125e-07);
            bad_exp += e > 2.0;
        }
        x = (float)(-30.0 + 80.0 * i / 200000.0);
        ref = x > 20.0f ? (double)x : log1p(exp((double)x));
        e = fabs(mb__softplus_v(x) - ref) / (ref * 1.1920928955078125e-07);
        bad_sp += e > 3.0;
        ref = 1.0 / (1.0 + exp(-(double)x));
        e = fabs(mb__sigmoid_v(x) - ref) / (ref * 1.1920928955078125e-07);
        bad_sg += e > 3.0;
    }
    MBT_CHECK(bad_exp == 0, "mb__exp: %d points more than 2 ulp from exp", bad_exp);
    MBT_CHECK(bad_sp == 0, "mb__softplus_v: %d points more than 3 ulp from log1p(exp(x))", bad_sp);
    MBT_CHECK(bad_sg == 0, "mb__sigmoid_v: %d points more than 3 ulp from 1/(1+exp(-x))", bad_sg);
    MBT_CHECK(mb__exp(-100.0f) == 0.0f && mb__exp(-INFINITY) == 0.0f && mb__exp(0.0f) == 1.0f && isnan(mb__exp(NAN)),
              "mb__exp special values: exp(-100) %g exp(-inf) %g exp(0) %g exp(nan) %g", mb__exp(-100.0f),
              mb__exp(-INFINITY), mb__exp(0.0f), mb__exp(NAN));
    MBT_CHECK(mb__softplus_v(INFINITY) == INFINITY && mb__softplus_v(-INFINITY) == 0.0f && isnan(mb__softplus_v(NAN)) &&
                  mb__softplus_v(30.0f) == 30.0f,
              "mb__softplus_v special values");
    MBT_CHECK(mb__sigmoid_v(INFINITY) == 1.0f && mb__sigmoid_v(-INFINITY) == 0.0f && isnan(mb__sigmoid_v(NAN)),
              "mb__sigmoid_v special values");
}

/* The scan's core (mb__scan_decays16 + mb__scan_recur16, and the
   backward's mb__scan_recompute16: AVX-512 intrinsics where the build has
   them) against its definition in plain
   scalar code with mb__exp, bit for bit, on values that reach every branch
   of the exp: underflow, NaN, infinities, zero. */
static int kt_same_bits(float a, float b) { return (a != a && b != b) || !memcmp(&a, &b, sizeof a); }
static void test_kernels_scan_core(void) {
    enum { S = 7 }; /* odd: no multiple of the vector width */
    static const float special[] = {0.0f, -0.0f, 1e-30f, 5.0f, 30.0f, 1e10f, (float)INFINITY, NAN};
    mbt_rng r = {4242};
    int round, n, j, same = 1, same_re = 1;
    for (round = 0; round < 200; round++) {
        float A[S * MB__SCAN_DB], dt[MB__SCAN_DB], u[MB__SCAN_DB], Bt[S], Ct[S], h[S * MB__SCAN_DB], hr[S * MB__SCAN_DB];
        float a[S * MB__SCAN_DB], b[S * MB__SCAN_DB], y[MB__SCAN_DB], yr[MB__SCAN_DB], hb[S * MB__SCAN_DB], ab[S * MB__SCAN_DB];
        for (j = 0; j < MB__SCAN_DB; j++) {
            dt[j] = round % 4 == 3 ? special[(round / 4 + j) % 8] : (float)(3.0 * mbt_uniform(&r));
            u[j] = (float)mbt_normal(&r);
            yr[j] = 0.0f;
        }
        for (n = 0; n < S; n++) {
            Bt[n] = (float)mbt_normal(&r);
            Ct[n] = (float)mbt_normal(&r);
            for (j = 0; j < MB__SCAN_DB; j++) {
                A[n * MB__SCAN_DB + j] = -(float)(40.0 * mbt_uniform(&r));
                h[n * MB__SCAN_DB + j] = hr[n * MB__SCAN_DB + j] = (float)mbt_normal(&r);
            }
        }
        mb__scan_recompute16(hb, ab, h, A, dt, u, Bt, S); /* the backward's recompute, from the same h */
        mb__scan_decays16(a, b, A, MB__SCAN_DB, dt, u, Bt, S);
        mb__scan_recur16(h, MB__SCAN_DB, a, b, Ct, S, y);
        for (j = 0; j < S * MB__SCAN_DB; j++) same_re &= kt_same_bits(hb[j], h[j]) && kt_same_bits(ab[j], a[j]);
        for (n = 0; n < S; n++)
            for (j = 0; j < MB__SCAN_DB; j++) { /* the definition, one element at a time */
                float v = mb__exp(dt[j] * A[n * MB__SCAN_DB + j]) * hr[n * MB__SCAN_DB + j] + dt[j] * Bt[n] * u[j];
                hr[n * MB__SCAN_DB + j] = v;
                yr[j] += Ct[n] * v;
            }
        for (j = 0; j < S * MB__SCAN_DB; j++) same &= kt_same_bits(h[j], hr[j]);
        for (j = 0; j < MB__SCAN_DB; j++) same &= kt_same_bits(y[j], yr[j]);
    }
#if !defined(__FMA__) /* mb__exp's MB__FMA does not fuse, the AVX-512 pieces' FMAs do */
    if (mb__scan_avx512()) MBT_SKIP("kernels", "the scan's core against mb__exp: this build's mb__exp does not fuse");
    else
#endif
    MBT_CHECK(same, "mb__scan_decays16 / mb__scan_recur16 differ from the scan's definition with mb__exp");
    MBT_CHECK(same_re, "mb__scan_recompute16 (the backward's h and decays) differs from the forward's");
#if defined(MB__SCAN_AVX512) && defined(__FMA__) /* the twins agree where MB__FMA fuses */
    if (mb__scan_avx512()) { /* the backward's AVX-512 pieces against their portable twins, bit for bit:
         odd and even S, partial channel blocks */
        static const int shapes[4][2] = {{16, 16}, {7, 16}, {16, 5}, {32, 1}};
        int q, ok_states = 1, ok_gather = 1;
        for (q = 0; q < 4 * 25; q++) {
            enum { MS = 32 * MB__SCAN_DB };
            int Sq = shapes[q % 4][0], nd = shapes[q % 4][1];
            float at[MS], ht[MS], hp[MS], Aq[MS], Bq[32], Cq[32], dy[16], dtq[16], uq[16];
            float y[2][16], ddt[2][16], du[2][16], pB[2][MS], pC[2][MS], gA[2][MS], dh[2][MS];
            float src[16 * 32], g[2][MS], back[2][16 * 32];
            for (j = 0; j < Sq * MB__SCAN_DB; j++) {
                at[j] = (float)mbt_uniform(&r); ht[j] = (float)mbt_normal(&r); hp[j] = (float)mbt_normal(&r);
                Aq[j] = -(float)(8.0 * mbt_uniform(&r));
                pB[0][j] = pB[1][j] = (float)mbt_normal(&r); pC[0][j] = pC[1][j] = (float)mbt_normal(&r);
                gA[0][j] = gA[1][j] = (float)mbt_normal(&r); dh[0][j] = dh[1][j] = (float)mbt_normal(&r);
            }
            for (n = 0; n < Sq; n++) { Bq[n] = (float)mbt_normal(&r); Cq[n] = (float)mbt_normal(&r); }
            for (j = 0; j < 16; j++) {
                dy[j] = (float)mbt_normal(&r); dtq[j] = (float)mbt_uniform(&r); uq[j] = (float)mbt_normal(&r);
                y[0][j] = y[1][j] = (float)mbt_normal(&r); ddt[0][j] = ddt[1][j] = 0.0f; du[0][j] = du[1][j] = (float)mbt_normal(&r);
            }
            mb__scan_bwd_states16_avx512(y[0], ddt[0], du[0], pB[0], pC[0], gA[0], dh[0], at, ht, hp, Aq, Bq, Cq, dy, dtq, uq, Sq);
            mb__scan_bwd_states16_portable(y[1], ddt[1], du[1], pB[1], pC[1], gA[1], dh[1], at, ht, hp, Aq, Bq, Cq, dy, dtq, uq, Sq);
            ok_states &= !memcmp(y[0], y[1], sizeof y[0]) && !memcmp(ddt[0], ddt[1], sizeof ddt[0]) &&
                         !memcmp(du[0], du[1], sizeof du[0]) && !memcmp(pB[0], pB[1], sizeof(float) * (size_t)(Sq * 16)) &&
                         !memcmp(pC[0], pC[1], sizeof(float) * (size_t)(Sq * 16)) &&
                         !memcmp(gA[0], gA[1], sizeof(float) * (size_t)(Sq * 16)) &&
                         !memcmp(dh[0], dh[1], sizeof(float) * (size_t)(Sq * 16));
            for (j = 0; j < 16 * Sq; j++) src[j] = (float)(4.0 * mbt_normal(&r));
            for (n = 0; n < 2; n++) {
                mb__scan_gather16_avx512(g[0], src, Sq, nd, n);
                mb__scan_gather16_portable(g[1], src, Sq, nd, n);
                ok_gather &= !memcmp(g[0], g[1], sizeof(float) * (size_t)(Sq * 16));
            }
            for (j = 0; j < 16 * 32; j++) back[0][j] = back[1][j] = -1.0f;
            mb__scan_scatter16_avx512(back[0], g[0], Sq, nd);
            mb__scan_scatter16_portable(back[1], g[0], Sq, nd);
            ok_gather &= !memcmp(back[0], back[1], sizeof back[0]);
            mb__scan_gather16(g[0], src, Sq, nd, 0);
            mb__scan_scatter16(back[0], g[0], Sq, nd);
            ok_gather &= !memcmp(back[0], src, sizeof(float) * (size_t)(nd * Sq)) && (nd == 16 || back[0][nd * Sq] == -1.0f);
        }
        MBT_CHECK(ok_states, "mb__scan_bwd_states16_avx512 differs from mb__scan_bwd_states16_portable");
        MBT_CHECK(ok_gather, "mb__scan_gather16 / mb__scan_scatter16 differ from their portable twins or lose values");
    }
#endif
#if MB__SCAN_AVX512 == 1
    int same_exp = 1;
    float x_all[16], e_all[16];
    for (round = 0; round < 40000; round++) { /* exp16 against mb__exp across its whole domain, bounds and specials */
        float x[16], e[16];
        for (j = 0; j < 16; j++) {
            float v = (float)(-100.0 + 200.0 * mbt_uniform(&r));
            x[j] = round < 8 ? special[round] * (j % 2 ? -1.0f : 1.0f) : j == 0 ? -87.33654475f : j == 1 ? 88.37626266f : v;
        }
        _mm512_storeu_ps(e, mb__exp16(_mm512_loadu_ps(x)));
        for (j = 0; j < 16; j++) same_exp &= kt_same_bits(e[j], mb__exp(x[j]));
    }
    { /* every 251st bit pattern (all signs, exponents and NaNs), and every
         pattern within 2^16 ulps of the range's two bounds */
        const float bound[2] = {-87.33654475f, 88.37626266f};
        uint32_t bits[16];
        uint64_t i;
        int q;
        for (i = 0; i < (1ull << 32); i += 16 * 251) {
            for (j = 0; j < 16; j++) bits[j] = (uint32_t)(i + (uint64_t)j * 251);
            memcpy(x_all, bits, sizeof bits);
            _mm512_storeu_ps(e_all, mb__exp16(_mm512_loadu_ps(x_all)));
            for (j = 0; j < 16; j++) same_exp &= kt_same_bits(e_all[j], mb__exp(x_all[j]));
        }
        for (q = 0; q < 2; q++) {
            uint32_t c;
            memcpy(&c, &bound[q], 4);
            for (i = 0; i < (1u << 17); i += 16) {
                for (j = 0; j < 16; j++) bits[j] = c - (1u << 16) + (uint32_t)(i + (uint64_t)j);
                memcpy(x_all, bits, sizeof bits);
                _mm512_storeu_ps(e_all, mb__exp16(_mm512_loadu_ps(x_all)));
                for (j = 0; j < 16; j++) same_exp &= kt_same_bits(e_all[j], mb__exp(x_all[j]));
            }
        }
    }
    MBT_CHECK(same_exp, "mb__exp16 differs from mb__exp");
#endif
}

static void test_kernels(void) {
    test_kernels_math();
    test_kernels_scan_core();
    test_kernels_matmul();
    test_kernels_conv();
    test_kernels_scan();
    test_kernels_steps();
}
