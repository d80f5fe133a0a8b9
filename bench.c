/* bench.c - `mambabyte bench`: CPU throughput of the default config (issue 6).
   Included by main.c after the header's implementation, so it may call the
   mb__ kernels and look inside mb_model.  Prints, for the default config:
     * the measured float32 FMA peak (1 thread and all threads),
     * every matrix product of a training step, forward and backward, with
       their exact FLOP count, and their share of the peak, and the same in
       bf16 (mb__matmul_*_bf16) on each bf16 kernel this CPU runs (AMX,
       AVX512-BF16),
     * one layer's scan alone (forward + backward),
     * a forward + backward + AdamW step at batch 4 x ctx 256 and at
       batch 16 x ctx 1024 (tokens/s, share of peak at ~6.3 MFLOP/token),
       and at batch 4 x ctx 256 with bf16 products on each bf16 kernel
       (tokens/s and the ratio to the float32 step of the same run),
     * peak resident memory (getrusage ru_maxrss),
     * streaming bytes/s on one thread (mb_stream_step), and the ceiling
       that one thread's read bandwidth over the 4.2 MB of weights puts
       on streaming,
     * eval (mb_eval_text, through mb_stream_feed) against the stepwise
       reference (mb__eval_text_ref): chars/s of both and the ratio,
   each a median of repeated runs.  --json FILE writes the same figures.
   A benchmark, never a test: nothing here fails on a slow machine. */

#include <sys/resource.h>

#include "cli.h"

#define BENCH_STEP_FLOP_PER_TOKEN 6.3e6 /* the figure for one training step of the default model */

static int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double bench_peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1.0;
    return (double)ru.ru_maxrss / 1024.0; /* kilobytes on Linux */
}

static void bench_cpu_name(char *buf, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(buf, n, "unknown CPU");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':'), *e;
            if (!p) break;
            p++;
            while (*p == ' ' || *p == '\t') p++;
            e = p + strlen(p);
            while (e > p && (e[-1] == '\n' || e[-1] == ' ')) *--e = 0;
            snprintf(buf, n, "%s", p);
            break;
        }
    }
    fclose(f);
}

/* ------------------------------------------------------------ FMA peak */
/* BENCH_CHAINS independent chains of multiply-adds in the widest vector
   registers the target has (AVX-512, else AVX2+FMA, else scalar mul + add):
   enough chains to cover the FMA latency of two pipes.  This measures the
   machine, so it uses intrinsics; the model's kernels are portable C. */
#define BENCH_CHAINS 16
#if defined(__AVX512F__) || (defined(__AVX__) && defined(__FMA__))
#include <immintrin.h>
#endif

static float bench_fma_kernel(int64_t iters, float m, float c) {
    int64_t it;
    int j;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 acc[BENCH_CHAINS], vm = _mm512_set1_ps(m), vc = _mm512_set1_ps(c);
    float tmp[16];
    for (j = 0; j < BENCH_CHAINS; j++) acc[j] = _mm512_set1_ps((float)j * 1e-3f);
    for (it = 0; it < iters; it++)
        for (j = 0; j < BENCH_CHAINS; j++) acc[j] = _mm512_fmadd_ps(acc[j], vm, vc);
    for (j = 0; j < BENCH_CHAINS; j++) {
        int k;
        _mm512_storeu_ps(tmp, acc[j]);
        for (k = 0; k < 16; k++) s += tmp[k];
    }
#elif defined(__AVX__) && defined(__FMA__)
    /* two 8-wide chains per 16 lanes */
    __m256 acc[2 * BENCH_CHAINS], vm = _mm256_set1_ps(m), vc = _mm256_set1_ps(c);
    float tmp[8];
    for (j = 0; j < 2 * BENCH_CHAINS; j++) acc[j] = _mm256_set1_ps((float)j * 1e-3f);
    iters /= 2;
    for (it = 0; it < iters; it++)
        for (j = 0; j < 2 * BENCH_CHAINS; j++) acc[j] = _mm256_fmadd_ps(acc[j], vm, vc);
    iters *= 2;
    for (j = 0; j < 2 * BENCH_CHAINS; j++) {
        int k;
        _mm256_storeu_ps(tmp, acc[j]);
        for (k = 0; k < 8; k++) s += tmp[k];
    }
#else
    float acc[BENCH_CHAINS][16];
    int k;
    for (j = 0; j < BENCH_CHAINS; j++)
        for (k = 0; k < 16; k++) acc[j][k] = (float)(j * 16 + k) * 1e-3f;
    for (it = 0; it < iters; it++)
        for (k = 0; k < 16; k++)
            for (j = 0; j < BENCH_CHAINS; j++) acc[j][k] = acc[j][k] * m + c;
    for (j = 0; j < BENCH_CHAINS; j++)
        for (k = 0; k < 16; k++) s += acc[j][k];
#endif
    return s;
}
#define BENCH_FMA_FLOPS 2.0 /* per lane per iteration: 16 lanes x BENCH_CHAINS per iteration */

static volatile float bench_sink;

/* GFLOP/s of nthreads threads each running the kernel (median of reps). */
static double bench_fma_peak(int nthreads, int reps) {
    const int64_t iters = 4000000; /* 4M x 16 chains x 16 lanes x 2 = 2 GFLOP per thread */
    double v[16];
    int r;
    if (reps > 16) reps = 16;
    for (r = 0; r < reps; r++) {
        double t0 = mb_clock_seconds(), t;
        float sum = 0.0f;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : sum)
#endif
        sum += bench_fma_kernel(iters, 0.9999f, 1e-4f);
        t = mb_clock_seconds() - t0;
        bench_sink = sum;
        v[r] = BENCH_FMA_FLOPS * 16.0 * BENCH_CHAINS * (double)iters * nthreads / t / 1e9;
    }
    return bench_median(v, reps);
}

/* -------------------------------------------------------------- helpers */
static void bench_fill(float *x, int64_t n, uint64_t *rng, float scale) {
    int64_t i;
    for (i = 0; i < n; i++) x[i] = (float)((2.0 * mb__rng_uniform(rng) - 1.0) * scale);
}

typedef struct {
    const char *name;
    int IC, OC;
    int count; /* how many per step (n_layer for the per-layer ones) */
} bench_mm_shape;

typedef struct {
    double fma1, fmaN;                 /* GFLOP/s */
    double mm_gflops, mm_s, mm_flop;   /* all products of one step at N tokens */
    int64_t mm_N;
    double mm_fwd_gflops, mm_bwd_gflops;
    double shape_fwd[5], shape_bwd[5];
    double step_s[2], step_fwd_s[2], step_bwd_s[2], step_opt_s[2], tok_s[2], rss_mb, act_mb[2];
    double scan_fwd_s[2], scan_bwd_s[2];
    /* bf16, by kernel (MB__BF16_AVX512, MB__BF16_AMX): the products of one step, the B4xT256 step */
    double bf_mm_s[3], bf_fwd_gflops[3], bf_bwd_gflops[3], bf_step_s[3], bf_tok_s[3];
    double stream_bps, read_gbs, stream_ceiling; /* ceiling: read_gbs over the weights' bytes, bytes/s */
    int done[2];
    int threads;
} bench_result;

static const char *bench_bf16_path_name(int path) {
    return path == MB__BF16_AMX ? "AMX tiles (tdpbf16ps)" : path == MB__BF16_AVX512 ? "AVX512-BF16 (vdpbf16ps)" : "none";
}

/* ------------------------------------------------------------- matmuls */
static void bench_matmuls(bench_result *res, const mb_config *c, int64_t N, int reps) {
    int C = c->d_model, Di = c->d_model * c->expand, S = c->d_state, R = c->dt_rank, X = R + 2 * S;
    bench_mm_shape shapes[5];
    int64_t maxIC = Di > C ? Di : C, maxOC = 2 * Di > 256 ? 2 * Di : 256, s;
    float *inp, *w, *out, *dinp, *dw, *dout;
    uint64_t rng = 99;
    double tot_f = 0.0, tot_b = 0.0, flop_f = 0.0;
    int path;
    shapes[0].name = "in_proj";  shapes[0].IC = C;  shapes[0].OC = 2 * Di; shapes[0].count = c->n_layer;
    shapes[1].name = "x_proj";   shapes[1].IC = Di; shapes[1].OC = X;      shapes[1].count = c->n_layer;
    shapes[2].name = "dt_proj";  shapes[2].IC = R;  shapes[2].OC = Di;     shapes[2].count = c->n_layer;
    shapes[3].name = "out_proj"; shapes[3].IC = Di; shapes[3].OC = C;      shapes[3].count = c->n_layer;
    shapes[4].name = "head";     shapes[4].IC = C;  shapes[4].OC = 256;    shapes[4].count = 1;
    if (maxIC < X) maxIC = X;
    inp = (float *)malloc(sizeof(float) * (size_t)(N * maxIC));
    dinp = (float *)malloc(sizeof(float) * (size_t)(N * maxIC));
    out = (float *)malloc(sizeof(float) * (size_t)(N * maxOC));
    dout = (float *)malloc(sizeof(float) * (size_t)(N * maxOC));
    w = (float *)malloc(sizeof(float) * (size_t)(maxIC * maxOC));
    dw = (float *)malloc(sizeof(float) * (size_t)(maxIC * maxOC));
    if (!inp || !dinp || !out || !dout || !w || !dw) {
        fprintf(stderr, "bench: out of memory (matmuls)\n");
        free(inp); free(dinp); free(out); free(dout); free(w); free(dw);
        return;
    }
    bench_fill(inp, N * maxIC, &rng, 1.0f);
    bench_fill(dout, N * maxOC, &rng, 1.0f);
    bench_fill(w, maxIC * maxOC, &rng, 0.1f);
    memset(dinp, 0, sizeof(float) * (size_t)(N * maxIC));
    memset(dw, 0, sizeof(float) * (size_t)(maxIC * maxOC));
    for (s = 0; s < 5; s++) {
        const bench_mm_shape *sh = &shapes[s];
        double vf[16], vb[16], f = 2.0 * (double)N * sh->IC * sh->OC;
        int r;
        mb__matmul_forward(out, inp, sh->IC, w, N, sh->IC, sh->OC); /* warm */
        for (r = 0; r < reps; r++) {
            double t0 = mb_clock_seconds();
            mb__matmul_forward(out, inp, sh->IC, w, N, sh->IC, sh->OC);
            vf[r] = mb_clock_seconds() - t0;
            t0 = mb_clock_seconds();
            mb__matmul_backward(dinp, dw, dout, inp, sh->IC, w, N, sh->IC, sh->OC);
            vb[r] = mb_clock_seconds() - t0;
        }
        res->shape_fwd[s] = bench_median(vf, reps);
        res->shape_bwd[s] = bench_median(vb, reps);
        tot_f += res->shape_fwd[s] * sh->count;
        tot_b += res->shape_bwd[s] * sh->count;
        flop_f += f * sh->count;
        printf("  %-9s %4d -> %-4d  x%d   forward %7.2f ms %6.1f GFLOP/s   backward %7.2f ms %6.1f GFLOP/s\n",
               sh->name, sh->IC, sh->OC, sh->count, 1e3 * res->shape_fwd[s], f / res->shape_fwd[s] / 1e9,
               1e3 * res->shape_bwd[s], 2.0 * f / res->shape_bwd[s] / 1e9);
    }
    res->mm_N = N;
    res->mm_flop = 3.0 * flop_f;
    res->mm_s = tot_f + tot_b;
    res->mm_gflops = res->mm_flop / res->mm_s / 1e9;
    res->mm_fwd_gflops = flop_f / tot_f / 1e9;
    res->mm_bwd_gflops = 2.0 * flop_f / tot_b / 1e9;
    printf("  all products of one step: %.1f ms = %.1f GFLOP (2*N*IC*OC forward, twice that backward): %.1f GFLOP/s, "
           "%.0f%% of peak (forward %.1f, backward %.1f GFLOP/s)\n",
           1e3 * res->mm_s, res->mm_flop / 1e9, res->mm_gflops, 100.0 * res->mm_gflops / res->fmaN, res->mm_fwd_gflops,
           res->mm_bwd_gflops);
    if (mb__bf16_paths() == 1) printf("  bf16 products: this CPU has no AVX512-BF16 or AMX\n");
    for (path = MB__BF16_AVX512; path <= MB__BF16_AMX; path++) { /* the same shapes in bf16, the weights packed first */
        double bf_f = 0.0, bf_b = 0.0;
        if (!(mb__bf16_paths() >> path & 1)) continue;
        printf("  bf16 products on %s:\n", bench_bf16_path_name(path));
        for (s = 0; s < 5; s++) {
            const bench_mm_shape *sh = &shapes[s];
            double vf[16], vb[16], f = 2.0 * (double)N * sh->IC * sh->OC;
            uint32_t *wp = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)mb__bf16_packed_size(sh->IC, sh->OC));
            int r;
            if (!wp) { fprintf(stderr, "bench: out of memory (bf16 weights)\n"); break; }
            mb__bf16_pack_weight(wp, w, sh->IC, sh->OC);
            mb__matmul_forward_bf16(path, out, inp, sh->IC, w, wp, N, sh->IC, sh->OC); /* warm */
            for (r = 0; r < reps; r++) {
                double t0 = mb_clock_seconds();
                mb__matmul_forward_bf16(path, out, inp, sh->IC, w, wp, N, sh->IC, sh->OC);
                vf[r] = mb_clock_seconds() - t0;
                t0 = mb_clock_seconds();
                mb__matmul_backward_bf16(path, dinp, dw, dout, inp, sh->IC, w, wp, N, sh->IC, sh->OC);
                vb[r] = mb_clock_seconds() - t0;
            }
            free(wp);
            vf[0] = bench_median(vf, reps);
            vb[0] = bench_median(vb, reps);
            bf_f += vf[0] * sh->count;
            bf_b += vb[0] * sh->count;
            printf("  %-9s %4d -> %-4d  x%d   forward %7.2f ms %6.1f GFLOP/s   backward %7.2f ms %6.1f GFLOP/s   (%.1fx, %.1fx fp32)\n",
                   sh->name, sh->IC, sh->OC, sh->count, 1e3 * vf[0], f / vf[0] / 1e9, 1e3 * vb[0], 2.0 * f / vb[0] / 1e9,
                   res->shape_fwd[s] / vf[0], res->shape_bwd[s] / vb[0]);
        }
        res->bf_mm_s[path] = bf_f + bf_b;
        res->bf_fwd_gflops[path] = flop_f / bf_f / 1e9;
        res->bf_bwd_gflops[path] = 2.0 * flop_f / bf_b / 1e9;
        printf("  all bf16 products of one step on %s: %.1f ms: %.1f GFLOP/s (forward %.1f, backward %.1f), %.2fx float32's %.1f ms\n",
               bench_bf16_path_name(path), 1e3 * res->bf_mm_s[path], 3.0 * flop_f / res->bf_mm_s[path] / 1e9,
               res->bf_fwd_gflops[path], res->bf_bwd_gflops[path], (tot_f + tot_b) / res->bf_mm_s[path], 1e3 * (tot_f + tot_b));
    }
    free(inp); free(dinp); free(out); free(dout); free(w); free(dw);
}

/* --------------------------------------------------- training step */
static uint8_t *bench_make_text(int64_t n, uint64_t seed) {
    /* word-like bytes: lowercase letters, spaces, a little punctuation */
    uint8_t *d = (uint8_t *)malloc((size_t)n);
    int64_t i;
    uint64_t rng = seed;
    if (!d) return NULL;
    for (i = 0; i < n; i++) {
        uint64_t r = mb__rng_next(&rng) % 100;
        d[i] = (uint8_t)(r < 16 ? ' ' : r < 18 ? '.' : r < 19 ? '\n' : 'a' + (int)(r % 26));
    }
    return d;
}

/* Times `steps` training steps (after one warm-up step) at batch B x ctx T;
   the same calls as mb_trainer_step, split so each phase is timed.  path
   MB__BF16_NONE: float32 (res's step fields [which]); otherwise the bf16
   products on that kernel (res->bf_step_s / bf_tok_s [path]; no scan). */
static int bench_train(bench_result *res, int which, int path, const mb_config *cfg, int B, int T, int steps,
                       const uint8_t *data, int64_t size) {
    mb_model *m = NULL;
    mb_trainer tr;
    mb_train_settings set;
    double vt[32], vf[32], vb[32], vo[32];
    int s;
    set = mb_train_settings_default();
    set.batch = B; set.ctx = T; set.seed = 1;
    if (steps > 32) steps = 32;
    if (mb_model_create(&m, cfg, 1234) != MB_STATUS_OK || mb_trainer_init(&tr, m, &set, data, size, NULL) != MB_STATUS_OK) {
        fprintf(stderr, "bench: %s\n", mb_last_error());
        mb_model_free(m);
        return 1;
    }
    if (path != MB__BF16_NONE) { /* this kernel, even where the model would take another */
        mb__bf16_limit_paths(1 << path);
        mb_model_set_precision(m, MB_PRECISION_BF16);
        mb__bf16_limit_paths(-1);
    }
    for (s = -1; s < steps; s++) {
        mb_step_result r;
        float loss;
        double t0 = mb_clock_seconds(), t1, t2, t3;
        mb_model_zero_grad(m);
        if (mb_batcher_next(&tr.batcher, tr.inputs, tr.targets, B, T) != MB_STATUS_OK ||
            mb_model_forward(m, tr.inputs, tr.targets, B, T, &loss) != MB_STATUS_OK) break;
        t1 = mb_clock_seconds();
        if (mb_model_backward(m) != MB_STATUS_OK) break;
        t2 = mb_clock_seconds();
        if (mb_trainer_apply(&tr, 1e-3, loss, &r) != MB_STATUS_OK) break;
        t3 = mb_clock_seconds();
        if (s < 0) continue; /* warm-up: allocates the activations */
        vt[s] = t3 - t0; vf[s] = t1 - t0; vb[s] = t2 - t1; vo[s] = t3 - t2;
    }
    if (s < steps) {
        fprintf(stderr, "bench: training step failed: %s\n", mb_last_error());
        mb_trainer_free(&tr);
        mb_model_free(m);
        return 1;
    }
    if (path != MB__BF16_NONE) {
        res->bf_step_s[path] = bench_median(vt, steps);
        res->bf_tok_s[path] = (double)B * T / res->bf_step_s[path];
        printf("  bf16 products on %s: %.1f ms per step = %.0f tokens/s: %.2fx float32 (forward %.1f, backward %.1f ms)\n",
               bench_bf16_path_name(path), 1e3 * res->bf_step_s[path], res->bf_tok_s[path], res->bf_tok_s[path] / res->tok_s[which],
               1e3 * bench_median(vf, steps), 1e3 * bench_median(vb, steps));
        mb_trainer_free(&tr);
        mb_model_free(m);
        return 0;
    }
    res->step_s[which] = bench_median(vt, steps);
    res->step_fwd_s[which] = bench_median(vf, steps);
    res->step_bwd_s[which] = bench_median(vb, steps);
    res->step_opt_s[which] = bench_median(vo, steps);
    res->tok_s[which] = (double)B * T / res->step_s[which];
    res->act_mb[which] = (double)m->act_floats * 4.0 / 1e6;
    /* one layer's scan alone, on the real activations of the last step */
    {
        const mb_config *c = &m->cfg;
        const mb_layer_weights *W = &m->w.layer[0];
        mb_layer_weights *G = &m->g.layer[0];
        mb_layer_acts *a = &m->acts[0];
        int Di = c->d_model * c->expand, S = c->d_state, R = c->dt_rank, reps = which == 0 ? 9 : 3, r;
        double sf[16], sb[16];
        for (r = 0; r < reps; r++) {
            double t0 = mb_clock_seconds(), t1;
            mb__scan_forward(a->gated, a->states, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                             B, T, Di, S, R, m->scan_chunk);
            t1 = mb_clock_seconds();
            mb__scan_backward(m->dacts.u, m->dacts.delta, G->dt_proj_b, G->A_log, m->dacts.xdbl, G->D, m->dacts.xz, m->ma.scan_scratch,
                              m->dacts.gated, a->states, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                              B, T, Di, S, R, m->scan_chunk);
            sb[r] = mb_clock_seconds() - t1;
            sf[r] = t1 - t0;
        }
        res->scan_fwd_s[which] = bench_median(sf, reps);
        res->scan_bwd_s[which] = bench_median(sb, reps);
    }
    res->done[which] = 1;
    mb_trainer_free(&tr);
    mb_model_free(m);
    return 0;
}

/* ------------------------------------------------------------ streaming */
/* Bytes/s of k streams stepped together (mb_streams; k = 1: one stream)
   at an MB_PRECISION_*, in total, median of reps over n steps. */
static double bench_stream(const mb_config *cfg, const uint8_t *text, int64_t n, int reps, int precision, int k) {
    mb_model *m = NULL;
    mb_streams *st = NULL;
    double v[16];
    int r, idx[64], j;
    uint8_t b[64];
    if (mb_model_create(&m, cfg, 5) != MB_STATUS_OK || mb_streams_create(&st, m, k, precision) != MB_STATUS_OK) {
        fprintf(stderr, "bench: %s\n", mb_last_error());
        mb_model_free(m);
        return 0.0;
    }
    mb_model_free(m); /* the streams hold their own weights */
    for (r = 0; r < reps; r++) {
        double t0 = mb_clock_seconds();
        int64_t i;
        float acc = 0.0f;
        for (i = 0; i < n; i++) {
            for (j = 0; j < k; j++) idx[j] = j, b[j] = text[(i + 97 * j) % n];
            acc += mb_streams_step(st, idx, b, k)[b[0]];
        }
        v[r] = (double)n * k / (mb_clock_seconds() - t0);
        bench_sink = acc;
    }
    mb_streams_free(st);
    return bench_median(v, reps);
}

static double bench_read_bw(int64_t bytes, int reps);
/* Per stream precision: one stream's bytes/s beside its ceiling (the
   weights' bytes at that precision over the read bandwidth measured at that
   size), and 16 streams stepped together (total bytes/s). */
static void bench_precisions(const mb_config *cfg, const uint8_t *text) {
    static const char *names[3] = {"fp32", "bf16", "int8"};
    static const int precs[3] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    static const double bpw[3] = {4.0, 2.0, 1.0 + 4.0 / MB_INT8_GROUP}; /* bytes per weight (int8: + its group's scale) */
    double one[3], ceil[3], batch[3];
    int i;
    for (i = 0; i < 3; i++) { /* side by side, in one run */
        const double bytes = (double)mb_config_num_params(cfg) * bpw[i];
        one[i] = bench_stream(cfg, text, 2000, 5, precs[i], 1);
        ceil[i] = bench_read_bw((int64_t)bytes, 5) * 1e9 / bytes;
        batch[i] = bench_stream(cfg, text, 300, 5, precs[i], 16);
    }
    printf("stream precision (1 thread, medians of 5): one stream bytes/s [ceiling: weights' bytes / read bandwidth]; 16 streams together\n");
    for (i = 0; i < 3; i++)
        printf("  %s: %7.0f bytes/s [%7.0f] = %.2fx fp32; 16 streams %8.0f bytes/s in total = %.1fx one fp32 stream\n", names[i], one[i],
               ceil[i], one[i] / one[0], batch[i], batch[i] / one[0]);
    printf("\n");
}

/* Read bandwidth of one thread over a buffer of `bytes` (the model's
   weights: a streamed byte reads all of them), GB/s, median of reps. */
static double bench_read_bw(int64_t bytes, int reps) {
    int64_t n = bytes / (int64_t)sizeof(float) / 128 * 128, i;
    float *a = (float *)malloc((size_t)n * sizeof(float));
    double v[16];
    int r, k;
    if (!a || n == 0) { free(a); return 0.0; }
    for (i = 0; i < n; i++) a[i] = (float)(i & 7);
    for (r = 0; r < reps; r++) {
        const int passes = 50;
        double t0 = mb_clock_seconds();
        float acc[128], s = 0.0f;
        int p;
        for (k = 0; k < 128; k++) acc[k] = 0.0f;
        for (p = 0; p < passes; p++) {
            for (i = 0; i < n; i += 128)
                for (k = 0; k < 128; k++) acc[k] += a[i + k]; /* 8 independent vectors of sums */
            a[(p * 7919) % n] += 1.0f;                           /* keeps each pass a real read */
        }
        for (k = 0; k < 128; k++) s += acc[k];
        v[r] = (double)passes * (double)n * sizeof(float) / (mb_clock_seconds() - t0) / 1e9;
        bench_sink = s;
    }
    free(a);
    return bench_median(v, reps);
}

/* ----------------------------------------------------------------- eval */
/* mb_eval_text (mb_stream_feed: parallel passes, all threads) against the
   stepwise reference mb__eval_text_ref (one mb_stream_step per byte)
   on the same text and model: characters per second of each (median of
   reps) and their ratio; the two results must be equal field for field. */
static void bench_eval(const mb_config *cfg, const uint8_t *text, int64_t chars, int reps, double *step_cps,
                       double *feed_cps) {
    mb_model *m = NULL;
    mb_eval_result a, b;
    double vs[16], vf[16];
    int r, same = 1;
    *step_cps = *feed_cps = 0.0;
    if (mb_model_create(&m, cfg, 5) != MB_STATUS_OK) { fprintf(stderr, "bench: %s\n", mb_last_error()); return; }
    for (r = 0; r < reps; r++) {
        double t0 = mb_clock_seconds(), t1, t2;
        mb__eval_text_ref(m, text, chars, chars, &a, NULL, NULL);
        t1 = mb_clock_seconds();
        mb_eval_text(m, text, chars, chars, &b, NULL, NULL);
        t2 = mb_clock_seconds();
        vs[r] = (double)chars / (t1 - t0);
        vf[r] = (double)chars / (t2 - t1);
        same &= a.chars == b.chars && a.chars_correct == b.chars_correct && a.bytes == b.bytes &&
                a.bytes_correct == b.bytes_correct && a.nll_bits == b.nll_bits;
    }
    *step_cps = bench_median(vs, reps);
    *feed_cps = bench_median(vf, reps);
    printf("eval (%lld chars): stepwise (mb_stream_step, 1 thread) %.0f chars/s; mb_eval_text (mb_stream_feed, %d "
           "thread%s) %.0f chars/s: %.1fx; results %s\n\n", (long long)chars, *step_cps, cli_threads(),
           cli_threads() == 1 ? "" : "s", *feed_cps, *feed_cps / *step_cps, same ? "identical" : "DIFFER");
    fflush(stdout);
    mb_model_free(m);
}

/* ------------------------------------------------------------------ CLI */
static const char *BENCH_USAGE = "mambabyte bench [--json FILE] [--quick]   (threads: OMP_NUM_THREADS; streaming runs on one)";

static int mb_cli_bench(int argc, char **argv) {
    flag flags[] = {
        {"json", F_STR, 0, 0, "also write the figures as JSON", 0, 0, 0},
        {"quick", F_BOOL, 0, 0, "skip the batch 16 x ctx 1024 step (the slow one)", 0, 0, 0},
        FLAG_END};
    const char *json;
    int quick, threads;
    mb_config cfg = mb_config_default();
    bench_result res;
    char cpu[256];
    uint8_t *text;
    const int64_t text_size = 1 << 22;
    double peak_share_div, eval_step_cps, eval_feed_cps;
    if (parse_flags("bench", flags, argc - 1, argv + 1, BENCH_USAGE)) return 2;
    json = flag_str(flags, "json", NULL);
    quick = flag_given(flags, "quick");
    memset(&res, 0, sizeof res);
    mb_config_validate(&cfg);
    threads = res.threads = cli_threads();
    bench_cpu_name(cpu, sizeof cpu);
    text = bench_make_text(text_size, 42);
    if (!text) { fprintf(stderr, "mambabyte bench: out of memory\n"); return 1; }
    printf("mambabyte bench: default config (d_model %d, %d layers, d_state %d, d_conv %d, expand %d, dt_rank %d; "
           "%lld parameters)\n", cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank,
           (long long)mb_config_num_params(&cfg));
    printf("machine: %s, %d thread%s (OMP_NUM_THREADS), compiler %s; medians of repeated runs\n\n", cpu, threads,
           threads == 1 ? "" : "s", __VERSION__);
    fflush(stdout);

    res.fma1 = bench_fma_peak(1, 5);
    res.fmaN = threads > 1 ? bench_fma_peak(threads, 5) : res.fma1;
    peak_share_div = res.fmaN / 100.0;
    printf("float32 FMA peak (measured): %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d threads\n\n", res.fma1,
           res.fmaN, threads);
    fflush(stdout);

    printf("matrix products of one training step at N = %d tokens (mb__matmul_forward / _backward):\n", 4096);
    bench_matmuls(&res, &cfg, 4096, 7);
    printf("\n");
    fflush(stdout);

    {
        static const int Bs[2] = {4, 16}, Ts[2] = {256, 1024}, steps[2] = {9, 3};
        int k, path;
        for (k = 0; k < 2; k++) {
            double gf;
            if (k == 1 && quick) break;
            if (bench_train(&res, k, MB__BF16_NONE, &cfg, Bs[k], Ts[k], steps[k], text, text_size) != 0) { free(text); return 1; }
            gf = res.tok_s[k] * BENCH_STEP_FLOP_PER_TOKEN / 1e9;
            printf("training step, batch %d x ctx %d (forward + backward + AdamW, median of %d):\n", Bs[k], Ts[k], steps[k]);
            printf("  %.1f ms per step = %.0f tokens/s = %.1f GFLOP/s at 6.3 MFLOP/token, %.1f%% of peak\n",
                   1e3 * res.step_s[k], res.tok_s[k], gf, gf / peak_share_div);
            printf("  forward %.1f ms, backward %.1f ms, AdamW %.1f ms; activations %.0f MB\n", 1e3 * res.step_fwd_s[k],
                   1e3 * res.step_bwd_s[k], 1e3 * res.step_opt_s[k], res.act_mb[k]);
            printf("  scan alone (one layer of %d): forward %.2f ms + backward %.2f ms = %.2f ms (x%d layers: %.0f%% of the step)\n",
                   cfg.n_layer, 1e3 * res.scan_fwd_s[k], 1e3 * res.scan_bwd_s[k],
                   1e3 * (res.scan_fwd_s[k] + res.scan_bwd_s[k]), cfg.n_layer,
                   100.0 * cfg.n_layer * (res.scan_fwd_s[k] + res.scan_bwd_s[k]) / res.step_s[k]);
            fflush(stdout);
            for (path = MB__BF16_AVX512; k == 0 && path <= MB__BF16_AMX; path++) /* --precision bf16, each kernel */
                if (mb__bf16_paths() >> path & 1 &&
                    bench_train(&res, k, path, &cfg, Bs[k], Ts[k], steps[k], text, text_size) != 0) { free(text); return 1; }
            if (k == 0 && mb__bf16_paths() == 1) printf("  bf16: this CPU has no AVX512-BF16 or AMX (the step stays float32)\n");
            fflush(stdout);
        }
    }
    res.rss_mb = bench_peak_rss_mb();
    printf("peak resident memory: %.0f MB (ru_maxrss of the whole run)\n\n", res.rss_mb);

    cli_set_threads(1);
    res.stream_bps = bench_stream(&cfg, text, 4000, 5, MB_PRECISION_FP32, 1);
    res.read_gbs = bench_read_bw(mb_config_num_params(&cfg) * 4, 5);
    res.stream_ceiling = res.read_gbs * 1e9 / ((double)mb_config_num_params(&cfg) * 4.0);
    {   /* forward FLOPs of one byte: the matrix-vector products */
        double f = 2.0 * ((double)cfg.n_layer * ((double)cfg.d_model * 2 * cfg.d_model * cfg.expand +
                          (double)cfg.d_model * cfg.expand * (cfg.dt_rank + 2 * cfg.d_state) +
                          (double)cfg.dt_rank * cfg.d_model * cfg.expand + (double)cfg.d_model * cfg.expand * cfg.d_model) +
                          256.0 * cfg.d_model);
        printf("streaming (mb_stream_step, 1 thread): %.0f bytes/s = %.1f us/byte; %.1f GFLOP/s in its matrix-vector "
               "products, %.1f%% of the 1-thread peak\n", res.stream_bps, 1e6 / res.stream_bps,
               res.stream_bps * f / 1e9, res.stream_bps * f / 1e9 / res.fma1 * 100.0);
        printf("  each byte reads all %.2f MB of float32 weights: at the measured 1-thread read bandwidth over that size, "
               "%.1f GB/s, the ceiling is %.0f bytes/s\n\n", (double)mb_config_num_params(&cfg) * 4.0 / 1e6, res.read_gbs,
               res.stream_ceiling);
    }
    bench_precisions(&cfg, text);
    cli_set_threads(threads);

    bench_eval(&cfg, text, 8192, 3, &eval_step_cps, &eval_feed_cps);

    printf("targets (issue 6): B16xT1024 >= 10000 tokens/s with < 1.5 GB resident: %s; B4xT256 >= 9500 tokens/s: %s;\n"
           "  streaming >= 20000 bytes/s: %s; matrix products >= 50%% of peak: %s\n",
           !res.done[1] ? "not run (--quick)" : res.tok_s[1] >= 10000 && res.rss_mb < 1500 ? "met" : "missed",
           res.tok_s[0] >= 9500 ? "met" : "missed", res.stream_bps >= 20000 ? "met" : "missed",
           res.mm_gflops >= 0.5 * res.fmaN ? "met" : "missed");

    if (json) {
        FILE *f = fopen(json, "w");
        int k, first;
        if (!f) { fprintf(stderr, "mambabyte bench: cannot write %s\n", json); free(text); return 1; }
        fprintf(f, "{\n  \"cpu\": \"%s\",\n  \"threads\": %d,\n  \"compiler\": \"%s\",\n", cpu, threads, __VERSION__);
        fprintf(f, "  \"config\": {\"d_model\": %d, \"n_layer\": %d, \"d_state\": %d, \"d_conv\": %d, \"expand\": %d, \"dt_rank\": %d},\n",
                cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank);
        fprintf(f, "  \"fma_peak_gflops_1thread\": %.2f,\n  \"fma_peak_gflops_all\": %.2f,\n", res.fma1, res.fmaN);
        fprintf(f, "  \"matmul\": {\"tokens\": %lld, \"seconds\": %.6f, \"gflop\": %.4f, \"gflops\": %.2f, \"forward_gflops\": %.2f, "
                   "\"backward_gflops\": %.2f, \"peak_share\": %.4f},\n",
                (long long)res.mm_N, res.mm_s, res.mm_flop / 1e9, res.mm_gflops, res.mm_fwd_gflops, res.mm_bwd_gflops,
                res.mm_gflops / res.fmaN);
        fprintf(f, "  \"train\": [\n");
        for (k = 0; k < 2; k++) {
            static const int Bs[2] = {4, 16}, Ts[2] = {256, 1024};
            if (!res.done[k]) continue;
            fprintf(f, "    %s{\"batch\": %d, \"ctx\": %d, \"step_s\": %.6f, \"tokens_per_s\": %.1f, \"forward_s\": %.6f, "
                       "\"backward_s\": %.6f, \"adamw_s\": %.6f, \"peak_share\": %.4f, \"activations_mb\": %.1f, "
                       "\"scan_forward_s\": %.6f, \"scan_backward_s\": %.6f}\n",
                    k ? "," : "", Bs[k], Ts[k], res.step_s[k], res.tok_s[k], res.step_fwd_s[k], res.step_bwd_s[k],
                    res.step_opt_s[k], res.tok_s[k] * BENCH_STEP_FLOP_PER_TOKEN / 1e9 / res.fmaN, res.act_mb[k],
                    res.scan_fwd_s[k], res.scan_bwd_s[k]);
        }
        fprintf(f, "  ],\n  \"bf16\": [\n");
        for (k = MB__BF16_AVX512, first = 1; k <= MB__BF16_AMX; k++) {
            if (!(mb__bf16_paths() >> k & 1)) continue;
            fprintf(f, "    %s{\"kernel\": \"%s\", \"matmul_seconds\": %.6f, \"matmul_forward_gflops\": %.2f, "
                       "\"matmul_backward_gflops\": %.2f, \"step_s_b4_t256\": %.6f, \"tokens_per_s_b4_t256\": %.1f, "
                       "\"ratio_to_fp32\": %.3f}\n", first ? "" : ",", k == MB__BF16_AMX ? "amx" : "avx512_bf16", res.bf_mm_s[k],
                    res.bf_fwd_gflops[k], res.bf_bwd_gflops[k], res.bf_step_s[k], res.bf_tok_s[k],
                    res.tok_s[0] > 0 ? res.bf_tok_s[k] / res.tok_s[0] : 0.0);
            first = 0;
        }
        fprintf(f, "  ],\n  \"peak_rss_mb\": %.1f,\n  \"stream_bytes_per_s\": %.1f,\n", res.rss_mb, res.stream_bps);
        fprintf(f, "  \"read_bandwidth_gbs_1thread\": %.2f,\n  \"stream_ceiling_bytes_per_s\": %.1f,\n", res.read_gbs,
                res.stream_ceiling);
        fprintf(f, "  \"eval_stepwise_chars_per_s\": %.1f,\n  \"eval_feed_chars_per_s\": %.1f,\n  \"eval_speedup\": %.2f\n}\n",
                eval_step_cps, eval_feed_cps, eval_step_cps > 0 ? eval_feed_cps / eval_step_cps : 0.0);
        if (fclose(f) != 0) { fprintf(stderr, "mambabyte bench: writing %s failed\n", json); free(text); return 1; }
        printf("wrote %s\n", json);
    }
    free(text);
    return 0;
}
