/* test_bf16.c - the bf16 matrix products (--precision bf16 on the CPU):
   the rounding, each fast kernel (AVX512-BF16, AMX) against the scalar
   reference on odd shapes, bf16 against the float32 products within the
   bound bf16's rounding allows, a 200-step training run in both
   precisions, the float32 default left bit-identical, the fallback on a
   CPU without the instructions, and the CLI switch.  Kernels this CPU
   cannot run are skipped (counted).  Included by test.c. */

static const char *bt_path_name(int path) { return path == MB__BF16_AMX ? "AMX" : path == MB__BF16_AVX512 ? "AVX512-BF16" : "reference"; }

static void bt_fill(float *x, int64_t n, mbt_rng *r, double scale) {
    int64_t i;
    for (i = 0; i < n; i++) x[i] = (float)(scale * mbt_normal(r));
}
static float *bt_alloc(int64_t n) { return (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1)); }
static float bt_bf(float x) { /* the bf16 value of x as a float */
    uint32_t u = (uint32_t)mb__bf16_from_float(x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void bt_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* ------------------------------------------------------------ rounding */
#if defined(MB__BF16_X86)
/* 32 floats through vcvtne2ps2bf16 */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void bt_cvtne(uint16_t *out, const float *x) {
    __m512bh r = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
    _mm512_storeu_si512((void *)out, (__m512i)r);
}
#endif

static void test_bf16_rounding(void) {
    static const struct { uint32_t in; uint16_t out; } cases[] = {
        {0x3F800000u, 0x3F80u}, /* 1 */
        {0x3F808000u, 0x3F80u}, /* 1 + 2^-8, a tie: to even (down) */
        {0x3F818000u, 0x3F82u}, /* 1 + 3*2^-8, a tie: to even (up) */
        {0x3F808001u, 0x3F81u}, /* just past the tie: up */
        {0x7F7FFFFFu, 0x7F80u}, /* FLT_MAX rounds to +inf */
        {0x7F800000u, 0x7F80u}, {0xFF800000u, 0xFF80u},   /* infinities stay */
        {0x7F800001u, 0x7FC0u}, {0xFFC00001u, 0xFFC0u},   /* NaN stays NaN (quieted) */
        {0x00000001u, 0x0000u}, {0x807FFFFFu, 0x8000u},   /* subnormals: signed zero */
        {0x00800000u, 0x0080u}, {0x80000000u, 0x8000u},   /* the smallest normal; -0 */
    };
    size_t i;
    int ok = 1;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float f;
        memcpy(&f, &cases[i].in, 4);
        if (mb__bf16_from_float(f) != cases[i].out) {
            ok = 0;
            fprintf(stderr, "bf16 of %08x: %04x, expected %04x\n", cases[i].in, mb__bf16_from_float(f), cases[i].out);
        }
    }
    MBT_CHECK(ok, "bf16 rounding (nearest even, NaN kept, subnormals to zero)");
#if defined(MB__BF16_X86)
    if (mb__bf16_paths() >> MB__BF16_AVX512 & 1) { /* the C rounding = vcvtne2ps2bf16, bit for bit */
        mbt_rng r = {77};
        int t, j, same = 1;
        for (t = 0; t < 20000 && same; t++) {
            float x[32];
            uint16_t hw[32];
            for (j = 0; j < 32; j++) {
                uint32_t u = (uint32_t)mbt_next(&r);
                memcpy(&x[j], &u, 4);
            }
            bt_cvtne(hw, x);
            for (j = 0; j < 32; j++) same &= hw[j] == mb__bf16_from_float(x[j]);
        }
        MBT_CHECK(same, "mb__bf16_from_float = _mm512_cvtne2ps_pbh on 640000 random bit patterns");
    } else {
        MBT_SKIP("bf16", "no AVX512-BF16 here: the rounding is not compared with vcvtne2ps2bf16");
    }
#endif
}

/* --------------------------------------------------- the three products */
/* Per element of each product (f forward, i dinp, w dw): the exact sum of
   the bf16 products and the initial value (in double: bf16 products have 16
   significant bits, so this is exact but for sums over 2^37 apart), S =
   |initial value| + sum |a_bf||b_bf|, and S32, S over the float32 operands. */
typedef struct { double *ex, *s, *s32; } bt_ref;
static void bt_term(bt_ref *R, int64_t e, double a, double b, double a_bf, double b_bf) {
    R->ex[e] += a_bf * b_bf;
    R->s[e] += fabs(a_bf * b_bf);
    R->s32[e] += fabs(a * b);
}
static void bt_refs(bt_ref *Rf, bt_ref *Ri, bt_ref *Rw, const float *x, int64_t ldi, const float *w, const float *g,
                    const float *dx0, const float *dw0, int64_t N, int IC, int OC) {
    int64_t n, e;
    int i, o;
    for (n = 0; n < N; n++)
        for (i = 0; i < IC; i++) {
            e = n * IC + i;
            Ri->ex[e] = dx0[n * ldi + i];
            Ri->s[e] = Ri->s32[e] = fabs((double)dx0[n * ldi + i]);
        }
    for (e = 0; e < (int64_t)OC * IC; e++) {
        Rw->ex[e] = dw0[e];
        Rw->s[e] = Rw->s32[e] = fabs((double)dw0[e]);
    }
    for (e = 0; e < N * OC; e++) Rf->ex[e] = Rf->s[e] = Rf->s32[e] = 0;
    for (n = 0; n < N; n++)
        for (o = 0; o < OC; o++)
            for (i = 0; i < IC; i++) {
                double xv = x[n * ldi + i], wv = w[(int64_t)o * IC + i], gv = g[n * OC + o];
                double xb = bt_bf(x[n * ldi + i]), wb = bt_bf(w[(int64_t)o * IC + i]), gb = bt_bf(g[n * OC + o]);
                bt_term(Rf, n * OC + o, xv, wv, xb, wb);
                bt_term(Ri, n * IC + i, gv, wv, gb, wb);
                bt_term(Rw, (int64_t)o * IC + i, gv, xv, gb, xb);
            }
}
static void bt_ref_alloc(bt_ref *R, int64_t n) {
    R->ex = (double *)malloc(sizeof(double) * (size_t)n);
    R->s = (double *)malloc(sizeof(double) * (size_t)n);
    R->s32 = (double *)malloc(sizeof(double) * (size_t)n);
}
static void bt_ref_free(bt_ref *R) { free(R->ex); free(R->s); free(R->s32); }

/* The largest |got - ref| / scale over rows x cols elements (got rows of
   stride ldg; ref, when not NULL, rows of stride ldr, else exact; scale
   and exact contiguous). */
static double bt_worst(const float *got, int64_t ldg, const float *ref, int64_t ldr, const double *exact, const double *scale,
                       int64_t rows, int64_t cols) {
    double worst = 0;
    int64_t r, j;
    for (r = 0; r < rows; r++)
        for (j = 0; j < cols; j++) {
            double want = ref ? (double)ref[r * ldr + j] : exact[r * cols + j];
            double d = fabs((double)got[r * ldg + j] - want), s = scale[r * cols + j];
            double e = d / (s > 0 ? s : 1e-30);
            if (!(e <= worst)) worst = e; /* NaN propagates as the worst */
        }
    return worst;
}

typedef struct { int64_t N; int IC, OC; int64_t ldi; const char *what; } bt_shape;

static void bt_products_case(const bt_shape *sh, int path, double *amx_worst) {
    const int64_t N = sh->N, ldi = sh->ldi, nx = N * ldi, nw = (int64_t)sh->IC * sh->OC, ng = N * sh->OC;
    const int IC = sh->IC, OC = sh->OC;
    const char *name[3] = {"forward", "dinp", "dw"};
    mbt_rng r = {(uint64_t)(N * 7919 + IC * 131 + OC)};
    float *x = bt_alloc(nx), *w = bt_alloc(nw), *g = bt_alloc(ng), *dx0 = bt_alloc(nx), *dw0 = bt_alloc(nw);
    float *out_r = bt_alloc(ng), *out_f = bt_alloc(ng), *out_32 = bt_alloc(ng);
    float *dx_r = bt_alloc(nx), *dx_f = bt_alloc(nx), *dx_32 = bt_alloc(nx), *dw_r = bt_alloc(nw), *dw_f = bt_alloc(nw), *dw_32 = bt_alloc(nw);
    uint32_t *wp = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)mb__bf16_packed_size(IC, OC));
    const double u32 = ldexp(1.0, -24), ubf = ldexp(1.0, -8);
    bt_ref R[3];
    int64_t K[3], rows[3], cols[3];
    float *fast[3], *ref[3], *f32[3];
    int64_t ld[3];
    double e;
    int k;
    bt_ref_alloc(&R[0], ng);
    bt_ref_alloc(&R[1], N * IC);
    bt_ref_alloc(&R[2], nw);
    bt_fill(x, nx, &r, 1.0);
    bt_fill(w, nw, &r, 0.3);
    bt_fill(g, ng, &r, 1.0);
    bt_fill(dx0, nx, &r, 0.5);
    bt_fill(dw0, nw, &r, 0.5);
    bt_refs(&R[0], &R[1], &R[2], x, ldi, w, g, dx0, dw0, N, IC, OC);
    K[0] = IC; K[1] = OC; K[2] = N;
    rows[0] = N; rows[1] = N; rows[2] = OC;
    cols[0] = OC; cols[1] = IC; cols[2] = IC;
    ld[0] = OC; ld[1] = ldi; ld[2] = IC;
    fast[0] = out_f; fast[1] = dx_f; fast[2] = dw_f;
    ref[0] = out_r; ref[1] = dx_r; ref[2] = dw_r;
    f32[0] = out_32; f32[1] = dx_32; f32[2] = dw_32;
    /* the reference, the fast path (the weights packed here, as a model
       does, or inside), and the float32 products */
    mb__matmul_forward_bf16_ref(out_r, x, ldi, w, N, IC, OC);
    mb__bf16_pack_weight(wp, w, IC, OC);
    mb__matmul_forward_bf16(path, out_f, x, ldi, w, wp, N, IC, OC);
    mb__matmul_forward(out_32, x, ldi, w, N, IC, OC);
    for (k = 0; k < 3; k++) {
        memcpy(k == 0 ? dx_r : k == 1 ? dx_f : dx_32, dx0, sizeof(float) * (size_t)nx);
        memcpy(k == 0 ? dw_r : k == 1 ? dw_f : dw_32, dw0, sizeof(float) * (size_t)nw);
    }
    mb__matmul_backward_bf16_ref(dx_r, dw_r, g, x, ldi, w, N, IC, OC);
    mb__matmul_backward_bf16(path, dx_f, dw_f, g, x, ldi, w, N % 2 ? wp : NULL, N, IC, OC);
    mb__matmul_backward(dx_32, dw_32, g, x, ldi, w, N, IC, OC);
    MBT_CHECK(ldi == IC || (memcmp(dx_f + IC, dx0 + IC, sizeof(float) * (size_t)(ldi - IC)) == 0 &&
                            memcmp(dx_f + nx - (ldi - IC), dx0 + nx - (ldi - IC), sizeof(float) * (size_t)(ldi - IC)) == 0),
              "%s dinp %s: the columns past IC are not touched", bt_path_name(path), sh->what);
    for (k = 0; k < 3; k++) {
        if (path == MB__BF16_AVX512) {
            /* the same pairs in the same order: bit for bit (dinp's columns past IC included) */
            MBT_CHECK(memcmp(fast[k], ref[k], sizeof(float) * (size_t)(k == 0 ? ng : k == 1 ? nx : nw)) == 0,
                      "%s %s %s (N %lld IC %d OC %d ldi %lld) != reference", bt_path_name(path), name[k], sh->what, (long long)N, IC,
                      OC, (long long)ldi);
        } else {
            /* AMX adds a tile step's 32 products (16 pairs) in an order of
               its own; any float32 order of the K exact products and the
               initial value, each addition rounded, is within gamma_K =
               K 2^-24 / (1 - K 2^-24) S of their exact sum (so is the
               reference: checked too), and so must AMX be */
            double units = bt_worst(fast[k], ld[k], NULL, 0, R[k].ex, R[k].s, rows[k], cols[k]) / u32;
            double bound = (double)K[k] / (1.0 - (double)K[k] * u32);
            double ref_units = bt_worst(ref[k], ld[k], NULL, 0, R[k].ex, R[k].s, rows[k], cols[k]) / u32;
            MBT_CHECK(ref_units <= bound, "reference %s %s: %.2f x 2^-24 S from the exact sum, bound %.1f", name[k], sh->what,
                      ref_units, bound);
            if (units / bound > *amx_worst) *amx_worst = units / bound;
            MBT_CHECK(units <= bound, "AMX %s %s: |AMX - exact| = %.2f x 2^-24 S, bound %.1f (K %lld)", name[k], sh->what, units, bound,
                      (long long)K[k]);
        }
        /* bf16 against float32: the operands' rounding (each within 2^-8
           relative, so a product within 2*2^-8 + 2^-16) plus both sums'
           float32 rounding (K 2^-24 S32 each) bounds |bf16 - fp32| <=
           (2^-7 + 2^-16 + 2 K 2^-24) S32 */
        e = bt_worst(fast[k], ld[k], f32[k], ld[k], NULL, R[k].s32, rows[k], cols[k]);
        {
            double bound = 2 * ubf + ubf * ubf + 2.0 * (double)K[k] * u32;
            MBT_CHECK(e <= bound, "%s %s %s: |bf16 - fp32| = %.3g S32, bound %.3g", bt_path_name(path), name[k], sh->what, e, bound);
        }
    }
    {   /* and bf16 did happen: the products differ from float32 by about bf16's rounding */
        double rel = mbt_rel_l2(out_f, out_32, ng);
        MBT_CHECK(rel > 1e-4 && rel < 2e-2, "%s forward %s: relative L2 to float32 %.3g (bf16 rounding expected)",
                  bt_path_name(path), sh->what, rel);
    }
    free(x); free(w); free(g); free(dx0); free(dw0); free(out_r); free(out_f); free(out_32);
    free(dx_r); free(dx_f); free(dx_32); free(dw_r); free(dw_f); free(dw_32); free(wp);
    for (k = 0; k < 3; k++) bt_ref_free(&R[k]);
}

/* NaN and inf reach the outputs they touch, on every path. */
static void bt_specials(int path) {
    const int64_t N = 20;
    const int IC = 40, OC = 36;
    mbt_rng r = {5};
    float x[20 * 40], w[36 * 40], g[20 * 36], o1[20 * 36], o2[20 * 36], dx1[20 * 40], dx2[20 * 40], dw1[36 * 40], dw2[36 * 40];
    int i, same = 1;
    bt_fill(x, N * IC, &r, 1.0);
    bt_fill(w, OC * IC, &r, 1.0);
    bt_fill(g, N * OC, &r, 1.0);
    x[3 * IC + 7] = NAN;
    w[5 * IC + 11] = INFINITY;
    g[9 * OC + 2] = -INFINITY;
    memset(dx1, 0, sizeof dx1); memset(dx2, 0, sizeof dx2); memset(dw1, 0, sizeof dw1); memset(dw2, 0, sizeof dw2);
    mb__matmul_forward_bf16_ref(o1, x, IC, w, N, IC, OC);
    mb__matmul_forward_bf16(path, o2, x, IC, w, NULL, N, IC, OC);
    mb__matmul_backward_bf16_ref(dx1, dw1, g, x, IC, w, N, IC, OC);
    mb__matmul_backward_bf16(path, dx2, dw2, g, x, IC, w, NULL, N, IC, OC);
    for (i = 0; i < N * OC; i++) same &= isnan(o1[i]) == isnan(o2[i]) && isinf(o1[i]) == isinf(o2[i]);
    for (i = 0; i < N * IC; i++) same &= isnan(dx1[i]) == isnan(dx2[i]) && isinf(dx1[i]) == isinf(dx2[i]);
    for (i = 0; i < OC * IC; i++) same &= isnan(dw1[i]) == isnan(dw2[i]) && isinf(dw1[i]) == isinf(dw2[i]);
    MBT_CHECK(same && isnan(o2[3 * OC + 5]) && isnan(dw2[2 * IC + 7]), "%s: NaN and inf reach the same outputs as the reference",
              bt_path_name(path));
}

/* One product on 1 and 2 threads: bit-identical. */
static void bt_thread_independence(int path) {
    const int64_t N = 300;
    const int IC = 96, OC = 70;
    mbt_rng r = {11};
    float *x = bt_alloc(N * IC), *w = bt_alloc(IC * OC), *g = bt_alloc(N * OC), *o[2], *dx[2], *dw[2];
    int t;
    bt_fill(x, N * IC, &r, 1.0);
    bt_fill(w, IC * OC, &r, 1.0);
    bt_fill(g, N * OC, &r, 1.0);
    for (t = 0; t < 2; t++) {
        o[t] = bt_alloc(N * OC); dx[t] = bt_alloc(N * IC); dw[t] = bt_alloc(IC * OC);
        memset(dx[t], 0, sizeof(float) * (size_t)(N * IC));
        memset(dw[t], 0, sizeof(float) * (size_t)(IC * OC));
        bt_threads(t + 1);
        mb__matmul_forward_bf16(path, o[t], x, IC, w, NULL, N, IC, OC);
        mb__matmul_backward_bf16(path, dx[t], dw[t], g, x, IC, w, NULL, N, IC, OC);
    }
    bt_threads(1);
    MBT_CHECK(memcmp(o[0], o[1], sizeof(float) * (size_t)(N * OC)) == 0 && memcmp(dx[0], dx[1], sizeof(float) * (size_t)(N * IC)) == 0 &&
              memcmp(dw[0], dw[1], sizeof(float) * (size_t)(IC * OC)) == 0, "%s: 1 and 2 threads give the same bits", bt_path_name(path));
    for (t = 0; t < 2; t++) { free(o[t]); free(dx[t]); free(dw[t]); }
    free(x); free(w); free(g);
}

static void test_bf16_products(void) {
    static const bt_shape shapes[] = {
        {37, 12, 384, 44, "dt_proj (IC 12, ldi 44)"},
        {53, 384, 44, 384, "x_proj (OC 44)"},
        {29, 45, 33, 50, "odd IC, OC, ldi > IC"},
        {1, 7, 5, 9, "one row"},
        {13, 1, 3, 1, "IC 1"},
        {26, 192, 768, 192, "in_proj"},
        {19, 600, 35, 601, "IC 600 (three chunks of pairs)"},
        {1101, 20, 70, 24, "N 1101 (dw: three chunks; narrow IC)"},
        {70, 33, 32, 40, "OC 32, IC 33"},
    };
    int path, s, ran = 0;
    double amx_worst = 0;
    for (path = MB__BF16_AVX512; path <= MB__BF16_AMX; path++) {
        if (!(mb__bf16_paths() >> path & 1)) {
            MBT_SKIP("bf16", "this CPU (or OS) has no %s: its kernel is not tested", bt_path_name(path));
            continue;
        }
        for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) bt_products_case(&shapes[s], path, &amx_worst);
        bt_specials(path);
        bt_thread_independence(path);
        ran++;
    }
    if (amx_worst > 0) printf("bf16: AMX's largest distance from the exact sums: %.3f of the bound K 2^-24 S\n", amx_worst);
    /* the reference path of the fast entry points is the reference */
    {
        bt_shape sh = {29, 45, 33, 50, "reference path"};
        float x[29 * 50], w[45 * 33], o1[29 * 33], o2[29 * 33];
        mbt_rng r = {3};
        bt_fill(x, 29 * 50, &r, 1.0);
        bt_fill(w, 45 * 33, &r, 1.0);
        mb__matmul_forward_bf16(MB__BF16_NONE, o1, x, sh.ldi, w, NULL, sh.N, sh.IC, sh.OC);
        mb__matmul_forward_bf16_ref(o2, x, sh.ldi, w, sh.N, sh.IC, sh.OC);
        MBT_CHECK(memcmp(o1, o2, sizeof o1) == 0, "path NONE is the reference");
    }
    (void)ran;
}

/* ---------------------------------------------------------------- model */
static mb_config bt_small_config(void) {
    mb_config c = mb_config_default();
    c.d_model = 48;
    c.n_layer = 2;
    c.d_state = 8;
    c.dt_rank = 0;
    mb_config_validate(&c);
    return c;
}

/* forward + backward of one batch: the logits and grads, copied out. */
static void bt_fwd_bwd(mb_model *m, const uint8_t *in, const int32_t *tg, int B, int T, float *logits, float *grads, float *loss) {
    mb_model_zero_grad(m);
    MBT_CHECK(mb_model_forward(m, in, tg, B, T, loss) == MB_STATUS_OK && mb_model_backward(m) == MB_STATUS_OK, "forward/backward");
    memcpy(logits, mb_model_logits(m), sizeof(float) * (size_t)B * T * 256);
    memcpy(grads, mb_model_grads(m), sizeof(float) * (size_t)mb_model_num_params(m));
}

static void test_bf16_model(void) {
    const int B = 2, T = 40;
    mb_config cfg = bt_small_config();
    mb_model *m0 = NULL, *m1 = NULL;
    uint8_t in[2 * 40];
    int32_t tg[2 * 40];
    mbt_rng r = {42};
    int64_t P, NL = (int64_t)B * T * 256;
    float *l0, *l1, *g0, *g1, loss0, loss1;
    int i, have = mb__bf16_paths() > 1;
    for (i = 0; i < B * T; i++) { in[i] = (uint8_t)('a' + mbt_next(&r) % 26); tg[i] = (int32_t)('a' + mbt_next(&r) % 26); }
    MBT_CHECK(mb_model_create(&m0, &cfg, 9) == MB_STATUS_OK && mb_model_create(&m1, &cfg, 9) == MB_STATUS_OK, "models");
    P = mb_model_num_params(m0);
    l0 = bt_alloc(NL); l1 = bt_alloc(NL); g0 = bt_alloc(P); g1 = bt_alloc(P);
    /* (d) the default is float32, and a model switched to bf16 and back is bit for bit one never switched */
    MBT_CHECK(mb_model_precision(m0) == MB_PRECISION_FP32 && !strcmp(mb_model_precision_describe(m0), "float32 products"),
              "the default precision is float32: '%s'", mb_model_precision_describe(m0));
    bt_fwd_bwd(m0, in, tg, B, T, l0, g0, &loss0);
    MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_BF16) == MB_STATUS_OK, "set bf16");
    bt_fwd_bwd(m1, in, tg, B, T, l1, g1, &loss1);
    MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_FP32) == MB_STATUS_OK, "set fp32");
    bt_fwd_bwd(m1, in, tg, B, T, l1, g1, &loss1);
    MBT_CHECK(memcmp(l0, l1, sizeof(float) * (size_t)NL) == 0 && memcmp(g0, g1, sizeof(float) * (size_t)P) == 0 && loss0 == loss1,
              "precision fp32 after bf16: logits and grads bit-identical to a model never switched");
    /* bf16 at the model level: close to float32, not equal */
    if (have) {
        MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_BF16) == MB_STATUS_OK && mb_model_precision(m1) == MB_PRECISION_BF16,
                  "bf16 in effect: %s", mb_model_precision_describe(m1));
        MBT_CHECK(mb_model_backward(m1) != MB_STATUS_OK, "a precision change needs a new forward before backward");
        bt_fwd_bwd(m1, in, tg, B, T, l1, g1, &loss1);
        {
            double rl = mbt_rel_l2(l1, l0, NL), rg = mbt_rel_l2(g1, g0, P);
            printf("bf16 model (%s): loss %.6f vs %.6f, logits rel L2 %.2e, grads rel L2 %.2e\n", mb_model_precision_describe(m1),
                   (double)loss1, (double)loss0, rl, rg);
            MBT_CHECK(rl > 1e-5 && rl < 2e-2 && rg > 1e-5 && rg < 5e-2 && fabs((double)loss1 - loss0) < 1e-2,
                      "bf16 model vs float32: loss %g vs %g, logits rel L2 %g, grads rel L2 %g", (double)loss1, (double)loss0, rl, rg);
        }
        { /* the thread count does not change a bit of it */
            float *l2 = bt_alloc(NL), *g2 = bt_alloc(P), loss2;
            bt_threads(2);
            bt_fwd_bwd(m1, in, tg, B, T, l2, g2, &loss2);
            bt_threads(1);
            MBT_CHECK(memcmp(l1, l2, sizeof(float) * (size_t)NL) == 0 && memcmp(g1, g2, sizeof(float) * (size_t)P) == 0,
                      "bf16 model: 1 and 2 threads give the same logits and grads");
            free(l2); free(g2);
        }
        /* streams stay float32 whatever the model's precision */
        {
            mb_stream *s0 = NULL, *s1 = NULL;
            const float *a, *b;
            MBT_CHECK(mb_stream_create(&s0, m0) == MB_STATUS_OK && mb_stream_create(&s1, m1) == MB_STATUS_OK, "streams");
            a = mb_stream_step(s0, 'x');
            b = mb_stream_step(s1, 'x');
            MBT_CHECK(memcmp(a, b, 256 * sizeof(float)) == 0, "a stream of a bf16 model computes in float32");
            mb_stream_free(s0);
            mb_stream_free(s1);
        }
    } else {
        MBT_SKIP("bf16", "no AVX512-BF16 or AMX here: the bf16 model is not compared with float32");
    }
    /* (e) a CPU without the instructions: the switch says so and computes float32 */
    mb__bf16_limit_paths(1 << MB__BF16_NONE);
    MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_BF16) == MB_STATUS_OK && mb_model_precision(m1) == MB_PRECISION_FP32 &&
                  !strcmp(mb_model_precision_describe(m1), "bf16 requested but this CPU has no AVX512-BF16 or AMX: float32 products"),
              "fallback: '%s'", mb_model_precision_describe(m1));
    bt_fwd_bwd(m1, in, tg, B, T, l1, g1, &loss1);
    MBT_CHECK(memcmp(l0, l1, sizeof(float) * (size_t)NL) == 0 && memcmp(g0, g1, sizeof(float) * (size_t)P) == 0,
              "fallback: bit-identical to float32");
    mb__bf16_limit_paths(1 << MB__BF16_NONE | 1 << MB__BF16_AVX512);
    if (mb__bf16_paths() >> MB__BF16_AVX512 & 1)
        MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_BF16) == MB_STATUS_OK &&
                      !strcmp(mb_model_precision_describe(m1), "bf16 products: AVX512-BF16 (vdpbf16ps)"),
                  "AVX512-BF16 only: '%s'", mb_model_precision_describe(m1));
    mb__bf16_limit_paths(-1);
    if (mb__bf16_paths() >> MB__BF16_AMX & 1)
        MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_BF16) == MB_STATUS_OK &&
                      !strcmp(mb_model_precision_describe(m1), "bf16 products: AMX tiles (tdpbf16ps)"),
                  "AMX preferred: '%s'", mb_model_precision_describe(m1));
    MBT_CHECK(mb_model_set_precision(m1, MB_PRECISION_TF32) == MB_STATUS_UNSUPPORTED && strstr(mb_last_error(), "CUDA"),
              "tf32 on the CPU: unsupported, naming CUDA ('%s')", mb_last_error());
    MBT_CHECK(mb_model_set_precision(m1, 7) == MB_STATUS_INVALID_ARGUMENT, "precision 7: invalid");
    free(l0); free(l1); free(g0); free(g1);
    mb_model_free(m0);
    mb_model_free(m1);
}

/* (c) 200 steps of training in each precision from the same start: the
   loss curves. */
static void bt_train_curve(int precision, float *loss, int steps, const uint8_t *text, int64_t n) {
    mb_config cfg = bt_small_config();
    mb_train_settings set = mb_train_settings_default();
    mb_model *m = NULL;
    mb_trainer tr;
    int s;
    set.batch = 4;
    set.ctx = 64;
    set.steps = steps;
    set.warmup = 10;
    set.lr = 3e-3;
    set.seed = 5;
    MBT_CHECK(mb_model_create(&m, &cfg, 5) == MB_STATUS_OK && mb_model_set_precision(m, precision) == MB_STATUS_OK &&
                  mb_trainer_init(&tr, m, &set, text, n, NULL) == MB_STATUS_OK, "trainer");
    for (s = 0; s < steps; s++) {
        mb_step_result r;
        if (mb_trainer_step(&tr, mb_lr_at_step(set.lr, s, set.warmup, set.steps), &r) != MB_STATUS_OK) break;
        loss[s] = r.loss;
    }
    MBT_CHECK(s == steps, "%d of %d steps", s, steps);
    mb_trainer_free(&tr);
    mb_model_free(m);
}

static void test_bf16_training(void) {
    enum { STEPS = 200 };
    float l32[STEPS], lbf[STEPS];
    size_t n = 0;
    uint8_t *text = (uint8_t *)mbt_slurp("data/sample.txt", &n);
    double worst = 0, t0;
    int s, at = 0;
    if (mb__bf16_paths() <= 1) { MBT_SKIP("bf16", "no AVX512-BF16 or AMX here: no bf16 training curve"); free(text); return; }
    MBT_CHECK(text && n > 10000, "data/sample.txt");
    if (!text) return;
    t0 = mb_clock_seconds();
    bt_train_curve(MB_PRECISION_FP32, l32, STEPS, text, (int64_t)n);
    bt_train_curve(MB_PRECISION_BF16, lbf, STEPS, text, (int64_t)n);
    for (s = 0; s < STEPS; s++)
        if (fabs((double)lbf[s] - l32[s]) > worst) { worst = fabs((double)lbf[s] - l32[s]); at = s; }
    printf("bf16 training (%d steps, %.1f s): loss %.4f -> %.4f (fp32 %.4f -> %.4f), largest step difference %.4f at step %d\n",
           STEPS, mb_clock_seconds() - t0, (double)lbf[0], (double)lbf[STEPS - 1], (double)l32[0], (double)l32[STEPS - 1], worst, at);
    /* every step within 0.05 nats of float32 (the two runs see the same
       batches; bf16's 2^-8 rounding of each product input moves the loss by
       ~1e-3 at first, and the trajectories drift apart slowly), the last
       ten steps' mean within 0.02, and both actually learned */
    MBT_CHECK(worst <= 0.05, "bf16 vs fp32 loss: step %d differs by %.4f (bound 0.05)", at, worst);
    {
        double a = 0, b = 0;
        for (s = STEPS - 10; s < STEPS; s++) { a += lbf[s] / 10.0; b += l32[s] / 10.0; }
        MBT_CHECK(fabs(a - b) <= 0.02 && a < (double)lbf[0] - 1.0, "bf16 final loss %.4f vs fp32 %.4f (first %.4f)", a, b, (double)lbf[0]);
    }
    free(text);
}

/* ------------------------------------------------------------------ CLI */
static void test_bf16_cli(void) {
    const char *common = "./mambabyte train --data data/sample.txt --d-model 16 --n-layer 1 --d-state 4 --batch 2 --ctx 32 "
                         "--steps 3 --eval-chars 0 --threads 1 --out build/t_bf16.bin";
    char cmd[1024];
    int rc;
    snprintf(cmd, sizeof cmd, "%s --precision bf16 > build/t_bf16.out 2>&1", common);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 0, "train --precision bf16 on the CPU (%d): see build/t_bf16.out", rc);
    MBT_CHECK(mbt_file_contains("build/t_bf16.out", "precision: bf16 "), "the chosen path is printed: see build/t_bf16.out");
    if (mb__bf16_paths() >> MB__BF16_AMX & 1)
        MBT_CHECK(mbt_file_contains("build/t_bf16.out", "precision: bf16 products: AMX tiles"), "AMX named: see build/t_bf16.out");
    snprintf(cmd, sizeof cmd, "MB_TEST_BF16_PATHS=1 %s --precision bf16 > build/t_bf16n.out 2>&1", common);
    MBT_CHECK(mbt_run(cmd) == 0 && mbt_file_contains("build/t_bf16n.out", "precision: bf16 requested but this CPU has no AVX512-BF16 or AMX"),
              "without the instructions: trains in float32 and says so (build/t_bf16n.out)");
    snprintf(cmd, sizeof cmd, "%s --precision tf32 --device cpu > build/t_tf32.out 2>&1", common);
    rc = mbt_run(cmd);
    MBT_CHECK(rc == 2 && mbt_file_contains("build/t_tf32.out", "tf32") && mbt_file_contains("build/t_tf32.out", "CUDA"),
              "--precision tf32 on the CPU: exit 2 naming CUDA (%d, build/t_tf32.out)", rc);
    snprintf(cmd, sizeof cmd, "%s > build/t_fp32.out 2>&1", common);
    MBT_CHECK(mbt_run(cmd) == 0 && !mbt_file_contains("build/t_fp32.out", "precision:"), "fp32 (the default) prints no precision line");
}

static void test_bf16(void) {
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#endif
    bt_threads(1);
    test_bf16_rounding();
    test_bf16_products();
    test_bf16_model();
    test_bf16_training();
    test_bf16_cli();
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
}
