/* test_cuda_emu.cpp - runs the CUDA kernels of mambabyte_cuda.cuh on the CPU
   through the launch emulator in tests/cuda_emu.h and compares each with the
   CPU specification in mambabyte.h (the mb__* layer functions, the
   cross-entropy, AdamW, the model and the stream).  Linked into the test
   binary built from test.c, which calls mbt_cuda_emu_tests().

   What a pass here proves and what it cannot: see the top of cuda_emu.h. */
#define MB_INTERNAL /* the CPU kernels, to compare the emulated ones with */
#include "../mambabyte.h"
#include "mbtest.h"

#include "cuda_emu.h"
#define MB_CUDA_EMULATE
#define MAMBABYTE_CUDA_IMPLEMENTATION
#include "../mambabyte_cuda.cuh"

#include <signal.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

extern "C" void mbt_cuda_emu_tests(void);

/* Device operations per training step at the default config that the test
   allows: the count today (it may only go down).  With CUDA graphs the host
   submits far fewer: MBC_SUBMIT_BUDGET is issue 16's target of 60. */
#ifndef MBC_LAUNCH_BUDGET
#define MBC_LAUNCH_BUDGET 119
#endif
#define MBC_SUBMIT_BUDGET 60

namespace {

typedef std::vector<float> fvec;

fvec randn(mbt_rng *r, size_t n, double scale = 1.0, double shift = 0.0) {
    fvec v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)(shift + scale * mbt_normal(r));
    return v;
}

bool bitwise_equal(const fvec &a, const fvec &b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/* max |a-b| / max(max|b|, floor) */
double max_rel(const float *a, const float *b, size_t n, double floor = 1e-30) {
    double m = 0.0, e = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return e / (m > floor ? m : floor);
}

/* Tolerance check of a whole array: relative L2 and normalised max error. */
#define CHECK_CLOSE(name, got, ref, n, tol)                                                                  \
    do {                                                                                                     \
        double l2_ = mbt_rel_l2((got), (ref), (int64_t)(n)), mx_ = max_rel((got), (ref), (size_t)(n));       \
        MBT_CHECK(l2_ <= (tol) && mx_ <= 10 * (tol), "%s: rel L2 %.3g, max rel %.3g (tol %.1g)", name, l2_, mx_, \
                  (double)(tol));                                                                            \
    } while (0)

/* =========================================================== emulator */

__global__ void emu_block_sum_kernel(float *out, const float *x, int n) {
    __shared__ float sh[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    sh[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

/* Per warp: xor sum, down sum, broadcast of lane 3, inclusive prefix (up),
   and a width-8 group sum; the last warp may be partial (mask fits it). */
__global__ void emu_warp_kernel(float *out, const float *x, int n) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int in_warp = (int)blockDim.x - warp * 32 < 32 ? (int)blockDim.x - warp * 32 : 32;
    const unsigned mask = in_warp == 32 ? 0xffffffffu : ((1u << in_warp) - 1u);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = i < n ? x[i] : 0.0f;
    float a = v, b = v, c = v, g = v;
    for (int o = 16; o > 0; o >>= 1)
        if (o < in_warp) a += __shfl_xor_sync(mask, a, o); /* in_warp: 32 or a power of two */
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_down_sync(mask, b, o); /* NaN from lanes outside the mask: unused */
        if (lane + o < in_warp) b += w;
    }
    const float bc = __shfl_sync(mask, v, 3);
    for (int o = 1; o < 32; o <<= 1) {
        float w = __shfl_up_sync(mask, c, o);
        if (lane >= o) c += w;
    }
    for (int o = 4; o > 0; o >>= 1) g += __shfl_xor_sync(mask, g, o, 8);
    float *row = out + (int64_t)i * 5;
    row[0] = a; row[1] = b; row[2] = bc; row[3] = c; row[4] = g;
}

/* A deliberate race: read a neighbour's shared slot without a barrier. */
__global__ void emu_racy_kernel(float *out) {
    __shared__ float sh[64];
    sh[threadIdx.x] = (float)threadIdx.x;
    __syncwarp(); /* orders only within the warp: warps 0 and 1 race */
    out[threadIdx.x] = sh[(threadIdx.x + 32) % 64];
    __syncthreads();
}

/* Lanes of one warp at two different shuffle sites: undefined on hardware. */
__global__ void emu_two_sites_kernel(float *out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

/* 52 KiB of static shared memory: over the 48 KiB a launch gets. */
__global__ void emu_big_static_smem_kernel(float *out) {
    MBC_SHARED(float, big, [13 * 1024]);
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = big[threadIdx.x];
}

__global__ void emu_dynamic_smem_kernel(float *out) {
    MBC_DYNAMIC_SHARED(float, dyn);
    dyn[threadIdx.x] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = dyn[threadIdx.x];
}

__global__ void emu_divergent_kernel(float *out) {
    if (threadIdx.x < 16) __syncthreads(); /* half the block: deadlock on hardware */
    out[threadIdx.x] = 1.0f;
}

/* Runs fn in a child process; true when the child dies with SIGABRT. */
template <class F> bool aborts(F fn) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        fn();
        _exit(0);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return false;
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

/* Stream capture in the emulator: operations issued inside a capture run
   only when the graph is launched, once per launch, with the arguments
   they had when captured and host memory read at the launch; a
   synchronising call inside a capture stops the run. */
void test_graph_capture() {
    fvec x(300, 1.0f), out(2, 0.0f), host(2, 0.0f);
    cuda_emu::capture_begin();
    cuda_emu::launch(emu_block_sum_kernel, dim3(2), dim3(256), 0, out.data(), (const float *)x.data(), 300);
    mbc::d2h_async(host.data(), out.data(), 2 * sizeof(float));
    cuda_emu::Graph *g = cuda_emu::capture_end();
    MBT_CHECK(out[0] == 0.0f && host[0] == 0.0f, "capture: nothing runs while capturing");
    cuda_emu::launch_graph(g);
    MBT_CHECK(out[0] == 256.0f && out[1] == 44.0f && host[1] == 44.0f, "capture: the launch runs the kernel and the copy");
    x[299] = 3.0f; /* read when the replay runs, as device memory is */
    cuda_emu::launch_graph(g);
    MBT_CHECK(out[1] == 46.0f && host[1] == 46.0f, "capture: a second launch runs again on the current data");
    cuda_emu::delete_graph(g);
    MBT_CHECK(aborts([] {
                  cuda_emu::capture_begin();
                  (void)mbc::sync();
              }),
              "capture: a stream synchronisation inside a capture aborts");
    MBT_CHECK(aborts([] {
                  float v = 0;
                  cuda_emu::capture_begin();
                  (void)mbc::d2h(&v, &v, sizeof v);
              }),
              "capture: a blocking copy inside a capture aborts");
}

void test_emulator() {
    mbt_rng r = {1};
    const int n = 700;
    fvec x = randn(&r, n);
    for (unsigned seed : {0u, 1u, 77u}) {
        cuda_emu::set_schedule(seed);
        fvec out(3, 0.0f);
        cuda_emu::launch(emu_block_sum_kernel, dim3(3), dim3(256), 0, out.data(), (const float *)x.data(), n);
        for (int b = 0; b < 3; b++) {
            double ref = 0.0;
            for (int i = b * 256; i < (b + 1) * 256 && i < n; i++) ref += x[i];
            MBT_CHECK(fabs(out[b] - ref) < 1e-4, "emu block sum seed %u block %d: %g vs %g", seed, b, out[b], ref);
        }
    }
    for (int bs : {64, 40}) { /* 40: a partial second warp of 8 lanes */
        cuda_emu::set_schedule(bs == 40 ? 5 : 0);
        const int nb = 2, tot = nb * bs;
        fvec out((size_t)tot * 5, NAN);
        cuda_emu::launch(emu_warp_kernel, dim3(nb), dim3(bs), 0, out.data(), (const float *)x.data(), n);
        int bad = 0;
        for (int i = 0; i < tot; i++) {
            const int blk = i / bs, t = i % bs, w0 = blk * bs + (t / 32) * 32, lane = t % 32;
            const int inw = bs - (t / 32) * 32 < 32 ? bs - (t / 32) * 32 : 32;
            double s = 0, down = 0, pre = 0, g = 0;
            for (int k = 0; k < inw; k++) s += x[w0 + k];
            /* down-reduction tree result at lane: sum of lanes lane.. in the tree pattern; check lane 0 only */
            if (lane == 0) down = s;
            for (int k = 0; k <= lane; k++) pre += x[w0 + k];
            for (int k = (lane / 8) * 8; k < (lane / 8) * 8 + 8; k++) g += x[w0 + k];
            const float *o = &out[(size_t)i * 5];
            if (fabs(o[0] - s) > 1e-4 || (lane == 0 && fabs(o[1] - down) > 1e-4) || o[2] != x[w0 + 3] ||
                fabs(o[3] - pre) > 1e-4 || fabs(o[4] - g) > 1e-4)
                bad++;
        }
        MBT_CHECK(bad == 0, "emu warp shuffles (block %d): %d lanes wrong", bs, bad);
    }
    { /* the schedule orders expose a race that forward order hides */
        fvec a(64), b(64);
        cuda_emu::set_schedule(0);
        cuda_emu::launch(emu_racy_kernel, dim3(1), dim3(64), 0, a.data());
        cuda_emu::set_schedule(1);
        cuda_emu::launch(emu_racy_kernel, dim3(1), dim3(64), 0, b.data());
        MBT_CHECK(!bitwise_equal(a, b), "emu: reversed schedule should expose the shared-memory race");
    }
    cuda_emu::set_schedule(0);
    MBT_CHECK(aborts([] {
                  float o[32];
                  cuda_emu::launch(emu_divergent_kernel, dim3(1), dim3(32), 0, o);
              }),
              "emu: a divergent __syncthreads must abort");
    MBT_CHECK(aborts([] {
                  float o[64];
                  cuda_emu::launch(emu_block_sum_kernel, dim3(1), dim3(2048), 0, o, (const float *)o, 0);
              }),
              "emu: a block of 2048 threads must abort");
    MBT_CHECK(aborts([] {
                  float o[32];
                  cuda_emu::launch(emu_two_sites_kernel, dim3(1), dim3(32), 0, o);
              }),
              "emu: lanes of a warp at different shuffle call sites must abort");
    MBT_CHECK(aborts([] {
                  float o[32];
                  cuda_emu::launch(emu_big_static_smem_kernel, dim3(1), dim3(32), 0, o);
              }),
              "emu: 52 KiB of static shared memory must abort");
    MBT_CHECK(aborts([] {
                  float o[32];
                  cuda_emu::launch(emu_dynamic_smem_kernel, dim3(1), dim3(32), 50 * 1024, o);
              }),
              "emu: 50 KiB of dynamic shared memory without the opt-in attribute must abort");
    {
        float o[32] = {0};
        cuda_emu::func_set_max_dynamic_smem(emu_dynamic_smem_kernel, 64 * 1024);
        cuda_emu::launch(emu_dynamic_smem_kernel, dim3(1), dim3(32), 50 * 1024, o);
        MBT_CHECK(o[31] == 2.0f, "emu: 50 KiB of dynamic shared memory after the opt-in");
    }
    void *p[3] = {nullptr, nullptr, nullptr};
    bool aligned = true;
    for (int i = 0; i < 3; i++) {
        aligned &= mbc::dmalloc(&p[i], (size_t)(1 + 37 * i), "alignment test") == MB_STATUS_OK && ((uintptr_t)p[i] % 256) == 0;
        mbc::dfree(p[i]);
    }
    MBT_CHECK(aligned, "emu: device allocations are 256-byte aligned, as cudaMalloc's");
}

/* ====================================================== cross-entropy */

void test_cross_entropy() {
    mbt_rng r = {2};
    for (int V : {256, 77})
        for (float eps : {0.0f, 0.1f}) {
            const int rows = 41;
            fvec x = randn(&r, (size_t)rows * V, 3.0);
            std::vector<int32_t> y(rows);
            for (int i = 0; i < rows; i++) y[i] = (int32_t)(mbt_next(&r) % (uint64_t)V);
            y[5] = y[17] = y[30] = -100;
            for (int i = 0; i < V; i++) x[0 * V + i] = -INFINITY;                 /* all -inf */
            x[1 * V + 3] = x[1 * V + 9] = INFINITY; y[1] = 9;                     /* +inf target */
            x[2 * V + 4] = NAN;                                                   /* NaN row */
            x[3 * V + 6] = -INFINITY; y[3] = 6;                                   /* -inf target */
            x[4 * V + 2] = INFINITY; y[4] = 1;                                    /* +inf elsewhere */
            for (int i = 0; i < V; i++) x[6 * V + i] += 3e4f;                    /* large logits */
            mb_ce_options o = mb_ce_options_default();
            o.label_smoothing = eps;
            o.reduction = MB_REDUCTION_NONE;
            fvec ref_loss(rows), loss(rows, NAN), dx(x.size(), NAN), ref_dx(x.size());
            MBT_CHECK(mb_cross_entropy_forward(ref_loss.data(), x.data(), y.data(), rows, V, &o) == MB_STATUS_OK, "ce cpu");
            int64_t nv = 0;
            for (int i = 0; i < rows; i++) nv += y[i] != -100;
            o.reduction = MB_REDUCTION_MEAN;
            float one = 1.0f;
            mb_cross_entropy_backward(ref_dx.data(), &one, x.data(), y.data(), rows, V, &o);
            mbc::cross_entropy(loss.data(), dx.data(), x.data(), y.data(), rows, V, -100, eps, nullptr, (float)(1.0 / nv));
            int bad = 0;
            for (int i = 0; i < rows; i++) bad += !mbt_close(loss[i], ref_loss[i], 2e-6, 1e-6);
            MBT_CHECK(bad == 0, "ce loss rows V=%d eps=%g: %d rows differ", V, eps, bad);
            int64_t mm = mbt_first_mismatch(dx.data(), ref_dx.data(), (int64_t)dx.size(), 1e-5, 1e-8);
            MBT_CHECK(mm < 0, "ce dlogits V=%d eps=%g: first mismatch %lld (%g vs %g)", V, eps, (long long)mm,
                      mm < 0 ? 0.0 : dx[mm], mm < 0 ? 0.0 : ref_dx[mm]);
            /* per-row dloss (NONE) */
            fvec dl = randn(&r, rows), dx2(x.size(), NAN), ref2(x.size());
            o.reduction = MB_REDUCTION_NONE;
            mb_cross_entropy_backward(ref2.data(), dl.data(), x.data(), y.data(), rows, V, &o);
            mbc::cross_entropy(loss.data(), dx2.data(), x.data(), y.data(), rows, V, -100, eps, dl.data(), 0.0f);
            mm = mbt_first_mismatch(dx2.data(), ref2.data(), (int64_t)dx2.size(), 1e-5, 1e-8);
            MBT_CHECK(mm < 0, "ce dlogits NONE V=%d eps=%g: first mismatch %lld", V, eps, (long long)mm);
            /* in place (dlogits aliasing logits) is bitwise the same */
            fvec xin = x, loss2(rows);
            mbc::cross_entropy(loss2.data(), xin.data(), xin.data(), y.data(), rows, V, -100, eps, nullptr, (float)(1.0 / nv));
            MBT_CHECK(bitwise_equal(xin, dx) && bitwise_equal(loss2, loss), "ce in place V=%d eps=%g", V, eps);
            /* the deterministic mean over the finite rows 5.. vs the CPU's MEAN */
            const int r0 = 5, nr = rows - r0;
            float ref_mean = 0, mean = NAN;
            o.reduction = MB_REDUCTION_MEAN;
            mb_cross_entropy_forward(&ref_mean, x.data() + (size_t)r0 * V, y.data() + r0, nr, V, &o);
            int64_t nv2 = 0;
            for (int i = r0; i < rows; i++) nv2 += y[i] != -100;
            mbc::sum(&mean, loss.data() + r0, nr, 1.0 / (double)nv2);
            MBT_CHECK(mbt_close(mean, ref_mean, 2e-6, 0), "ce mean V=%d eps=%g: %.8g vs %.8g", V, eps, mean, ref_mean);
        }
}

/* ========================================================= layernorm */

void test_layernorm() {
    mbt_rng r = {3};
    for (int C : {48, 50, 192})
        for (int64_t N : {37, 150}) {
            fvec x = randn(&r, (size_t)(N * C), 2.0, 0.5), w = randn(&r, C, 0.5, 1.0), b = randn(&r, C, 0.3);
            fvec o(x.size(), NAN), m(N, NAN), s(N, NAN), ro(x.size()), rm(N), rs(N);
            mb__layernorm_forward(ro.data(), rm.data(), rs.data(), x.data(), w.data(), b.data(), N, C);
            mbc::layernorm_forward(o.data(), m.data(), s.data(), x.data(), w.data(), b.data(), N, C);
            CHECK_CLOSE("layernorm out", o.data(), ro.data(), o.size(), 1e-6);
            CHECK_CLOSE("layernorm mean", m.data(), rm.data(), N, 1e-6);
            CHECK_CLOSE("layernorm rstd", s.data(), rs.data(), N, 1e-6);
            fvec g = randn(&r, x.size()), di = randn(&r, x.size()), dw = randn(&r, C), db = randn(&r, C);
            fvec rdi = di, rdw = dw, rdb = db;
            fvec scratch((size_t)(mbc::ln_backward_parts(N) * 2 * C), NAN);
            mb__layernorm_backward(rdi.data(), rdw.data(), rdb.data(), g.data(), x.data(), w.data(), rm.data(), rs.data(), N, C);
            mbc::layernorm_backward(di.data(), dw.data(), db.data(), scratch.data(), g.data(), x.data(), w.data(),
                                    rm.data(), rs.data(), N, C);
            CHECK_CLOSE("layernorm dinp", di.data(), rdi.data(), di.size(), 1e-6);
            CHECK_CLOSE("layernorm dw", dw.data(), rdw.data(), C, 1e-6);
            CHECK_CLOSE("layernorm db", db.data(), rdb.data(), C, 1e-6);
        }
}

/* RMSNorm: rmsnorm_* against mb__rmsnorm_*; the
   trailing-overwrite form (a first writer) too. */
void test_rmsnorm() {
    mbt_rng r = {13};
    for (int C : {48, 50, 192})
        for (int64_t N : {37, 150}) {
            fvec x = randn(&r, (size_t)(N * C), 2.0, 0.5), w = randn(&r, C, 0.5, 1.0);
            fvec o(x.size(), NAN), s(N, NAN), ro(x.size()), rs(N), copy(x.size(), NAN);
            mb__rmsnorm_forward(ro.data(), rs.data(), x.data(), w.data(), N, C);
            mbc::rmsnorm_forward(o.data(), s.data(), x.data(), w.data(), N, C, copy.data());
            CHECK_CLOSE("rmsnorm out", o.data(), ro.data(), o.size(), 1e-6);
            CHECK_CLOSE("rmsnorm rstd", s.data(), rs.data(), N, 1e-6);
            CHECK_CLOSE("rmsnorm residual copy", copy.data(), x.data(), x.size(), 0.0);
            fvec g = randn(&r, x.size()), di = randn(&r, x.size()), dw = randn(&r, C);
            fvec rdi = di, rdw = dw, di2(x.size(), NAN), rdi2(x.size(), 0.0f), dw2 = dw, rdw2 = dw;
            fvec scratch((size_t)(mbc::ln_backward_parts(N) * 2 * C), NAN);
            mb__rmsnorm_backward(rdi.data(), rdw.data(), g.data(), x.data(), w.data(), rs.data(), N, C);
            mbc::rmsnorm_backward(di.data(), dw.data(), scratch.data(), g.data(), x.data(), w.data(), rs.data(), N, C, false);
            CHECK_CLOSE("rmsnorm dinp", di.data(), rdi.data(), di.size(), 1e-6);
            CHECK_CLOSE("rmsnorm dw", dw.data(), rdw.data(), C, 1e-6);
            mb__rmsnorm_backward(rdi2.data(), rdw2.data(), g.data(), x.data(), w.data(), rs.data(), N, C);
            mbc::rmsnorm_backward(di2.data(), dw2.data(), scratch.data(), g.data(), x.data(), w.data(), rs.data(), N, C, true);
            CHECK_CLOSE("rmsnorm dinp (overwrite)", di2.data(), rdi2.data(), di2.size(), 1e-6);
            CHECK_CLOSE("rmsnorm dw (overwrite)", dw2.data(), rdw2.data(), C, 1e-6);
        }
}

/* ========================================================= embedding */

/* The GPU's order of one byte's sum, written out: dwte + (the rows of each
   MBC_EMB_PIECE piece summed from 0 in token order) in piece order; a byte of
   at most one piece adds its rows to dwte directly. */
fvec embedding_backward_piece_order(const fvec &dwte, const fvec &dout, const std::vector<uint8_t> &tok, int C) {
    fvec out = dwte;
    for (int v = 0; v < 256; v++) {
        std::vector<int64_t> rows;
        for (int64_t n = 0; n < (int64_t)tok.size(); n++)
            if (tok[(size_t)n] == v) rows.push_back(n);
        const size_t np = (rows.size() + MBC_EMB_PIECE - 1) / MBC_EMB_PIECE;
        for (int c = 0; c < C; c++) {
            float acc = out[(size_t)v * C + c];
            for (size_t p = 0; p < np; p++) {
                float part = np < 2 ? acc : 0.0f;
                for (size_t k = p * MBC_EMB_PIECE; k < rows.size() && k < (p + 1) * MBC_EMB_PIECE; k++)
                    part += dout[(size_t)rows[k] * C + c];
                acc = np < 2 ? part : acc + part;
            }
            out[(size_t)v * C + c] = acc;
        }
    }
    return out;
}

/* One embedding backward through the two kernels: a fresh copy of dwte, the
   scratch filled with NaN (a partial read before it is written shows), run
   under the given block/thread schedule. */
fvec run_embedding_backward(const fvec &dwte, const fvec &dout, const std::vector<int64_t> &buckets, int64_t N, int C,
                            unsigned schedule) {
    fvec dw = dwte, scratch((size_t)(mbc::embedding_pieces_max(N) * C), NAN);
    cuda_emu::set_schedule(schedule);
    mbc::embedding_backward(dw.data(), scratch.data(), dout.data(), buckets.data(), buckets.data() + MBC_BUCKET_TABLE, N, C);
    cuda_emu::set_schedule(0);
    return dw;
}

/* A byte distribution with bytes of many pieces: compared with the CPU's
   token-order sum to float rounding, bitwise with the piece order written
   out, and bitwise between two runs under different schedules. */
void check_embedding_pieces(const char *name, const std::vector<uint8_t> &tok, int C, mbt_rng *r) {
    const int64_t N = (int64_t)tok.size();
    fvec g = randn(r, (size_t)N * C), dw0 = randn(r, (size_t)256 * C), rdw = dw0;
    std::vector<int64_t> buckets((size_t)(MBC_BUCKET_TABLE + N));
    mbc::token_buckets(buckets.data(), buckets.data() + MBC_BUCKET_TABLE, tok.data(), N);
    const int64_t *piece_base = buckets.data() + 257, grid = mbc::embedding_pieces_max(N);
    int64_t most = 0; /* the largest piece count of one byte */
    for (int v = 0; v < 256; v++)
        if (piece_base[v + 1] - piece_base[v] > most) most = piece_base[v + 1] - piece_base[v];
    MBT_CHECK(most >= 2 && piece_base[256] <= grid, "embedding %s: %lld pieces, at most %lld in one byte (grid %lld)", name,
              (long long)piece_base[256], (long long)most, (long long)grid);
    mb__embedding_backward(rdw.data(), g.data(), tok.data(), N, C);
    const fvec a = run_embedding_backward(dw0, g, buckets, N, C, 0), b = run_embedding_backward(dw0, g, buckets, N, C, 7);
    /* Both sides sum the same terms (dwte and the byte's rows) in two orders.
       Each rounding is at most u = 2^-24 of a partial sum, itself at most
       S = sum|terms|; over m <= 5001 roundings of either sign the errors add
       as a random walk, ~u sqrt(2m) S <= 6e-6 S for the two orders together
       (all of one sign, the worst case, (m + 64 + pieces) u S ~ 3e-4 S; seen:
       ~1e-7 S).  The test allows 1e-5 S, S per (byte, channel) from the data. */
    fvec S = dw0;
    for (float &s : S) s = fabsf(s);
    for (int64_t n = 0; n < N; n++)
        for (int c = 0; c < C; c++) S[(size_t)tok[(size_t)n] * C + c] += fabsf(g[(size_t)(n * C + c)]);
    double worst = 0.0; /* max |diff| / S */
    for (size_t i = 0; i < a.size(); i++) {
        const double e = fabs((double)a[i] - (double)rdw[i]) / (double)S[i];
        if (!(e <= worst)) worst = e; /* NaN propagates */
    }
    MBT_CHECK(worst <= 1e-5, "embedding %s backward vs the CPU: max |diff| / sum|terms| = %.3g (tol 1e-5)", name, worst);
    MBT_CHECK(bitwise_equal(a, embedding_backward_piece_order(dw0, g, tok, C)),
              "embedding %s backward: bitwise the piece order (pieces of %d rows in token order, then in piece order)", name,
              MBC_EMB_PIECE);
    MBT_CHECK(bitwise_equal(a, b), "embedding %s backward: a second run (shuffled schedule) gives the same bits", name);
}

void test_embedding() {
    mbt_rng r = {4};
    const int C = 40;
    const int64_t N = 300;
    std::vector<uint8_t> tok(N);
    for (int64_t i = 0; i < N; i++) tok[i] = (uint8_t)(mbt_next(&r) % 20 * 13); /* repeats */
    fvec wte = randn(&r, (size_t)256 * C), o((size_t)N * C, NAN), ro((size_t)N * C);
    mb__embedding_forward(ro.data(), tok.data(), wte.data(), N, C);
    mbc::embedding_forward(o.data(), tok.data(), wte.data(), N, C);
    MBT_CHECK(bitwise_equal(o, ro), "embedding forward");
    fvec g = randn(&r, o.size()), dw = randn(&r, wte.size()), rdw = dw;
    std::vector<int64_t> buckets(MBC_BUCKET_TABLE + N);
    mbc::token_buckets(buckets.data(), buckets.data() + MBC_BUCKET_TABLE, tok.data(), N);
    bool one_piece = true; /* ~15 rows per byte: every byte takes the direct path */
    const int64_t *piece_base = buckets.data() + 257;
    for (int v = 0; v < 256; v++) one_piece &= piece_base[v + 1] - piece_base[v] <= 1;
    MBT_CHECK(one_piece, "embedding: every byte of the uniform case has at most one piece");
    mb__embedding_backward(rdw.data(), g.data(), tok.data(), N, C);
    MBT_CHECK(bitwise_equal(run_embedding_backward(dw, g, buckets, N, C, 0), rdw),
              "embedding backward, at most one piece per byte (same order: bitwise)");

    /* skewed: C = 50, not a multiple of 32 (a block of 64 threads, 14 idle) */
    std::vector<uint8_t> spaces(5000);
    for (auto &t : spaces) t = mbt_next(&r) % 10 < 7 ? (uint8_t)' ' : (uint8_t)(mbt_next(&r) % 256);
    check_embedding_pieces("70% spaces (N 5000)", spaces, 50, &r);
    check_embedding_pieces("one byte holds all rows (N 5000)", std::vector<uint8_t>(5000, 255), 50, &r);
    /* piece edges: 64 rows (one piece, direct), 65 (a last piece of one row),
       128 (two full pieces), 129, 0 and 1 rows; interleaved; C = 300, more
       channels than a block's 256 threads */
    std::vector<uint8_t> edges;
    const int counts[6] = {64, 65, 128, 129, 0, 1};
    for (int v = 0; v < 6; v++) edges.insert(edges.end(), (size_t)counts[v], (uint8_t)v);
    for (size_t i = edges.size(); i > 1; i--) std::swap(edges[i - 1], edges[mbt_next(&r) % i]);
    check_embedding_pieces("piece edges (64, 65, 128, 129, 0, 1 rows)", edges, 300, &r);
}

/* ============================================================ matmul */

void test_matmul() {
    mbt_rng r = {5};
    const int64_t N = 23;
    const int IC = 19, OC = 13, ldi = 25;
    fvec x = randn(&r, (size_t)(N * ldi)), w = randn(&r, (size_t)OC * IC);
    fvec o((size_t)(N * OC), NAN), ro(o.size());
    mb__matmul_forward(ro.data(), x.data(), ldi, w.data(), N, IC, OC);
    mbc::matmul_forward(nullptr, o.data(), x.data(), ldi, w.data(), N, IC, OC);
    CHECK_CLOSE("matmul forward (cuBLAS mapping)", o.data(), ro.data(), o.size(), 1e-6);
    fvec g = randn(&r, o.size()), dx = randn(&r, x.size()), dw = randn(&r, w.size()), rdx = dx, rdw = dw;
    mb__matmul_backward(rdx.data(), rdw.data(), g.data(), x.data(), ldi, w.data(), N, IC, OC);
    mbc::matmul_backward(nullptr, dx.data(), 1.0f, dw.data(), g.data(), x.data(), ldi, w.data(), N, IC, OC);
    CHECK_CLOSE("matmul backward dinp", dx.data(), rdx.data(), dx.size(), 1e-6);
    CHECK_CLOSE("matmul backward dw", dw.data(), rdw.data(), dw.size(), 1e-6);
    bool pad_ok = true; /* columns IC..ldi of dinp untouched */
    for (int64_t n = 0; n < N; n++)
        for (int i = IC; i < ldi; i++) pad_ok &= dx[(size_t)(n * ldi + i)] == rdx[(size_t)(n * ldi + i)];
    MBT_CHECK(pad_ok, "matmul backward leaves the stride padding alone");
    /* bf16 inputs: the conversion and the bf16 GEMM path */
    std::vector<mbc_bf16> xb((size_t)(N * IC)), wb(w.size());
    mbc::convert_bf16(xb.data(), x.data(), N, IC, ldi);
    mbc::convert_bf16(wb.data(), w.data(), 1, (int64_t)w.size(), (int64_t)w.size());
    bool rne = __bfloat162float(__float2bfloat16_rn(1.00390625f)) == 1.0f &&       /* tie to even: down */
               __bfloat162float(__float2bfloat16_rn(1.01171875f)) == 1.015625f;   /* tie to even: up */
    MBT_CHECK(rne, "bf16 round to nearest even");
    fvec ob(o.size(), NAN);
    mbc::gemm(nullptr, 1, 0, OC, (int)N, IC, 1.0f, wb.data(), IC, xb.data(), IC, 0.0f, ob.data(), OC, 1, __FILE__, __LINE__);
    double e = mbt_rel_l2(ob.data(), ro.data(), (int64_t)o.size());
    MBT_CHECK(e < 1e-2, "bf16 matmul within bf16 rounding: rel L2 %.3g", e);
    /* TF32: fp32 operands rounded to 10 mantissa bits (ties away) */
    MBT_CHECK(mbc::tf32_round(1.0f + 0x1p-11f) == 1.0f + 0x1p-10f && mbc::tf32_round(1.0f + 0x1p-12f) == 1.0f &&
                  mbc::tf32_round(-(1.0f + 0x1p-11f)) == -(1.0f + 0x1p-10f),
              "tf32 rounding: nearest, ties away from zero");
    fvec ot(o.size(), NAN);
    mbc::matmul_forward(nullptr, ot.data(), x.data(), ldi, w.data(), N, IC, OC, 0.0f, MB_PRECISION_TF32);
    e = mbt_rel_l2(ot.data(), ro.data(), (int64_t)o.size());
    MBT_CHECK(e < 2e-3 && e > 0.0, "tf32 matmul within TF32 rounding: rel L2 %.3g", e);
}

/* ============================================================== AdamW */

void test_adamw() {
    mbt_rng r = {6};
    mb_config cfg = mb_config_default();
    cfg.d_model = 16; cfg.n_layer = 2; cfg.dt_rank = 0;
    mb_model *m = nullptr;
    MBT_CHECK(mb_model_create(&m, &cfg, 7) == MB_STATUS_OK, "adamw: model");
    if (!m) return;
    const int64_t P = mb_model_num_params(m);
    fvec g = randn(&r, (size_t)P, 0.3), am = randn(&r, (size_t)P, 0.01), av(P);
    for (auto &v : av) v = (float)(mbt_uniform(&r) * 1e-3);
    fvec p(mb_model_params(m), mb_model_params(m) + P);
    const int nt = mb_config_tensors(mb_model_config(m), nullptr);
    std::vector<mb_tensor_info> ti((size_t)nt);
    mb_config_tensors(mb_model_config(m), ti.data());
    std::vector<uint8_t> mask((size_t)P);
    for (auto &t : ti) memset(mask.data() + t.offset, t.weight_decay, (size_t)t.numel);
    for (double clip : {1e9, 0.5}) {
        /* CPU: as mb_trainer_step with grad_accum 2 */
        fvec rg = g, rm = am, rv = av;
        memcpy(mb_model_params(m), p.data(), (size_t)P * 4);
        for (auto &v : rg) v *= 0.5f;
        const double rnorm = mb_grad_norm(rg.data(), P);
        const float coef = mb_clip_coef(rnorm, clip);
        if (coef < 1.0f) for (auto &v : rg) v *= coef;
        memcpy(mb_model_grads(m), rg.data(), (size_t)P * 4);
        mb_adamw_update(m, rm.data(), rv.data(), 3, 1e-3, 0.9, 0.95, 1e-8, 0.1);
        /* emulated device */
        fvec dp = p, dg = g, dm = am, dv = av;
        double sumsq = 0, part[MBC_NORM_BLOCKS];
        mbc::grad_scale_sumsq(&sumsq, part, dg.data(), P, 0.5f);
        const double norm = sqrt(sumsq), c = clip / (norm + 1e-6);
        MBT_CHECK(fabs(norm - rnorm) <= 1e-12 * rnorm, "grad norm %.17g vs %.17g", norm, rnorm);
        mbc::adamw(dp.data(), dg.data(), dm.data(), dv.data(), mask.data(), P, (float)(c < 1 ? c : 1.0), 1e-3, 0.9,
                   0.95, 1e-8, 0.1, 3);
        fvec rp(mb_model_params(m), mb_model_params(m) + P);
        CHECK_CLOSE("adamw params", dp.data(), rp.data(), (size_t)P, 1e-7);
        CHECK_CLOSE("adamw m", dm.data(), rm.data(), (size_t)P, 1e-7);
        CHECK_CLOSE("adamw v", dv.data(), rv.data(), (size_t)P, 1e-7);
        bool zero = true;
        for (float v : dg) zero &= v == 0.0f;
        MBT_CHECK(zero, "adamw zeroes the gradients");
    }
    mb_model_free(m);
}

/* ============================================================= conv1d */

void test_conv1d() {
    mbt_rng r = {7};
    for (int K : {4, 3, 1, 6})
        for (int T : {19, 300}) {
            const int B = 2, Di = 40;
            const int64_t N = (int64_t)B * T;
            fvec xz = randn(&r, (size_t)(N * 2 * Di)), w = randn(&r, (size_t)Di * K, 0.5), bias = randn(&r, Di, 0.2);
            fvec o((size_t)(N * Di), NAN), ro(o.size());
            mb__conv1d_forward(ro.data(), xz.data(), w.data(), bias.data(), B, T, Di, K);
            mbc::conv1d_forward(o.data(), xz.data(), w.data(), bias.data(), B, T, Di, K);
            CHECK_CLOSE("conv1d forward", o.data(), ro.data(), o.size(), 1e-6);
            fvec g = randn(&r, o.size()), dxz = randn(&r, xz.size()), dw = randn(&r, w.size()), db = randn(&r, Di);
            fvec rdxz = dxz, rdw = dw, rdb = db;
            fvec scratch((size_t)(mbc::conv_backward_parts(B, T) * Di * (K + 1)), NAN);
            mb__conv1d_backward(rdxz.data(), rdw.data(), rdb.data(), g.data(), xz.data(), w.data(), bias.data(), B, T, Di, K);
            mbc::conv1d_backward(dxz.data(), dw.data(), db.data(), scratch.data(), g.data(), xz.data(), w.data(),
                                 bias.data(), B, T, Di, K);
            CHECK_CLOSE("conv1d dxz", dxz.data(), rdxz.data(), dxz.size(), 1e-6);
            CHECK_CLOSE("conv1d dw", dw.data(), rdw.data(), dw.size(), 1e-6);
            CHECK_CLOSE("conv1d dbias", db.data(), rdb.data(), Di, 1e-6);
        }
}

/* =============================================================== scan */

struct scan_case {
    int B, T, Di, S, R, chunk;
    double dt_shift; /* added to dt_bias: 50 with A_log 0 gives dt*A ~ -50 */
};

void run_scan_case(const scan_case &sc, mbt_rng *r, bool check_schedules) {
    const int B = sc.B, T = sc.T, Di = sc.Di, S = sc.S, R = sc.R, X = R + 2 * S, chunk = sc.chunk;
    const int64_t N = (int64_t)B * T, nch = (T + chunk - 1) / chunk;
    char name[160];
    fvec u = randn(r, (size_t)(N * Di)), delta = randn(r, (size_t)(N * Di), 0.5), dtb = randn(r, Di, 0.5, -2.0 + sc.dt_shift);
    fvec Alog((size_t)Di * S), xdbl = randn(r, (size_t)(N * X)), Dp = randn(r, Di), xz = randn(r, (size_t)(N * 2 * Di));
    for (int d = 0; d < Di; d++)
        for (int n = 0; n < S; n++) Alog[(size_t)d * S + n] = sc.dt_shift > 0 ? 0.0f : (float)log(n + 1.0 + 0.1 * mbt_uniform(r));
    fvec o((size_t)(N * Di), NAN), st((size_t)(B * nch * Di * S), NAN), ro(o.size()), rst(st.size());
    mb__scan_forward(ro.data(), rst.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(), Dp.data(),
                     xz.data(), B, T, Di, S, R, chunk);
    fvec scratch((size_t)mbc::scan_scratch_floats(B, T, Di, S, chunk), NAN);
    mbc::scan_forward(o.data(), st.data(), scratch.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(),
                      Dp.data(), xz.data(), B, T, Di, S, R, chunk);
    snprintf(name, sizeof name, "scan forward out (B%d T%d Di%d S%d chunk%d dt+%g)", B, T, Di, S, chunk, sc.dt_shift);
    CHECK_CLOSE(name, o.data(), ro.data(), o.size(), 2e-6);
    snprintf(name, sizeof name, "scan forward states (T%d S%d chunk%d)", T, S, chunk);
    CHECK_CLOSE(name, st.data(), rst.data(), st.size(), 2e-6);
    /* backward */
    fvec g = randn(r, o.size()), du = randn(r, u.size()), ddelta(u.size(), NAN), ddtb = randn(r, Di), dA = randn(r, Alog.size());
    fvec dxdbl = randn(r, xdbl.size()), dD = randn(r, Di), dxz = randn(r, xz.size());
    fvec rdu = du, rddelta(u.size()), rddtb = ddtb, rdA = dA, rdxdbl = dxdbl, rdD = dD, rdxz = dxz;
    fvec cpu_scratch((size_t)(B * ((int64_t)Di * S + 2 * Di)));
    mb__scan_backward(rdu.data(), rddelta.data(), rddtb.data(), rdA.data(), rdxdbl.data(), rdD.data(), rdxz.data(),
                      cpu_scratch.data(), g.data(), rst.data(), u.data(), delta.data(), dtb.data(), Alog.data(),
                      xdbl.data(), Dp.data(), xz.data(), B, T, Di, S, R, chunk);
    auto run = [&](unsigned seed, fvec &a, fvec &b, fvec &c, fvec &d, fvec &e, fvec &f, fvec &h) {
        cuda_emu::set_schedule(seed);
        a = du; b = ddelta; c = ddtb; d = dA; e = dxdbl; f = dD; h = dxz;
        mbc::scan_backward(a.data(), b.data(), c.data(), d.data(), e.data(), f.data(), h.data(), scratch.data(), g.data(),
                           st.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(), Dp.data(), xz.data(),
                           B, T, Di, S, R, chunk);
        cuda_emu::set_schedule(0);
    };
    fvec a, b, c, d, e, f, h;
    run(0, a, b, c, d, e, f, h);
    snprintf(name, sizeof name, "scan backward (B%d T%d Di%d S%d chunk%d dt+%g)", B, T, Di, S, chunk, sc.dt_shift);
    const double tol = 2e-5;
    bool finite = true;
    for (auto *v : {&a, &b, &c, &d, &e, &f, &h})
        for (float x : *v) finite &= std::isfinite(x);
    MBT_CHECK(finite, "%s: all gradients finite", name);
    CHECK_CLOSE("scan du", a.data(), rdu.data(), a.size(), tol);
    CHECK_CLOSE("scan ddelta", b.data(), rddelta.data(), b.size(), tol);
    CHECK_CLOSE("scan ddt_bias", c.data(), rddtb.data(), c.size(), tol);
    CHECK_CLOSE("scan dA_log", d.data(), rdA.data(), d.size(), tol);
    CHECK_CLOSE("scan dxdbl", e.data(), rdxdbl.data(), e.size(), tol);
    CHECK_CLOSE("scan dD", f.data(), rdD.data(), f.size(), tol);
    CHECK_CLOSE("scan dxz", h.data(), rdxz.data(), h.size(), tol);
    bool untouched = true; /* dt_low columns of dxdbl and x' columns of dxz */
    for (int64_t t = 0; t < N; t++) {
        for (int j = 0; j < R; j++) untouched &= e[(size_t)(t * X + j)] == dxdbl[(size_t)(t * X + j)];
        for (int j = 0; j < Di; j++) untouched &= h[(size_t)(t * 2 * Di + j)] == dxz[(size_t)(t * 2 * Di + j)];
    }
    MBT_CHECK(untouched, "%s: leaves dt_low / x' columns alone", name);
    if (check_schedules)
        for (unsigned seed : {1u, 12345u}) {
            fvec a2, b2, c2, d2, e2, f2, h2;
            run(seed, a2, b2, c2, d2, e2, f2, h2);
            MBT_CHECK(bitwise_equal(a, a2) && bitwise_equal(b, b2) && bitwise_equal(c, c2) && bitwise_equal(d, d2) &&
                          bitwise_equal(e, e2) && bitwise_equal(f, f2) && bitwise_equal(h, h2),
                      "%s: bitwise identical under schedule %u", name, seed);
        }
}

void test_scan() {
    mbt_rng r = {8};
    const scan_case cases[] = {
        {2, 70, 24, 16, 3, 16, 0.0}, {2, 70, 24, 16, 3, 32, 0.0}, {1, 70, 20, 16, 2, 64, 0.0},
        {2, 33, 10, 5, 2, 8, 0.0},   {1, 40, 9, 32, 2, 16, 0.0},  {2, 70, 17, 16, 3, 16, 50.0},
        {1, 5, 16, 16, 1, 32, 0.0},
        /* d_state 64 (4 passes of 16 states), T not a multiple of the chunk, T < chunk */
        {2, 45, 40, 64, 3, 16, 0.0}, {1, 21, 70, 64, 2, 32, 0.0}, {2, 67, 33, 20, 4, 32, 0.0},
        {1, 3, 9, 64, 2, 64, 0.0},   {2, 37, 24, 64, 3, 8, 50.0},
    };
    bool first = true;
    for (const auto &c : cases) {
        run_scan_case(c, &r, first);
        first = false;
    }
    /* streaming step = one token of the scan (T = 1 from a given state) */
    const int Di = 20, S = 16, R = 2, X = R + 2 * S;
    fvec h0 = randn(&r, (size_t)Di * S), u = randn(&r, Di), delta = randn(&r, Di), dtb = randn(&r, Di, 0.3, -1.0);
    fvec Alog((size_t)Di * S), xdbl = randn(&r, X), Dp = randn(&r, Di), xz = randn(&r, 2 * (size_t)Di);
    for (size_t i = 0; i < Alog.size(); i++) Alog[i] = (float)log(i % S + 1.0);
    fvec h = h0, gated(Di, NAN), rg(Di), rh = h0;
    mbc::scan_step(gated.data(), h.data(), u.data(), delta.data(), dtb.data(), Alog.data(), xdbl.data(), Dp.data(), xz.data(), Di, S, R);
    for (int d = 0; d < Di; d++) {
        float dt = delta[d] + dtb[d];
        dt = dt > 20.0f ? dt : log1pf(expf(dt));
        float y = 0.0f;
        for (int n = 0; n < S; n++) {
            float &hn = rh[(size_t)d * S + n];
            hn = expf(dt * -expf(Alog[(size_t)d * S + n])) * hn + dt * xdbl[R + n] * u[d];
            y += xdbl[R + S + n] * hn;
        }
        float z = xz[Di + d];
        rg[d] = (y + Dp[d] * u[d]) * (z / (1.0f + expf(-z)));
    }
    CHECK_CLOSE("scan step state", h.data(), rh.data(), h.size(), 1e-6);
    CHECK_CLOSE("scan step output", gated.data(), rg.data(), Di, 1e-6);
}

/* ================================================ trainer and stream */

/* The tensor indices the CUDA side reads: every (layer, MB_TENSOR_*) and
   every global resolves to the mb_tensor_info of the expected PyTorch name
   (written out here), the table dims_init keeps agrees, and together they
   cover the table once; mb_tensor_matrix gives each product's weight (the
   head: the embedding when tied) with its shape. */
void test_tensor_indices() {
    static const struct { int field; const char *name; } layer[] = {
        {MB_TENSOR_NORM_W, "norm.weight"},           {MB_TENSOR_NORM_B, "norm.bias"},
        {MB_TENSOR_IN_PROJ, "mixer.in_proj.weight"}, {MB_TENSOR_CONV_W, "mixer.conv1d.weight"},
        {MB_TENSOR_CONV_B, "mixer.conv1d.bias"},     {MB_TENSOR_X_PROJ, "mixer.x_proj.weight"},
        {MB_TENSOR_DT_W, "mixer.dt_proj.weight"},    {MB_TENSOR_DT_B, "mixer.dt_proj.bias"},
        {MB_TENSOR_A_LOG, "mixer.A_log"},            {MB_TENSOR_D, "mixer.D"},
        {MB_TENSOR_OUT_PROJ, "mixer.out_proj.weight"},
    };
    static const struct { int field; const char *name; } globals[] = {
        {MB_TENSOR_EMBEDDING, "embedding.weight"}, {MB_TENSOR_NORM_F_W, "norm_f.weight"}, {MB_TENSOR_NORM_F_B, "norm_f.bias"},
        {MB_TENSOR_LM_HEAD, "lm_head.weight"},
    };
    MBT_CHECK(MB_NUM_LAYER_TENSORS == 11 && MB_NUM_GLOBAL_TENSORS == 4, "tensor indices: %d per layer, %d globals",
              (int)MB_NUM_LAYER_TENSORS, (int)MB_NUM_GLOBAL_TENSORS);
    for (int variant = 0; variant < 12; variant++) { /* 3 depths x {LayerNorm, RMSNorm} x {tied, untied} */
        const int n_layer = variant % 3 == 0 ? 1 : variant % 3 == 1 ? 3 : 4, rms = (variant / 3) % 2, untied = variant / 6;
        mb_config cfg = mb_config_default();
        cfg.d_model = 7; cfg.n_layer = n_layer; cfg.d_state = 5; cfg.d_conv = 3; cfg.expand = 3; cfg.dt_rank = 0;
        cfg.norm = rms ? MB_NORM_RMSNORM : MB_NORM_LAYERNORM; cfg.untied_head = untied;
        mbc::dims d;
        MBT_CHECK(mbc::dims_init(&d, &cfg) == MB_STATUS_OK, "tensor indices: dims_init: %s", mb_cuda_last_error());
        const int nt = mb_config_tensors(&d.cfg, nullptr);
        std::vector<mb_tensor_info> ti((size_t)nt);
        mb_config_tensors(&d.cfg, ti.data());
        std::vector<int> hits((size_t)nt, 0);
        int bad = 0;
        auto expect = [&](int idx, const char *name) {
            const bool absent = (rms && strstr(name, "norm") && strstr(name, ".bias")) || (!untied && strstr(name, "lm_head"));
            if (absent) { /* the config has no such tensor */
                if (idx != -1) { fprintf(stderr, "  L=%d: %s should be absent, index %d\n", n_layer, name, idx); bad++; }
                return;
            }
            if (idx < 0 || idx >= nt || strcmp(ti[(size_t)idx].name, name) != 0 || d.tensors[idx].offset != ti[(size_t)idx].offset) {
                fprintf(stderr, "  L=%d: index %d is %s, expected %s\n", n_layer, idx,
                        idx >= 0 && idx < nt ? ti[(size_t)idx].name : "out of range", name);
                bad++;
                return;
            }
            hits[(size_t)idx]++;
        };
        for (int l = 0; l < n_layer; l++)
            for (const auto &e : layer) {
                char name[64];
                snprintf(name, sizeof name, "layers.%d.%s", l, e.name);
                expect(mb_tensor_index(&d.cfg, l, e.field), name);
            }
        for (const auto &g : globals) expect(mb_tensor_index(&d.cfg, -1, g.field), g.name);
        int once = 0;
        for (int h : hits) once += h == 1;
        MBT_CHECK(bad == 0 && d.ntensors == nt && once == nt && nt == 1 + n_layer * (11 - rms) + 2 - rms + untied,
                  "tensor indices L=%d rms=%d untied=%d: %d wrong, %d of %d tensors hit once", n_layer, rms, untied, bad, once, nt);
        MBT_CHECK(mb_tensor_index(&d.cfg, n_layer, 0) == -1 && mb_tensor_index(&d.cfg, 0, MB_NUM_LAYER_TENSORS) == -1 &&
                      mb_tensor_index(&d.cfg, 0, -1) == -1 && mb_tensor_index(&d.cfg, -1, MB_NUM_GLOBAL_TENSORS) == -1 &&
                      mb_tensor_index(&d.cfg, -2, 0) == -1,
                  "tensor indices L=%d: out-of-range fields must give -1", n_layer);
        int in = 0, out = 0, mi = mb_tensor_matrix(&d.cfg, -1, MB_TENSOR_LM_HEAD, &in, &out);
        MBT_CHECK(mi == mb_tensor_index(&d.cfg, -1, untied ? MB_TENSOR_LM_HEAD : MB_TENSOR_EMBEDDING) && in == 7 && out == 256,
                  "tensor matrix: the head is %d (%d x %d)", mi, out, in);
        mi = mb_tensor_matrix(&d.cfg, n_layer - 1, MB_TENSOR_DT_W, &in, &out);
        MBT_CHECK(mi == mb_tensor_index(&d.cfg, n_layer - 1, MB_TENSOR_DT_W) && in == d.R && out == d.Di &&
                      (int64_t)in * out == ti[(size_t)mi].numel, "tensor matrix: dt_proj is %d (%d x %d)", mi, out, in);
        MB_FREE(d.tensors);
    }
}

/* rms_untied: also the mamba_ssm-style model (RMSNorm, separate lm_head). */
void test_trainer(int precision, bool rms_untied = false) {
    mbt_rng r = {9};
    mb_config cfg = mb_config_default();
    cfg.d_model = 16; cfg.n_layer = 2; cfg.dt_rank = 0;
    if (rms_untied) { cfg.norm = MB_NORM_RMSNORM; cfg.untied_head = 1; }
    const int B = 2, T = 37;
    mb_model *m = nullptr;
    MBT_CHECK(mb_model_create(&m, &cfg, 11) == MB_STATUS_OK, "trainer: CPU model");
    mb_cuda_trainer *t = nullptr;
    mb_status s = mb_cuda_trainer_create(&t, &cfg, B, T, precision);
    MBT_CHECK(s == MB_STATUS_OK, "trainer create: %s", mb_cuda_last_error());
    if (!m || !t) { mb_model_free(m); mb_cuda_trainer_free(t); return; }
    mb_model_set_scan_chunk(m, 16);
    MBT_CHECK(mb_cuda_trainer_set_scan_chunk(t, 16) == MB_STATUS_OK, "trainer chunk 16");
    const int64_t P = mb_model_num_params(m), N = (int64_t)B * T;
    /* perturb the init so every parameter matters (norms, D, biases) */
    float *pp = mb_model_params(m);
    for (int64_t i = 0; i < P; i++) pp[i] += (float)(0.02 * mbt_normal(&r));
    std::vector<uint8_t> in(N);
    std::vector<int32_t> tg(N);
    for (int64_t i = 0; i < N; i++) { in[i] = (uint8_t)(mbt_next(&r) % 256); tg[i] = (int32_t)(mbt_next(&r) % 256); }
    tg[3] = tg[40] = -100;
    MBT_CHECK(mb_cuda_trainer_upload(t, pp, nullptr, nullptr) == MB_STATUS_OK, "trainer upload");
    float ref_loss = NAN, loss = NAN;
    mb_model_zero_grad(m);
    mb_model_forward(m, in.data(), tg.data(), B, T, &ref_loss);
    fvec ref_logits(mb_model_logits(m), mb_model_logits(m) + N * 256), logits((size_t)N * 256, NAN);
    mb_model_backward(m);
    MBT_CHECK(mb_cuda_trainer_forward_logits(t, in.data(), logits.data()) == MB_STATUS_OK, "trainer forward");
    s = mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
    MBT_CHECK(s == MB_STATUS_OK, "trainer forward_backward: %s", mb_cuda_last_error());
    /* bf16 (8-bit mantissa operands) and TF32 (10-bit) against the fp32 CPU */
    const char *pname = precision == 1 ? "bf16" : precision == 2 ? "tf32" : "fp32";
    const double ltol = precision == 1 ? 2e-2 : precision == 2 ? 3e-3 : 2e-6;
    const double gtol = precision == 1 ? 8e-2 : precision == 2 ? 2e-2 : 1e-4;
    MBT_CHECK(fabs(loss - ref_loss) <= ltol * fabs(ref_loss), "trainer loss (%s): %.7g vs CPU %.7g", pname, loss, ref_loss);
    char lname[64];
    snprintf(lname, sizeof lname, "trainer logits %s", pname);
    CHECK_CLOSE(lname, logits.data(), ref_logits.data(), logits.size(), precision == 1 ? 2e-2 : precision == 2 ? 3e-3 : 2e-6);
    fvec grads((size_t)P, NAN);
    mb_cuda_trainer_grads(t, grads.data());
    const float *rg = mb_model_grads(m);
    const int nt = mb_config_tensors(mb_model_config(m), nullptr);
    std::vector<mb_tensor_info> ti((size_t)nt);
    mb_config_tensors(mb_model_config(m), ti.data());
    int bad = 0;
    for (auto &x : ti) {
        double e = mbt_rel_l2(grads.data() + x.offset, rg + x.offset, x.numel);
        if (!(e <= gtol)) {
            bad++;
            fprintf(stderr, "  grad %-32s rel L2 %.3g\n", x.name, e);
        }
    }
    MBT_CHECK(bad == 0, "trainer gradients (%s): %d tensors beyond %.0e", pname, bad, gtol);
    /* a second forward_backward accumulates (grads doubled) */
    mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
    fvec g2((size_t)P);
    mb_cuda_trainer_grads(t, g2.data());
    fvec twice(grads);
    for (auto &v : twice) v *= 2.0f;
    CHECK_CLOSE("trainer accumulates", g2.data(), twice.data(), (size_t)P, precision ? 1e-6 : 1e-7);
    if (!precision) {
        /* update vs mb_trainer_step's sequence (grad_accum 2, clip) */
        fvec am((size_t)P, 0.0f), av((size_t)P, 0.0f);
        float *cg = mb_model_grads(m);
        for (int64_t i = 0; i < P; i++) cg[i] = (cg[i] + cg[i]) * 0.5f; /* the CPU's sum of two, then *= 1/2 */
        const double rnorm = mb_grad_norm(cg, P);
        const float coef = mb_clip_coef(rnorm, 0.1);
        if (coef < 1.0f) for (int64_t i = 0; i < P; i++) cg[i] *= coef;
        mb_adamw_update(m, am.data(), av.data(), 1, 3e-3, 0.9, 0.95, 1e-8, 0.1);
        double norm = 0;
        int applied = 0;
        s = mb_cuda_trainer_update(t, 0.5f, 3e-3, 0.9, 0.95, 1e-8, 0.1, 0.1, 1, &norm, &applied);
        MBT_CHECK(s == MB_STATUS_OK && applied == 1, "trainer update applied");
        MBT_CHECK(fabs(norm - rnorm) <= 1e-4 * rnorm, "trainer grad norm %.7g vs %.7g", norm, rnorm);
        fvec p2((size_t)P), m2((size_t)P), v2((size_t)P);
        mb_cuda_trainer_download(t, p2.data(), m2.data(), v2.data());
        CHECK_CLOSE("trainer params after update", p2.data(), mb_model_params(m), (size_t)P, 1e-6);
        CHECK_CLOSE("trainer adam m", m2.data(), am.data(), (size_t)P, 1e-4);
        mb_cuda_trainer_grads(t, g2.data());
        bool zero = true;
        for (float v : g2) zero &= v == 0.0f;
        MBT_CHECK(zero, "trainer update zeroes the gradients");
        /* a non-finite gradient skips the update */
        fvec nanp(p2);
        mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
        float *gdev = t->grads;
        gdev[5] = NAN;
        s = mb_cuda_trainer_update(t, 1.0f, 3e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, 2, &norm, &applied);
        mb_cuda_trainer_download(t, nanp.data(), nullptr, nullptr);
        MBT_CHECK(s == MB_STATUS_OK && applied == 0 && !std::isfinite(norm) && bitwise_equal(nanp, p2),
                  "trainer skips a non-finite update");
        /* all targets ignored: NaN loss, no gradient */
        std::vector<int32_t> ign(N, -100);
        mb_cuda_trainer_zero_grad(t);
        s = mb_cuda_trainer_forward_backward(t, in.data(), ign.data(), &loss);
        mb_cuda_trainer_grads(t, g2.data());
        zero = true;
        for (float v : g2) zero &= v == 0.0f;
        MBT_CHECK(s == MB_STATUS_OK && std::isnan(loss) && zero, "trainer: all targets ignored");
        tg[0] = 256;
        MBT_CHECK(mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss) == MB_STATUS_INVALID_ARGUMENT,
                  "trainer rejects a target outside [0,256)");
    }
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

/* Carried state on the trainer (mb_cuda_trainer_set_carry as
   mb_model_set_carry): over three steps, the first from zero, the logits,
   loss, gradients and the new state are the CPU's within test_trainer's fp32
   bounds; T spans three scan chunks.  Zeroing either half of the state (the
   scans' h, the conv windows) changes the logits: neither is ignored. */
void test_carry_trainer(bool rms_untied) {
    mbt_rng r = {23};
    mb_config cfg = mb_config_default();
    cfg.d_model = 16; cfg.n_layer = 2; cfg.dt_rank = 0;
    if (rms_untied) { cfg.norm = MB_NORM_RMSNORM; cfg.untied_head = 1; }
    const int B = 2, T = 37;
    const int64_t N = (int64_t)B * T, CF = mb_carry_floats(&cfg, B), Di = (int64_t)cfg.d_model * cfg.expand;
    mb_model *m = nullptr;
    mb_cuda_trainer *t = nullptr;
    mb_model_create(&m, &cfg, 13);
    mb_status s = mb_cuda_trainer_create(&t, &cfg, B, T, 0);
    MBT_CHECK(m && s == MB_STATUS_OK, "carry trainer: create: %s", mb_cuda_last_error());
    if (!m || !t) { mb_model_free(m); mb_cuda_trainer_free(t); return; }
    mb_model_set_scan_chunk(m, 16);
    mb_cuda_trainer_set_scan_chunk(t, 16);
    const int64_t P = mb_model_num_params(m);
    float *pp = mb_model_params(m);
    for (int64_t i = 0; i < P; i++) pp[i] += (float)(0.02 * mbt_normal(&r));
    mb_cuda_trainer_upload(t, pp, nullptr, nullptr);
    fvec hc((size_t)CF, 0.0f), hg(hc), logits((size_t)N * 256), grads((size_t)P), before;
    mb_model_set_carry(m, hc.data());
    std::vector<uint8_t> in((size_t)N);
    std::vector<int32_t> tg((size_t)N);
    for (int step = 0; step < 3; step++) {
        for (int64_t i = 0; i < N; i++) { in[i] = (uint8_t)(mbt_next(&r) % 256); tg[i] = (int32_t)(mbt_next(&r) % 256); }
        float ref_loss = NAN, loss = NAN;
        mb_model_zero_grad(m);
        s = mb_model_forward(m, in.data(), tg.data(), B, T, &ref_loss);
        if (s == MB_STATUS_OK) s = mb_model_backward(m);
        before = hg; /* forward_logits carries it on too: run the step from the same state */
        mb_cuda_trainer_set_carry(t, hg.data());
        if (s == MB_STATUS_OK) s = mb_cuda_trainer_forward_logits(t, in.data(), logits.data());
        hg = before;
        mb_cuda_trainer_zero_grad(t);
        if (s == MB_STATUS_OK) s = mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
        mb_cuda_trainer_grads(t, grads.data());
        MBT_CHECK(s == MB_STATUS_OK && fabs(loss - ref_loss) <= 2e-6 * fabs(ref_loss),
                  "carry trainer step %d: loss %.7g vs CPU %.7g (%s)", step, loss, ref_loss, mb_cuda_last_error());
        CHECK_CLOSE("carry trainer logits", logits.data(), mb_model_logits(m), logits.size(), 2e-6);
        CHECK_CLOSE("carry trainer gradients", grads.data(), mb_model_grads(m), (size_t)P, 1e-4);
        CHECK_CLOSE("carry trainer new state", hg.data(), hc.data(), hc.size(), 2e-6);
        bool moved = false;
        for (int64_t l = 0; l < cfg.n_layer; l++) /* both halves of every layer's state */
            for (int64_t half : {(int64_t)0, (int64_t)B * cfg.d_state * Di})
                moved |= hc[(size_t)(l * CF / cfg.n_layer + half)] != 0.0f && hc[(size_t)(l * CF / cfg.n_layer + half)] != before[(size_t)(l * CF / cfg.n_layer + half)];
        MBT_CHECK(moved, "carry trainer step %d: the state moved", step);
    }
    /* the last state: each half zeroed in turn gives other logits than the whole */
    fvec full((size_t)N * 256), part(full.size());
    before = hg;
    mb_cuda_trainer_forward_logits(t, in.data(), full.data());
    for (int half = 0; half < 2; half++) {
        hg = before;
        for (int64_t l = 0; l < cfg.n_layer; l++) {
            const int64_t o = l * CF / cfg.n_layer, n = (int64_t)B * cfg.d_state * Di;
            std::fill(hg.begin() + o + (half ? n : 0), hg.begin() + o + (half ? CF / cfg.n_layer : n), 0.0f);
        }
        mb_cuda_trainer_forward_logits(t, in.data(), part.data());
        MBT_CHECK(max_rel(part.data(), full.data(), full.size()) > 1e-3, "carry trainer: the %s is read (max rel %.3g)",
                  half ? "conv window" : "scan state", max_rel(part.data(), full.data(), full.size()));
    }
    mb_cuda_trainer_set_carry(t, nullptr);
    mb_model_set_carry(m, nullptr);
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

/* Stream operations (kernels, cuBLAS calls, memsets, copies) of one
   training step at the default model config (4 layers, d_model 192,
   d_state 16): forward, loss, backward and the AdamW update, with T = 64 so
   the scan runs its chunk-carry passes as at T = 1024 (chunk 32).  The
   count depends on the config and the chunking, not on B or T. */
void test_launch_budget() {
#ifdef CUDA_EMU_ASAN
    /* the count is the same under ASan; the default-size step would only
       add minutes (the trainer tests cover the same kernels' memory) */
    MBT_SKIP("cuda_emu", "launch budget: counted by the unsanitized suite (make test)");
    return;
#endif
    mb_config cfg = mb_config_default();
    const int B = 1, T = 64;
    mb_model *m = nullptr;
    mb_cuda_trainer *t = nullptr;
    MBT_CHECK(mb_model_create(&m, &cfg, 3) == MB_STATUS_OK, "launch budget: model");
    MBT_CHECK(mb_cuda_trainer_create(&t, &cfg, B, T, 0) == MB_STATUS_OK, "launch budget: trainer: %s", mb_cuda_last_error());
    if (!m || !t) { mb_model_free(m); mb_cuda_trainer_free(t); return; }
    mb_cuda_trainer_upload(t, mb_model_params(m), nullptr, nullptr);
    std::vector<uint8_t> in((size_t)B * T);
    std::vector<int32_t> tg((size_t)B * T);
    for (int i = 0; i < B * T; i++) { in[(size_t)i] = (uint8_t)("launch budget "[i % 14]); tg[(size_t)i] = (int32_t)"aunch budget l"[i % 14]; }
    /* step 1 runs eagerly (the warm-up), step 2 captures, step 3 replays */
    uint64_t ops[3] = {0, 0, 0}, subs[3] = {0, 0, 0};
    decltype(cuda_emu::g.ops) k0 = {};
    bool ok = true;
    for (int step = 0; step < 3; step++) {
        k0 = cuda_emu::g.ops;
        const uint64_t n0 = cuda_emu::stream_ops(), s0 = cuda_emu::g.submissions;
        float loss = NAN;
        double norm = 0;
        int applied = 0;
        mb_status s = mb_cuda_trainer_forward_backward(t, in.data(), tg.data(), &loss);
        if (s == MB_STATUS_OK) s = mb_cuda_trainer_update(t, 1.0f, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, step + 1, &norm, &applied);
        ops[step] = cuda_emu::stream_ops() - n0;
        subs[step] = cuda_emu::g.submissions - s0;
        ok = ok && s == MB_STATUS_OK && std::isfinite(loss) && applied == 1;
    }
    MBT_CHECK(ok && mb_cuda_trainer_graphs(t) == 1, "launch budget: three steps: %s", mb_cuda_last_error());
    const uint64_t n = ops[2];
    printf("cuda_emu: launches per training step: %llu (host submissions, the step replayed as 2 CUDA graphs; "
           "%llu device operations: kernels %llu, cuBLAS %llu, memsets %llu, copies %llu; %llu submissions without graphs)\n",
           (unsigned long long)subs[2], (unsigned long long)n, (unsigned long long)(cuda_emu::g.ops.kernels - k0.kernels),
           (unsigned long long)(cuda_emu::g.ops.gemms - k0.gemms), (unsigned long long)(cuda_emu::g.ops.memsets - k0.memsets),
           (unsigned long long)(cuda_emu::g.ops.copies - k0.copies), (unsigned long long)subs[0]);
    fflush(stdout);
    MBT_CHECK(n <= MBC_LAUNCH_BUDGET, "launch budget: %llu device operations per step (budget %d)", (unsigned long long)n,
              MBC_LAUNCH_BUDGET);
    MBT_CHECK(subs[2] <= MBC_SUBMIT_BUDGET && subs[0] == ops[0], "launch budget: %llu host submissions per step with graphs "
              "(budget %d), %llu of %llu eagerly", (unsigned long long)subs[2], MBC_SUBMIT_BUDGET,
              (unsigned long long)subs[0], (unsigned long long)ops[0]);
    MBT_CHECK(ops[0] == ops[2], "launch budget: a replay runs what the eager step ran (%llu, %llu device operations)",
              (unsigned long long)ops[2], (unsigned long long)ops[0]);
    mb_cuda_trainer_free(t);
    mb_model_free(m);
}

/* CUDA graphs: a trainer that replays its captured steps ends bit for bit
   where one that launches every operation does, over steps whose inputs,
   valid-row counts (the loss scale), learning rates and step numbers (the
   update's scalars) all change, with gradient accumulation, a micro-batch
   with no target (NaN loss, no backward: the eager path between replays)
   and a rechunked scan (a new capture). */
void test_graphs() {
    mbt_rng r = {41};
    mb_config cfg = mb_config_default();
    cfg.d_model = 16; cfg.n_layer = 2; cfg.dt_rank = 0;
    const int B = 2, T = 40; /* two scan chunks of 32: the carry passes run */
    mb_model *m = nullptr;
    mb_cuda_trainer *tr[2] = {nullptr, nullptr};
    MBT_CHECK(mb_model_create(&m, &cfg, 5) == MB_STATUS_OK, "graphs: model");
    for (int g = 0; g < 2; g++) {
        MBT_CHECK(mb_cuda_trainer_create(&tr[g], &cfg, B, T, 0) == MB_STATUS_OK, "graphs: trainer: %s", mb_cuda_last_error());
        if (!tr[g]) { mb_cuda_trainer_free(tr[0]); mb_model_free(m); return; }
        mb_cuda_trainer_set_graphs(tr[g], g);
        mb_cuda_trainer_upload(tr[g], mb_model_params(m), nullptr, nullptr);
    }
    const int N = B * T, steps = 7;
    std::vector<float> loss[2], norm[2];
    bool ok = true;
    for (int step = 0; step < steps; step++) {
        if (step == 4)
            for (int g = 0; g < 2; g++) ok = ok && mb_cuda_trainer_set_scan_chunk(tr[g], 16) == MB_STATUS_OK;
        for (int micro = 0; micro < 2; micro++) {
            std::vector<uint8_t> in((size_t)N);
            std::vector<int32_t> tg((size_t)N);
            for (int i = 0; i < N; i++) {
                in[(size_t)i] = (uint8_t)(mbt_next(&r) & 255);
                tg[(size_t)i] = (mbt_next(&r) % 5 == 0) ? -100 : (int32_t)(mbt_next(&r) & 255);
                if (step == 2 && micro == 1) tg[(size_t)i] = -100; /* no target: NaN loss, no gradient */
            }
            for (int g = 0; g < 2; g++) {
                float l = NAN;
                ok = ok && mb_cuda_trainer_forward_backward(tr[g], in.data(), tg.data(), &l) == MB_STATUS_OK;
                loss[g].push_back(l);
            }
        }
        for (int g = 0; g < 2; g++) {
            double nrm = 0;
            int applied = 0;
            ok = ok && mb_cuda_trainer_update(tr[g], 0.5f, 1e-2 * (1.0 + step), 0.9, 0.95, 1e-8, 0.1, 0.5 + 0.1 * step,
                                              step + 1, &nrm, &applied) == MB_STATUS_OK;
            norm[g].push_back((float)nrm);
        }
    }
    MBT_CHECK(ok && mb_cuda_trainer_graphs(tr[1]) == 1 && mb_cuda_trainer_graphs(tr[0]) == 0, "graphs: steps: %s",
              mb_cuda_last_error());
    MBT_CHECK(bitwise_equal(loss[0], loss[1]) && bitwise_equal(norm[0], norm[1]), "graphs: losses and norms as launched");
    fvec p[2], mo[2];
    for (int g = 0; g < 2; g++) {
        p[g].resize((size_t)mb_model_num_params(m));
        mo[g].resize(p[g].size());
        mb_cuda_trainer_download(tr[g], p[g].data(), mo[g].data(), nullptr);
    }
    MBT_CHECK(bitwise_equal(p[0], p[1]) && bitwise_equal(mo[0], mo[1]), "graphs: parameters and moments as launched");
    MBT_CHECK(!bitwise_equal(p[1], fvec(mb_model_params(m), mb_model_params(m) + p[1].size())), "graphs: the steps trained");
    for (int g = 0; g < 2; g++) mb_cuda_trainer_free(tr[g]);
    mb_model_free(m);
}

void test_stream(bool rms_untied = false) {
    mbt_rng r = {10};
    mb_config cfg = mb_config_default();
    cfg.d_model = 16; cfg.n_layer = 2; cfg.dt_rank = 0; cfg.d_conv = 3;
    if (rms_untied) { cfg.norm = MB_NORM_RMSNORM; cfg.untied_head = 1; }
    mb_model *m = nullptr;
    mb_model_create(&m, &cfg, 12);
    if (!m) { MBT_CHECK(0, "stream: model"); return; }
    float *pp = mb_model_params(m);
    for (int64_t i = 0; i < mb_model_num_params(m); i++) pp[i] += (float)(0.02 * mbt_normal(&r));
    mb_stream *cs = nullptr;
    mb_cuda_stream *gs = nullptr;
    mb_stream_create(&cs, m);
    mb_status s = mb_cuda_stream_create(&gs, &cfg, pp);
    MBT_CHECK(s == MB_STATUS_OK && cs, "stream create: %s", mb_cuda_last_error());
    if (!gs || !cs) { mb_stream_free(cs); mb_cuda_stream_free(gs); mb_model_free(m); return; }
    fvec lg(256);
    double worst = 0;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 12; i++) {
            uint8_t byte = (uint8_t)(mbt_next(&r) % 256);
            const float *ref = mb_stream_step(cs, byte);
            mb_cuda_stream_step(gs, byte, lg.data());
            double e = mbt_rel_l2(lg.data(), ref, 256);
            if (!(e <= worst)) worst = e;
        }
        mb_stream_reset(cs);
        mb_cuda_stream_reset(gs);
    }
    MBT_CHECK(worst < 1e-5, "stream logits vs mb_stream_step: worst rel L2 %.3g", worst);
    mb_stream_free(cs);
    mb_cuda_stream_free(gs);
    mb_model_free(m);
}

} /* namespace */

namespace {

/* ====================================================== train loop backend */
/* mb_train_run with the CUDA backend attached (mb_cuda_trainer_attach) runs
   the same loop as on the CPU: the same batches, losses within float
   tolerance, the testing hooks skip the same steps, the guard stops after 10
   in a row, and the host model holds the GPU's parameters afterwards. */
struct loop_log {
    std::vector<float> loss;
    std::vector<int> applied;
    std::vector<double> norm;
    const mb_trainer *tr = nullptr; /* --carry-state: its carried state after each step, summed */
    std::vector<double> carry;
};
int loop_record(void *user, const mb_train_progress *p) {
    loop_log *l = (loop_log *)user;
    l->loss.push_back(p->loss);
    l->applied.push_back(p->applied);
    l->norm.push_back(p->grad_norm);
    if (l->tr->st.carry) {
        double a = 0;
        for (int64_t i = 0; i < mb_carry_floats(mb_model_config(l->tr->model), l->tr->st.settings.batch * l->tr->st.settings.grad_accum); i++)
            a += fabs(l->tr->st.carry[i]);
        l->carry.push_back(a);
    }
    return 0;
}

/* One run of the training loop on the demo-sized model. */
struct loop_args {
    int cuda;                         /* 1: the CUDA backend (emulated), 0: the CPU */
    int64_t steps, grad_accum;
    int64_t poison_step, poison_from; /* the trainer's testing hooks (-1: off) */
    const mb_train_comm *comm;        /* one rank of a data-parallel run; NULL: one process */
    bool random_text;                 /* letters that differ from window to window (ranks' batches told apart) */
    bool carry_state, rms;            /* --carry-state; RMSNorm and an untied head */
};
mb_status loop_run(const loop_args &a, loop_log *log, fvec *params, mb_train_report *rep, const char **backend) {
    std::vector<uint8_t> text(6000);
    uint32_t x = 12345;
    for (size_t i = 0; i < text.size(); i++)
        text[i] = a.random_text ? (uint8_t)('a' + (x = x * 1664525u + 1013904223u) % 26u)
                                : (uint8_t)("the scan of a state space model "[i % 32] + (i % 97 == 0));
    mb_config c = mb_config_default();
    c.d_model = 16; c.n_layer = 2; c.d_state = 4; c.dt_rank = 0;
    if (a.rms) { c.norm = MB_NORM_RMSNORM; c.untied_head = 1; }
    mb_train_settings s = mb_train_settings_default();
    s.batch = 2; s.ctx = 24; s.steps = a.steps; s.warmup = 1; s.lr = 1e-2; s.grad_accum = a.grad_accum;
    s.carry_state = a.carry_state;
    mb_model *m = nullptr;
    mb_trainer tr;
    memset(&tr, 0, sizeof tr);
    mb_status st = mb_model_create(&m, &c, 5);
    if (st == MB_STATUS_OK) st = mb_trainer_init(&tr, m, &s, text.data(), (int64_t)text.size(), nullptr);
    tr.inject_nonfinite_step = a.poison_step;
    tr.inject_nonfinite_from = a.poison_from;
    if (st == MB_STATUS_OK && a.comm) st = mb_trainer_set_comm(&tr, a.comm);
    if (st == MB_STATUS_OK && a.cuda) st = mb_cuda_trainer_attach(&tr, 0);
    *backend = tr.backend.name ? tr.backend.name : "cpu";
    log->tr = &tr;
    mb_train_options opt = {nullptr, 0, loop_record, log};
    if (st == MB_STATUS_OK) st = mb_train_run(&tr, &opt, rep);
    if (m) params->assign(mb_model_params(m), mb_model_params(m) + mb_model_num_params(m));
    mb_trainer_free(&tr);
    mb_model_free(m);
    return st;
}

/* --carry-state on the CUDA backend (grad_accum 2: each micro-batch carries
   its own rows): the losses and the carried state after every step are the
   CPU's, and so are the parameters at the end. */
void test_carry_loop(bool rms) {
    loop_log lc, lg;
    fvec pc, pg;
    mb_train_report rc, rg;
    const char *bc = "", *bg = "";
    mb_status sc = loop_run({0, 5, 2, -1, -1, nullptr, true, true, rms}, &lc, &pc, &rc, &bc),
              sg = loop_run({1, 5, 2, -1, -1, nullptr, true, true, rms}, &lg, &pg, &rg, &bg);
    MBT_CHECK(sc == MB_STATUS_OK && sg == MB_STATUS_OK && !strcmp(bg, "cuda fp32") && lc.carry.size() == 5 &&
                  lg.carry.size() == 5 && lc.carry[0] > 0,
              "--carry-state on both backends: %d %d (%s) %s, a state after step 1 (%g)", (int)sc, (int)sg,
              mb_cuda_last_error(), bg, lc.carry.empty() ? 0.0 : lc.carry[0]);
    double worst = lc.loss.size() == lg.loss.size() ? 0 : 1e30;
    for (size_t i = 0; i < lc.loss.size() && i < lg.loss.size(); i++) worst = fmax(worst, fabs(lc.loss[i] - lg.loss[i]));
    for (size_t i = 0; i < lc.carry.size() && i < lg.carry.size(); i++)
        worst = fmax(worst, fabs(lc.carry[i] - lg.carry[i]) / lc.carry[i]);
    MBT_CHECK(worst < 1e-4, "--carry-state: per-step losses and carried states agree across backends (worst %.3g)", worst);
    CHECK_CLOSE("--carry-state: final parameters, CUDA backend vs CPU", pg.data(), pc.data(), pc.size(), 1e-4);
}

void test_train_loop_backend() {
    loop_log lc, lg;
    fvec pc, pg;
    mb_train_report rc, rg;
    const char *bc = "", *bg = "";
    mb_status sc = loop_run({0, 6, 2, 2, -1, nullptr, false, false, false}, &lc, &pc, &rc, &bc),
              sg = loop_run({1, 6, 2, 2, -1, nullptr, false, false, false}, &lg, &pg, &rg, &bg);
    MBT_CHECK(sc == MB_STATUS_OK && sg == MB_STATUS_OK && !strcmp(bc, "cpu") && !strcmp(bg, "cuda fp32"),
              "train loop on both backends: %d %d (%s) %s %s", (int)sc, (int)sg, mb_cuda_last_error(), bc, bg);
    MBT_CHECK(lc.loss.size() == 6 && lg.loss.size() == 6 && lc.applied == lg.applied && lc.applied[2] == 0 && lc.applied[3] == 1,
              "the NaN hook skips the same step (the 3rd) on both backends");
    double worst = 0;
    for (size_t i = 0; i < lc.loss.size() && i < lg.loss.size(); i++) worst = fmax(worst, fabs(lc.loss[i] - lg.loss[i]));
    MBT_CHECK(worst < 1e-4, "per-step losses agree across backends (worst %.3g)", worst);
    CHECK_CLOSE("final parameters, CUDA backend vs CPU", pg.data(), pc.data(), pc.size(), 1e-4);
    MBT_CHECK(rc.outcome == MB_TRAIN_FINISHED && rg.outcome == MB_TRAIN_FINISHED, "both finish");
    /* the guard: every step from the 2nd poisoned -> 10 skipped, then stop */
    loop_log nc, ng;
    sc = loop_run({0, 40, 2, -1, 1, nullptr, false, false, false}, &nc, &pc, &rc, &bc);
    sg = loop_run({1, 40, 2, -1, 1, nullptr, false, false, false}, &ng, &pg, &rg, &bg);
    MBT_CHECK(sc == MB_STATUS_NON_FINITE && sg == MB_STATUS_NON_FINITE && rc.outcome == MB_TRAIN_NON_FINITE &&
              rg.outcome == MB_TRAIN_NON_FINITE && nc.applied.size() == 11 && ng.applied == nc.applied,
              "10 non-finite steps in a row stop both backends the same way (%zu / %zu steps)", nc.applied.size(), ng.applied.size());
}

/* Data-parallel on the CUDA backend without NCCL (the emulator's build):
   two ranks in two threads, joined by an in-process communicator whose sums
   add in rank order; one big lock keeps the emulator single-threaded (a
   rank lets go of it only while it waits in a collective). */
struct pair_world {
    std::mutex big;
    std::condition_variable cv;
    void *slot[2] = {nullptr, nullptr};
    int arrived = 0;
    long gen = 0;
};
struct pair_rank {
    mb_train_comm comm;
    pair_world *w;
    std::unique_lock<std::mutex> *lk;
};
/* Both ranks bring a buffer; the second to arrive runs op on the pair. */
template <class F> static mb_status pair_collective(pair_rank *r, void *x, F op) {
    pair_world *w = r->w;
    const long gen = w->gen;
    w->slot[r->comm.rank] = x;
    if (++w->arrived == 2) {
        op(w->slot[0], w->slot[1]);
        w->arrived = 0;
        w->gen++;
        w->cv.notify_all();
    } else {
        w->cv.wait(*r->lk, [&] { return w->gen != gen; });
    }
    return MB_STATUS_OK;
}
static mb_status pair_sum_floats(void *impl, float *x, int64_t n) {
    return pair_collective((pair_rank *)impl, x, [n](void *a, void *b) {
        for (int64_t i = 0; i < n; i++) ((float *)a)[i] = ((float *)b)[i] = ((float *)a)[i] + ((float *)b)[i];
    });
}
static mb_status pair_sum_doubles(void *impl, double *x, int n) {
    return pair_collective((pair_rank *)impl, x, [n](void *a, void *b) {
        for (int i = 0; i < n; i++) ((double *)a)[i] = ((double *)b)[i] = ((double *)a)[i] + ((double *)b)[i];
    });
}
static mb_status pair_broadcast(void *impl, double *x, int n) {
    return pair_collective((pair_rank *)impl, x, [n](void *a, void *b) { memcpy(b, a, sizeof(double) * (size_t)n); });
}

void test_data_parallel_backend() {
    pair_world w;
    pair_rank r[2];
    loop_log lr[2], l1;
    fvec pr[2], p1;
    const char *br[2] = {"", ""}, *b1 = "";
    mb_status sr[2] = {MB_STATUS_OK, MB_STATUS_OK};
    for (int k = 0; k < 2; k++) {
        memset(&r[k].comm, 0, sizeof r[k].comm);
        r[k].comm.rank = k;
        r[k].comm.size = 2;
        r[k].comm.impl = &r[k];
        r[k].comm.sum_floats = pair_sum_floats;
        r[k].comm.sum_doubles = pair_sum_doubles;
        r[k].comm.broadcast = pair_broadcast;
        r[k].w = &w;
    }
    std::vector<std::thread> ranks;
    for (int k = 0; k < 2; k++)
        ranks.emplace_back([&, k] {
            std::unique_lock<std::mutex> lk(w.big);
            r[k].lk = &lk;
            mb_train_report rep;
            sr[k] = loop_run({1, 5, 2, -1, -1, &r[k].comm, true, false, false}, &lr[k], &pr[k], &rep, &br[k]);
        });
    for (auto &t : ranks) t.join();
    mb_train_report rep1;
    const mb_status s1 = loop_run({1, 5, 4, -1, -1, nullptr, true, false, false}, &l1, &p1, &rep1, &b1);
    MBT_CHECK(sr[0] == MB_STATUS_OK && sr[1] == MB_STATUS_OK && s1 == MB_STATUS_OK && !strcmp(br[0], "cuda fp32") &&
                  !strcmp(br[1], "cuda fp32"),
              "2 ranks on the CUDA backend (gradients through the host communicator): %d %d %d (%s) %s %s", (int)sr[0],
              (int)sr[1], (int)s1, mb_cuda_last_error(), br[0], br[1]);
    MBT_CHECK(pr[0].size() == p1.size() && pr[1].size() == p1.size() &&
                  !memcmp(pr[0].data(), pr[1].data(), sizeof(float) * p1.size()),
              "both ranks end with the same parameters, bit for bit");
    double worst = lr[0].loss.size() == 5 && l1.loss.size() == 5 ? 0 : 1e30;
    for (size_t i = 0; i < l1.loss.size() && i < lr[0].loss.size(); i++)
        worst = fmax(worst, fabs(lr[0].loss[i] - l1.loss[i]) / fabs(l1.loss[i]));
    for (size_t i = 0; i < l1.norm.size() && i < lr[0].norm.size(); i++)
        worst = fmax(worst, fabs(lr[0].norm[i] - l1.norm[i]) / fabs(l1.norm[i]));
    MBT_CHECK(worst < 1e-6, "2 ranks x grad-accum 2 = one process at grad-accum 4: worst loss or gradient-norm rel difference %.3g",
              worst);
    CHECK_CLOSE("final parameters, 2 ranks vs one process", pr[0].data(), p1.data(), p1.size(), 1e-5);
}

}  /* namespace */

extern "C" void mbt_cuda_emu_tests(void) {
    static const struct { const char *name; void (*fn)(); } tests[] = {
        {"emulator", test_emulator}, {"graph_capture", test_graph_capture}, {"cross_entropy", test_cross_entropy}, {"layernorm", test_layernorm}, {"rmsnorm", test_rmsnorm},
        {"embedding", test_embedding}, {"matmul", test_matmul}, {"adamw", test_adamw}, {"conv1d", test_conv1d},
        {"scan", test_scan}, {"trainer_fp32", [] { test_trainer(0); }}, {"trainer_bf16", [] { test_trainer(1); }},
        {"trainer_tf32", [] { test_trainer(2); }}, {"trainer_fp32_rms_untied", [] { test_trainer(0, true); }},
        {"stream", [] { test_stream(); }}, {"stream_rms_untied", [] { test_stream(true); }}, {"tensor_indices", test_tensor_indices}, {"launch_budget", test_launch_budget}, {"graphs", test_graphs},
        {"train_loop_backend", test_train_loop_backend}, {"carry_trainer", [] { test_carry_trainer(false); }}, {"carry_trainer_rms_untied", [] { test_carry_trainer(true); }},
        {"carry_loop", [] { test_carry_loop(false); }}, {"carry_loop_rms_untied", [] { test_carry_loop(true); }}, {"data_parallel_backend", test_data_parallel_backend},
    };
    const bool timing = getenv("MBT_EMU_TIMING") != nullptr; /* per-test seconds on stderr */
    for (const auto &t : tests) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        t.fn();
        cuda_emu::set_schedule(0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (timing) fprintf(stderr, "cuda_emu %-14s %.2f s\n", t.name, (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec));
    }
}
