/* cuda_emu.h - a small CUDA launch emulator for the host (C++17, Linux).

   WHAT IT IS
     Enough of the CUDA C++ device dialect to compile the kernels of
     mambabyte_cuda.cuh with an ordinary host compiler and run them on the
     CPU: __global__/__device__/__shared__, dim3, threadIdx/blockIdx/
     blockDim/gridDim, __syncthreads, __syncwarp, __shfl_sync,
     __shfl_xor_sync, __shfl_down_sync, __shfl_up_sync, atomicAdd (float),
     the fast-math intrinsics (__expf, __logf, rsqrtf, __fdividef), a bf16
     type, and cuda_emu::launch(kernel, grid, block, smem_bytes, args...).

     Every block of a grid runs in turn; inside a block every CUDA thread is
     a cooperative fiber with its own stack (ucontext makecontext/swapcontext;
     on x86-64 without ASan a minimal register switch, see below), so __syncthreads and the warp shuffles really synchronise: a
     fiber that reaches a barrier is parked until every thread of the block
     (or every lane named in the shuffle's mask) has arrived.  __shared__
     becomes `static`: blocks never overlap in time, so one static object
     per kernel is exactly "one copy per block".  Dynamic shared memory
     (MBC_DYNAMIC_SHARED in the .cuh) is a buffer refilled with 0xFF bytes
     (NaN as float) before every block, so a read before a write shows.

   WHAT A PASSING EMULATOR TEST PROVES
     * the kernel's arithmetic and indexing agree with the CPU spec for the
       sizes tested (including ragged tails: grid and block shapes, the
       `if (i < n)` guards, chunk remainders);
     * barrier and shuffle discipline: a __syncthreads reached by only part
       of a block, a thread that exits while others wait at a barrier, a
       shuffle whose mask names a lane that is absent or that never arrives,
       lanes of one shuffle disagreeing on the mask, or lanes of a warp
       meeting at shuffles of different call sites all abort with a
       message (they deadlock or are undefined on hardware); reading a lane
       outside the mask yields all-ones bits (NaN as float), so a value
       that is undefined on hardware shows if it is used;
     * no dependence on the order threads run between two barriers, nor on
       the order of blocks: set_schedule() runs threads forwards, backwards
       or shuffled and blocks in any order, and a test can demand bitwise
       identical results across schedules (a shared-memory race or an
       inter-block race that changes a result then shows as a mismatch);
     * launch limits: at most 1024 threads per block, block.z <= 64,
       grid.y/z <= 65535, static (declared with the .cuh's MBC_SHARED) plus
       dynamic shared memory within 48 KiB unless func_set_max_dynamic_smem
       (cudaFuncSetAttribute) opted the kernel in, up to 227 KiB; device
       allocations 256-byte aligned as cudaMalloc's;
     * a count of stream operations (g.ops: kernels, GEMMs, memsets,
       copies, counted where they run) and of host submissions
       (g.submissions: eager operations and graph launches), so a test can
       hold the launches per step to a budget;
     * stream capture (capture_begin / capture_end / launch_graph, the
       cudaStreamBeginCapture .. cudaGraphLaunch of the .cuh): while a
       capture is open every stream operation is recorded with its
       arguments by value, as CUDA records kernel parameters, and a graph
       launch replays them in order, reading host memory (pinned buffers)
       when it runs; a synchronising call inside a capture (a blocking copy,
       a stream or event wait), which invalidates the capture on a GPU,
       aborts with a message;
     * with -fsanitize=address, out-of-bounds global/shared accesses
       (fiber stacks are announced to ASan with the fiber-switch API).

   WHAT IT CANNOT PROVE
     * timing, occupancy, register pressure, bank conflicts, coalescing;
     * real-hardware races: fibers switch only at barriers/shuffles, so a
       missing __syncthreads between a write and a read in *different*
       warps is caught only when a schedule order exposes it, and a missing
       __syncwarp inside a warp (independent thread scheduling on sm_70+)
       is not modelled at all;
     * the CUDA memory model (visibility without fences, volatile, weak
       ordering of global memory across blocks) and atomics' contention:
       everything here is sequentially consistent;
     * device math accuracy: expf/logf/__expf are the host libm's, not the
       GPU's (which differ by a few ulp; __expf by more);
     * cuBLAS: the .cuh swaps its GEMM wrapper for a CPU product under
       MB_CUDA_EMULATE; the real cuBLAS calls run only on a GPU
       (tests/cuda_gpu_test.cu).
*/
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <sys/mman.h>
#include <tuple>
#include <ucontext.h>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
#ifdef CUDA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
/* Fibers are created and switched with ucontext (makecontext/swapcontext)
   off x86-64.  glibc's swapcontext makes a sigprocmask system call per
   switch (~50x slower), so on x86-64 a register switch (callee-saved
   registers + stack pointer, the SysV ABI's contract) is used instead;
   ASan is told about every switch either way.  Define
   CUDA_EMU_USE_UCONTEXT to force ucontext. */
#if defined(__x86_64__) && !defined(CUDA_EMU_USE_UCONTEXT)
#define CUDA_EMU_FAST_SWITCH 1
#endif

/* ------------------------------------------------------- the device dialect */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned x, y, z; };
/* float4 as CUDA's (16-byte aligned); may_alias: kernels store it over float arrays */
struct __attribute__((aligned(16), may_alias)) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
static const int warpSize = 32;

#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <class T> static inline T __ldg(const T *p) { return *p; }

namespace cuda_emu {

/* Aborts with a message: a discipline violation is a bug in the kernel. */
[[noreturn]] inline void die(const char *what, const char *detail = "") {
    std::fprintf(stderr, "cuda_emu: %s %s (block %u,%u,%u thread %u,%u,%u)\n", what, detail, blockIdx.x,
                 blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::fflush(stderr);
    std::abort();
}

enum WaitKind { RUNNING = 0, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
    ucontext_t ctx;
    void *sp = nullptr; /* fast switch: saved stack pointer */
    char *stack = nullptr;
    size_t stack_size = 0;
    uint3 tid = {0, 0, 0};
    int linear = 0;
    WaitKind wait = RUNNING;
    unsigned wait_gen = 0;
#ifdef CUDA_EMU_ASAN
    void *fake_stack = nullptr;
#endif
};

struct Warp {
    unsigned gen = 0, arrived = 0, mask = 0, lanes = 0; /* lanes: bit per existing thread */
    const char *site_file = nullptr; /* the shuffle call site of this round (nullptr: __syncwarp) */
    int site_line = 0;
    uint64_t vals[2][32]; /* double-buffered by barrier parity: one barrier per shuffle */
};

struct State {
    /* configuration */
    unsigned schedule_seed = 0; /* 0 forward, 1 reverse, else shuffled with this seed */
    size_t stack_size = 256 * 1024;
    /* per launch */
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<int> order;
    unsigned block_gen = 0, block_arrived = 0, nthreads = 0, ndone = 0;
    Fiber *current = nullptr;
    ucontext_t sched;
    void *sched_sp = nullptr;
    void (*body)(void *) = nullptr;
    void *body_arg = nullptr;
    std::vector<unsigned char> dyn_smem;
    size_t dyn_smem_bytes = 0;
    uint64_t launches = 0, blocks_run = 0;
    /* stream operations, counted for the launch budget: kernels (launch()),
       and, from the .cuh's emulated platform layer, GEMMs, memsets, copies */
    struct { uint64_t kernels = 0, gemms = 0, memsets = 0, copies = 0; } ops;
    uint64_t submissions = 0; /* host calls that put work on a stream: eager operations, graph launches */
    struct Graph *capturing = nullptr; /* the open stream capture, if any */
    /* static shared memory of the running launch: (address, bytes) per array */
    std::vector<std::pair<const void *, size_t>> static_smem;
    size_t static_smem_bytes = 0, smem_limit = 48 * 1024;
    const void *kernel = nullptr;
    std::vector<std::pair<const void *, size_t>> smem_optin; /* cudaFuncSetAttribute(MaxDynamicSharedMemorySize) */
#ifdef CUDA_EMU_ASAN
    const void *sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};
inline thread_local State g;

/* A kernel's static __shared__ array (MBC_SHARED in the .cuh): static plus
   dynamic shared memory must fit 48 KiB, or the opted-in maximum. */
inline void note_static_smem(const void *p, size_t bytes) {
    for (auto &e : g.static_smem)
        if (e.first == p) return;
    g.static_smem.emplace_back(p, bytes);
    g.static_smem_bytes += bytes;
    if (g.static_smem_bytes + g.dyn_smem_bytes > g.smem_limit) {
        char msg[96];
        std::snprintf(msg, sizeof msg, "(%zu static + %zu dynamic bytes > %zu)", g.static_smem_bytes, g.dyn_smem_bytes,
                      g.smem_limit);
        die("shared memory beyond the limit", msg);
    }
}

inline void set_schedule(unsigned seed) { g.schedule_seed = seed; }

/* Stream capture.  A graph is the recorded operations, run in order. */
struct Graph {
    std::vector<std::function<void()>> ops;
};
/* One stream operation: recorded while a capture is open, else run now. */
inline void stream_op(std::function<void()> op) {
    if (g.capturing) {
        g.capturing->ops.push_back(std::move(op));
        return;
    }
    g.submissions++;
    op();
}
/* A call that waits for the stream (or reads pageable host memory now):
   illegal inside a capture. */
inline void host_sync(const char *what) {
    if (g.capturing) die("synchronising call inside a stream capture:", what);
}
inline void capture_begin() {
    if (g.capturing) die("stream capture begun twice", "");
    g.capturing = new Graph;
}
inline Graph *capture_end() {
    if (!g.capturing) die("stream capture ended without a begin", "");
    Graph *gr = g.capturing;
    g.capturing = nullptr;
    return gr;
}
inline void launch_graph(Graph *gr) {
    if (g.capturing) die("graph launch inside a stream capture", "");
    g.submissions++;
    for (auto &op : gr->ops) op();
}
inline void delete_graph(Graph *gr) { delete gr; }
inline uint64_t stream_ops() { return g.ops.kernels + g.ops.gemms + g.ops.memsets + g.ops.copies; }

/* Device allocations are 256-byte aligned, as cudaMalloc's (a kernel's
   vector loads may rely on it). */
inline void *device_alloc(size_t bytes) {
    void *p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return nullptr;
    return p;
}
inline void device_free(void *p) { std::free(p); }

#ifdef CUDA_EMU_FAST_SWITCH
/* Saves rbp rbx r12-r15 on the current stack, stores rsp in *save, loads
   `to` as rsp, pops the other side's registers and returns into it. */
__attribute__((naked, noinline)) static void fast_switch(void ** /* save */, void * /* to */) {
    __asm__ volatile("pushq %rbp\n\t"
                     "pushq %rbx\n\t"
                     "pushq %r12\n\t"
                     "pushq %r13\n\t"
                     "pushq %r14\n\t"
                     "pushq %r15\n\t"
                     "movq %rsp, (%rdi)\n\t"
                     "movq %rsi, %rsp\n\t"
                     "popq %r15\n\t"
                     "popq %r14\n\t"
                     "popq %r13\n\t"
                     "popq %r12\n\t"
                     "popq %rbx\n\t"
                     "popq %rbp\n\t"
                     "ret\n\t");
}
#endif
inline void *dynamic_smem() { return g.dyn_smem.data(); }

/* Park the running fiber and return to the block scheduler. */
inline void yield_to_scheduler() {
    Fiber *f = g.current;
#ifdef CUDA_EMU_ASAN
    __sanitizer_start_switch_fiber(f->wait == DONE ? nullptr : &f->fake_stack, g.sched_bottom, g.sched_size);
#endif
#ifdef CUDA_EMU_FAST_SWITCH
    fast_switch(&f->sp, g.sched_sp);
#else
    swapcontext(&f->ctx, &g.sched);
#endif
#ifdef CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &g.sched_bottom, &g.sched_size);
#endif
}

inline void fiber_entry() {
#ifdef CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g.sched_bottom, &g.sched_size);
#endif
    g.body(g.body_arg);
    Fiber *f = g.current;
    if (g.block_arrived > 0) die("thread exited while others wait at __syncthreads");
    g.ndone++;
    f->wait = DONE;
    yield_to_scheduler(); /* never resumed */
    die("resumed a finished fiber");
}

inline void syncthreads() {
    if (g.ndone > 0) die("__syncthreads reached after some threads of the block exited");
    Fiber *f = g.current;
    unsigned gen = g.block_gen;
    if (++g.block_arrived == g.nthreads) {
        g.block_arrived = 0;
        g.block_gen++;
        return;
    }
    f->wait = WAIT_BLOCK;
    f->wait_gen = gen;
    yield_to_scheduler();
}

/* Warp barrier among the lanes of mask; every lane must name the same mask
   and, for a shuffle, come from the same call site (file, line): shuffles
   at different sites do not exchange values on hardware. */
inline void warp_barrier(unsigned mask, const char *file = nullptr, int line = 0) {
    Fiber *f = g.current;
    Warp &w = g.warps[(size_t)f->linear / 32];
    unsigned lane = (unsigned)f->linear % 32;
    if (!(mask >> lane & 1u)) die("shuffle/syncwarp mask does not include the calling lane");
    if (mask & ~w.lanes) die("shuffle/syncwarp mask names lanes that do not exist in this warp");
    if (w.arrived == 0) {
        w.mask = mask;
        w.site_file = file;
        w.site_line = line;
    } else if (w.mask != mask) die("lanes of one warp disagree on the shuffle/syncwarp mask");
    else if (w.site_line != line || (w.site_file != file && (!file || !w.site_file || std::strcmp(file, w.site_file))))
        die("lanes of one warp meet at different shuffle/syncwarp call sites");
    unsigned gen = w.gen;
    if (++w.arrived == (unsigned)__builtin_popcount(mask)) {
        w.arrived = 0;
        w.gen++;
        return;
    }
    f->wait = WAIT_WARP;
    f->wait_gen = gen;
    yield_to_scheduler();
}

enum ShflMode { SHFL_IDX, SHFL_XOR, SHFL_DOWN, SHFL_UP };
template <class T> inline T shfl(unsigned mask, T v, int arg, int width, ShflMode mode, const char *file, int line) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    if (width < 1 || width > 32 || (width & (width - 1))) die("shuffle width must be a power of two <= 32");
    Fiber *f = g.current;
    Warp &w = g.warps[(size_t)f->linear / 32];
    int lane = f->linear % 32, seg = lane & ~(width - 1), src = lane;
    switch (mode) {
    case SHFL_IDX: src = seg + (arg & (width - 1)); break;
    case SHFL_XOR: src = lane ^ arg; if ((src & ~(width - 1)) != seg) src = lane; break;
    case SHFL_DOWN: src = lane + arg; if (src >= seg + width) src = lane; break;
    case SHFL_UP: src = lane - arg; if (src < seg) src = lane; break;
    }
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    /* The buffer of this barrier's parity: a lane can publish into it again
       only after the next barrier, which every lane reaches after reading. */
    uint64_t *vals = w.vals[w.gen & 1u];
    vals[lane] = bits;
    warp_barrier(mask, file, line); /* every lane has published */
    T r;
    /* A lane outside the mask (absent or not participating) gives an
       undefined value on hardware: here all-ones bits (NaN for floats). */
    bits = (mask >> src & 1u) ? vals[src] : ~(uint64_t)0;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

/* Runs one block: one fiber per thread, resumed in the scheduling order
   until all are done; aborts on deadlock. */
inline void run_block(unsigned nthreads) {
    const unsigned nwarps = (nthreads + 31) / 32;
    if (g.fibers.size() < nthreads) g.fibers.resize(nthreads);
    g.warps.assign(nwarps, Warp());
    for (unsigned i = 0; i < nthreads; i++) g.warps[i / 32].lanes |= 1u << (i % 32);
    g.nthreads = nthreads;
    g.ndone = 0;
    g.block_arrived = 0;
    for (unsigned i = 0; i < nthreads; i++) {
        Fiber &f = g.fibers[i];
        if (!f.stack || f.stack_size != g.stack_size) {
            if (f.stack) munmap(f.stack, f.stack_size);
            void *p = mmap(nullptr, g.stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) die("cannot map a fiber stack");
            f.stack = (char *)p;
            f.stack_size = g.stack_size;
        }
#ifdef CUDA_EMU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size); /* stale frames of the last block */
        f.fake_stack = nullptr;
#endif
        f.linear = (int)i;
        f.tid.x = i % blockDim.x;
        f.tid.y = (i / blockDim.x) % blockDim.y;
        f.tid.z = i / (blockDim.x * blockDim.y);
        f.wait = RUNNING;
#ifdef CUDA_EMU_FAST_SWITCH
        { /* a frame fast_switch can return into: 6 registers, then fiber_entry
             with the stack aligned as after a call */
            uintptr_t top = ((uintptr_t)f.stack + f.stack_size) & ~(uintptr_t)15;
            void **sp = (void **)top;
            *--sp = nullptr;                      /* fiber_entry's (never used) return address */
            *--sp = (void *)&fiber_entry;         /* fast_switch's ret lands here */
            for (int r = 0; r < 6; r++) *--sp = nullptr;
            f.sp = sp;
        }
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = f.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, (void (*)())fiber_entry, 0);
#endif
    }
    g.order.resize(nthreads);
    for (unsigned i = 0; i < nthreads; i++) g.order[i] = (int)i;
    uint64_t rng = (uint64_t)g.schedule_seed * 0x9E3779B97F4A7C15ull + g.blocks_run;
    for (;;) {
        if (g.schedule_seed == 1) std::reverse(g.order.begin(), g.order.end());
        else if (g.schedule_seed > 1)
            for (unsigned i = nthreads; i > 1; i--) { /* Fisher-Yates per round */
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                std::swap(g.order[i - 1], g.order[(rng >> 33) % i]);
            }
        bool progress = false;
        for (unsigned k = 0; k < nthreads; k++) {
            Fiber &f = g.fibers[(size_t)g.order[k]];
            if (f.wait == DONE) continue;
            if (f.wait == WAIT_BLOCK && f.wait_gen == g.block_gen) continue;
            if (f.wait == WAIT_WARP && f.wait_gen == g.warps[(size_t)f.linear / 32].gen) continue;
            f.wait = RUNNING;
            g.current = &f;
            threadIdx = f.tid;
#ifdef CUDA_EMU_ASAN
            void *fake = nullptr;
            __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
#endif
#ifdef CUDA_EMU_FAST_SWITCH
            fast_switch(&g.sched_sp, f.sp);
#else
            swapcontext(&g.sched, &f.ctx);
#endif
#ifdef CUDA_EMU_ASAN
            __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
            g.current = nullptr;
            progress = true;
        }
        if (g.ndone == nthreads) break;
        if (!progress) {
            threadIdx = {0, 0, 0};
            die("deadlock: threads wait at a barrier or shuffle that others never reach");
        }
    }
    g.blocks_run++;
}

template <class... P> struct Call {
    void (*kernel)(P...);
    std::tuple<P...> args;
    static void run(void *self) {
        Call *c = (Call *)self;
        std::apply(c->kernel, c->args);
    }
};

/* One kernel launch, run now. */
template <class... P> inline void run_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, const std::tuple<P...> &targs) {
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z; /* (launch() refused a launch from inside a kernel) */
    if (nthreads == 0 || nthreads > 1024 || block.z > 64) die("bad block shape");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) die("bad grid shape");
    size_t optin = 0;
    for (auto &e : g.smem_optin)
        if (e.first == (const void *)kernel) optin = e.second;
    g.smem_limit = optin ? 227 * 1024 : 48 * 1024;
    if (smem_bytes > (optin ? optin : 48 * 1024))
        die("dynamic shared memory beyond 48 KiB without cudaFuncSetAttribute, or beyond the opted-in size");
    g.static_smem.clear();
    g.static_smem_bytes = 0;
    g.kernel = (const void *)kernel;
    g.ops.kernels++;
    Call<P...> call{kernel, targs};
    g.body = &Call<P...>::run;
    g.body_arg = &call;
    g.dyn_smem.assign(smem_bytes ? smem_bytes : 1, 0xFF);
    g.dyn_smem_bytes = smem_bytes;
    gridDim = grid;
    blockDim = block;
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    std::vector<uint64_t> border(nblocks);
    for (uint64_t i = 0; i < nblocks; i++) border[i] = i;
    if (g.schedule_seed == 1) std::reverse(border.begin(), border.end());
    else if (g.schedule_seed > 1) {
        uint64_t rng = g.schedule_seed * 0xD1B54A32D192ED03ull + g.launches;
        for (uint64_t i = nblocks; i > 1; i--) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            std::swap(border[i - 1], border[(rng >> 33) % i]);
        }
    }
    for (uint64_t k = 0; k < nblocks; k++) {
        uint64_t b = border[k];
        blockIdx.x = (unsigned)(b % grid.x);
        blockIdx.y = (unsigned)((b / grid.x) % grid.y);
        blockIdx.z = (unsigned)(b / ((uint64_t)grid.x * grid.y));
        if (smem_bytes) std::memset(g.dyn_smem.data(), 0xFF, smem_bytes);
        run_block((unsigned)nthreads);
    }
    g.launches++;
    blockIdx = {0, 0, 0};
    threadIdx = {0, 0, 0};
}

/* kernel<<<grid, block, smem, stream>>>(args...): the arguments are taken
   by value now, the kernel runs now or when its graph is launched. */
template <class... P, class... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
    if (g.current) die("launch from inside a kernel", "");
    std::tuple<P...> targs(std::forward<A>(args)...);
    stream_op([=] { run_launch(kernel, grid, block, smem_bytes, targs); });
}

/* cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) */
template <class... P> inline void func_set_max_dynamic_smem(void (*kernel)(P...), size_t bytes) {
    if (bytes > 227 * 1024) die("cudaFuncAttributeMaxDynamicSharedMemorySize beyond 227 KiB");
    for (auto &e : g.smem_optin)
        if (e.first == (const void *)kernel) { e.second = bytes; return; }
    g.smem_optin.emplace_back((const void *)kernel, bytes);
}

} /* namespace cuda_emu */

/* --------------------------------------------------- device builtins */
static inline void __syncthreads() { cuda_emu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emu::warp_barrier(mask); }
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return cuda_emu::shfl(mask, v, src, width, cuda_emu::SHFL_IDX, file, line);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return cuda_emu::shfl(mask, v, lane_mask, width, cuda_emu::SHFL_XOR, file, line);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return cuda_emu::shfl(mask, v, (int)delta, width, cuda_emu::SHFL_DOWN, file, line);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return cuda_emu::shfl(mask, v, (int)delta, width, cuda_emu::SHFL_UP, file, line);
}
/* Single OS thread: an atomic is a plain read-modify-write. */
static inline float atomicAdd(float *p, float v) { float old = *p; *p = old + v; return old; }
static inline int atomicAdd(int *p, int v) { int old = *p; *p = old + v; return old; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned old = *p; *p = old + v; return old; }

/* bfloat16: storage as the top 16 bits of a float, round to nearest even. */
struct __nv_bfloat16 { uint16_t x; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.x = (uint16_t)((u >> 16) | 0x40u); return r; } /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    r.x = (uint16_t)(u >> 16);
    return r;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

#endif /* CUDA_EMU_H */
