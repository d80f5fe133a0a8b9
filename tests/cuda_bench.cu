/* cuda_bench.cu - `make bench-cuda`: GPU throughput of mambabyte_cuda.cuh.
     1. a full training step (forward_backward + update) of the default
        model at B16 x T1024, fp32, tf32 and bf16: ms/step and tokens/s;
     2. the selective scan alone (forward, backward) at the same shape, with
        the achieved bandwidth over the bytes it must move at least;
     3. whether ctx 2048 x batch 64 fits: creates that trainer, runs one
        step, reports the device memory in use.
   Build: nvcc -O3 $(CUDA_ARCH) -Xcompiler -fopenmp tests/cuda_bench.cu -o build/cuda_bench -lcublas */
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"
#define MAMBABYTE_CUDA_IMPLEMENTATION
#include "../mambabyte_cuda.cuh"

#include <vector>

#define CK(call)                                                                                     \
    do {                                                                                             \
        mb_status s_ = (call);                                                                       \
        if (s_ != MB_STATUS_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call, mb_status_string(s_), \
                    mb_cuda_last_error());                                                           \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

static uint64_t rng = 42;
static uint64_t next_u64(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double elapsed_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

/* graphs 0: every operation launched (the trainer's own stream, as with graphs). */
static void bench_step(int B, int T, int precision, int steps, int graphs = 1) {
    mb_config cfg = mb_config_default();
    mb_model *m = nullptr;
    mb_cuda_trainer *t = nullptr;
    CK(mb_model_create(&m, &cfg, 1));
    CK(mb_cuda_trainer_create(&t, &cfg, B, T, precision));
    CK(mb_cuda_trainer_upload(t, mb_model_params(m), nullptr, nullptr));
    CK(mb_cuda_trainer_set_graphs(t, graphs));
    const int64_t N = (int64_t)B * T;
    std::vector<uint8_t> in((size_t)N);
    std::vector<int32_t> tg((size_t)N);
    for (int64_t i = 0; i < N; i++) { in[(size_t)i] = (uint8_t)next_u64(); tg[(size_t)i] = (int32_t)(next_u64() % 256); }
    float loss = 0;
    double norm = 0;
    int applied = 0;
    for (int i = 0; i < 3; i++) { /* warm-up: cuBLAS heuristics, caches */
        CK(mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss));
        CK(mb_cuda_trainer_update(t, 1.0f, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, i + 1, &norm, &applied));
    }
    /* the host's clock: every step ends waiting for its update (the
       trainer's stream is not the legacy one an event here would go to) */
    const double t0 = mb_clock_seconds();
    for (int i = 0; i < steps; i++) {
        CK(mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss));
        CK(mb_cuda_trainer_update(t, 1.0f, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, i + 4, &norm, &applied));
    }
    const double ms = (mb_clock_seconds() - t0) * 1e3 / steps;
    printf("step  B%-3d T%-5d %-4s %-9s %8.2f ms/step  %10.0f tokens/s  (loss %.4f)\n", B, T,
           precision == 1 ? "bf16" : precision == 2 ? "tf32" : "fp32", mb_cuda_trainer_graphs(t) ? "graphs" : "no-graphs",
           ms, (double)N / (ms * 1e-3), loss);
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

static void bench_scan(int B, int T, int reps) {
    const mb_config cfg = mb_config_default();
    const int Di = cfg.d_model * cfg.expand, S = cfg.d_state, R = cfg.dt_rank, X = R + 2 * S, chunk = 32;
    const int64_t N = (int64_t)B * T, nch = (T + chunk - 1) / chunk;
    float *u, *delta, *dtb, *Alog, *xdbl, *Dp, *xz, *out, *states, *scr, *g, *du, *ddelta, *gb, *gA, *gx, *gD, *gz;
    const int64_t scr_n = mbc::scan_scratch_floats(B, T, Di, S, chunk);
    struct { float **p; int64_t n; } bufs[] = {
        {&u, N * Di}, {&delta, N * Di}, {&dtb, Di}, {&Alog, (int64_t)Di * S}, {&xdbl, N * X}, {&Dp, Di},
        {&xz, N * 2 * Di}, {&out, N * Di}, {&states, B * nch * Di * S}, {&scr, scr_n}, {&g, N * Di}, {&du, N * Di},
        {&ddelta, N * Di}, {&gb, Di}, {&gA, (int64_t)Di * S}, {&gx, N * X}, {&gD, Di}, {&gz, N * 2 * Di},
    };
    for (auto &b : bufs) {
        if (cudaMalloc((void **)b.p, (size_t)b.n * sizeof(float)) != cudaSuccess) { fprintf(stderr, "cudaMalloc\n"); exit(1); }
        cudaMemset(*b.p, 0, (size_t)b.n * sizeof(float)); /* zeros: dt = softplus(0) ~ 0.69, finite everywhere */
    }
    cudaEvent_t e0, e1, e2;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventCreate(&e2);
    CK(mbc::scan_forward(out, states, scr, u, delta, dtb, Alog, xdbl, Dp, xz, B, T, Di, S, R, chunk));
    CK(mbc::scan_backward(du, ddelta, gb, gA, gx, gD, gz, scr, g, states, u, delta, dtb, Alog, xdbl, Dp, xz, B, T, Di, S,
                          R, chunk));
    cudaEventRecord(e0);
    for (int i = 0; i < reps; i++)
        CK(mbc::scan_forward(out, states, scr, u, delta, dtb, Alog, xdbl, Dp, xz, B, T, Di, S, R, chunk));
    cudaEventRecord(e1);
    for (int i = 0; i < reps; i++)
        CK(mbc::scan_backward(du, ddelta, gb, gA, gx, gD, gz, scr, g, states, u, delta, dtb, Alog, xdbl, Dp, xz, B, T,
                              Di, S, R, chunk));
    cudaEventRecord(e2);
    const double fms = elapsed_ms(e0, e1) / reps, bms = elapsed_ms(e1, e2) / reps;
    /* least traffic: forward reads u, delta, z, B/C and writes out (+ states);
       backward also reads dout and writes du, ddelta, dz, dB/dC */
    const double st = (double)B * nch * Di * S * 4;
    const double fbytes = (double)N * (4.0 * Di * 4 + 2.0 * S * 4) + st;
    const double bbytes = (double)N * (7.0 * Di * 4 + 4.0 * S * 4) + st;
    printf("scan  B%-3d T%-5d Di%d S%d chunk%d  forward %.3f ms (%.0f GB/s)  backward %.3f ms (%.0f GB/s)\n", B, T, Di,
           S, chunk, fms, fbytes / (fms * 1e6), bms, bbytes / (bms * 1e6));
    for (auto &b : bufs) cudaFree(*b.p);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
}

static void memory_fit(int B, int T) {
    mb_config cfg = mb_config_default();
    mb_cuda_trainer *t = nullptr;
    size_t free0 = 0, total = 0, free1 = 0;
    cudaMemGetInfo(&free0, &total);
    mb_status s = mb_cuda_trainer_create(&t, &cfg, B, T, 0);
    if (s != MB_STATUS_OK) {
        printf("fit   B%d T%d: does NOT fit (%s: %s)\n", B, T, mb_status_string(s), mb_cuda_last_error());
        return;
    }
    mb_model *m = nullptr;
    CK(mb_model_create(&m, &cfg, 1));
    CK(mb_cuda_trainer_upload(t, mb_model_params(m), nullptr, nullptr));
    const int64_t N = (int64_t)B * T;
    std::vector<uint8_t> in((size_t)N, 'a');
    std::vector<int32_t> tg((size_t)N, 'b');
    float loss = 0;
    const double t0 = mb_clock_seconds(); /* (it returns with the loss: the work is done) */
    s = mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
    const double ms = (mb_clock_seconds() - t0) * 1e3;
    cudaMemGetInfo(&free1, &total);
    printf("fit   B%d T%d fp32: %s, %.2f GiB of %.2f GiB used by the trainer, one forward_backward %.1f ms\n", B, T,
           s == MB_STATUS_OK ? "fits" : "step failed", (double)(free0 - free1) / (1 << 30), (double)total / (1 << 30), ms);
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

int main(int argc, char **argv) {
    if (mb_cuda_device_count() < 1) {
        printf("no CUDA device: nothing to benchmark\n");
        return 0;
    }
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    printf("device: %s, %d SMs, %.1f GiB\n", p.name, p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30));
    const int steps = argc > 1 ? atoi(argv[1]) : 20;
    bench_step(16, 1024, 0, steps);
    bench_step(16, 1024, 0, steps, 0); /* the same without graphs: what the launches cost */
    bench_step(16, 1024, 2, steps); /* tf32 */
    bench_step(16, 1024, 1, steps);
    bench_scan(16, 1024, 20);
    memory_fit(64, 2048);
    return 0;
}
