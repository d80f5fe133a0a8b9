/* mambabyte_cuda.cuh - the CUDA companion of mambabyte.h: MambaByte training
   and streaming inference on one NVIDIA GPU (sm_80 / sm_90), cuBLAS for every
   matrix product, hand-written kernels for everything else.

   HOW TO USE
     Build this file alone as one CUDA translation unit:
         nvcc -O3 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              -DMAMBABYTE_CUDA_IMPLEMENTATION -x cu -c mambabyte_cuda.cuh -o mambabyte_cuda.o
     and link it (with -lcublas -lcudart -lstdc++) into a C program that
     compiles mambabyte.h's implementation (non-static: this file calls
     mb_config_validate, mb_tensor_index...).  The mb_cuda_* API is declared
     in mambabyte.h (section "CUDA"); without the macro this file adds nothing.

   WHAT RUNS WHERE
     Everything of a training step stays on the device: the batch bytes and
     targets go up, one float (the loss) comes back.  Parameters, gradients
     and AdamW moments are flat float32 blocks in checkpoint order (the same
     layout as mb_model_params), so upload/download are single copies.
     Each CPU function has a launcher of its name and signature on device
     pointers, directly below its kernels (mb__layernorm_forward ->
     layernorm_forward; mb__mixer_forward -> mixer_forward...); the CPU
     function is the specification (tests/test_cuda_emu.cpp checks each).

   PRECISION
     MB_PRECISION_FP32: cuBLAS with CUBLAS_COMPUTE_32F (no TF32).
     MB_PRECISION_BF16: the inputs of every matrix product (activations,
     gradients and a bf16 copy of the weights, refreshed after each update)
     are bf16, accumulation and outputs float32 (cublasGemmEx, compute 32F).
     MB_PRECISION_TF32: float32 storage, the matrix products on the tensor
     cores with TF32 inputs (CUBLAS_COMPUTE_32F_FAST_TF32, ~1e-3 relative).
     Master weights, gradients, AdamW state, LayerNorm, the scan state and
     the cross-entropy are float32 in all three.

   DETERMINISM
     No float atomics.  Every reduction (LayerNorm/conv/scan parameter
     gradients over tokens, dB/dC over channels, the loss mean, the gradient
     norm) writes per-block partials that a second kernel sums in a fixed
     order; the grids depend only on the problem size, never on the device.
     Two runs of the same step on the same GPU give bitwise-equal results
     (cuBLAS guarantees the same for one stream on one architecture).

   EMULATION
     With MB_CUDA_EMULATE defined (and tests/cuda_emu.h included first) the
     kernels, launchers and entry points compile as host C++ and run on the
     CPU through the launch emulator; device memory is host memory and the
     cuBLAS wrapper is a CPU product.  See docs/CUDA.md.

   ERRORS
     Every CUDA and cuBLAS call is checked; failures return
     MB_STATUS_CUDA_ERROR (or the mb_status that fits) and record
     "file:line: call: reason" with mb_set_error: mb_last_error() reads it.
     Host memory comes from MB_MALLOC / MB_FREE, as in mambabyte.h.

   LICENSE: MIT, as mambabyte.h.
*/
#ifndef MAMBABYTE_CUDA_CUH
#define MAMBABYTE_CUDA_CUH

#include "mambabyte.h"
#endif /* MAMBABYTE_CUDA_CUH */

/* ======================================================================= */
/*                             IMPLEMENTATION                              */
/* ======================================================================= */
#if defined(MAMBABYTE_CUDA_IMPLEMENTATION) && !defined(MB__CUDA_IMPLEMENTATION_DONE)
#define MB__CUDA_IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MB_CUDA_EMULATE
#ifndef CUDA_EMU_H
#error "MB_CUDA_EMULATE needs tests/cuda_emu.h included first"
#endif
#else
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

typedef __nv_bfloat16 mbc_bf16;
#ifndef MB_MALLOC /* host memory: override both here as in the C translation unit */
#define MB_MALLOC(n) malloc(n)
#define MB_FREE(p) free(p)
#endif

#define MBC_SCAN_MAX_CHUNK 64  /* scan chunk limit: rows of B/C staged in shared memory */
#define MBC_SCAN_MAX_STATE 64  /* d_state limit of the scan kernels */
#define MBC_SCAN_THREADS 128   /* channels per block of the forward scan kernels */
#define MBC_SCAN_BWD_WARPS 2   /* warps (32 channels each) per block of the scan backward */
#define MBC_SCAN_GROUP 16      /* states per pass of the scan backward */
#define MBC_SCAN_SEG 4         /* tokens per recomputed segment of the scan backward (h in registers) */
#define MBC_SMEM_BYTES (48 * 1024) /* shared memory per block without an opt-in */
#define MBC_MAX_D_MODEL (MBC_SMEM_BYTES / 8) /* the norm backward's 2C floats of one warp fit it */
#define MBC_MAX_TOKENS (2147483647 / 2) /* B*T: the products' int dimensions (cuBLAS), with a factor 2 to spare */
#define MBC_NORM_BLOCKS 256    /* fixed grid of the gradient-norm partials */
#ifdef MB_CUDA_EMULATE
#define MBC_BLAS_WORKSPACE 0
#else
#define MBC_BLAS_WORKSPACE (32 << 20) /* bytes of cuBLAS workspace (its recommendation for sm_90) */
#endif
#define MBC_LN_ROWS 64         /* rows per block of the LayerNorm backward */
#define MBC_CONV_TOKENS 64     /* tokens per thread (and per partial of dw) of the conv backward */
#define MBC_EMB_PIECE 64       /* rows per piece of the embedding backward (one block sums one piece) */
#define MBC_BUCKET_TABLE 514   /* int64s of the embedding's bucket table: bucket_off (257), piece_base (257) */

/* Kernel launch: <<<>>> on the GPU, the emulator on the host.  Launchers
   return an mb_status, so a launch error is reported with file and line. */
#ifdef MB_CUDA_EMULATE
#define MBC_UNROLL
/* static shared memory, counted by the emulator against the 48 KiB limit */
#define MBC_SHARED(type, name, dims) static type name dims; cuda_emu::note_static_smem(&name, sizeof name)
#define MBC_DYNAMIC_SHARED(T, name) T *name = (T *)cuda_emu::dynamic_smem()
#define MBC_LAUNCH(kernel, grid, block, smem, ...) cuda_emu::launch(kernel, grid, block, smem, __VA_ARGS__)
#else
#define MBC_UNROLL _Pragma("unroll")
#define MBC_SHARED(type, name, dims) __shared__ type name dims
#define MBC_DYNAMIC_SHARED(T, name) extern __shared__ float4 mbc__dyn_smem[]; T *name = (T *)mbc__dyn_smem
/* With MB_CUDA_SYNC=1 in the environment every launch is followed by a
   device synchronisation, so a fault is reported at the kernel that caused
   it (file, line and kernel name) instead of at a later copy. */
#define MBC_LAUNCH(kernel, grid, block, smem, ...)                                                    \
    do {                                                                                          \
        kernel<<<grid, block, smem, mbc::g_stream>>>(__VA_ARGS__);                                \
        MBC_CUDA(cudaGetLastError());                                                             \
        if (mbc::sync_each_launch()) MBC_CUDA_AT(cudaDeviceSynchronize(), #kernel);                 \
    } while (0)
#endif

/* ======================================================================= */
/*             platform layer: device memory, copies, GEMM                 */
/* ======================================================================= */
namespace mbc {

/* MB_CUDA_SYNC=1: synchronise and check after every launch (read once). */
static inline bool sync_each_launch() {
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("MB_CUDA_SYNC");
        mode = e && e[0] == '1' && e[1] == 0;
    }
    return mode == 1;
}

#define MBC_TRY(expr)                                      \
    do {                                                   \
        mb_status s_ = (expr);                             \
        if (s_ != MB_STATUS_OK) return s_;                 \
    } while (0)

#ifdef MB_CUDA_EMULATE
typedef void *blas_t;
#define MBC_CUDA(call) (void)0
static inline int device_count() { return 1; }
static inline mb_status device_check() { return MB_STATUS_OK; }
static inline mb_status dmalloc(void **p, size_t bytes, const char *what) {
    *p = cuda_emu::device_alloc(bytes); /* 256-byte aligned, as cudaMalloc */
    if (!*p) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "emulated device: %s (%zu bytes)", what, bytes);
    memset(*p, 0xFF, bytes); /* NaN: a read before a write shows */
    return MB_STATUS_OK;
}
static inline void dfree(void *p) { cuda_emu::device_free(p); }
/* Each copy, memset and GEMM counts as one stream operation (cuda_emu::g.ops)
   where it runs.  The blocking ones (h2d, d2h: pageable host memory, the
   host waits) may not be captured into a graph; the async ones (pinned host
   memory, read when the operation runs) and d2d/dzero may. */
typedef void *stream_t;
typedef cuda_emu::Graph *graph_t;
typedef void *event_t;
static thread_local stream_t g_stream = nullptr;
static inline mb_status h2d(void *d, const void *h, size_t bytes) {
    cuda_emu::host_sync("h2d (blocking copy)");
    cuda_emu::stream_op([=] { cuda_emu::g.ops.copies++; if (bytes) memcpy(d, h, bytes); });
    return MB_STATUS_OK;
}
static inline mb_status d2h(void *h, const void *d, size_t bytes) {
    cuda_emu::host_sync("d2h (blocking copy)");
    cuda_emu::stream_op([=] { cuda_emu::g.ops.copies++; if (bytes) memcpy(h, d, bytes); });
    return MB_STATUS_OK;
}
static inline mb_status d2d(void *d, const void *s, size_t bytes) {
    cuda_emu::stream_op([=] { cuda_emu::g.ops.copies++; if (bytes) memcpy(d, s, bytes); });
    return MB_STATUS_OK;
}
static inline mb_status dzero(void *d, size_t bytes) {
    cuda_emu::stream_op([=] { cuda_emu::g.ops.memsets++; if (bytes) memset(d, 0, bytes); });
    return MB_STATUS_OK;
}
static inline mb_status sync() { cuda_emu::host_sync("stream synchronize"); return MB_STATUS_OK; }
static inline void *hmalloc(size_t bytes) { return MB_MALLOC(bytes ? bytes : 1); }
static inline void hfree(void *p) { MB_FREE(p); }
static inline mb_status h2d_async(void *d, const void *h, size_t bytes) { return d2d(d, h, bytes); }
static inline mb_status d2h_async(void *h, const void *d, size_t bytes) { return d2d(h, d, bytes); }
static inline mb_status stream_create(stream_t *s) { *s = nullptr; return MB_STATUS_OK; }
static inline void stream_destroy(stream_t) {}
static inline mb_status event_create(event_t *e) { *e = nullptr; return MB_STATUS_OK; }
static inline void event_destroy(event_t) {}
static inline mb_status event_record(event_t) { return MB_STATUS_OK; }
static inline mb_status event_wait(event_t) { cuda_emu::host_sync("event synchronize"); return MB_STATUS_OK; }
static inline mb_status capture_begin() { cuda_emu::capture_begin(); return MB_STATUS_OK; }
static inline mb_status capture_end(graph_t *out) { *out = cuda_emu::capture_end(); return MB_STATUS_OK; }
static inline void capture_abort() { if (cuda_emu::g.capturing) cuda_emu::delete_graph(cuda_emu::capture_end()); }
static inline mb_status graph_launch(graph_t gr) { cuda_emu::launch_graph(gr); return MB_STATUS_OK; }
static inline void graph_free(graph_t gr) { if (gr) cuda_emu::delete_graph(gr); }
static inline mb_status blas_create(blas_t *h, stream_t = nullptr, void * = nullptr, size_t = 0) { *h = nullptr; return MB_STATUS_OK; }
static inline void blas_destroy(blas_t) {}
/* TF32 as the tensor cores take it: 10 mantissa bits, round to nearest,
   ties away from zero (cvt.rna.tf32.f32). */
static inline float tf32_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}
/* mode: an MB_PRECISION_*: FP32, BF16 (bf16 operands), TF32 (fp32 operands rounded to TF32) */
static inline float ld_elem(const void *p, int64_t i, int mode) {
    if (mode == MB_PRECISION_BF16) return __bfloat162float(((const mbc_bf16 *)p)[i]);
    const float f = ((const float *)p)[i];
    return mode == MB_PRECISION_TF32 ? tf32_round(f) : f;
}
/* Column-major C = alpha op(A) op(B) + beta C, cuBLAS's contract (C is not
   read when beta == 0), in double on the host. */
static inline void gemm_now(int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, const void *B,
                            int ldb, float beta, float *C, int ldc, int mode) {
    cuda_emu::g.ops.gemms++;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                const double a = ld_elem(A, ta ? p + (int64_t)i * lda : i + (int64_t)p * lda, mode);
                const double b = ld_elem(B, tb ? j + (int64_t)p * ldb : p + (int64_t)j * ldb, mode);
                s += a * b;
            }
            float *c = C + i + (int64_t)j * ldc;
            *c = beta == 0.0f ? (float)(alpha * s) : (float)(alpha * s + (double)beta * *c);
        }
}
static inline mb_status gemm(blas_t, int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, const void *B,
                      int ldb, float beta, float *C, int ldc, int mode, const char *, int) {
    cuda_emu::stream_op([=] { gemm_now(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, mode); });
    return MB_STATUS_OK;
}
#else
typedef cublasHandle_t blas_t;
#define MBC_CUDA(call)                                                                                        \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess)                                                                                \
            return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: %s: %s", __FILE__, __LINE__, #call,                \
                             cudaGetErrorString(e_));                                                         \
    } while (0)
#define MBC_CUDA_AT(call, what)                                                                               \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess)                                                                                \
            return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: %s after %s: %s", __FILE__, __LINE__, #call, what,  \
                             cudaGetErrorString(e_));                                                         \
    } while (0)
#define MBC_CUBLAS(call)                                                                                      \
    do {                                                                                                      \
        cublasStatus_t e_ = (call);                                                                           \
        if (e_ != CUBLAS_STATUS_SUCCESS)                                                                      \
            return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call,  \
                             (int)e_);                                                                        \
    } while (0)
static inline int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}
/* Why no GPU can be used, in CUDA's words (e.g. "CUDA driver version is
   insufficient for CUDA runtime version"), rather than a bare "no GPU". */
static inline mb_status device_check() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: %s (cudaGetDeviceCount: %s)", cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (n < 1) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: no CUDA device found");
    return MB_STATUS_OK;
}
static inline mb_status dmalloc(void **p, size_t bytes, const char *what) {
    *p = nullptr;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "%s:%d: cudaMalloc %s (%zu bytes): out of device memory", __FILE__,
                    __LINE__, what, bytes);
    }
    if (e != cudaSuccess) return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: cudaMalloc %s: %s", __FILE__, __LINE__, what, cudaGetErrorString(e));
    return MB_STATUS_OK;
}
static inline void dfree(void *p) { if (p) (void)cudaFree(p); }
/* Every operation goes to g_stream: the legacy default stream (0) unless
   an entry point put its own stream there (stream_scope: the trainer's,
   which graphs can be captured from).  The blocking copies wait for it. */
typedef cudaStream_t stream_t;
typedef cudaGraphExec_t graph_t;
typedef cudaEvent_t event_t;
static thread_local stream_t g_stream = 0;
static inline mb_status sync() { MBC_CUDA(cudaStreamSynchronize(g_stream)); return MB_STATUS_OK; }
static inline mb_status h2d(void *d, const void *h, size_t bytes) {
    MBC_CUDA(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, g_stream));
    return sync(); /* the caller may reuse h, pinned or not */
}
static inline mb_status d2h(void *h, const void *d, size_t bytes) {
    MBC_CUDA(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, g_stream));
    return sync();
}
static inline mb_status d2d(void *d, const void *s, size_t bytes) { MBC_CUDA(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, g_stream)); return MB_STATUS_OK; }
static inline mb_status dzero(void *d, size_t bytes) { MBC_CUDA(cudaMemsetAsync(d, 0, bytes, g_stream)); return MB_STATUS_OK; }
/* Pinned host memory, for the asynchronous copies: the batch upload, the
   update's scalars, the step's statistics read-back. */
static inline void *hmalloc(size_t bytes) {
    void *p = nullptr;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) { (void)cudaGetLastError(); return nullptr; }
    return p;
}
static inline void hfree(void *p) { if (p) (void)cudaFreeHost(p); }
static inline mb_status h2d_async(void *d, const void *h, size_t bytes) {
    MBC_CUDA(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, g_stream));
    return MB_STATUS_OK;
}
static inline mb_status d2h_async(void *h, const void *d, size_t bytes) {
    MBC_CUDA(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, g_stream));
    return MB_STATUS_OK;
}
static inline mb_status stream_create(stream_t *s) { MBC_CUDA(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking)); return MB_STATUS_OK; }
static inline void stream_destroy(stream_t s) { if (s) (void)cudaStreamDestroy(s); }
static inline mb_status event_create(event_t *e) { MBC_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming)); return MB_STATUS_OK; }
static inline void event_destroy(event_t e) { if (e) (void)cudaEventDestroy(e); }
static inline mb_status event_record(event_t e) { MBC_CUDA(cudaEventRecord(e, g_stream)); return MB_STATUS_OK; }
static inline mb_status event_wait(event_t e) { MBC_CUDA(cudaEventSynchronize(e)); return MB_STATUS_OK; }
/* Graphs: capture g_stream's operations (this thread's only), instantiate,
   replay.  A failed capture must still be ended (capture_abort). */
static inline mb_status capture_begin() { MBC_CUDA(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal)); return MB_STATUS_OK; }
static inline mb_status capture_end(graph_t *out) {
    cudaGraph_t gr = nullptr;
    *out = nullptr;
    MBC_CUDA(cudaStreamEndCapture(g_stream, &gr));
    const cudaError_t e = cudaGraphInstantiate(out, gr, 0);
    (void)cudaGraphDestroy(gr);
    if (e != cudaSuccess) { *out = nullptr; return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: cudaGraphInstantiate: %s", __FILE__, __LINE__, cudaGetErrorString(e)); }
    return MB_STATUS_OK;
}
static inline void capture_abort() {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(g_stream, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
        cudaGraph_t gr = nullptr;
        if (cudaStreamEndCapture(g_stream, &gr) == cudaSuccess && gr) (void)cudaGraphDestroy(gr);
    }
    (void)cudaGetLastError();
}
static inline mb_status graph_launch(graph_t gr) { MBC_CUDA(cudaGraphLaunch(gr, g_stream)); return MB_STATUS_OK; }
static inline void graph_free(graph_t gr) { if (gr) (void)cudaGraphExecDestroy(gr); }
/* A handle bound to one stream.  workspace: cuBLAS's scratch given up front,
   so a captured GEMM never asks for memory (set after the stream: setting a
   stream resets the workspace to cuBLAS's own). */
static inline mb_status blas_create(blas_t *h, stream_t s = 0, void *workspace = nullptr, size_t workspace_bytes = 0) {
    MBC_CUBLAS(cublasCreate(h));
    /* default math: with CUBLAS_COMPUTE_32F (every call below) no TF32 */
    MBC_CUBLAS(cublasSetMathMode(*h, CUBLAS_DEFAULT_MATH));
    MBC_CUBLAS(cublasSetStream(*h, s));
    if (workspace) MBC_CUBLAS(cublasSetWorkspace(*h, workspace, workspace_bytes));
    return MB_STATUS_OK;
}
static inline void blas_destroy(blas_t h) { if (h) (void)cublasDestroy(h); }
static inline mb_status gemm(blas_t h, int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, const void *B,
                      int ldb, float beta, float *C, int ldc, int mode, const char *file, int line) {
    const bool bf16 = mode == MB_PRECISION_BF16;
    const cudaDataType_t ty = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasStatus_t e = cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
                                    A, ty, lda, B, ty, ldb, &beta, C, CUDA_R_32F, ldc,
                                    mode == MB_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (e != CUBLAS_STATUS_SUCCESS)
        return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: cublasGemmEx(m=%d n=%d k=%d%s): cuBLAS status %d", file, line, m, n,
                    k, bf16 ? " bf16" : "", (int)e);
    if (sync_each_launch()) {
        cudaError_t se = cudaDeviceSynchronize();
        if (se != cudaSuccess)
            return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: cudaDeviceSynchronize after cublasGemmEx(m=%d n=%d k=%d): %s", file,
                        line, m, n, k, cudaGetErrorString(se));
    }
    return MB_STATUS_OK;
}
#endif

/* The stream the launchers use while an entry point runs. */
struct stream_scope {
    stream_t prev;
    explicit stream_scope(stream_t s) : prev(g_stream) { g_stream = s; }
    ~stream_scope() { g_stream = prev; }
};

static inline unsigned grid_for(int64_t n, int threads) {
    int64_t g = (n + threads - 1) / threads;
    if (g < 1) g = 1;
    if (g > 65536) g = 65536; /* kernels grid-stride beyond */
    return (unsigned)g;
}

/* ====================================================== device helpers */

__device__ __forceinline__ float sigmoidf_(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}
/* The same with a 2-ulp division (MUFU.RCP and a multiply): the scan's
   per-token gate, where the IEEE division's subroutine would cost more than
   the state loop of a token. */
__device__ __forceinline__ float sigmoid_fast_(float x) {
    if (x >= 0.0f) return __fdividef(1.0f, 1.0f + expf(-x));
    const float e = expf(x);
    return __fdividef(e, 1.0f + e);
}
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float siluf_(float x) { return x * sigmoidf_(x); }
__device__ __forceinline__ float silu_gradf_(float x) {
    float s = sigmoidf_(x);
    return s * (1.0f + x * (1.0f - s));
}

/* The reductions' operators: a + b, and max (b when greater, as fmaxf but NaN-blind). */
struct sum_op { template <class T> __device__ T operator()(T a, T b) const { return a + b; } };
struct max_op { template <class T> __device__ T operator()(T a, T b) const { return b > a ? b : a; } };
/* Over a full warp by xor shuffles: every lane gets the result. */
template <class Op, class T> __device__ __forceinline__ T warp_reduce(T v) {
    for (int o = 16; o > 0; o >>= 1) v = Op()(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide reduction (blockDim.x a multiple of 32, <= 1024) from id, Op's
   identity; every thread gets the result.  sh: 32 T of shared memory,
   reusable as soon as the call returns.  A fixed tree: deterministic. */
template <class Op, class T> __device__ __forceinline__ T block_reduce(T v, T *sh, T id) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_reduce<Op>(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    return warp_reduce<Op>(lane < nwarps ? sh[lane] : id);
}
/* Double sum over a block of exactly 256 threads through shared memory. */
__device__ __forceinline__ double block_sum_double256(double v, double *sh /* 256 */) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

/* ===================================================== utility kernels */

/* Sums of partials, widened and deterministic: blocks of (32, MBC_RED_Y)
   threads; threadIdx.x picks one of 32 consecutive outputs (coalesced),
   threadIdx.y sums the parts k = y, y + MBC_RED_Y, ... in order, and the
   MBC_RED_Y sums are added in y order.  Returns the total in thread y = 0
   (others: 0).  Every thread of the block must call it (one barrier). */
#define MBC_RED_Y 8
__device__ __forceinline__ float reduce_parts_2d(const float *part, int64_t ps, int64_t nparts, bool valid) {
    MBC_SHARED(float, sh, [MBC_RED_Y][32]);
    float s = 0.0f;
    if (valid)
        for (int64_t k = threadIdx.y; k < nparts; k += MBC_RED_Y) s += part[k * ps];
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    float t = 0.0f;
    if (threadIdx.y == 0)
        for (int y = 0; y < MBC_RED_Y; y++) t += sh[y][threadIdx.x];
    return t;
}

/* Two outputs of one partial buffer, in one launch: for i < n0,
   out0[i] += sum_p part[p*ps + i]; for n0 <= i < n0+n1, out1[i-n0] += the
   same (the LayerNorm's dw|db, the conv's dw|dbias).  Grid: one block of
   (32, MBC_RED_Y) per 32 outputs. */
__global__ void reduce_partials2_kernel(float *out0, int64_t n0, float *out1, int64_t n1, const float *part, int64_t ps,
                                        int64_t nparts) {
    const int64_t i = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const bool valid = i < n0 + n1;
    const float s = reduce_parts_2d(part + (valid ? i : 0), ps, nparts, valid);
    if (valid && threadIdx.y == 0) {
        if (i < n0) out0[i] += s;
        else out1[i - n0] += s;
    }
}

/* dst (rows, cols) contiguous bf16 = src (rows, cols; row stride lds). */
__global__ void convert_bf16_kernel(mbc_bf16 *dst, const float *src, int64_t rows, int64_t cols, int64_t lds) {
    const int64_t total = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[(i / cols) * lds + i % cols]);
}
static inline mb_status convert_bf16(mbc_bf16 *dst, const float *src, int64_t rows, int64_t cols, int64_t lds) {
    MBC_LAUNCH(convert_bf16_kernel, dim3(grid_for(rows * cols, 256)), dim3(256), 0, dst, src, rows, cols, lds);
    return MB_STATUS_OK;
}

/* mb__matmul_forward / _backward through cuBLAS.  Row-major (N,IC) @ (OC,IC)^T
   is, column-major, out(OC,N) = W^T(OC,IC) x inp(IC,N).  The *_b pointers are
   the bf16 copies used when bf16 != 0 (inp_b contiguous, ld IC). */
/* beta 1: out += (the residual add folded into the product). */
static inline mb_status matmul_forward(blas_t h, float *out, const float *inp, int64_t ldi, const float *w, int64_t N,
                                int IC, int OC, float beta = 0.0f, int mode = MB_PRECISION_FP32) {
    return gemm(h, 1, 0, OC, (int)N, IC, 1.0f, w, IC, inp, (int)ldi, beta, out, OC, mode, __FILE__, __LINE__);
}
/* dinp (row stride ldi) = beta_in * dinp + dout @ w ; dw += dout^T @ inp. */
static inline mb_status matmul_backward(blas_t h, float *dinp, float beta_in, float *dw, const float *dout, const float *inp,
                                 int64_t ldi, const float *w, int64_t N, int IC, int OC, int mode = MB_PRECISION_FP32) {
    if (dinp) MBC_TRY(gemm(h, 0, 0, IC, (int)N, OC, 1.0f, w, IC, dout, OC, beta_in, dinp, (int)ldi, mode, __FILE__, __LINE__));
    return gemm(h, 0, 1, IC, OC, (int)N, 1.0f, inp, (int)ldi, dout, OC, 1.0f, dw, IC, mode, __FILE__, __LINE__);
}

/* ===================================================== embedding */

/* mb__embedding_forward: out (N,C) = wte[tokens] */
__global__ void embedding_forward_kernel(float *out, const uint8_t *tokens, const float *wte, int64_t N, int C) {
    const int64_t total = N * C;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = i / C, c = i % C;
        out[i] = wte[(int64_t)tokens[n] * C + c];
    }
}
static inline mb_status embedding_forward(float *out, const uint8_t *tokens, const float *wte, int64_t N, int C) {
    MBC_LAUNCH(embedding_forward_kernel, dim3(grid_for(N * C, 256)), dim3(256), 0, out, tokens, wte, N, C);
    return MB_STATUS_OK;
}

/* mb__embedding_backward in two passes, so that a frequent byte (the space:
   ~2500 of 16384 rows) is not one serial chain.  bucket_table holds
   bucket_off[0..256] then piece_base[0..256]: byte v's rows are
   bucket_rows[bucket_off[v] .. bucket_off[v+1]) (increasing), cut into
   pieces of MBC_EMB_PIECE rows; piece p of v has the step-wide number
   piece_base[v] + p.  The layout comes from the offsets alone, so the sum's
   order is fixed whatever the device. */

/* Pass 1: block b sums piece b's rows in token order into part[b*C ..].
   The grid (embedding_pieces_max) depends only on N, not on the counts, so
   blocks beyond the last piece exit; so do the pieces of one-piece bytes,
   which pass 2 adds directly. */
__global__ void embedding_backward_pieces_kernel(float *part, const float *dout, const int64_t *bucket_table,
                                                 const int64_t *bucket_rows, int C) {
    const int64_t *bucket_off = bucket_table, *piece_base = bucket_table + 257;
    const int64_t piece = blockIdx.x;
    if (piece >= piece_base[256]) return;
    int lo = 0, hi = 256; /* the byte v with piece_base[v] <= piece < piece_base[v+1] */
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (piece_base[mid] <= piece) lo = mid;
        else hi = mid;
    }
    const int v = lo;
    if (piece_base[v + 1] - piece_base[v] < 2) return;
    const int64_t k0 = bucket_off[v] + (piece - piece_base[v]) * MBC_EMB_PIECE;
    const int64_t k1 = k0 + MBC_EMB_PIECE < bucket_off[v + 1] ? k0 + MBC_EMB_PIECE : bucket_off[v + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int64_t k = k0; k < k1; k++) acc += dout[bucket_rows[k] * C + c];
        part[piece * C + c] = acc;
    }
}

/* Pass 2: one block per byte value: dwte[v] + its pieces' partials in piece
   order.  A byte of at most one piece adds its rows directly, in the CPU's
   order, so rare bytes stay bitwise equal to the CPU; a frequent byte agrees
   to float rounding. */
__global__ void embedding_backward_kernel(float *dwte, const float *part, const float *dout,
                                          const int64_t *bucket_table, const int64_t *bucket_rows, int C) {
    const int64_t *bucket_off = bucket_table, *piece_base = bucket_table + 257;
    const int v = blockIdx.x;
    const int64_t p0 = piece_base[v], p1 = piece_base[v + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dwte[(int64_t)v * C + c];
        if (p1 - p0 < 2)
            for (int64_t k = bucket_off[v]; k < bucket_off[v + 1]; k++) acc += dout[bucket_rows[k] * C + c];
        else
            for (int64_t p = p0; p < p1; p++) acc += part[p * C + c];
        dwte[(int64_t)v * C + c] = acc;
    }
}
/* The pass-1 grid: an upper bound of the pieces from N alone (the counts are
   not known where the launch is recorded): sum_v ceil(count_v / PIECE) <=
   N / PIECE + 256.  The scratch holds one partial row (C floats) each. */
static inline int64_t embedding_pieces_max(int64_t N) { return (N + MBC_EMB_PIECE - 1) / MBC_EMB_PIECE + 256; }
/* scratch: embedding_pieces_max(N) * C floats. */
static inline mb_status embedding_backward(float *dwte, float *scratch, const float *dout, const int64_t *bucket_table,
                                           const int64_t *bucket_rows, int64_t N, int C) {
    const int threads = C >= 256 ? 256 : ((C + 31) / 32) * 32;
    const int64_t pieces = embedding_pieces_max(N);
    if (pieces > 2147483647) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "embedding backward: N %lld too large", (long long)N);
    MBC_LAUNCH(embedding_backward_pieces_kernel, dim3((unsigned)pieces), dim3(threads), 0, scratch, dout, bucket_table,
               bucket_rows, C);
    MBC_LAUNCH(embedding_backward_kernel, dim3(256), dim3(threads), 0, dwte, (const float *)scratch, dout, bucket_table,
               bucket_rows, C);
    return MB_STATUS_OK;
}
/* Host side of the embedding backward: a stable counting sort of the
   tokens by byte value and the piece numbering.  table: MBC_BUCKET_TABLE
   (bucket_off[257], then piece_base[257], the prefix sum of each byte's
   ceil(count / MBC_EMB_PIECE)); rows: N. */
static inline void token_buckets(int64_t *table, int64_t *rows, const uint8_t *tokens, int64_t N) {
    int64_t cnt[257];
    memset(cnt, 0, sizeof cnt);
    for (int64_t n = 0; n < N; n++) cnt[tokens[n] + 1]++;
    for (int v = 0; v < 256; v++) cnt[v + 1] += cnt[v];
    memcpy(table, cnt, sizeof cnt);
    int64_t *piece_base = table + 257;
    piece_base[0] = 0;
    for (int v = 0; v < 256; v++)
        piece_base[v + 1] = piece_base[v] + (cnt[v + 1] - cnt[v] + MBC_EMB_PIECE - 1) / MBC_EMB_PIECE;
    for (int64_t n = 0; n < N; n++) rows[cnt[tokens[n]]++] = n;
}

/* ===================================================== layernorm */

/* mb__layernorm_forward: one warp per row, two passes (mean, then the
   centred variance) as the CPU, eps 1e-5.  RMS: mb__rmsnorm_forward (no
   mean, no bias: b and mean unused), the same operations as the CPU's.
   out_bf (optional): out in bf16 as well, the next product's input. */
template <bool rms>
__global__ void norm_forward_kernel(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                    const float *b, int64_t N, int C, float *copy, mbc_bf16 *out_bf) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return; /* whole warps leave together: no block barrier here */
    const float *x = inp + row * C;
    float s = 0.0f;
    if (!rms)
        for (int c = lane; c < C; c += 32) s += x[c];
    const float m = rms ? 0.0f : warp_reduce<sum_op>(s) / (float)C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = rms ? x[c] : x[c] - m;
        v += d * d;
    }
    v = warp_reduce<sum_op>(v) / (float)C;
    const float r = 1.0f / sqrtf(v + 1e-5f);
    float *o = out + row * C;
    if (rms)
        for (int c = lane; c < C; c += 32) o[c] = x[c] * r * w[c];
    else
        for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * r * w[c] + b[c];
    if (out_bf)
        for (int c = lane; c < C; c += 32) out_bf[row * C + c] = __float2bfloat16_rn(o[c]);
    if (copy) /* the residual stream's next buffer, so no separate copy */
        for (int c = lane; c < C; c += 32) copy[row * C + c] = x[c];
    if (lane == 0) {
        if (!rms) mean[row] = m;
        rstd[row] = r;
    }
}
/* copy (optional): also copy inp there (the residual for the next layer). */
static inline mb_status layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                                          int64_t N, int C, float *copy = nullptr, mbc_bf16 *out_bf = nullptr) {
    MBC_LAUNCH(norm_forward_kernel<false>, dim3((unsigned)((N + 7) / 8)), dim3(256), 0, out, mean, rstd, inp, w, b, N, C, copy, out_bf);
    return MB_STATUS_OK;
}
static inline mb_status rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int64_t N, int C,
                                        float *copy = nullptr, mbc_bf16 *out_bf = nullptr) {
    MBC_LAUNCH(norm_forward_kernel<true>, dim3((unsigned)((N + 7) / 8)), dim3(256), 0, out, (float *)nullptr, rstd, inp, w,
               (const float *)nullptr, N, C, copy, out_bf);
    return MB_STATUS_OK;
}

/* mb__layernorm_backward, part 1: dinp += per row (one warp per row); the
   dw/db sums of MBC_LN_ROWS rows go to part[blockIdx.x] (2C floats: dw then
   db), each warp accumulating its rows in shared memory, then summed over
   warps in order.  Dynamic shared memory: nwarps * 2C floats.  RMS:
   mb__rmsnorm_backward (mean unused, no mean term; the db half stays 0). */
template <bool rms>
__global__ void norm_backward_kernel(float *dinp, float *part, const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int64_t N, int C, int overwrite) {
    MBC_DYNAMIC_SHARED(float, acc);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float *my = acc + (int64_t)warp * 2 * C;
    for (int c = lane; c < 2 * C; c += 32) my[c] = 0.0f;
    /* my[C + c] is zeroed by lane (C + c) % 32 but accumulated by lane c % 32
       (different lanes when C % 32 != 0): order the two within the warp */
    __syncwarp();
    const int64_t r0 = (int64_t)blockIdx.x * MBC_LN_ROWS;
    for (int k = warp; k < MBC_LN_ROWS; k += nwarps) {
        const int64_t row = r0 + k;
        if (row >= N) break;
        const float *x = inp + row * C, *g = dout + row * C;
        const float m = rms ? 0.0f : mean[row], s = rstd[row];
        float dm = 0.0f, dnm = 0.0f;
        for (int c = lane; c < C; c += 32) {
            float xhat = (rms ? x[c] : x[c] - m) * s, dn = w[c] * g[c];
            dm += dn;
            dnm += dn * xhat;
        }
        dm = warp_reduce<sum_op>(dm) / (float)C;
        dnm = warp_reduce<sum_op>(dnm) / (float)C;
        float *dx = dinp + row * C;
        for (int c = lane; c < C; c += 32) {
            float xhat = (rms ? x[c] : x[c] - m) * s, dn = w[c] * g[c];
            const float v = (rms ? dn - xhat * dnm : dn - dm - xhat * dnm) * s;
            dx[c] = overwrite ? v : dx[c] + v;
            my[c] += xhat * g[c];
            if (!rms) my[C + c] += g[c];
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < nwarps; k++) s += acc[(int64_t)k * 2 * C + c];
        part[(int64_t)blockIdx.x * 2 * C + c] = s;
    }
}
static inline int ln_backward_warps(int C) {
    int w = (int)(MBC_SMEM_BYTES / ((int64_t)8 * C)); /* nwarps * 2C floats fit the shared memory */
    return w > 8 ? 8 : (w < 1 ? 1 : w);
}
static inline int64_t ln_backward_parts(int64_t N) { return (N + MBC_LN_ROWS - 1) / MBC_LN_ROWS; }
/* scratch: ln_backward_parts(N) * 2C floats; overwrite: dinp = instead of
   += (a first writer needs no memset).  RMSNorm: db and mean unused. */
template <bool rms>
static inline mb_status norm_backward_(float *dinp, float *dw, float *db, float *scratch, const float *dout, const float *inp,
                                       const float *w, const float *mean, const float *rstd, int64_t N, int C, bool overwrite) {
    const int64_t parts = ln_backward_parts(N);
    const int warps = ln_backward_warps(C);
    if (parts > 2147483647) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "norm backward: N %lld too large", (long long)N);
    MBC_LAUNCH(norm_backward_kernel<rms>, dim3((unsigned)parts), dim3(32 * warps), (size_t)warps * 2 * C * sizeof(float),
               dinp, scratch, dout, inp, w, mean, rstd, N, C, (int)overwrite);
    const int64_t nout = rms ? C : 2 * C; /* RMSNorm: only the dw half */
    MBC_LAUNCH(reduce_partials2_kernel, dim3((unsigned)((nout + 31) / 32)), dim3(32, MBC_RED_Y), 0, dw, (int64_t)C, db,
               nout - C, (const float *)scratch, (int64_t)2 * C, parts);
    return MB_STATUS_OK;
}
static inline mb_status layernorm_backward(float *dinp, float *dw, float *db, float *scratch, const float *dout, const float *inp,
                                           const float *w, const float *mean, const float *rstd, int64_t N, int C,
                                           bool overwrite = false) {
    return norm_backward_<false>(dinp, dw, db, scratch, dout, inp, w, mean, rstd, N, C, overwrite);
}
static inline mb_status rmsnorm_backward(float *dinp, float *dw, float *scratch, const float *dout, const float *inp,
                                         const float *w, const float *rstd, int64_t N, int C, bool overwrite = false) {
    return norm_backward_<true>(dinp, dw, nullptr, scratch, dout, inp, w, nullptr, rstd, N, C, overwrite);
}
/* mb__norm_forward / _backward: the config's norm. */
static inline mb_status norm_forward(const mb_config *c, float *out, float *mean, float *rstd, const float *inp, const float *w,
                                     const float *b, int64_t N, int C, float *copy = nullptr, mbc_bf16 *out_bf = nullptr) {
    if (c->norm == MB_NORM_RMSNORM) return rmsnorm_forward(out, rstd, inp, w, N, C, copy, out_bf);
    return layernorm_forward(out, mean, rstd, inp, w, b, N, C, copy, out_bf);
}
static inline mb_status norm_backward(const mb_config *c, float *dinp, float *dw, float *db, float *scratch, const float *dout,
                                      const float *inp, const float *w, const float *mean, const float *rstd, int64_t N, int C,
                                      bool overwrite) {
    if (c->norm == MB_NORM_RMSNORM) return rmsnorm_backward(dinp, dw, scratch, dout, inp, w, rstd, N, C, overwrite);
    return layernorm_backward(dinp, dw, db, scratch, dout, inp, w, mean, rstd, N, C, overwrite);
}

/* ===================================================== conv1d */

/* x'[t-(K-1)+k] . w + bias for token (b, t) = flat token bt, channel d; the
   taps before t = 0 from win (the rows' carried windows, (B, K, Di), as
   mb__conv1d_forward_from's), skipped when NULL. */
template <int KT>
__device__ __forceinline__ float conv_pre(const float *xz, const float *win, const float *w, const float *bias, int64_t bt,
                                          int T, int d, int Di, int Kdyn) {
    const int K = KT > 0 ? KT : Kdyn, t = (int)(bt % T);
    float pre = bias[d];
    for (int k = 0; k < K; k++) {
        const int ts = t - (K - 1) + k;
        if (ts >= 0) pre += w[(int64_t)d * K + k] * xz[(bt - t + ts) * 2 * Di + d];
        else if (win) pre += w[(int64_t)d * K + k] * win[(bt / T * K + K + ts) * Di + d];
    }
    return pre;
}

/* mb__conv1d_forward_from: out (B,T,Di) = silu(causal depthwise conv of x'),
   from win (NULL: zeros).  KT is the kernel width when known at compile time
   (4), else 0.  out_bf (optional): out in bf16 as well, the next product's input. */
template <int KT>
__global__ void conv1d_forward_kernel(float *out, const float *xz, const float *win, const float *w, const float *bias,
                                      int B, int T, int Di, int K, mbc_bf16 *out_bf) {
    const int64_t total = (int64_t)B * T * Di;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t bt = i / Di;
        const float v = siluf_(conv_pre<KT>(xz, win, w, bias, bt, T, (int)(i % Di), Di, K));
        out[i] = v;
        if (out_bf) out_bf[i] = __float2bfloat16_rn(v);
    }
}
static inline mb_status conv1d_forward(float *out, const float *xz, const float *w, const float *bias, int B, int T, int Di,
                                int K, mbc_bf16 *out_bf = nullptr, const float *win = nullptr) {
    const dim3 g(grid_for((int64_t)B * T * Di, 256));
    if (K == 4) MBC_LAUNCH(conv1d_forward_kernel<4>, g, dim3(256), 0, out, xz, win, w, bias, B, T, Di, K, out_bf);
    else MBC_LAUNCH(conv1d_forward_kernel<0>, g, dim3(256), 0, out, xz, win, w, bias, B, T, Di, K, out_bf);
    return MB_STATUS_OK;
}

/* mb__conv1d_backward in one pass: one thread per (channel d, part of
   MBC_CONV_TOKENS flat tokens, blockIdx.y).  dpre[t] = dout[t] silu'(pre[t])
   is computed once per token (and for the K-1 tokens past the part, which
   the part's last dx need), kept in a window win[j] = dpre[s+j].  The x'
   columns of dxz: dx[s] (+)= sum over j < K with t_s + j < T of
   dpre[s+j] w[d, K-1-j], in increasing j as the CPU (overwrite: from 0).
   dw (Di,K) and dbias (Di) summed over the part's tokens into
   part[blockIdx.y * Di*(K+1)]: dw (Di*K) then dbias (Di), reduced in part
   order by the caller.  KT is the kernel width when known (4), else 0.
   cw: the forward's win (its taps add to dw only). */
template <int KT>
__global__ void conv1d_backward_kernel(float *dxz, float *part, const float *dout, const float *xz, const float *cw,
                                       const float *w, const float *bias, int B, int T, int Di, int K, int overwrite) {
    const int KK = KT > 0 ? KT : K;
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= Di) return;
    const int64_t N = (int64_t)B * T, n0 = (int64_t)blockIdx.y * MBC_CONV_TOKENS;
    const int64_t n1 = n0 + MBC_CONV_TOKENS < N ? n0 + MBC_CONV_TOKENS : N;
    float win[KT > 0 ? KT : MB_MAX_CONV], dw[KT > 0 ? KT : MB_MAX_CONV];
    float db = 0.0f;
    for (int k = 0; k < KK; k++) dw[k] = 0.0f;
    for (int j = 0; j + 1 < KK; j++) {
        const int64_t bt = n0 + j;
        win[j] = bt < N ? dout[bt * Di + d] * silu_gradf_(conv_pre<KT>(xz, cw, w, bias, bt, T, d, Di, K)) : 0.0f;
    }
    for (int64_t s = n0; s < n1; s++) {
        const int64_t bl = s + KK - 1;
        win[KK - 1] = bl < N ? dout[bl * Di + d] * silu_gradf_(conv_pre<KT>(xz, cw, w, bias, bl, T, d, Di, K)) : 0.0f;
        const int ts = (int)(s % T);
        float *dx = dxz + s * 2 * Di + d;
        float acc = overwrite ? 0.0f : *dx;
        for (int j = 0; j < KK; j++) {
            if (ts + j >= T) break;
            acc += win[j] * w[(int64_t)d * KK + (KK - 1 - j)];
        }
        *dx = acc;
        const float dp = win[0]; /* this token's own dpre: the parameter sums */
        db += dp;
        for (int k = 0; k < KK; k++) {
            const int tk = ts - (KK - 1) + k;
            if (tk >= 0) dw[k] += dp * xz[(s - ts + tk) * 2 * Di + d];
            else if (cw) dw[k] += dp * cw[(s / T * KK + KK + tk) * Di + d];
        }
        for (int j = 0; j + 1 < KK; j++) win[j] = win[j + 1];
    }
    float *p = part + (int64_t)blockIdx.y * Di * (KK + 1);
    for (int k = 0; k < KK; k++) p[(int64_t)d * KK + k] = dw[k];
    p[(int64_t)Di * KK + d] = db;
}
static inline int64_t conv_backward_parts(int B, int T) { return ((int64_t)B * T + MBC_CONV_TOKENS - 1) / MBC_CONV_TOKENS; }
/* scratch: conv_backward_parts(B,T) * Di * (K+1) floats. */
/* overwrite: the x' columns of dxz = instead of +=; win: the forward's. */
static inline mb_status conv1d_backward(float *dxz, float *dw, float *dbias, float *scratch, const float *dout,
                                 const float *xz, const float *w, const float *bias, int B, int T, int Di, int K,
                                 bool overwrite = false, const float *win = nullptr) {
    const int64_t parts = conv_backward_parts(B, T);
    const dim3 gw((unsigned)((Di + 127) / 128), (unsigned)parts);
    if (parts > 65535) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "conv1d backward: B*T %lld too large", (long long)B * T);
    if (K == 4)
        MBC_LAUNCH(conv1d_backward_kernel<4>, gw, dim3(128), 0, dxz, scratch, dout, xz, win, w, bias, B, T, Di, K, (int)overwrite);
    else
        MBC_LAUNCH(conv1d_backward_kernel<0>, gw, dim3(128), 0, dxz, scratch, dout, xz, win, w, bias, B, T, Di, K, (int)overwrite);
    const int64_t ps = (int64_t)Di * (K + 1);
    MBC_LAUNCH(reduce_partials2_kernel, dim3((unsigned)((ps + 31) / 32)), dim3(32, MBC_RED_Y), 0, dw, (int64_t)Di * K,
               dbias, (int64_t)Di, (const float *)scratch, ps, parts);
    return MB_STATUS_OK;
}

/* Streaming conv step (mb_stream_step): shift the window of K inputs, append
   x', conv, SiLU.  state (Di, K). */
__global__ void conv1d_step_kernel(float *u, float *state, const float *xz, const float *w, const float *bias, int Di,
                                   int K) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= Di) return;
    float *s = state + (int64_t)d * K, pre = bias[d];
    for (int k = 0; k + 1 < K; k++) s[k] = s[k + 1];
    s[K - 1] = xz[d];
    for (int k = 0; k < K; k++) pre += w[(int64_t)d * K + k] * s[k];
    u[d] = siluf_(pre);
}
static inline mb_status conv1d_step(float *u, float *state, const float *xz, const float *w, const float *bias, int Di, int K) {
    MBC_LAUNCH(conv1d_step_kernel, dim3((unsigned)((Di + 127) / 128)), dim3(128), 0, u, state, xz, w, bias, Di, K);
    return MB_STATUS_OK;
}

/* Carried state (mb_model_set_carry): win (B, K, Di) into conv_in (the
   step's window, which the conv reads), then win = the last K inputs of
   (conv_in, x'_0 .. x'_{T-1}), the next step's.  One thread per (b, d). */
__global__ void conv1d_carry_kernel(float *win, float *conv_in, const float *xz, int B, int T, int Di, int K) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)B * Di; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / Di, d = i % Di;
        float *wb = win + b * K * Di + d, *cb = conv_in + b * K * Di + d;
        for (int k = 0; k < K; k++) cb[(int64_t)k * Di] = wb[(int64_t)k * Di];
        for (int k = 0; k < K; k++)
            wb[(int64_t)k * Di] = T - K + k >= 0 ? xz[(b * T + T - K + k) * 2 * Di + d] : cb[(int64_t)(T + k) * Di];
    }
}
static inline mb_status conv1d_carry(float *win, float *conv_in, const float *xz, int B, int T, int Di, int K) {
    MBC_LAUNCH(conv1d_carry_kernel, dim3(grid_for((int64_t)B * Di, 128)), dim3(128), 0, win, conv_in, xz, B, T, Di, K);
    return MB_STATUS_OK;
}

/* ===================================================== selective scan
   One thread per (sequence b, channel d, chunk c): the d_state states of the
   channel live in registers, so the per-(token, channel) work (softplus(dt),
   dt*u, SiLU(z), the loads of u, delta, z and dout) is done once and the
   inner loop over the states is a few FMUL/FFMA and one MUFU.EX2.  The
   decay is exp2(dt * A2) with A2 = A * log2(e) = -exp(A_log) * log2(e)
   computed once per (channel, state).  A block holds MBC_SCAN_THREADS
   channels of one (chunk, sequence): blockIdx.x picks the channels,
   blockIdx.y the chunk, blockIdx.z the sequence.  B_t and C_t are the same
   for every channel of a token, so a block stages its chunk's rows of them
   in shared memory, padded with zeros to NS (a multiple of 16 >= S): a
   padded state has A2 = 0, B = C = 0 and h = 0, so it stays 0 and adds
   nothing, and the inner loops need no guard.

   Forward:  (1) scan_chunk_state_kernel: each chunk c < nch-1 from h = 0
   writes h_end into states[c+1] and sdt[c] = sum of dt over the chunk (the
   chunk's decay is exp2(A2 * sdt)); (2) scan_carry_kernel, in place:
   states[c+1] = exp2(A2 sdt[c]) states[c] + states[c+1], the associative
   operator (a,b).(a',b') = (aa', a'b + b') over chunks, states[0] = 0 or a
   carried state (truncated BPTT: no gradient flows into it); (3)
   scan_forward_kernel: each chunk again from its true start state, with
   D*u and the SiLU(z) gate fused, writing the gated output.

   Backward mirrors it with the adjoint g_t = a_{t+1} g_{t+1} + dy_t C_t:
   (1) scan_chunk_grad_kernel: per chunk c >= 1 from g = 0 at its end, the
   adjoint handed to chunk c-1 (into gin[c-1]) and sdt[c]; (2)
   scan_carry_grad_kernel, in place: gin[c-1] += exp2(A2 sdt[c]) gin[c];
   (3) scan_backward_kernel: per chunk, 16 states at a time, h is
   recomputed from the saved chunk start (checkpoints every MBC_SCAN_SEG
   tokens, then each segment again into registers) and walked backwards with
   the adjoint in registers.  The sums over channels (dB, dC) are a 32x32
   transpose in shared memory per warp (lane j sums column j in lane
   order), written as partials per (token, warp of channels); dA_log, dD
   and the dt bias gradient are partials per (b, chunk).  One reduce kernel
   adds all partials in index order: deterministic, no atomics. */

#define MBC_LOG2E 1.44269504088896340736f
#define MBC_LN2 0.69314718055994530942f

/* The decay rate of state j in log2 units: A2 = A log2(e), A = -exp(A_log), so exp2(dt A2) = exp(dt A) <= 1. */
__device__ __forceinline__ float scan_A2(const float *A_log, int64_t j) { return -expf(A_log[j]) * MBC_LOG2E; }
/* 2^x: one MUFU.EX2 on the GPU (ex2.approx, ~2 ulp, subnormal results
   flushed to zero: a decay that small is zero for the scan). */
__device__ __forceinline__ float exp2_(float x) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return exp2f(x);
#endif
}

struct scan_ctx {
    int T, Di, S, R, X, chunk, nch;
};
static inline scan_ctx make_scan_ctx(int T, int Di, int S, int R, int chunk) {
    scan_ctx k;
    k.T = T; k.Di = Di; k.S = S; k.R = R; k.X = R + 2 * S; k.chunk = chunk;
    k.nch = (T + chunk - 1) / chunk;
    return k;
}
static inline mb_status scan_check(int B, int T, int Di, int S, int chunk) {
    if (S < 1 || S > MBC_SCAN_MAX_STATE) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA scan: d_state %d (must be 1..%d)", S, MBC_SCAN_MAX_STATE);
    if (chunk < 1 || chunk > MBC_SCAN_MAX_CHUNK) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA scan: chunk %d (must be 1..%d)", chunk, MBC_SCAN_MAX_CHUNK);
    if (B > 65535 || (T + chunk - 1) / chunk > 65535 || T < 1 || Di < 1)
        return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA scan: B %d, T %d, Di %d out of the grid's range", B, T, Di);
    return MB_STATUS_OK;
}
static inline int scan_bwd_warps(int Di) { /* warps of 32 channels over the backward grid */
    const int per = 32 * MBC_SCAN_BWD_WARPS;
    return ((Di + per - 1) / per) * MBC_SCAN_BWD_WARPS;
}
/* Scan scratch in floats: forward B*nch*Di (sdt); backward B*nch*Di*S (gin)
   + B*nch*Di (sdt) + B*nch*(Di*S + 2Di) (parameter partials) + B*T*nw*2S
   (dB/dC partials, nw warps of channels). */
static inline int64_t scan_scratch_floats(int B, int T, int Di, int S, int chunk) {
    const int64_t nch = (T + chunk - 1) / chunk, npc = (int64_t)B * nch, DS = (int64_t)Di * S;
    return npc * DS + npc * Di + npc * (DS + 2 * Di) + (int64_t)B * T * scan_bwd_warps(Di) * 2 * S;
}

/* NS: the register width of the state arrays, a multiple of 16 >= S. */
#define MBC_SCAN_DISPATCH(S, KERNEL, ...)                                                                   \
    do {                                                                                                     \
        if ((S) <= 16) MBC_LAUNCH(KERNEL<16>, __VA_ARGS__);                                                  \
        else if ((S) <= 32) MBC_LAUNCH(KERNEL<32>, __VA_ARGS__);                                             \
        else MBC_LAUNCH(KERNEL<64>, __VA_ARGS__);                                                            \
    } while (0)

/* Four consecutive floats of a 16-byte aligned shared row: one LDS.128. */
__device__ __forceinline__ void ld4(float *v, const float *p) {
    const float4 q = *(const float4 *)p;
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}

/* Rows t0..t0+len of B (and C when BC) into s[t][0..NS) (and s[t][NS..2NS)),
   zero beyond S.  Called by every thread of the block. */
template <int NS, int W>
__device__ __forceinline__ void scan_stage(float (*s)[W], const float *xdbl, int64_t tok0, int len, int s0, bool BC,
                                           const scan_ctx &k) {
    const int cols = BC ? 2 * NS : NS;
    for (int i = threadIdx.x; i < len * cols; i += blockDim.x) {
        const int t = i / cols, j = i % cols, half = j / NS, n = s0 + j % NS;
        s[t][j] = n < k.S ? xdbl[(tok0 + t) * k.X + k.R + half * k.S + n] : 0.0f;
    }
}

/* (1) per chunk c < nch-1: h_end from h = 0 into states[c+1], sdt[b,c,d]. */
template <int NS>
__global__ void __launch_bounds__(MBC_SCAN_THREADS) scan_chunk_state_kernel(float *states, float *sdt, const float *u,
                                        const float *delta, const float *dt_bias, const float *A_log,
                                        const float *xdbl, scan_ctx k) {
    MBC_SHARED(__align__(16) float, sb, [MBC_SCAN_MAX_CHUNK][NS]);
    const int d = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y, b = blockIdx.z;
    const int t0 = c * k.chunk, len = t0 + k.chunk < k.T ? k.chunk : k.T - t0;
    const int64_t tok0 = (int64_t)b * k.T + t0;
    scan_stage<NS>(sb, xdbl, tok0, len, 0, false, k);
    __syncthreads();
    if (d >= k.Di) return; /* no barrier after this */
    float A2[NS], h[NS];
MBC_UNROLL
    for (int n = 0; n < NS; n++) {
        A2[n] = n < k.S ? scan_A2(A_log, (int64_t)d * k.S + n) : 0.0f;
        h[n] = 0.0f;
    }
    const float bias = dt_bias[d];
    float sd = 0.0f;
    for (int i = 0; i < len; i++) {
        const int64_t tok = tok0 + i;
        const float dt = softplusf_(delta[tok * k.Di + d] + bias), dtu = dt * u[tok * k.Di + d];
        sd += dt;
MBC_UNROLL
        for (int q = 0; q < NS / 4; q++) {
            float bq[4];
            ld4(bq, &sb[i][4 * q]);
MBC_UNROLL
            for (int e = 0; e < 4; e++) h[4 * q + e] = exp2_(dt * A2[4 * q + e]) * h[4 * q + e] + dtu * bq[e];
        }
    }
    float *st = states + (((int64_t)b * k.nch + c + 1) * k.Di + d) * k.S;
MBC_UNROLL
    for (int n = 0; n < NS; n++)
        if (n < k.S) st[n] = h[n];
    sdt[((int64_t)b * k.nch + c) * k.Di + d] = sd;
}

/* (2) in place: states[b,c+1] = exp2(A2 sdt[b,c]) states[b,c] + states[b,c+1]
   for c = 0..nch-2, from states[b,0] = h0[b] (a carried state, (B, S, Di),
   which it writes there) or 0 (NULL: scan_forward_kernel writes it). */
__global__ void scan_carry_kernel(float *states, const float *sdt, const float *A_log, const float *h0, int B, scan_ctx k) {
    const int64_t DS = (int64_t)k.Di * k.S, total = (int64_t)B * DS;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / DS, j = i % DS, d = j / k.S, base = b * k.nch * DS + j;
        const float A2 = scan_A2(A_log, j);
        float h = h0 ? h0[(b * k.S + j % k.S) * k.Di + d] : 0.0f;
        if (h0) states[base] = h;
        for (int c = 0; c + 1 < k.nch; c++) {
            h = exp2_(A2 * sdt[(b * k.nch + c) * k.Di + d]) * h + states[base + (c + 1) * DS];
            states[base + (c + 1) * DS] = h;
        }
    }
}

/* (3) mb__scan_forward_from's output: out = (C.h + D u) * silu(z), chunk c
   from states[c] (chunk 0 from zero, which it writes to states[b,0], unless
   a carried state h (B, S, Di) is given: the last chunk leaves its end there). */
template <int NS>
__global__ void __launch_bounds__(MBC_SCAN_THREADS) scan_forward_kernel(float *out, float *states, float *hc, const float *u,
                                    const float *delta, const float *dt_bias, const float *A_log,
                                    const float *xdbl, const float *Dp, const float *xz, scan_ctx k,
                                    mbc_bf16 *out_bf) {
    MBC_SHARED(__align__(16) float, sbc, [MBC_SCAN_MAX_CHUNK][2 * NS]);
    const int d = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y, b = blockIdx.z;
    const int t0 = c * k.chunk, len = t0 + k.chunk < k.T ? k.chunk : k.T - t0;
    const int64_t tok0 = (int64_t)b * k.T + t0;
    scan_stage<NS>(sbc, xdbl, tok0, len, 0, true, k);
    __syncthreads();
    if (d >= k.Di) return;
    float A2[NS], h[NS];
    float *st = states + (((int64_t)b * k.nch + c) * k.Di + d) * k.S;
MBC_UNROLL
    for (int n = 0; n < NS; n++) {
        A2[n] = n < k.S ? scan_A2(A_log, (int64_t)d * k.S + n) : 0.0f;
        h[n] = n < k.S && (c > 0 || hc) ? st[n] : 0.0f;
        if (c == 0 && !hc && n < k.S) st[n] = 0.0f;
    }
    const float bias = dt_bias[d], Dd = Dp[d];
    for (int i = 0; i < len; i++) {
        const int64_t tok = tok0 + i;
        const float ut = u[tok * k.Di + d], z = xz[tok * 2 * k.Di + k.Di + d];
        const float dt = softplusf_(delta[tok * k.Di + d] + bias), dtu = dt * ut;
        float y = 0.0f;
MBC_UNROLL
        for (int q = 0; q < NS / 4; q++) {
            float bq[4], cq[4];
            ld4(bq, &sbc[i][4 * q]);
            ld4(cq, &sbc[i][NS + 4 * q]);
MBC_UNROLL
            for (int e = 0; e < 4; e++) {
                const int n = 4 * q + e;
                h[n] = exp2_(dt * A2[n]) * h[n] + dtu * bq[e];
                y += cq[e] * h[n];
            }
        }
        const float o = (y + Dd * ut) * (z * sigmoid_fast_(z));
        out[tok * k.Di + d] = o;
        if (out_bf) out_bf[tok * k.Di + d] = __float2bfloat16_rn(o); /* out_proj's bf16 input */
    }
    if (hc && c == k.nch - 1) /* (scan_carry_kernel read the old one) */
MBC_UNROLL
        for (int n = 0; n < NS; n++)
            if (n < k.S) hc[((int64_t)b * k.S + n) * k.Di + d] = h[n];
}
/* mb__scan_forward_from on the device; states (B, nch, Di, S) as the CPU;
   h (B, S, Di): the carried state in and out, or NULL (from zero). */
static inline mb_status scan_forward(float *out, float *states, float *scratch, const float *u, const float *delta,
                              const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                              const float *xz, int B, int T, int Di, int S, int R, int chunk,
                              mbc_bf16 *out_bf = nullptr, float *h = nullptr) {
    MBC_TRY(scan_check(B, T, Di, S, chunk));
    const scan_ctx k = make_scan_ctx(T, Di, S, R, chunk);
    const unsigned groups = (unsigned)((Di + MBC_SCAN_THREADS - 1) / MBC_SCAN_THREADS);
    float *sdt = scratch;
    if (k.nch > 1)
        MBC_SCAN_DISPATCH(S, scan_chunk_state_kernel, dim3(groups, (unsigned)(k.nch - 1), (unsigned)B),
                          dim3(MBC_SCAN_THREADS), 0, states, sdt, u, delta, dt_bias, A_log, xdbl, k);
    if (k.nch > 1 || h)
        MBC_LAUNCH(scan_carry_kernel, dim3(grid_for((int64_t)B * Di * S, 256)), dim3(256), 0, states,
                   (const float *)sdt, A_log, (const float *)h, B, k);
    MBC_SCAN_DISPATCH(S, scan_forward_kernel, dim3(groups, (unsigned)k.nch, (unsigned)B), dim3(MBC_SCAN_THREADS), 0,
                      out, states, h, u, delta, dt_bias, A_log, xdbl, Dp, xz, k, out_bf);
    return MB_STATUS_OK;
}

/* Backward (1): per chunk c >= 1, from g = 0 at its end, the adjoint handed
   to chunk c-1 into gin[b,c-1] and sdt[b,c]. */
template <int NS>
__global__ void __launch_bounds__(MBC_SCAN_THREADS) scan_chunk_grad_kernel(float *gin, float *sdt, const float *dout,
                                       const float *delta, const float *dt_bias, const float *A_log,
                                       const float *xdbl, const float *xz, scan_ctx k) {
    MBC_SHARED(__align__(16) float, sc, [MBC_SCAN_MAX_CHUNK][NS]);
    const int d = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y + 1, b = blockIdx.z;
    const int t0 = c * k.chunk, len = t0 + k.chunk < k.T ? k.chunk : k.T - t0;
    const int64_t tok0 = (int64_t)b * k.T + t0;
    for (int i = threadIdx.x; i < len * NS; i += blockDim.x) { /* the C rows */
        const int t = i / NS, n = i % NS;
        sc[t][n] = n < k.S ? xdbl[(tok0 + t) * k.X + k.R + k.S + n] : 0.0f;
    }
    __syncthreads();
    if (d >= k.Di) return;
    float A2[NS], g[NS];
MBC_UNROLL
    for (int n = 0; n < NS; n++) {
        A2[n] = n < k.S ? scan_A2(A_log, (int64_t)d * k.S + n) : 0.0f;
        g[n] = 0.0f;
    }
    const float bias = dt_bias[d];
    float sd = 0.0f;
    for (int i = len - 1; i >= 0; i--) {
        const int64_t tok = tok0 + i;
        const float dt = softplusf_(delta[tok * k.Di + d] + bias);
        const float z = xz[tok * 2 * k.Di + k.Di + d], dy = dout[tok * k.Di + d] * (z * sigmoid_fast_(z));
        sd += dt;
MBC_UNROLL
        for (int q = 0; q < NS / 4; q++) {
            float cq[4];
            ld4(cq, &sc[i][4 * q]);
MBC_UNROLL
            for (int e = 0; e < 4; e++) g[4 * q + e] = exp2_(dt * A2[4 * q + e]) * (g[4 * q + e] + dy * cq[e]);
        }
    }
    float *gi = gin + (((int64_t)b * k.nch + c - 1) * k.Di + d) * k.S;
MBC_UNROLL
    for (int n = 0; n < NS; n++)
        if (n < k.S) gi[n] = g[n];
    sdt[((int64_t)b * k.nch + c) * k.Di + d] = sd;
}

/* Backward (2), in place: gin[b,c-1] += exp2(A2 sdt[b,c]) gin[b,c] for
   c = nch-1..1, with gin[b,nch-1] = 0 (never stored: the last chunk starts
   from zero). */
__global__ void scan_carry_grad_kernel(float *gin, const float *sdt, const float *A_log, int B, scan_ctx k) {
    const int64_t DS = (int64_t)k.Di * k.S, total = (int64_t)B * DS;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / DS, j = i % DS, d = j / k.S, base = b * k.nch * DS + j;
        const float A2 = scan_A2(A_log, j);
        float g = 0.0f;
        for (int c = k.nch - 1; c >= 1; c--) {
            g = gin[base + (c - 1) * DS] + exp2_(A2 * sdt[(b * k.nch + c) * k.Di + d]) * g;
            gin[base + (c - 1) * DS] = g;
        }
    }
}

/* Backward (3), mb__scan_backward.  Writes ddelta, adds du and the z columns
   of dxz; partials per (b, c) into part[(b nch + c) (Di S + 2 Di)]: dA_log
   (Di S), dD (Di), dt bias (Di); dB and dC per (token, warp of 32 channels)
   into partBC[(tok nwarps + w) 2S].  Blocks of MBC_SCAN_BWD_WARPS warps;
   every thread runs every loop (channels >= Di contribute zeros). */
__global__ void __launch_bounds__(32 * MBC_SCAN_BWD_WARPS) scan_backward_kernel(float *du, float *ddelta, float *dxz,
                                     float *part, float *partBC, const float *dout, const float *states,
                                     const float *gin, const float *u, const float *delta, const float *dt_bias,
                                     const float *A_log, const float *xdbl, const float *Dp, const float *xz,
                                     scan_ctx k, int overwrite) {
    constexpr int G = MBC_SCAN_GROUP, SEG = MBC_SCAN_SEG;
    MBC_SHARED(__align__(16) float, sbc, [MBC_SCAN_MAX_CHUNK][2 * G]);
    MBC_SHARED(__align__(16) float, sred, [MBC_SCAN_BWD_WARPS][32][36]); /* rows of 144 B: float4 stores, conflict-free */
    MBC_SHARED(float, sdt_, [MBC_SCAN_MAX_CHUNK][32 * MBC_SCAN_BWD_WARPS]); /* dt per (token, thread), from the first pass */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int d = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y, b = blockIdx.z;
    const bool chan = d < k.Di;
    const int t0 = c * k.chunk, len = t0 + k.chunk < k.T ? k.chunk : k.T - t0, nseg = (len + SEG - 1) / SEG;
    const int64_t tok0 = (int64_t)b * k.T + t0, pc = (int64_t)b * k.nch + c, DS = (int64_t)k.Di * k.S;
    const int nw = gridDim.x * MBC_SCAN_BWD_WARPS, wg = blockIdx.x * MBC_SCAN_BWD_WARPS + warp;
    const float bias = chan ? dt_bias[d] : 0.0f, Dd = chan ? Dp[d] : 0.0f;
    float gD = 0.0f, gbias = 0.0f;
    for (int s0 = 0; s0 < k.S; s0 += G) {
        __syncthreads(); /* sbc of the previous group is read */
        scan_stage<G>(sbc, xdbl, tok0, len, s0, true, k);
        __syncthreads();
        const bool first = s0 == 0;
        float A2[G], h[G], g[G], gAr[G];
        const int64_t sidx = (pc * k.Di + d) * k.S + s0;
MBC_UNROLL
        for (int n = 0; n < G; n++) {
            const bool act = chan && s0 + n < k.S;
            A2[n] = act ? -expf(A_log[(int64_t)d * k.S + s0 + n]) * MBC_LOG2E : 0.0f;
            h[n] = act ? states[sidx + n] : 0.0f; /* chunk 0: zero or a carried state */
            g[n] = act && c + 1 < k.nch ? gin[sidx + n] : 0.0f;
            gAr[n] = 0.0f;
        }
        /* h at the start of every segment of SEG tokens */
        float ck[MBC_SCAN_MAX_CHUNK / SEG][G];
        for (int s = 0; s < nseg; s++) {
MBC_UNROLL
            for (int n = 0; n < G; n++) ck[s][n] = h[n];
MBC_UNROLL
            for (int kk = 0; kk < SEG; kk++) {
                const int i = s * SEG + kk;
                if (i < len) {
                    const int64_t tok = tok0 + i;
                    const float dt = chan ? softplusf_(delta[tok * k.Di + d] + bias) : 0.0f;
                    const float dtu = chan ? dt * u[tok * k.Di + d] : 0.0f;
                    sdt_[i][threadIdx.x] = dt; /* read back by this thread only */
MBC_UNROLL
                    for (int q = 0; q < G / 4; q++) {
                        float bq[4];
                        ld4(bq, &sbc[i][4 * q]);
MBC_UNROLL
                        for (int e = 0; e < 4; e++) h[4 * q + e] = exp2_(dt * A2[4 * q + e]) * h[4 * q + e] + dtu * bq[e];
                    }
                }
            }
        }
        for (int s = nseg - 1; s >= 0; s--) {
            float hs[SEG + 1][G], dtk[SEG], uk[SEG];
MBC_UNROLL
            for (int n = 0; n < G; n++) hs[0][n] = ck[s][n];
MBC_UNROLL
            for (int kk = 0; kk < SEG; kk++) { /* the segment again, h kept in registers */
                const int i = s * SEG + kk;
                dtk[kk] = uk[kk] = 0.0f;
                if (i < len) {
                    dtk[kk] = sdt_[i][threadIdx.x];
                    uk[kk] = chan ? u[(tok0 + i) * k.Di + d] : 0.0f;
                    const float dtu = dtk[kk] * uk[kk];
MBC_UNROLL
                    for (int q = 0; q < G / 4; q++) {
                        float bq[4];
                        ld4(bq, &sbc[i][4 * q]);
MBC_UNROLL
                        for (int e = 0; e < 4; e++)
                            hs[kk + 1][4 * q + e] = exp2_(dtk[kk] * A2[4 * q + e]) * hs[kk][4 * q + e] + dtu * bq[e];
                    }
                }
            }
MBC_UNROLL
            for (int kk = SEG - 1; kk >= 0; kk--) {
                const int i = s * SEG + kk;
                if (i >= len) continue; /* the same for the whole block */
                const int64_t tok = tok0 + i;
                const float z = chan ? xz[tok * 2 * k.Di + k.Di + d] : 0.0f, go = chan ? dout[tok * k.Di + d] : 0.0f;
                const float dt = dtk[kk], ut = uk[kk], dtu = dt * ut, sz = sigmoid_fast_(z), dy = go * (z * sz);
                float yacc = 0.0f, ddtA = 0.0f, sB = 0.0f;
MBC_UNROLL
                for (int q = 0; q < G / 4; q++) {
                    float pb[4], pcv[4], bq[4], cq[4];
                    ld4(bq, &sbc[i][4 * q]);
                    ld4(cq, &sbc[i][G + 4 * q]);
MBC_UNROLL
                    for (int e = 0; e < 4; e++) {
                        const int n = 4 * q + e;
                        const float Bn = bq[e], Cn = cq[e], ht = hs[kk + 1][n], hp = hs[kk][n];
                        const float a = exp2_(dt * A2[n]);
                        const float dh = dy * Cn + g[n];
                        yacc += Cn * ht;
                        sB += dh * Bn;
                        g[n] = dh * a;
                        const float r = g[n] * hp;
                        ddtA += r * A2[n];
                        gAr[n] += dt * r;
                        pb[e] = dh * dtu;
                        pcv[e] = dy * ht;
                    }
                    *(float4 *)&sred[warp][lane][4 * q] = make_float4(pb[0], pb[1], pb[2], pb[3]);
                    *(float4 *)&sred[warp][lane][G + 4 * q] = make_float4(pcv[0], pcv[1], pcv[2], pcv[3]);
                }
                __syncwarp();
                float colsum = 0.0f; /* lane j: column j (dB of state j, then dC) over the warp's channels, in lane order */
                for (int l = 0; l < 32; l++) colsum += sred[warp][l][lane];
                __syncwarp();
                const int n = s0 + (lane & (G - 1));
                if (n < k.S) partBC[(tok * nw + wg) * 2 * k.S + (lane >= G ? k.S : 0) + n] = colsum;
                if (chan) {
                    /* softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)), without cancellation */
                    const float sg = dt > 20.0f ? 1.0f : -expm1f(-dt);
                    const float ddt = (ddtA * MBC_LN2 + ut * sB) * sg;
                    float *dd = ddelta + tok * k.Di + d;
                    *dd = first ? ddt : *dd + ddt;
                    const bool ow = first && overwrite; /* the first writer of du and dz (no memset) */
                    const float vu = dt * sB + (first ? dy * Dd : 0.0f);
                    const float vz = go * (sz * (1.0f + z * (1.0f - sz))) * (yacc + (first ? Dd * ut : 0.0f));
                    float *pu = du + tok * k.Di + d, *pz = dxz + tok * 2 * k.Di + k.Di + d;
                    *pu = ow ? vu : *pu + vu;
                    *pz = ow ? vz : *pz + vz;
                    gbias += ddt;
                    if (first) gD += dy * ut;
                }
            }
        }
        float *pA = part + pc * (DS + 2 * k.Di) + (int64_t)d * k.S + s0;
MBC_UNROLL
        for (int n = 0; n < G; n++)
            if (chan && s0 + n < k.S) pA[n] = A2[n] * MBC_LN2 * gAr[n];
    }
    if (chan) {
        part[pc * (DS + 2 * k.Di) + DS + d] = gD;
        part[pc * (DS + 2 * k.Di) + DS + k.Di + d] = gbias;
    }
}

/* The scan backward's partial sums, in index order: i < DS + 2Di sums
   part[p (DS+2Di) + i] over p < npc into dA_log / dD / ddt_bias; the rest,
   (token, j < 2S), sums partBC over the nw warps into dxdbl[tok X + R + j]. */
__global__ void scan_reduce_kernel(float *dA_log, float *dD, float *ddt_bias, float *dxdbl, const float *part,
                                   const float *partBC, int64_t npc, int64_t ntok, int nw, scan_ctx k, int overwrite) {
    /* blocks of (32, MBC_RED_Y).  The first ceil(W/32) blocks: 32 parameter
       outputs each over the B*nch parts, split over y (reduce_parts_2d); the
       rest: one dB/dC output per thread over the nw warp partials (few). */
    const int64_t DS = (int64_t)k.Di * k.S, W = DS + 2 * k.Di, pblocks = (W + 31) / 32;
    if ((int64_t)blockIdx.x < pblocks) { /* uniform per block: the barrier inside is reached by all */
        const int64_t i = (int64_t)blockIdx.x * 32 + threadIdx.x;
        const bool valid = i < W;
        const float s = reduce_parts_2d(part + (valid ? i : 0), W, npc, valid);
        if (!valid || threadIdx.y != 0) return;
        if (i < DS) dA_log[i] += s;
        else if (i < DS + k.Di) dD[i - DS] += s;
        else ddt_bias[i - DS - k.Di] += s;
        return;
    }
    const int64_t i = ((int64_t)blockIdx.x - pblocks) * (32 * MBC_RED_Y) + threadIdx.y * 32 + threadIdx.x;
    if (i >= ntok * 2 * k.S) return;
    const int64_t r = i / (2 * k.S), j = i % (2 * k.S);
    const float *p = partBC + r * nw * 2 * k.S + j;
    float s = 0.0f;
    for (int w = 0; w < nw; w++) s += p[(int64_t)w * 2 * k.S];
    float *o = dxdbl + r * k.X + k.R + j;
    *o = overwrite ? s : *o + s;
}
/* mb__scan_backward on the device (same += / overwrite contract); with
   overwrite, du, the z columns of dxz and the B/C columns of dxdbl are
   written (=) instead of added to, so the trainer needs no memsets. */
static inline mb_status scan_backward(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                               float *dxz, float *scratch, const float *dout, const float *states, const float *u,
                               const float *delta, const float *dt_bias, const float *A_log, const float *xdbl,
                               const float *Dp, const float *xz, int B, int T, int Di, int S, int R, int chunk,
                               bool overwrite = false) {
    MBC_TRY(scan_check(B, T, Di, S, chunk));
    const scan_ctx k = make_scan_ctx(T, Di, S, R, chunk);
    const unsigned groups = (unsigned)((Di + MBC_SCAN_THREADS - 1) / MBC_SCAN_THREADS);
    const int nw = scan_bwd_warps(Di);
    const int64_t DS = (int64_t)Di * S, npc = (int64_t)B * k.nch;
    float *gin = scratch, *sdt = gin + npc * DS, *part = sdt + npc * Di, *partBC = part + npc * (DS + 2 * Di);
    if (k.nch > 1) {
        MBC_SCAN_DISPATCH(S, scan_chunk_grad_kernel, dim3(groups, (unsigned)(k.nch - 1), (unsigned)B),
                          dim3(MBC_SCAN_THREADS), 0, gin, sdt, dout, delta, dt_bias, A_log, xdbl, xz, k);
        MBC_LAUNCH(scan_carry_grad_kernel, dim3(grid_for((int64_t)B * DS, 256)), dim3(256), 0, gin, (const float *)sdt,
                   A_log, B, k);
    }
    MBC_LAUNCH(scan_backward_kernel, dim3((unsigned)(nw / MBC_SCAN_BWD_WARPS), (unsigned)k.nch, (unsigned)B),
               dim3(32 * MBC_SCAN_BWD_WARPS), 0, du, ddelta, dxz, part, partBC, dout, states, (const float *)gin, u,
               delta, dt_bias, A_log, xdbl, Dp, xz, k, (int)overwrite);
    const int64_t ntok = (int64_t)B * T;
    const int64_t nred = (DS + 2 * Di + 31) / 32 + (ntok * 2 * S + 32 * MBC_RED_Y - 1) / (32 * MBC_RED_Y);
    if (nred > 2147483647) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA scan: B*T %lld too large", (long long)ntok);
    MBC_LAUNCH(scan_reduce_kernel, dim3((unsigned)nred), dim3(32, MBC_RED_Y), 0, dA_log, dD, ddt_bias,
               dxdbl, (const float *)part, (const float *)partBC, npc, ntok, nw, k, (int)overwrite);
    return MB_STATUS_OK;
}

/* Streaming scan step (mb_stream_step): one thread per channel, states in
   order, h = a h + dt B u, gated output. */
__global__ void scan_step_kernel(float *gated, float *hstate, const float *u, const float *delta,
                                 const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                                 const float *xz, int Di, int S, int R) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= Di) return;
    const float *Bt = xdbl + R;
    const float dt = softplusf_(delta[d] + dt_bias[d]), dtu = dt * u[d];
    float *h = hstate + (int64_t)d * S, y = 0.0f;
    for (int n = 0; n < S; n++) {
        const float hn = exp2_(dt * (-expf(A_log[(int64_t)d * S + n]) * MBC_LOG2E)) * h[n] + dtu * Bt[n];
        h[n] = hn;
        y += Bt[S + n] * hn;
    }
    gated[d] = (y + Dp[d] * u[d]) * siluf_(xz[Di + d]);
}
static inline mb_status scan_step(float *gated, float *hstate, const float *u, const float *delta, const float *dt_bias,
                           const float *A_log, const float *xdbl, const float *Dp, const float *xz, int Di, int S, int R) {
    if (S < 1 || S > MBC_SCAN_MAX_STATE) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA scan: d_state %d (must be 1..%d)", S, MBC_SCAN_MAX_STATE);
    MBC_LAUNCH(scan_step_kernel, dim3((unsigned)((Di + 127) / 128)), dim3(128), 0, gated, hstate, u, delta, dt_bias,
               A_log, xdbl, Dp, xz, Di, S, R);
    return MB_STATUS_OK;
}

/* ===================================================== cross-entropy */

/* Fused mb_cross_entropy_forward (per-row loss, NONE) and _backward: one
   block per row, float32 log-sum-exp, the CPU's special cases (NaN row,
   +inf entries sharing the mass, all -inf row uniform, -inf target +inf).
   loss_rows[r] = 0 for ignored rows.  dlogits may alias logits: every read
   of the row happens before the first write (barriers in between).
   Gradient scale per row: dloss_rows ? dloss_rows[r] : dscale, where
   dscale_dev (a graph's per-batch 1/valid rows) replaces dscale when given. */
__global__ void cross_entropy_kernel(float *loss_rows, float *dlogits, const float *logits, const int32_t *targets,
                                     int64_t rows, int V, int32_t ignore_index, float eps, const float *dloss_rows,
                                     float dscale, const double *dscale_dev) {
    MBC_SHARED(float, shf, [32]);
    MBC_SHARED(int, shi, [32]);
    const int64_t r = blockIdx.x;
    if (r >= rows) return; /* uniform per block */
    const float *x = logits + r * V;
    const int32_t y = targets[r];
    const bool ignored = y == ignore_index;
    const float xy = ignored ? 0.0f : x[y];
    float m = -INFINITY;
    int nnan = 0, npos = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = x[i];
        if (isnan(v)) nnan++;
        else if (v > m) m = v;
        npos += v == INFINITY;
    }
    nnan = block_reduce<sum_op>(nnan, shi, 0);
    npos = block_reduce<sum_op>(npos, shi, 0);
    m = block_reduce<max_op>(m, shf, -INFINITY);
    /* kind: 0 finite, 1 +inf, 2 all -inf, 3 NaN */
    const int kind = nnan ? 3 : (npos ? 1 : (m == -INFINITY ? 2 : 0));
    /* shifted by the max first (as the CPU), so large logits keep precision */
    float se = 0.0f, sx = 0.0f;
    if (kind == 0)
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            se += expf(x[i] - m);
            sx += x[i] - m;
        }
    se = block_reduce<sum_op>(se, shf, 0.0f); /* also the barrier before any write to dlogits */
    sx = block_reduce<sum_op>(sx, shf, 0.0f);
    const float ls = logf(se); /* log sum exp(x - m) >= 0 */
    if (threadIdx.x == 0) {
        float loss = 0.0f;
        if (!ignored) {
            float nll, smooth;
            switch (kind) {
            case 0: nll = ls - (xy - m); smooth = ls - sx / (float)V; break;
            case 1:
                nll = xy == INFINITY ? logf((float)npos) : INFINITY;
                smooth = npos == V ? logf((float)npos) : INFINITY;
                break;
            case 2: nll = smooth = logf((float)V); break;
            default: nll = smooth = NAN; break;
            }
            loss = (1.0f - eps) * nll;
            if (eps > 0.0f) loss += eps * smooth;
        }
        loss_rows[r] = loss;
    }
    const float gs = dloss_rows ? dloss_rows[r] : dscale_dev ? (float)*dscale_dev : dscale;
    float *dx = dlogits + r * V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float p;
        const float v = x[i];
        switch (kind) {
        case 0: p = expf((v - m) - ls); break;
        case 1: p = v == INFINITY ? 1.0f / (float)npos : 0.0f; break;
        case 2: p = 1.0f / (float)V; break;
        default: p = NAN; break;
        }
        const float tp = eps / (float)V + (i == y ? 1.0f - eps : 0.0f);
        dx[i] = ignored ? 0.0f : (p - tp) * gs;
    }
}
/* Fused cross-entropy: loss_rows (rows), dlogits (may alias logits). */
static inline mb_status cross_entropy(float *loss_rows, float *dlogits, const float *logits, const int32_t *targets,
                               int64_t rows, int V, int32_t ignore_index, float label_smoothing,
                               const float *dloss_rows, float dscale, const double *dscale_dev = nullptr) {
    if (rows < 1) return MB_STATUS_OK;
    if (rows > 2147483647) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "cross-entropy: %lld rows", (long long)rows);
    MBC_LAUNCH(cross_entropy_kernel, dim3((unsigned)rows), dim3(256), 0, loss_rows, dlogits, logits, targets, rows, V,
               ignore_index, label_smoothing, dloss_rows, dscale, dscale_dev);
    return MB_STATUS_OK;
}

/* out[0] = scale * sum of x[0..n) in a fixed order (one block of 256);
   scale_dev replaces scale when given; acc (optional) += out[0], in double,
   as the host adds the micro-batches' losses. */
__global__ void sum_kernel(float *out, const float *x, int64_t n, double scale, const double *scale_dev, double *acc) {
    MBC_SHARED(double, sh, [256]);
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += 256) s += (double)x[i];
    s = block_sum_double256(s, sh);
    if (threadIdx.x == 0) {
        const float v = (float)(s * (scale_dev ? *scale_dev : scale));
        out[0] = v;
        if (acc) acc[0] += (double)v;
    }
}
static inline mb_status sum(float *out, const float *x, int64_t n, double scale, const double *scale_dev = nullptr,
                            double *acc = nullptr) {
    MBC_LAUNCH(sum_kernel, dim3(1), dim3(256), 0, out, x, n, scale, scale_dev, acc);
    return MB_STATUS_OK;
}

/* ===================================================== optimizer */

/* g *= scale (when scale != 1; scale_dev replaces it when given);
   part[blockIdx.x] = sum g^2 (double) over this block's grid-stride share.
   Fixed grid: MBC_NORM_BLOCKS x 256. */
__global__ void grad_scale_sumsq_kernel(double *part, float *g, int64_t n, float scale, const float *scale_dev) {
    MBC_SHARED(double, sh, [256]);
    if (scale_dev) scale = *scale_dev;
    double s = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x; i < n; i += (int64_t)gridDim.x * 256) {
        float v = g[i];
        if (scale != 1.0f) g[i] = v = v * scale;
        s += (double)v * (double)v;
    }
    s = block_sum_double256(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* out[0] = sum of part[0..n) in order (one block of 256). */
__global__ void sum_double_kernel(double *out, const double *part, int n) {
    MBC_SHARED(double, sh, [256]);
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += 256) s += part[i];
    s = block_sum_double256(s, sh);
    if (threadIdx.x == 0) out[0] = s;
}
/* g *= scale, then sum g^2 into *sumsq_dev (double); part: MBC_NORM_BLOCKS doubles. */
static inline mb_status grad_scale_sumsq(double *sumsq_dev, double *part, float *g, int64_t n, float scale,
                                         const float *scale_dev = nullptr) {
    MBC_LAUNCH(grad_scale_sumsq_kernel, dim3(MBC_NORM_BLOCKS), dim3(256), 0, part, g, n, scale, scale_dev);
    MBC_LAUNCH(sum_double_kernel, dim3(1), dim3(256), 0, sumsq_dev, (const double *)part, MBC_NORM_BLOCKS);
    return MB_STATUS_OK;
}

/* One update's scalars: AdamW's constants as the CPU computes them (host,
   double -> float; make_adamw_args), the clip, and the gradient scale. */
struct adamw_args {
    float coef, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps, decay, grad_scale;
    double clip;
    int guard; /* skip the update (zero the gradient) when *loss_sum is not finite */
};

/* mb_adamw_update after clipping (g *= coef), then g = 0; decay_mask[i]
   picks decay.  args_dev (a graph's per-step scalars, uploaded before it
   runs) replaces a when given.  With sumsq (the device's sum of g^2), the
   clip coefficient is computed here, as mb_clip_coef does on the host
   (double), and a non-finite norm only zeroes the gradient: the host need
   not read the norm first.  With loss_sum and a.guard (the trainer's
   guard), a non-finite loss also only zeroes the gradient. */
__global__ void adamw_kernel(float *p, float *g, float *m, float *v, const uint8_t *decay_mask, int64_t n, adamw_args a,
                             const adamw_args *args_dev, const double *sumsq, const double *loss_sum) {
    if (args_dev) a = *args_dev;
    float coef = a.coef;
    const float b1 = a.b1, b2 = a.b2, one_b1 = a.one_b1, one_b2 = a.one_b2, step_size = a.step_size,
                bc2_sqrt = a.bc2_sqrt, eps = a.eps, decay = a.decay;
    const double clip = a.clip;
    bool skip = loss_sum && a.guard && !isfinite(*loss_sum);
    if (sumsq && !skip) {
        const double norm = sqrt(*sumsq);
        if (!isfinite(norm)) skip = true;
        else {
            const double c = clip / (norm + 1e-6);
            coef = (float)(c < 1.0 ? c : 1.0);
        }
    }
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        if (skip) {
            g[i] = 0.0f;
            continue;
        }
        float gi = g[i];
        if (coef < 1.0f) gi *= coef;
        float pi = p[i];
        if (decay_mask[i]) pi *= decay;
        const float mi = m[i] * b1 + gi * one_b1, vi = v[i] * b2 + gi * gi * one_b2;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
        g[i] = 0.0f;
    }
}

/* The CPU's AdamW constants (mb_adamw_update) for step t. */
static inline adamw_args make_adamw_args(float coef, double lr, double beta1, double beta2, double eps, double wd,
                                         int64_t t, double clip, float grad_scale) {
    adamw_args a;
    a.coef = coef;
    a.b1 = (float)beta1; a.b2 = (float)beta2; a.one_b1 = (float)(1.0 - beta1); a.one_b2 = (float)(1.0 - beta2);
    a.step_size = (float)(lr / (1.0 - pow(beta1, (double)t)));
    a.bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)t));
    a.eps = (float)eps;
    a.decay = (float)(1.0 - lr * wd);
    a.grad_scale = grad_scale;
    a.clip = clip;
    a.guard = 0;
    return a;
}
/* (Not static: only the tests call it, and an unused static draws a warning.)
   sumsq_dev (optional): take the clip coefficient from the device's squared
   norm and `clip` instead of coef (see adamw_kernel). */
inline mb_status adamw(float *p, float *g, float *m, float *v, const uint8_t *mask, int64_t n, float coef, double lr,
                       double beta1, double beta2, double eps, double wd, int64_t t, const double *sumsq_dev = nullptr,
                       double clip = 0.0) {
    const adamw_args a = make_adamw_args(coef, lr, beta1, beta2, eps, wd, t, clip, 1.0f);
    MBC_LAUNCH(adamw_kernel, dim3(grid_for(n, 256)), dim3(256), 0, p, g, m, v, mask, n, a, (const adamw_args *)nullptr,
               sumsq_dev, (const double *)nullptr);
    return MB_STATUS_OK;
}
/* The same from scalars on the device, with the trainer's loss guard. */
static inline mb_status adamw_from_device(float *p, float *g, float *m, float *v, const uint8_t *mask, int64_t n,
                                          const adamw_args *args_dev, const double *sumsq_dev, const double *loss_sum) {
    MBC_LAUNCH(adamw_kernel, dim3(grid_for(n, 256)), dim3(256), 0, p, g, m, v, mask, n, adamw_args(), args_dev,
               sumsq_dev, loss_sum);
    return MB_STATUS_OK;
}

} /* namespace mbc */

/* ======================================================================= */
/*                      the trainer and the stream                         */
/* ======================================================================= */
namespace mbc {

/* One layer's activations (mambabyte.h's MB_LAYER_ACTS, placed by
   mb_layer_acts_place as on the CPU) and, in bf16 mode, the bf16 copies of
   ln, u and gated that the products read (the others NULL). */
struct layer_acts { mb_layer_acts f, bf; };
static inline mbc_bf16 *bf(float *p) { return (mbc_bf16 *)p; }

/* A sequence of the trainer's operations as one CUDA graph: run eagerly the
   first time (the warm-up: modules loaded, cuBLAS's choices made), captured
   the second, replayed from then on. */
struct captured { graph_t exec; int runs; };

/* Dimensions shared by the trainer and the stream. */
struct dims {
    mb_config cfg;
    int C, Di, S, K, R, X, V, L;
    int64_t nparams;
    int ntensors;
    mb_tensor_info *tensors; /* mb_config_tensors' table */
};

static inline mb_status dims_init(dims *d, const mb_config *cfg_in) {
    memset(d, 0, sizeof *d);
    d->cfg = *cfg_in;
    if (mb_config_validate(&d->cfg) != MB_STATUS_OK)
        return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA: invalid config: %s", mb_last_error());
    const mb_config *c = &d->cfg;
    d->C = c->d_model; d->Di = c->d_model * c->expand; d->S = c->d_state; d->K = c->d_conv; d->R = c->dt_rank;
    d->X = d->R + 2 * d->S; d->V = c->vocab_size; d->L = c->n_layer;
    if (d->S > MBC_SCAN_MAX_STATE) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: d_state %d > %d is not supported", d->S, MBC_SCAN_MAX_STATE);
    if (d->C > MBC_MAX_D_MODEL) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: d_model %d > %d is not supported", d->C, MBC_MAX_D_MODEL);
    d->ntensors = mb_config_tensors(c, NULL);
    if (!(d->tensors = (mb_tensor_info *)MB_MALLOC(sizeof(mb_tensor_info) * (size_t)d->ntensors)))
        return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA: tensor table");
    mb_config_tensors(c, d->tensors);
    d->nparams = d->tensors[d->ntensors - 1].offset + d->tensors[d->ntensors - 1].numel;
    return MB_STATUS_OK;
}
/* w's pointers (device memory) into base, as the CPU model's. */
static inline mb_status weights_point(mb_weights *w, float *base, const dims &d) {
    if (!w->layer && !(w->layer = (mb_layer_weights *)MB_MALLOC(sizeof(mb_layer_weights) * (size_t)d.L)))
        return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA: weight pointers");
    mb_weights_point(w, base, &d.cfg, d.tensors);
    return MB_STATUS_OK;
}

/* A list of device allocations freed together (a trainer makes about 25). */
#define MBC_DLIST_MAX 32
struct dlist {
    void *ptrs[MBC_DLIST_MAX];
    int n;
};
template <class T> static mb_status dalloc(dlist *l, T **out, int64_t count, const char *what) {
    void *p = nullptr;
    if (l->n == MBC_DLIST_MAX) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA: more than %d allocations", MBC_DLIST_MAX);
    MBC_TRY(dmalloc(&p, (size_t)count * sizeof(T), what));
    *out = (T *)(l->ptrs[l->n++] = p);
    return MB_STATUS_OK;
}
static inline void dlist_free(dlist *l) {
    for (int i = 0; i < l->n; i++) dfree(l->ptrs[i]);
    l->n = 0;
}

} /* namespace mbc */

struct mb_cuda_trainer {
    mbc::dims d;
    int B, T, precision, chunk;
    int64_t N;
    mbc::blas_t blas;
    mbc::dlist mem, chunk_mem;
    /* parameters and optimizer (flat, checkpoint order) */
    float *params, *grads, *adam_m, *adam_v;
    mb_weights w, g;          /* pointers into params and grads, as the CPU model's */
    uint8_t *decay_mask;
    mbc_bf16 *params_bf16;   /* bf16 mode: weights for cuBLAS */
    mbc_bf16 *bfa, *bfb;      /* bf16 mode: matrix-input scratch */
    /* batch */
    /* one upload per micro-batch: [1/valid rows (double) | bucket table (MBC_BUCKET_TABLE: bucket_off 257,
       piece_base 257) | bucket_rows (N) | targets (N) | tokens (N)], packed in pinned host memory (h_batch)
       and copied to the device (batch) */
    uint8_t *batch, *h_batch, *tokens;
    double *inv_valid;       /* device, in the batch: the loss's 1 / rows with a target */
    int32_t *targets;
    int64_t *bucket_off, *bucket_rows, *h_bucket;
    size_t batch_bytes;
    /* activations: n_layer (a host array of device pointers), their gradients (no states), the model's */
    mbc::layer_acts *acts;
    mb_layer_acts dacts;
    mb_model_acts ma;        /* MB_MODEL_ACTS's, the CUDA trainer's */
    float *lnf_bf;           /* bf16 mode: the head's input, as bf16 */
    float *scratch;          /* backward scratch */
    float *carry, *carry_host; /* mb_cuda_trainer_set_carry's: a device copy of the rows' carried state, the host's */
    int64_t scratch_floats;
    double *norm_part, *norm_dev;
    /* the step on its own stream, replayed as two CUDA graphs */
    mbc::stream_t stream;    /* every operation of this trainer (graphs cannot be captured from the legacy stream) */
    mbc::event_t uploaded;   /* recorded after each batch upload: then h_batch may be rewritten */
    int graphs;              /* 1: capture and replay (default); 0: launch every operation (mb_cuda_trainer_set_graphs,
                                MB_CUDA_GRAPH=0, MB_CUDA_SYNC=1, or a capture that failed) */
    mbc::captured fb, update; /* forward + loss + backward of one micro-batch; norm, clip, AdamW, read-back */
    double *stats, *h_stats; /* device / pinned: [loss sum over the step's micro-batches, squared gradient norm] */
    mbc::adamw_args *args_dev, *h_args; /* the update's scalars, device / pinned */
    /* data-parallel (MB_WITH_NCCL): the gradient sum over the ranks on device memory */
    void *nccl;              /* ncclComm_t; NULL for one process */
    float *nccl_recv;        /* rank 0's receive buffer of the rank-order (deterministic) sum */
    float *host_grads;       /* without NCCL: the gradients on their way through the host communicator */
};

struct mb_cuda_stream {
    mbc::dims d;
    mbc::blas_t blas;
    mbc::dlist mem;
    float *params, *conv_state, *ssm_state, *logits;
    mb_weights w;
    mb_layer_acts a;         /* one token's (resid: the residual stream) */
};

namespace mbc {

/* mb__linear_forward: layer l's matrix `field` (l -1, MB_TENSOR_LM_HEAD:
   the head), out = inp @ w^T (+ beta out); bf16 through the bf16 copies:
   inp_bf when the kernel that wrote inp stored one (contiguous, ld IC), else converted. */
static inline mb_status linear_forward(mb_cuda_trainer *t, int l, int field, float *out, const float *inp, int64_t ldi,
                                       float beta = 0.0f, float *inp_bf = nullptr) {
    int IC, OC;
    const int64_t off = t->d.tensors[mb_tensor_matrix(&t->d.cfg, l, field, &IC, &OC)].offset;
    if (t->precision != MB_PRECISION_BF16) return matmul_forward(t->blas, out, inp, ldi, t->params + off, t->N, IC, OC, beta, t->precision);
    if (!inp_bf) MBC_TRY(convert_bf16(t->bfa, inp, t->N, IC, ldi));
    return gemm(t->blas, 1, 0, OC, (int)t->N, IC, 1.0f, t->params_bf16 + off, IC, inp_bf ? bf(inp_bf) : t->bfa, IC, beta, out,
                OC, MB_PRECISION_BF16, __FILE__, __LINE__);
}
/* ... and backward: dinp = beta_in dinp + dout @ w (dinp may be NULL), dw += dout^T @ inp. */
static inline mb_status linear_backward(mb_cuda_trainer *t, int l, int field, float *dinp, float beta_in, const float *dout,
                                        const float *inp, int64_t ldi, float *inp_bf = nullptr) {
    int IC, OC;
    const int64_t off = t->d.tensors[mb_tensor_matrix(&t->d.cfg, l, field, &IC, &OC)].offset, N = t->N;
    if (t->precision != MB_PRECISION_BF16)
        return matmul_backward(t->blas, dinp, beta_in, t->grads + off, dout, inp, ldi, t->params + off, N, IC, OC, t->precision);
    MBC_TRY(convert_bf16(t->bfa, dout, N, OC, OC));
    if (!inp_bf) MBC_TRY(convert_bf16(t->bfb, inp, N, IC, ldi));
    if (dinp)
        MBC_TRY(gemm(t->blas, 0, 0, IC, (int)N, OC, 1.0f, t->params_bf16 + off, IC, t->bfa, OC, beta_in, dinp, (int)ldi,
                     MB_PRECISION_BF16, __FILE__, __LINE__));
    return gemm(t->blas, 0, 1, IC, OC, (int)N, 1.0f, inp_bf ? bf(inp_bf) : t->bfb, IC, t->bfa, OC, 1.0f, t->grads + off, IC,
                MB_PRECISION_BF16, __FILE__, __LINE__);
}

static inline mb_status tr_refresh_bf16(mb_cuda_trainer *t) {
    if (t->precision != MB_PRECISION_BF16) return MB_STATUS_OK;
    return convert_bf16(t->params_bf16, t->params, 1, t->d.nparams, t->d.nparams);
}

static inline int64_t tr_scratch_floats(const mb_cuda_trainer *t) {
    const dims &d = t->d;
    const int64_t need[4] = {scan_scratch_floats(t->B, t->T, d.Di, d.S, t->chunk), ln_backward_parts(t->N) * 2 * d.C,
                             conv_backward_parts(t->B, t->T) * (int64_t)d.Di * (d.K + 1), embedding_pieces_max(t->N) * d.C};
    int64_t s = 0;
    for (int i = 0; i < 4; i++) s = need[i] > s ? need[i] : s;
    return s;
}

/* The chunk-dependent buffers (the layers' activations, with the scan's
   chunk states, and the scratch): their own list, so a new chunk size can
   replace them. */
static inline mb_status tr_alloc_chunked(mb_cuda_trainer *t) {
    const dims &d = t->d;
    const int64_t per = mb_layer_acts_place(nullptr, nullptr, &d.cfg, t->B, t->T, t->chunk, 0);
    float *block = nullptr;
    graph_free(t->fb.exec); /* it holds the old buffers: capture again */
    t->fb.exec = nullptr;
    dlist_free(&t->chunk_mem);
    MBC_TRY(dalloc(&t->chunk_mem, &block, per * d.L, "activations"));
    for (int l = 0; l < d.L; l++) mb_layer_acts_place(&t->acts[l].f, block + per * l, &d.cfg, t->B, t->T, t->chunk, 0);
    t->scratch_floats = tr_scratch_floats(t);
    return dalloc(&t->chunk_mem, &t->scratch, t->scratch_floats, "scratch");
}

static inline mb_status tr_create(mb_cuda_trainer *t, const mb_config *cfg, int B, int T, int precision) {
    MBC_TRY(dims_init(&t->d, cfg));
    const dims &d = t->d;
    if (B < 1 || T < 1 || (int64_t)B * T > MBC_MAX_TOKENS)
        return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA trainer: B=%d T=%d", B, T);
    if (precision != MB_PRECISION_FP32 && precision != MB_PRECISION_BF16 && precision != MB_PRECISION_TF32)
        return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA trainer: precision %d (0 fp32, 1 bf16, 2 tf32)", precision);
    if (device_count() < 1) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA trainer: no CUDA device");
    t->B = B; t->T = T; t->N = (int64_t)B * T; t->precision = precision;
    t->chunk = T < 32 ? T : 32;
    MBC_TRY(scan_check(B, T, d.Di, d.S, t->chunk));
    MBC_TRY(stream_create(&t->stream));
    MBC_TRY(event_create(&t->uploaded));
    stream_scope on(t->stream);
    {
        const char *e = getenv("MB_CUDA_GRAPH");
        t->graphs = !(e && e[0] == '0') && !sync_each_launch(); /* a captured launch cannot synchronise */
    }
    float *workspace = nullptr;
    MBC_TRY(dalloc(&t->mem, &workspace, MBC_BLAS_WORKSPACE / 4, "cuBLAS workspace"));
    MBC_TRY(blas_create(&t->blas, t->stream, workspace, MBC_BLAS_WORKSPACE));
    const int64_t N = t->N, P = d.nparams;
    MBC_TRY(dalloc(&t->mem, &t->params, P, "params"));
    MBC_TRY(dalloc(&t->mem, &t->grads, P, "grads"));
    MBC_TRY(dalloc(&t->mem, &t->adam_m, P, "adam m"));
    MBC_TRY(dalloc(&t->mem, &t->adam_v, P, "adam v"));
    MBC_TRY(dalloc(&t->mem, &t->decay_mask, P, "decay mask"));
    MBC_TRY(weights_point(&t->w, t->params, d));
    MBC_TRY(weights_point(&t->g, t->grads, d));
    MBC_TRY(dzero(t->params, (size_t)P * sizeof(float)));
    MBC_TRY(dzero(t->grads, (size_t)P * sizeof(float)));
    MBC_TRY(dzero(t->adam_m, (size_t)P * sizeof(float)));
    MBC_TRY(dzero(t->adam_v, (size_t)P * sizeof(float)));
    {
        uint8_t *mask = (uint8_t *)MB_MALLOC((size_t)P);
        if (!mask) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA trainer: decay mask");
        for (int i = 0; i < d.ntensors; i++) memset(mask + d.tensors[i].offset, d.tensors[i].weight_decay ? 1 : 0, (size_t)d.tensors[i].numel);
        mb_status s = h2d(t->decay_mask, mask, (size_t)P);
        MB_FREE(mask);
        MBC_TRY(s);
    }
    if (!(t->acts = (layer_acts *)MB_MALLOC(sizeof(layer_acts) * (size_t)d.L))) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA trainer: host tables");
    memset(t->acts, 0, sizeof(layer_acts) * (size_t)d.L);
    if (precision == MB_PRECISION_BF16) {
        const int64_t wa = N * (d.V > 2 * d.Di ? d.V : 2 * d.Di), wb = N * (d.C > d.Di ? d.C : d.Di);
        const int64_t per = mb_layer_acts_place(nullptr, nullptr, &d.cfg, B, T, 0, 1), lnf = (N * d.C + 1) / 2;
        float *copies = nullptr;
        MBC_TRY(dalloc(&t->mem, &t->params_bf16, P, "bf16 params"));
        MBC_TRY(dalloc(&t->mem, &t->bfa, wa > wb ? wa : wb, "bf16 scratch a"));
        MBC_TRY(dalloc(&t->mem, &t->bfb, wa > wb ? wa : wb, "bf16 scratch b"));
        MBC_TRY(dalloc(&t->mem, &copies, per * d.L + lnf, "bf16 activations"));
        for (int l = 0; l < d.L; l++) mb_layer_acts_place(&t->acts[l].bf, copies + per * l, &d.cfg, B, T, 0, 1);
        t->lnf_bf = copies + per * d.L;
        MBC_TRY(tr_refresh_bf16(t));
    }
    t->batch_bytes = sizeof(double) + sizeof(int64_t) * (size_t)(MBC_BUCKET_TABLE + N) + sizeof(int32_t) * (size_t)N + (size_t)N;
    MBC_TRY(dalloc(&t->mem, &t->batch, (int64_t)t->batch_bytes, "batch"));
    t->inv_valid = (double *)t->batch;
    t->bucket_off = (int64_t *)(t->inv_valid + 1);
    t->bucket_rows = t->bucket_off + MBC_BUCKET_TABLE;
    t->targets = (int32_t *)(t->bucket_rows + N);
    t->tokens = (uint8_t *)(t->targets + N);
    t->h_batch = (uint8_t *)hmalloc(t->batch_bytes);
    t->h_bucket = (int64_t *)(t->h_batch + sizeof(double));
    if (!t->h_batch) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA trainer: pinned batch");
    MBC_TRY(tr_alloc_chunked(t));
    float *dacts = nullptr;
    MBC_TRY(dalloc(&t->mem, &dacts, mb_layer_acts_place(nullptr, nullptr, &d.cfg, B, T, 0, 0), "activation gradients"));
    mb_layer_acts_place(&t->dacts, dacts, &d.cfg, B, T, 0, 0);
    MBC_TRY(dalloc(&t->mem, &dacts, mb_model_acts_place(nullptr, nullptr, &d.cfg, B, T, 2), "model activations"));
    mb_model_acts_place(&t->ma, dacts, &d.cfg, B, T, 2);
    MBC_TRY(dalloc(&t->mem, &t->norm_part, MBC_NORM_BLOCKS, "norm partials"));
    MBC_TRY(dalloc(&t->mem, &t->stats, 2, "step statistics"));
    MBC_TRY(dzero(t->stats, 2 * sizeof(double)));
    t->norm_dev = t->stats + 1;
    MBC_TRY(dalloc(&t->mem, &t->args_dev, 1, "update scalars"));
    t->h_stats = (double *)hmalloc(2 * sizeof(double));
    t->h_args = (adamw_args *)hmalloc(sizeof(adamw_args));
    if (!t->h_stats || !t->h_args) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA trainer: pinned step buffers");
    return sync();
}

static inline void nccl_free(mb_cuda_trainer *t);
static inline void tr_free(mb_cuda_trainer *t) {
    nccl_free(t);
    MB_FREE(t->host_grads);
    dlist_free(&t->mem);
    dlist_free(&t->chunk_mem);
    blas_destroy(t->blas);
    MB_FREE(t->d.tensors);
    MB_FREE(t->w.layer);
    MB_FREE(t->g.layer);
    hfree(t->h_batch);
    hfree(t->h_stats);
    hfree(t->h_args);
    MB_FREE(t->acts);
    graph_free(t->fb.exec);
    graph_free(t->update.exec);
    event_destroy(t->uploaded);
    stream_destroy(t->stream);
}

/* mb__mixer_forward: layer l's mixer from its norm's output; its last
   product adds into out (beta 1: out holds the residual, which the norm
   kernel copied there). */
static inline mb_status mixer_forward(mb_cuda_trainer *t, int l, float *out) {
    const dims &d = t->d;
    const mb_layer_weights *W = &t->w.layer[l];
    const mb_layer_acts *a = &t->acts[l].f, *ab = &t->acts[l].bf;
    /* a carried state (the CPU's layout): h in place, the window via conv_in */
    float *h = t->carry_host ? t->carry + (int64_t)l * t->B * (d.S + d.K) * d.Di : nullptr;
    float *win = h ? h + (int64_t)t->B * d.S * d.Di : nullptr;
    MBC_TRY(linear_forward(t, l, MB_TENSOR_IN_PROJ, a->xz, a->ln, d.C, 0.0f, ab->ln));
    if (win) MBC_TRY(conv1d_carry(win, a->conv_in, a->xz, t->B, t->T, d.Di, d.K));
    MBC_TRY(conv1d_forward(a->u, a->xz, W->conv_w, W->conv_b, t->B, t->T, d.Di, d.K, bf(ab->u), win ? a->conv_in : nullptr));
    MBC_TRY(linear_forward(t, l, MB_TENSOR_X_PROJ, a->xdbl, a->u, d.Di, 0.0f, ab->u));
    MBC_TRY(linear_forward(t, l, MB_TENSOR_DT_W, a->delta, a->xdbl, d.X));
    MBC_TRY(scan_forward(a->gated, a->states, t->scratch, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz, t->B,
                         t->T, d.Di, d.S, d.R, t->chunk, bf(ab->gated), h));
    return linear_forward(t, l, MB_TENSOR_OUT_PROJ, out, a->gated, d.Di, 1.0f, ab->gated);
}

/* mb_model_forward; uploaded: the batch (tokens included) is already on its way. */
static inline mb_status model_forward(mb_cuda_trainer *t, const uint8_t *inputs, bool uploaded = false) {
    const dims &d = t->d;
    if (!uploaded) MBC_TRY(h2d(t->tokens, inputs, (size_t)t->N));
    MBC_TRY(embedding_forward(t->acts[0].f.resid, t->tokens, t->w.wte, t->N, d.C));
    for (int l = 0; l < d.L; l++) {
        const mb_layer_acts *a = &t->acts[l].f;
        const mb_layer_weights *W = &t->w.layer[l];
        float *next = l + 1 < d.L ? t->acts[l + 1].f.resid : t->ma.resid_out;
        MBC_TRY(norm_forward(&d.cfg, a->ln, a->ln_mean, a->ln_rstd, a->resid, W->norm_w, W->norm_b, t->N, d.C, next,
                             bf(t->acts[l].bf.ln)));
        MBC_TRY(mixer_forward(t, l, next));
    }
    MBC_TRY(norm_forward(&d.cfg, t->ma.lnf, t->ma.lnf_mean, t->ma.lnf_rstd, t->ma.resid_out, t->w.norm_f_w, t->w.norm_f_b, t->N, d.C,
                         nullptr, bf(t->lnf_bf)));
    return linear_forward(t, -1, MB_TENSOR_LM_HEAD, t->ma.logits, t->ma.lnf, d.C, 0.0f, t->lnf_bf);
}

/* mb__mixer_backward: dln = the mixer's input gradient (overwritten),
   its parameters' gradients added.  The first writers overwrite (no
   memsets): the scan's d_u, z columns of d_xz and B/C columns of d_xdbl,
   the dt product's dt_low columns (beta 0) and the conv's x' columns. */
static inline mb_status mixer_backward(mb_cuda_trainer *t, int l, const float *dout, float *dln) {
    const dims &d = t->d;
    const mb_layer_weights *W = &t->w.layer[l], *G = &t->g.layer[l];
    const mb_layer_acts *a = &t->acts[l].f, *ab = &t->acts[l].bf, *g = &t->dacts;
    MBC_TRY(linear_backward(t, l, MB_TENSOR_OUT_PROJ, g->gated, 0.0f, dout, a->gated, d.Di, ab->gated));
    MBC_TRY(scan_backward(g->u, g->delta, G->dt_proj_b, G->A_log, g->xdbl, G->D, g->xz, t->scratch, g->gated, a->states, a->u,
                          a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz, t->B, t->T, d.Di, d.S, d.R, t->chunk, true));
    MBC_TRY(linear_backward(t, l, MB_TENSOR_DT_W, g->xdbl, 0.0f, g->delta, a->xdbl, d.X));
    MBC_TRY(linear_backward(t, l, MB_TENSOR_X_PROJ, g->u, 1.0f, g->xdbl, a->u, d.Di, ab->u));
    MBC_TRY(conv1d_backward(g->xz, G->conv_w, G->conv_b, t->scratch, g->u, a->xz, W->conv_w, W->conv_b, t->B, t->T, d.Di,
                            d.K, true, t->carry_host ? a->conv_in : nullptr));
    return linear_backward(t, l, MB_TENSOR_IN_PROJ, dln, 0.0f, g->xz, a->ln, d.C, ab->ln);
}

/* mb_model_backward from dlogits (the cross-entropy kernel wrote them over the logits). */
static inline mb_status model_backward(mb_cuda_trainer *t) {
    const dims &d = t->d;
    const mb_layer_acts *g = &t->dacts;
    MBC_TRY(linear_backward(t, -1, MB_TENSOR_LM_HEAD, g->ln, 0.0f, t->ma.logits, t->ma.lnf, d.C, t->lnf_bf));
    MBC_TRY(norm_backward(&d.cfg, g->resid, t->g.norm_f_w, t->g.norm_f_b, t->scratch, g->ln, t->ma.resid_out, t->w.norm_f_w,
                          t->ma.lnf_mean, t->ma.lnf_rstd, t->N, d.C, true));
    for (int l = d.L - 1; l >= 0; l--) {
        const mb_layer_acts *a = &t->acts[l].f;
        MBC_TRY(mixer_backward(t, l, g->resid, g->ln));
        MBC_TRY(norm_backward(&d.cfg, g->resid, t->g.layer[l].norm_w, t->g.layer[l].norm_b, t->scratch, g->ln, a->resid,
                              t->w.layer[l].norm_w, a->ln_mean, a->ln_rstd, t->N, d.C, false));
    }
    return embedding_backward(t->g.wte, t->scratch, g->resid, t->bucket_off, t->bucket_rows, t->N, d.C);
}

/* The stream's linear layers: one token, fp32 (mb__stream_linear). */
static inline mb_status stream_linear(mb_cuda_stream *s, int l, int field, float *out, const float *inp, int64_t ldi,
                                      float beta = 0.0f) {
    int IC, OC;
    const int64_t off = s->d.tensors[mb_tensor_matrix(&s->d.cfg, l, field, &IC, &OC)].offset;
    return matmul_forward(s->blas, out, inp, ldi, s->params + off, 1, IC, OC, beta);
}

/* Runs ops (one fixed sequence of this trainer's stream operations) as the
   graph c: eagerly the first time, then captured once and replayed.  A
   capture that fails (a driver or library that cannot capture) turns the
   graphs off for this trainer and runs ops eagerly, so the step goes on. */
static inline mb_status tr_run(mb_cuda_trainer *t, captured *c, mb_status (*ops)(mb_cuda_trainer *)) {
    if (!t->graphs || c->runs++ < 1) return ops(t);
    if (!c->exec) {
        mb_status s = capture_begin();
        if (s == MB_STATUS_OK) s = ops(t);
        if (s == MB_STATUS_OK) s = capture_end(&c->exec);
        if (s != MB_STATUS_OK) {
            capture_abort();
            graph_free(c->exec);
            c->exec = nullptr;
            t->graphs = 0;
            return ops(t);
        }
    }
    return graph_launch(c->exec);
}

/* The batch up, asynchronously: targets checked, the embedding backward's
   buckets, 1/valid rows for the loss.  n_valid: rows with a target. */
static inline mb_status tr_upload_batch(mb_cuda_trainer *t, const uint8_t *inputs, const int32_t *targets, int64_t *n_valid) {
    const int64_t N = t->N;
    int64_t n = 0;
    for (int64_t i = 0; i < N; i++) {
        if (targets[i] == MB_IGNORE_INDEX) continue;
        if (targets[i] < 0 || targets[i] >= t->d.V)
            return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA: target %d at row %lld is outside [0,%d)", targets[i], (long long)i, t->d.V);
        n++;
    }
    *n_valid = n;
    MBC_TRY(event_wait(t->uploaded)); /* the previous upload has left h_batch (long ago, as a rule) */
    *(double *)t->h_batch = n ? 1.0 / (double)n : 0.0;
    token_buckets(t->h_bucket, t->h_bucket + MBC_BUCKET_TABLE, inputs, N);
    memcpy(t->h_bucket + MBC_BUCKET_TABLE + N, targets, (size_t)N * sizeof(int32_t));
    memcpy((int32_t *)(t->h_bucket + MBC_BUCKET_TABLE + N) + N, inputs, (size_t)N);
    MBC_TRY(h2d_async(t->batch, t->h_batch, t->batch_bytes));
    return event_record(t->uploaded);
}

/* One micro-batch's forward, loss and backward on the uploaded batch; the
   loss (float) goes to loss_dev and is added (double) to stats[0]. */
static inline mb_status tr_forward_backward_ops(mb_cuda_trainer *t) {
    MBC_TRY(model_forward(t, nullptr, true));
    MBC_TRY(cross_entropy(t->ma.loss_rows, t->ma.logits, t->ma.logits, t->targets, t->N, t->d.V, MB_IGNORE_INDEX, 0.0f, nullptr, 0.0f, t->inv_valid));
    MBC_TRY(sum(t->ma.loss_dev, t->ma.loss_rows, t->N, 0.0, t->inv_valid, t->stats));
    return model_backward(t);
}

/* The carried state to the device (up) or back to the host, where the
   batcher resets rows and checkpoints read it: blocking copies. */
static inline mb_status tr_carry(mb_cuda_trainer *t, bool up) {
    const size_t bytes = sizeof(float) * (size_t)mb_carry_floats(&t->d.cfg, t->B);
    return !t->carry_host ? MB_STATUS_OK : up ? h2d(t->carry, t->carry_host, bytes) : d2h(t->carry_host, t->carry, bytes);
}

/* Submits one micro-batch (nothing waits for it, but a carried state's copies). */
static inline mb_status tr_submit_micro_batch(mb_cuda_trainer *t, const uint8_t *inputs, const int32_t *targets) {
    int64_t n_valid = 0;
    MBC_TRY(tr_upload_batch(t, inputs, targets, &n_valid));
    MBC_TRY(tr_carry(t, true));
    if (n_valid > 0) MBC_TRY(tr_run(t, &t->fb, tr_forward_backward_ops));
    else { /* as the CPU: NaN loss, zero gradient (no backward) */
        MBC_TRY(model_forward(t, nullptr, true));
        MBC_TRY(sum(t->ma.loss_dev, t->ma.loss_rows, 0, NAN, nullptr, t->stats));
    }
    return tr_carry(t, false);
}

/* Gradient scale and norm, clip, AdamW, the bf16 weights; the statistics
   copied out and the loss sum reset for the next step. */
static inline mb_status tr_update_ops(mb_cuda_trainer *t) {
    const int64_t P = t->d.nparams;
    MBC_TRY(grad_scale_sumsq(t->norm_dev, t->norm_part, t->grads, P, 1.0f, &t->args_dev->grad_scale));
    MBC_TRY(adamw_from_device(t->params, t->grads, t->adam_m, t->adam_v, t->decay_mask, P, t->args_dev, t->norm_dev, t->stats));
    MBC_TRY(tr_refresh_bf16(t)); /* (unchanged parameters when skipped) */
    MBC_TRY(d2h_async(t->h_stats, t->stats, 2 * sizeof(double)));
    return dzero(t->stats, sizeof(double));
}

/* Submits the update with its scalars and waits for it: the step's one
   synchronisation.  stats_out: [loss sum, squared norm]. */
static inline mb_status tr_update(mb_cuda_trainer *t, const adamw_args &a, double *stats_out) {
    *t->h_args = a; /* (the previous update has finished: it was waited for) */
    MBC_TRY(h2d_async(t->args_dev, t->h_args, sizeof(adamw_args)));
    MBC_TRY(tr_run(t, &t->update, tr_update_ops));
    MBC_TRY(sync());
    stats_out[0] = t->h_stats[0];
    stats_out[1] = t->h_stats[1];
    return MB_STATUS_OK;
}

/* ===================================================== data-parallel (NCCL) */
/* With MB_WITH_NCCL (the mambabyte_cuda_mpi build) the ranks' gradients
   are summed where they are, on the GPUs.  The host communicator (MPI)
   only bootstraps: rank 0's ncclUniqueId is broadcast through it.  Like
   the MPI sums, every rank ends with the same sum: deterministic sends
   each rank's buffer to rank 0, which adds them in rank order
   ((g_0 + g_1) + g_2 ...) and broadcasts the result; the default is
   ncclAllReduce (NCCL's own order: within float rounding of the rank-order
   sum). */
#if defined(MB_WITH_NCCL) && !defined(MB_CUDA_EMULATE)
} /* namespace mbc */
#include <nccl.h>
namespace mbc {
#define MBC_NCCL(call)                                                                                           \
    do {                                                                                                         \
        ncclResult_t e_ = (call);                                                                                \
        if (e_ != ncclSuccess)                                                                                   \
            return mb_set_error(MB_STATUS_CUDA_ERROR, "%s:%d: %s: %s", __FILE__, __LINE__, #call, ncclGetErrorString(e_)); \
    } while (0)

__global__ void add_kernel(float *x, const float *y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) x[i] += y[i];
}

/* Collective: every rank calls it.  NCCL over the ranks of comm. */
static inline mb_status nccl_create(mb_cuda_trainer *t, const mb_train_comm *comm) {
    ncclUniqueId id;
    double packed[sizeof id.internal / 4]; /* the id as 32-bit words: exact as doubles, whatever their bits */
    ncclComm_t c = nullptr;
    memset(&id, 0, sizeof id);
    if (comm->rank == 0) MBC_NCCL(ncclGetUniqueId(&id));
    for (size_t i = 0; i < sizeof packed / sizeof packed[0]; i++) {
        uint32_t w;
        memcpy(&w, id.internal + 4 * i, 4);
        packed[i] = (double)w;
    }
    if (comm->broadcast(comm->impl, packed, (int)(sizeof packed / sizeof packed[0])) != MB_STATUS_OK)
        return mb_set_error(MB_STATUS_IO_ERROR, "NCCL bootstrap: broadcast of the unique id: %s",
                    comm->last_error ? comm->last_error() : "failed");
    for (size_t i = 0; i < sizeof packed / sizeof packed[0]; i++) {
        const uint32_t w = (uint32_t)packed[i];
        memcpy(id.internal + 4 * i, &w, 4);
    }
    MBC_NCCL(ncclCommInitRank(&c, comm->size, id, comm->rank));
    t->nccl = c;
    if (comm->deterministic && comm->rank == 0)
        MBC_TRY(dalloc(&t->mem, &t->nccl_recv, t->d.nparams, "NCCL receive buffer"));
    return MB_STATUS_OK;
}

/* grads <- their sum over the ranks, the same bits on every rank. */
static inline mb_status nccl_sum_grads(mb_cuda_trainer *t, const mb_train_comm *comm) {
    ncclComm_t c = (ncclComm_t)t->nccl;
    const size_t P = (size_t)t->d.nparams;
    if (!comm->deterministic) {
        MBC_NCCL(ncclAllReduce(t->grads, t->grads, P, ncclFloat, ncclSum, c, g_stream));
        return MB_STATUS_OK;
    }
    if (comm->rank == 0) {
        const int blocks = (int)((P + 255) / 256 < 4096 ? (P + 255) / 256 : 4096);
        for (int r = 1; r < comm->size; r++) { /* rank order: the adds of one process with grad-accum N */
            MBC_NCCL(ncclRecv(t->nccl_recv, P, ncclFloat, r, c, g_stream));
            MBC_LAUNCH(add_kernel, blocks, 256, 0, t->grads, t->nccl_recv, (int64_t)P);
        }
    } else {
        MBC_NCCL(ncclSend(t->grads, P, ncclFloat, 0, c, g_stream));
    }
    MBC_NCCL(ncclBroadcast(t->grads, t->grads, P, ncclFloat, 0, c, g_stream));
    return MB_STATUS_OK;
}

static inline void nccl_free(mb_cuda_trainer *t) {
    if (t->nccl) (void)ncclCommDestroy((ncclComm_t)t->nccl);
    t->nccl = nullptr;
}
#else /* (and in the emulator): t->nccl stays NULL, the gradients go through host memory */
static inline mb_status nccl_create(mb_cuda_trainer *, const mb_train_comm *) { return MB_STATUS_OK; }
static inline mb_status nccl_sum_grads(mb_cuda_trainer *, const mb_train_comm *) { return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: no NCCL"); }
static inline void nccl_free(mb_cuda_trainer *) {}
#endif

/* grads <- their sum over the ranks: NCCL on the GPUs when the build has
   it, else down to the host, the communicator's sum_floats, and back up. */
static inline mb_status sum_grads(mb_cuda_trainer *t, const mb_train_comm *comm) {
    const size_t bytes = (size_t)t->d.nparams * sizeof(float);
    if (t->nccl) return nccl_sum_grads(t, comm);
    if (!t->host_grads && !(t->host_grads = (float *)MB_MALLOC(bytes))) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "host gradient buffer");
    MBC_TRY(d2h(t->host_grads, t->grads, bytes));
    if (comm->sum_floats(comm->impl, t->host_grads, t->d.nparams) != MB_STATUS_OK)
        return mb_set_error(MB_STATUS_IO_ERROR, "data-parallel: %s", comm->last_error ? comm->last_error() : "gradient sum failed");
    return h2d(t->grads, t->host_grads, bytes);
}

/* This process's GPU: its rank among the node's ranks, modulo the node's GPUs. */
static inline mb_status select_device(const mb_train_comm *comm) {
#ifndef MB_CUDA_EMULATE
    const int n = device_count();
    if (comm && comm->size > 1 && n > 0) MBC_CUDA(cudaSetDevice(comm->local_rank % n));
#else
    (void)comm;
#endif
    return MB_STATUS_OK;
}

/* 1 when ok is 1 on every rank (a sum of flags over the host communicator):
   the ranks all train on their GPUs or none does. */
static inline int all_ranks_ok(const mb_train_comm *comm, int ok) {
    double flag = ok ? 1.0 : 0.0;
    if (!comm || comm->size == 1) return ok;
    if (comm->sum_doubles(comm->impl, &flag, 1) != MB_STATUS_OK) return 0;
    return flag == (double)comm->size;
}

} /* namespace mbc */

/* ===================================================== entry points */

extern "C" {

int mb_cuda_device_count(void) { return mbc::device_count(); }
const char *mb_cuda_last_error(void) { return mb_last_error(); }

mb_status mb_cuda_trainer_create(mb_cuda_trainer **out, const mb_config *cfg, int B, int T, int precision) {
    *out = nullptr;
    mb_cuda_trainer *t = (mb_cuda_trainer *)MB_MALLOC(sizeof(mb_cuda_trainer));
    if (!t) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA trainer struct");
    memset(t, 0, sizeof *t);
    mb_status s = mbc::tr_create(t, cfg, B, T, precision);
    if (s != MB_STATUS_OK) mb_cuda_trainer_free(t);
    else *out = t;
    return s;
}

void mb_cuda_trainer_free(mb_cuda_trainer *t) {
    if (!t) return;
    mbc::tr_free(t);
    MB_FREE(t);
}

mb_status mb_cuda_trainer_set_scan_chunk(mb_cuda_trainer *t, int chunk) {
    MBC_TRY(mbc::scan_check(t->B, t->T, t->d.Di, t->d.S, chunk));
    if (chunk == t->chunk) return MB_STATUS_OK;
    t->chunk = chunk; /* the saved states used the old chunking: forward again before backward */
    return mbc::tr_alloc_chunked(t);
}

mb_status mb_cuda_trainer_upload(mb_cuda_trainer *t, const float *params, const float *adam_m, const float *adam_v) {
    mbc::stream_scope on(t->stream);
    const size_t bytes = (size_t)t->d.nparams * sizeof(float);
    MBC_TRY(mbc::h2d(t->params, params, bytes));
    MBC_TRY(adam_m ? mbc::h2d(t->adam_m, adam_m, bytes) : mbc::dzero(t->adam_m, bytes));
    MBC_TRY(adam_v ? mbc::h2d(t->adam_v, adam_v, bytes) : mbc::dzero(t->adam_v, bytes));
    return mbc::tr_refresh_bf16(t);
}

mb_status mb_cuda_trainer_download(mb_cuda_trainer *t, float *params, float *adam_m, float *adam_v) {
    mbc::stream_scope on(t->stream);
    const size_t bytes = (size_t)t->d.nparams * sizeof(float);
    if (params) MBC_TRY(mbc::d2h(params, t->params, bytes));
    if (adam_m) MBC_TRY(mbc::d2h(adam_m, t->adam_m, bytes));
    if (adam_v) MBC_TRY(mbc::d2h(adam_v, t->adam_v, bytes));
    return MB_STATUS_OK;
}

mb_status mb_cuda_trainer_forward_backward(mb_cuda_trainer *t, const uint8_t *inputs, const int32_t *targets,
                                           float *loss) {
    mbc::stream_scope on(t->stream);
    float l = NAN;
    MBC_TRY(mbc::tr_submit_micro_batch(t, inputs, targets));
    MBC_TRY(mbc::d2h(&l, t->ma.loss_dev, sizeof(float)));
    if (loss) *loss = l;
    return MB_STATUS_OK;
}

mb_status mb_cuda_trainer_forward_logits(mb_cuda_trainer *t, const uint8_t *inputs, float *logits_host) {
    mbc::stream_scope on(t->stream);
    MBC_TRY(mbc::tr_carry(t, true));
    MBC_TRY(mbc::model_forward(t, inputs));
    MBC_TRY(mbc::tr_carry(t, false));
    return mbc::d2h(logits_host, t->ma.logits, (size_t)(t->N * t->d.V) * sizeof(float));
}

mb_status mb_cuda_trainer_set_carry(mb_cuda_trainer *t, float *state) {
    mbc::stream_scope on(t->stream);
    if (state && !t->carry) MBC_TRY(mbc::dalloc(&t->mem, &t->carry, mb_carry_floats(&t->d.cfg, t->B), "carried state"));
    if (!state != !t->carry_host) { /* the captured step reads one or not: capture again */
        mbc::graph_free(t->fb.exec);
        t->fb.exec = nullptr;
    }
    t->carry_host = state;
    return MB_STATUS_OK;
}

mb_status mb_cuda_trainer_grads(mb_cuda_trainer *t, float *grads_host) {
    mbc::stream_scope on(t->stream);
    return mbc::d2h(grads_host, t->grads, (size_t)t->d.nparams * sizeof(float));
}

mb_status mb_cuda_trainer_zero_grad(mb_cuda_trainer *t) {
    mbc::stream_scope on(t->stream);
    return mbc::dzero(t->grads, (size_t)t->d.nparams * sizeof(float));
}

mb_status mb_cuda_trainer_update(mb_cuda_trainer *t, float grad_scale, double lr, double beta1, double beta2,
                                 double eps, double weight_decay, double clip, int64_t adam_step,
                                 double *grad_norm_out, int *applied_out) {
    mbc::stream_scope on(t->stream);
    double stats[2] = {0.0, 0.0};
    if (applied_out) *applied_out = 0;
    if (adam_step < 1) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA update: adam_step %lld", (long long)adam_step);
    /* norm, clip and update without a host round trip in between: the one
       synchronisation is the read of the norm at the end */
    MBC_TRY(mbc::tr_update(t, mbc::make_adamw_args(1.0f, lr, beta1, beta2, eps, weight_decay, adam_step, clip, grad_scale), stats));
    const double norm = sqrt(stats[1]);
    if (grad_norm_out) *grad_norm_out = norm;
    if (applied_out) *applied_out = isfinite(norm) ? 1 : 0;
    return MB_STATUS_OK;
}

mb_status mb_cuda_trainer_set_graphs(mb_cuda_trainer *t, int on) {
    if (on && mbc::sync_each_launch()) return mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA graphs: not with MB_CUDA_SYNC=1");
    t->graphs = on ? 1 : 0;
    return MB_STATUS_OK;
}
int mb_cuda_trainer_graphs(const mb_cuda_trainer *t) { return t->graphs; }

/* ---- the trainer backend: mb_trainer_step's policy (mb_trainer_step_on)
   on the GPU's kernels, and mb_trainer_sync.  The host trainer keeps the
   batcher, the step count and the testing hooks, so the loop
   (mb_train_run) is the same on both backends; the GPU holds the live
   parameters, gradients and moments, and sums the loss: the micro-batches
   are submitted without waiting, and the update is guarded on the device. */
static mb_status mbc_micro_batch(mb_trainer *tr, int, double *) {
    mb_cuda_trainer *g = (mb_cuda_trainer *)tr->backend.impl;
    if (tr->st.settings.carry_state) MBC_TRY(mb_cuda_trainer_set_carry(g, tr->carry_mb)); /* this micro-batch's rows */
    return mbc::tr_submit_micro_batch(g, tr->inputs, tr->targets);
}
/* The gradients on the GPUs (NCCL) or through the host, the loss on the host. */
static mb_status mbc_sum_ranks(mb_trainer *tr, double *) {
    mb_cuda_trainer *g = (mb_cuda_trainer *)tr->backend.impl;
    double loss_sum = 0.0;
    if (tr->comm->size == 1) return MB_STATUS_OK;
    MBC_TRY(mbc::sync()); /* the micro-batches were only submitted: comm_s starts when they are done */
    const double c0 = mb_clock_seconds();
    MBC_TRY(mbc::sum_grads(g, tr->comm));
    MBC_TRY(mbc::d2h(&loss_sum, g->stats, sizeof loss_sum)); /* waits, so comm_s holds NCCL's work too */
    if (tr->comm->sum_doubles(tr->comm->impl, &loss_sum, 1) != MB_STATUS_OK)
        return mb_set_error(MB_STATUS_IO_ERROR, "data-parallel: %s", tr->comm->last_error ? tr->comm->last_error() : "loss sum failed");
    MBC_TRY(mbc::h2d(g->stats, &loss_sum, sizeof loss_sum)); /* the device's guard reads the ranks' sum */
    tr->comm_s += mb_clock_seconds() - c0;
    return MB_STATUS_OK;
}
static mb_status mbc_update(mb_trainer *tr, double lr, float scale, int poison, double *loss_sum, double *grad_norm) {
    mb_cuda_trainer *g = (mb_cuda_trainer *)tr->backend.impl;
    const mb_train_settings *s = &tr->st.settings;
    double stats[2] = {0.0, 0.0};
    const float nan = NAN;
    if (poison) MBC_TRY(mbc::h2d(g->grads, &nan, sizeof nan)); /* the testing hook, as on the CPU: one NaN */
    mbc::adamw_args a = mbc::make_adamw_args(1.0f, lr, s->beta1, s->beta2, s->eps, s->weight_decay, tr->st.step + 1, s->clip, scale);
    a.guard = 1; /* a non-finite loss skips the update and drops the gradients */
    MBC_TRY(mbc::tr_update(g, a, stats));
    *loss_sum = stats[0];
    *grad_norm = isfinite(stats[0]) ? sqrt(stats[1]) : NAN; /* no norm is read after a non-finite loss */
    return MB_STATUS_OK;
}
static const mb_step_kernels mbc_kernels = {mbc_micro_batch, mbc_sum_ranks, mbc_update};
static mb_status mbc_backend_step(mb_trainer *tr, double lr, mb_step_result *r) {
    mbc::stream_scope on(((mb_cuda_trainer *)tr->backend.impl)->stream);
    return mb_trainer_step_on(tr, &mbc_kernels, lr, r);
}

static mb_status mbc_backend_sync(mb_trainer *tr) {
    return mb_cuda_trainer_download((mb_cuda_trainer *)tr->backend.impl, mb_model_params(tr->model), tr->st.adam_m,
                                    tr->st.adam_v);
}

static void mbc_backend_release(mb_trainer *tr) { mb_cuda_trainer_free((mb_cuda_trainer *)tr->backend.impl); }

mb_status mb_cuda_trainer_attach(mb_trainer *tr, int precision) {
    const mb_train_settings *s = &tr->st.settings;
    mb_cuda_trainer *g = nullptr;
    if (tr->backend.step) return mb_set_error(MB_STATUS_INVALID_ARGUMENT, "CUDA: the trainer already has a %s backend", tr->backend.name);
    const int ranks = tr->comm ? tr->comm->size : 1;
    mb_status st = mbc::device_check();
    if (st == MB_STATUS_OK) st = mbc::select_device(tr->comm);
    if (st == MB_STATUS_OK && s->batch * s->ctx > MBC_MAX_TOKENS)
        st = mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: batch %lld x ctx %lld is too large", (long long)s->batch, (long long)s->ctx);
    if (st == MB_STATUS_OK) st = mb_cuda_trainer_create(&g, mb_model_config(tr->model), (int)s->batch, (int)s->ctx, precision);
    if (st == MB_STATUS_OK) st = mb_cuda_trainer_upload(g, mb_model_params(tr->model), tr->st.adam_m, tr->st.adam_v);
    /* data-parallel: the ranks all attach (then NCCL joins them) or all stay on the CPU */
    if (ranks > 1 && !mbc::all_ranks_ok(tr->comm, st == MB_STATUS_OK) && st == MB_STATUS_OK)
        st = mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA: another rank could not use its GPU");
    if (st == MB_STATUS_OK && ranks > 1) st = mbc::nccl_create(g, tr->comm);
    if (st != MB_STATUS_OK) {
        mb_cuda_trainer_free(g);
        return st;
    }
    tr->backend.name = precision == MB_PRECISION_BF16 ? "cuda bf16" : precision == MB_PRECISION_TF32 ? "cuda tf32" : "cuda fp32";
    tr->backend.impl = g;
    tr->backend.step = mbc_backend_step;
    tr->backend.sync = mbc_backend_sync;
    tr->backend.release = mbc_backend_release;
    return MB_STATUS_OK;
}

mb_status mb_cuda_stream_create(mb_cuda_stream **out, const mb_config *cfg, const float *params) {
    *out = nullptr;
    mb_cuda_stream *s = (mb_cuda_stream *)MB_MALLOC(sizeof(mb_cuda_stream));
    if (!s) return mb_set_error(MB_STATUS_OUT_OF_MEMORY, "CUDA stream struct");
    memset(s, 0, sizeof *s);
    mb_status st = mbc::dims_init(&s->d, cfg);
    const mbc::dims &d = s->d;
    const int64_t acts = mb_layer_acts_place(nullptr, nullptr, &d.cfg, 1, 1, 0, 0);
    float *block = nullptr;
    if (st == MB_STATUS_OK && mbc::device_count() < 1) st = mb_set_error(MB_STATUS_UNSUPPORTED, "CUDA stream: no CUDA device");
    if (st == MB_STATUS_OK) st = mbc::blas_create(&s->blas);
    if (st == MB_STATUS_OK) st = mbc::dalloc(&s->mem, &s->params, d.nparams, "stream params");
    if (st == MB_STATUS_OK) st = mbc::weights_point(&s->w, s->params, d);
    if (st == MB_STATUS_OK) st = mbc::dalloc(&s->mem, &s->conv_state, (int64_t)d.L * d.Di * d.K, "conv state");
    if (st == MB_STATUS_OK) st = mbc::dalloc(&s->mem, &s->ssm_state, (int64_t)d.L * d.Di * d.S, "ssm state");
    if (st == MB_STATUS_OK) st = mbc::dalloc(&s->mem, &block, acts + d.V, "activations");
    if (st == MB_STATUS_OK) {
        mb_layer_acts_place(&s->a, block, &d.cfg, 1, 1, 0, 0);
        s->logits = block + acts;
        st = mbc::h2d(s->params, params, (size_t)d.nparams * sizeof(float));
    }
    if (st == MB_STATUS_OK) st = mb_cuda_stream_reset(s);
    if (st != MB_STATUS_OK) {
        mb_cuda_stream_free(s);
        return st;
    }
    *out = s;
    return MB_STATUS_OK;
}

mb_status mb_cuda_stream_reset(mb_cuda_stream *s) {
    const mbc::dims &d = s->d;
    MBC_TRY(mbc::dzero(s->conv_state, sizeof(float) * (size_t)d.L * d.Di * d.K));
    return mbc::dzero(s->ssm_state, sizeof(float) * (size_t)d.L * d.Di * d.S);
}

/* mb_stream_step on the device. */
mb_status mb_cuda_stream_step(mb_cuda_stream *s, uint8_t byte, float *logits_host) {
    const mbc::dims &d = s->d;
    const mb_layer_acts *a = &s->a;
    MBC_TRY(mbc::d2d(a->resid, s->w.wte + (int64_t)byte * d.C, sizeof(float) * (size_t)d.C));
    for (int l = 0; l < d.L; l++) {
        const mb_layer_weights *W = &s->w.layer[l];
        MBC_TRY(mbc::norm_forward(&d.cfg, a->ln, a->ln_mean, a->ln_rstd, a->resid, W->norm_w, W->norm_b, 1, d.C));
        MBC_TRY(mbc::stream_linear(s, l, MB_TENSOR_IN_PROJ, a->xz, a->ln, d.C));
        MBC_TRY(mbc::conv1d_step(a->u, s->conv_state + (int64_t)l * d.Di * d.K, a->xz, W->conv_w, W->conv_b, d.Di, d.K));
        MBC_TRY(mbc::stream_linear(s, l, MB_TENSOR_X_PROJ, a->xdbl, a->u, d.Di));
        MBC_TRY(mbc::stream_linear(s, l, MB_TENSOR_DT_W, a->delta, a->xdbl, d.X));
        MBC_TRY(mbc::scan_step(a->gated, s->ssm_state + (int64_t)l * d.Di * d.S, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl,
                               W->D, a->xz, d.Di, d.S, d.R));
        /* resid += out_proj(gated): the residual add as the product's beta */
        MBC_TRY(mbc::stream_linear(s, l, MB_TENSOR_OUT_PROJ, a->resid, a->gated, d.Di, 1.0f));
    }
    MBC_TRY(mbc::norm_forward(&d.cfg, a->ln, a->ln_mean, a->ln_rstd, a->resid, s->w.norm_f_w, s->w.norm_f_b, 1, d.C));
    MBC_TRY(mbc::stream_linear(s, -1, MB_TENSOR_LM_HEAD, s->logits, a->ln, d.C));
    return mbc::d2h(logits_host, s->logits, sizeof(float) * (size_t)d.V);
}

void mb_cuda_stream_free(mb_cuda_stream *s) {
    if (!s) return;
    mbc::dlist_free(&s->mem);
    mbc::blas_destroy(s->blas);
    MB_FREE(s->d.tensors);
    MB_FREE(s->w.layer);
    MB_FREE(s);
}

} /* extern "C" */

#endif /* MAMBABYTE_CUDA_IMPLEMENTATION */
