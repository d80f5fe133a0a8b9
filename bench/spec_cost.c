/* What a round of speculative generation costs on this machine, and the best
   speed-up it can give (issue 29's "what stands in the way"):
     cc -O3 -march=native -fopenmp bench/spec_cost.c -o build/spec_cost -lm
     build/spec_cost TARGET [DRAFT]           (one thread: OMP_NUM_THREADS=1)
   Times, per byte, the median of 7 runs of 512 bytes each: the target's step
   at fp32, bf16 and int8, the draft model's step, and the target's fp32 feed
   of T bytes for T = 1..16 (as a share of T fp32 steps).  A round drafts K
   bytes and verifies them with one feed of K + 1, so even when every draft
   is accepted (K + 1 bytes a round) plain generation's K + 1 steps become
       K draft steps + one feed of K + 1,
   and the speed-up is at most (K + 1) step / (K draft + feed(K + 1)):
   printed for each drafter at K = 4 and 8.  Lower acceptance only lowers it.
   Also the check's two ways to roll back: a feed that keeps the state after
   every byte (one copy back) against a saved state and a second feed. */
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"
#include <stdio.h>
#include <stdlib.h>

#define REPS 7
#define BYTES 512

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* Seconds per byte of mb_stream_step, greedy from s's state. */
static double step_cost(mb_stream *s) {
    double v[REPS], t0;
    const float *logits = mb_stream_step(s, 'T'); /* warm */
    int r, i;
    for (r = 0; r < REPS; r++) {
        t0 = mb_clock_seconds();
        for (i = 0; i < BYTES; i++) logits = mb_stream_step(s, (uint8_t)mb__argmax(logits, 256));
        v[r] = (mb_clock_seconds() - t0) / BYTES;
    }
    return median(v, REPS);
}

/* Seconds per byte of mb_stream_feed in pieces of T bytes; keep: the
   speculative check's feed that keeps every state (keep: T states), then
   the state after its last byte copied back. */
static double feed_cost(mb_stream *s, int T, const uint8_t *text, float *keep) {
    static float logits[17 * 256];
    double v[REPS], t0;
    int r, i;
    mb_stream_feed(s, text, T, logits); /* warm */
    for (r = 0; r < REPS; r++) {
        t0 = mb_clock_seconds();
        for (i = 0; i + T <= BYTES; i += T) {
            mb_status st = keep ? mb__stream_feed_keep(s, text + i, T, keep, logits) : mb_stream_feed(s, text + i, T, logits);
            if (st != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); exit(1); }
            if (keep) mb__spec_state(s, keep + (int64_t)(T - 1) * s->state_floats, 0);
        }
        v[r] = (mb_clock_seconds() - t0) / (BYTES / T * T);
    }
    return median(v, REPS);
}

static mb_stream *open_stream(const mb_model *m, int precision) {
    mb_stream *s;
    if (mb_stream_create_ex(&s, m, precision) != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); exit(1); }
    return s;
}

int main(int argc, char **argv) {
    static const char *const names[] = {"fp32", "bf16", "int8"};
    static const int precs[] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    double step[3], draft_step = 0.0, feed[17], kept;
    float *keep;
    uint8_t text[BYTES];
    mb_model *m, *dm = NULL;
    mb_stream *s;
    int p, T, K, i;
    if (argc < 2) { fprintf(stderr, "usage: %s TARGET [DRAFT]\n", argv[0]); return 2; }
    if (mb_model_load(&m, argv[1]) != MB_STATUS_OK || (argc > 2 && mb_model_load(&dm, argv[2]) != MB_STATUS_OK)) {
        fprintf(stderr, "%s\n", mb_last_error());
        return 1;
    }
    for (i = 0; i < BYTES; i++) text[i] = (uint8_t)("the speculative round, verified in one feed. "[i % 45]);
    for (p = 0; p < 3; p++) {
        s = open_stream(m, precs[p]);
        step[p] = step_cost(s);
        mb_stream_free(s);
    }
    if (dm) {
        s = open_stream(dm, MB_PRECISION_FP32);
        draft_step = step_cost(s);
        mb_stream_free(s);
    }
    s = open_stream(m, MB_PRECISION_FP32);
    if (!(keep = (float *)malloc(sizeof(float) * 9 * (size_t)s->state_floats))) return 1;
    printf("target d_model %d x %d layers, 1 thread, median of %d x %d bytes\n", m->cfg.d_model, m->cfg.n_layer, REPS, BYTES);
    for (p = 0; p < 3; p++) printf("step %s: %.1f us/byte (%.2f of fp32)\n", names[p], step[p] * 1e6, step[p] / step[0]);
    if (dm) printf("draft model (d_model %d x %d layers) step: %.1f us/byte (%.2f of the target's)\n", dm->cfg.d_model,
                   dm->cfg.n_layer, draft_step * 1e6, draft_step / step[0]);
    for (T = 1; T <= 16; T++) {
        feed[T] = feed_cost(s, T, text, NULL);
        if (T <= 2 || T == 4 || T == 5 || T == 8 || T == 9 || T == 16)
            printf("feed of %2d: %.1f us/byte (%.2f of a step)\n", T, feed[T] * 1e6, feed[T] / step[0]);
    }
    for (K = 4; K <= 8; K += 4) {
        kept = feed_cost(s, K + 1, text, keep);
        printf("a check of %d keeping every state: %.1f us/byte (%.2f of the plain feed); a rollback by a second feed of a bytes costs "
               "feed(a)\n", K + 1, kept * 1e6, kept / feed[K + 1]);
    }
    for (K = 4; K <= 8; K += 4) {
        printf("K = %d, every draft accepted, at most:", K);
        for (p = 1; p < 3; p++) printf(" self:%s %.2fx", names[p], (K + 1) * step[0] / (K * step[p] + (K + 1) * feed[K + 1]));
        if (dm) printf(" draft model %.2fx", (K + 1) * step[0] / (K * draft_step + (K + 1) * feed[K + 1]));
        printf(" (plain fp32 = 1)\n");
    }
    free(keep);
    mb_stream_free(s);
    mb_model_free(m);
    if (dm) mb_model_free(dm);
    return 0;
}
