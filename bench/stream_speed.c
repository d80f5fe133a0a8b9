/* One stream's speed, load and pack time and memory for a model:
     cc -O3 -march=native -fopenmp bench/stream_speed.c -o build/stream_speed -lm
     build/stream_speed MODEL|random:D_MODEL:N_LAYER fp32|bf16|int8 THREADS BYTES
   Loads (or creates with random weights, RMSNorm, tied head as
   tools/random_model.c), packs a stream at the precision, frees the model
   (the stream owns its weights), steps BYTES greedy bytes on THREADS threads.
   Prints one line: seconds to load and pack, bytes/s, RSS (MB) with the model,
   after freeing it, and the peak (ru_maxrss).  -DMB__STREAM_OMP_MIN=N sets
   the size (weights) above which a product splits over the threads. */
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <omp.h>

static double rss_mb(void) { /* resident now, from /proc/self/statm */
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f && fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    if (f) fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1e6;
}

int main(int argc, char **argv) {
    static const char *const names[] = {"fp32", "bf16", "int8"};
    static const int precs[] = {MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8};
    mb_model *m;
    mb_stream *s;
    struct rusage ru;
    double t0, t_load, t_pack, t_step, rss_model, rss_stream;
    int p, threads, d, l;
    long i, n;
    const float *logits;
    if (argc < 5) { fprintf(stderr, "usage: %s MODEL|random:D_MODEL:N_LAYER fp32|bf16|int8 THREADS BYTES\n", argv[0]); return 2; }
    for (p = 0; p < 3 && strcmp(argv[2], names[p]); p++) {}
    if (p == 3) { fprintf(stderr, "precision %s: fp32, bf16 or int8\n", argv[2]); return 2; }
    threads = atoi(argv[3]);
    n = atol(argv[4]);
    omp_set_num_threads(threads);
    t0 = mb_clock_seconds();
    if (sscanf(argv[1], "random:%d:%d", &d, &l) == 2) {
        mb_config c = mb_config_default();
        c.d_model = d;
        c.n_layer = l;
        c.dt_rank = 0;
        c.norm = MB_NORM_RMSNORM;
        if (mb_model_create(&m, &c, 1) != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); return 1; }
    } else if (mb_model_load(&m, argv[1]) != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); return 1; }
    t_load = mb_clock_seconds() - t0;
    t0 = mb_clock_seconds();
    if (mb_stream_create_ex(&s, m, precs[p]) != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); return 1; }
    t_pack = mb_clock_seconds() - t0;
    rss_model = rss_mb();
    d = m->cfg.d_model;
    l = m->cfg.n_layer;
    mb_model_free(m);
    logits = mb_stream_step(s, 'T'); /* warm: the first step touches everything once */
    t0 = mb_clock_seconds();
    for (i = 0; i < n; i++) logits = mb_stream_step(s, (uint8_t)mb__argmax(logits, 256));
    t_step = mb_clock_seconds() - t0;
    rss_stream = rss_mb();
    getrusage(RUSAGE_SELF, &ru);
    printf("d_model %d x %d layers %s %d thread%s: load %.2f s, pack %.2f s, %.2f bytes/s (%ld in %.2f s); "
           "RSS %.0f MB with the model, %.0f MB after freeing it, peak %.0f MB\n",
           d, l, names[p], threads, threads > 1 ? "s" : "", t_load, t_pack, (double)n / t_step, n, t_step, rss_model, rss_stream,
           (double)ru.ru_maxrss * 1024 / 1e6); /* KiB */
    mb_stream_free(s);
    return 0;
}
