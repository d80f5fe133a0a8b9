/* mambabyte.h - byte-level Mamba (MambaByte) in one header: model, optimizer,
   data, checkpoints, streaming inference and numerics.        version 0.1.0

   WHAT
     A selective state-space language model over raw bytes (no tokenizer),
     trained and run in plain C (CPU, OpenMP) with an optional CUDA companion
     (mambabyte_cuda.cuh).  Float32 storage, float32-or-wider accumulation,
     log-sum-exp everywhere, and a scan that only ever multiplies decays <= 1.

   HOW TO USE
     In exactly one C or C++ file:
         #define MAMBABYTE_IMPLEMENTATION
         #include "mambabyte.h"
     Everywhere else just #include "mambabyte.h" for the declarations.

   BUILD FLAGS (define before the implementation include)
     MAMBABYTE_STATIC    make every function static (private to one file)
     MB_MALLOC(n), MB_FREE(p), MB_ASSERT(x)   override allocation / asserts
     MB_SCAN_CHUNK       time steps per chunk of the CPU scan (default 32)
     Compile with -fopenmp to parallelise; without it everything is serial.

   ERRORS
     The library never prints and never exits.  Every fallible call returns
     an mb_status; mb_status_string(s) names it and mb_last_error() gives the
     detail of the most recent failure on this thread (a path, an offset...).

   API OVERVIEW (details beside each declaration below)
     numerics    mb_softmax, mb_log_softmax, mb_logsumexp,
                 mb_cross_entropy_forward / _backward   (PyTorch semantics)
     model       mb_model_create/load/save/free, mb_model_forward/backward,
                 mb_model_params/grads (one flat block, checkpoint order)
     streaming   mb_stream_create/step/reset/copy/free: O(1) state per byte
     training    mb_adamw_*, mb_grads_norm, mb_lr_at_step / _at_fraction,
                 mb_sampler_* (random or sequential windows over mmapped bytes)
     files       mb_checkpoint_save/load (atomic: temp file, fsync, rename)
     eval        mb_eval_text: the WikiText char-accuracy protocol
     CUDA        mb_cuda_* (defined only when mambabyte_cuda.cuh is linked)

   NUMERICS SEMANTICS (match PyTorch's F.softmax, F.log_softmax,
   torch.logsumexp, F.cross_entropy with class-index targets), except:
     * A row that is entirely -inf: softmax is uniform 1/V, log_softmax is
       -log V, logsumexp is -inf, cross-entropy is log V with the uniform
       gradient.  PyTorch returns NaN there; this is the one deliberate
       difference (an input with no signal gets the maximum-entropy answer).
     * -inf entries get probability 0.  +inf entries share the row's mass
       evenly (the limit).  A NaN anywhere in a row makes that row's outputs
       NaN: never hidden.
     * Cross-entropy: rows whose target is ignore_index add 0 loss and 0
       gradient; MEAN divides by the number of non-ignored rows (all ignored:
       NaN under MEAN, 0 under SUM); NONE writes 0 for ignored rows; label
       smoothing eps gives (1-eps)*nll + eps*mean_i(-log p_i); a target
       outside [0,V) that is not ignore_index is MB_STATUS_INVALID_ARGUMENT
       and nothing is written; a target whose logit is -inf costs +inf.

   CHECKPOINT FORMAT (little-endian; see mb_checkpoint_save)
     256 int32 header: [0] magic 0x4D425954 [1] version 1 [2] vocab_size
     [3] d_model [4] n_layer [5] d_state [6] d_conv [7] expand [8] dt_rank
     [9] norm kind (0 LayerNorm) [10] tied head (1) [11] param dtype
     (0 float32) [12] training state follows (0/1), the rest 0.
     Then every parameter as float32 in mb_model_tensor_info order
     (PyTorch state_dict names of the reference model):
       embedding.weight (256, d_model)
       per layer i: layers.i.norm.weight, layers.i.norm.bias (d_model),
         layers.i.mixer.in_proj.weight (2*d_inner, d_model),
         layers.i.mixer.conv1d.weight (d_inner, 1, d_conv),
         layers.i.mixer.conv1d.bias (d_inner),
         layers.i.mixer.x_proj.weight (dt_rank + 2*d_state, d_inner),
         layers.i.mixer.dt_proj.weight (d_inner, dt_rank),
         layers.i.mixer.dt_proj.bias (d_inner),
         layers.i.mixer.A_log (d_inner, d_state), layers.i.mixer.D (d_inner),
         layers.i.mixer.out_proj.weight (d_model, d_inner)
       norm_f.weight, norm_f.bias (d_model)
     When [12] is 1 the training state follows (see mb_checkpoint_save).

   LICENSE: MIT, at the end of this file.
*/
#ifndef MAMBABYTE_H
#define MAMBABYTE_H

#include <stddef.h>
#include <stdint.h>

#define MB_VERSION_STRING "0.1.0"

#ifndef MBDEF
#ifdef MAMBABYTE_STATIC
#if defined(__GNUC__)
#define MBDEF static __attribute__((unused))
#else
#define MBDEF static
#endif
#else
#define MBDEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */
typedef enum {
    MB_STATUS_OK = 0,
    MB_STATUS_INVALID_ARGUMENT,
    MB_STATUS_OUT_OF_MEMORY,
    MB_STATUS_IO_ERROR,
    MB_STATUS_BAD_FORMAT,
    MB_STATUS_NON_FINITE,
    MB_STATUS_UNSUPPORTED,
    MB_STATUS_CUDA_ERROR
} mb_status;

MBDEF const char *mb_status_string(mb_status s);
/* Detail of the most recent failure on this thread ("" when none). */
MBDEF const char *mb_last_error(void);

/* -------------------------------------------------------------- numerics */
/* x and out are (rows, V) row-major; out may alias x. */
MBDEF void mb_softmax(float *out, const float *x, int64_t rows, int64_t V);
MBDEF void mb_log_softmax(float *out, const float *x, int64_t rows, int64_t V);
MBDEF void mb_logsumexp(float *out /* rows */, const float *x, int64_t rows, int64_t V);

typedef enum { MB_REDUCTION_MEAN = 0, MB_REDUCTION_SUM = 1, MB_REDUCTION_NONE = 2 } mb_reduction;
typedef struct {
    int32_t ignore_index;
    mb_reduction reduction;
    float label_smoothing;
} mb_ce_options;
MBDEF mb_ce_options mb_ce_options_default(void); /* ignore_index -100, MEAN, 0.0 */
/* loss: 1 value, or rows values for NONE.  opt may be NULL (defaults). */
MBDEF mb_status mb_cross_entropy_forward(float *loss, const float *logits, const int32_t *targets,
                                         int64_t rows, int64_t V, const mb_ce_options *opt);
/* dlogits (rows, V) is overwritten; dloss: 1 value, or rows values for NONE. */
MBDEF mb_status mb_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                          const int32_t *targets, int64_t rows, int64_t V,
                                          const mb_ce_options *opt);

#ifdef __cplusplus
}
#endif
#endif /* MAMBABYTE_H */

/* ======================================================================= */
/*                             IMPLEMENTATION                              */
/* ======================================================================= */
#if defined(MAMBABYTE_IMPLEMENTATION) && !defined(MB__IMPLEMENTATION_DONE)
#define MB__IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MB_MALLOC
#define MB_MALLOC(n) malloc(n)
#define MB_FREE(p) free(p)
#endif
#ifndef MB_ASSERT
#include <assert.h>
#define MB_ASSERT(x) assert(x)
#endif

#if defined(_MSC_VER)
#define MB__THREAD_LOCAL __declspec(thread)
#else
#define MB__THREAD_LOCAL __thread
#endif

/* OpenMP pragmas through a macro so a build without -fopenmp stays warning-free. */
#ifdef _OPENMP
#include <omp.h>
#define MB__PRAGMA(x) _Pragma(#x)
#define MB__OMP(x) MB__PRAGMA(omp x)
#else
#define MB__OMP(x)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================ utilities */

static MB__THREAD_LOCAL char mb__error_text[512];

MBDEF const char *mb_last_error(void) { return mb__error_text; }

/* Records the detail of a failure and returns its status, so callers write
   `return mb__fail(MB_STATUS_IO_ERROR, "cannot open %s", path);`. */
static mb_status mb__fail(mb_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mb__error_text, sizeof mb__error_text, fmt, ap);
    va_end(ap);
    return s;
}

MBDEF const char *mb_status_string(mb_status s) {
    switch (s) {
    case MB_STATUS_OK: return "ok";
    case MB_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case MB_STATUS_OUT_OF_MEMORY: return "out of memory";
    case MB_STATUS_IO_ERROR: return "i/o error";
    case MB_STATUS_BAD_FORMAT: return "bad file format";
    case MB_STATUS_NON_FINITE: return "non-finite value";
    case MB_STATUS_UNSUPPORTED: return "unsupported";
    case MB_STATUS_CUDA_ERROR: return "cuda error";
    }
    return "unknown status";
}

/* ============================================================= numerics */
/* Every row-wise function first classifies its row once (mb__row_stats):
   the max-shift m and log of the shifted sum, or one of the three special
   cases.  Everything else (probabilities, log-probabilities, losses) is
   derived from that in a second pass, so no exp() ever sees a positive
   argument and no log() ever sees a probability. */

typedef enum {
    MB__ROW_FINITE = 0, /* max finite: logp_i = x_i - m - log_sum */
    MB__ROW_POSINF,     /* some +inf: mass split over n_posinf entries */
    MB__ROW_ALLNEGINF,  /* every entry -inf: uniform by convention */
    MB__ROW_NAN         /* a NaN somewhere: outputs NaN */
} mb__row_kind;

typedef struct {
    mb__row_kind kind;
    float max;        /* the shift m (finite rows) */
    double log_sum;   /* log sum_i exp(x_i - m), >= 0 */
    int64_t n_posinf; /* number of +inf entries (POSINF rows) */
} mb__row;

static mb__row mb__row_stats(const float *x, int64_t V) {
    mb__row r;
    int64_t i;
    float m = -INFINITY;
    double sum = 0.0;
    r.kind = MB__ROW_FINITE;
    r.n_posinf = 0;
    r.log_sum = 0.0;
    for (i = 0; i < V; i++) {
        if (isnan(x[i])) { r.kind = MB__ROW_NAN; r.max = NAN; return r; }
        if (x[i] > m) m = x[i];
    }
    r.max = m;
    if (m == INFINITY) {
        for (i = 0; i < V; i++) r.n_posinf += (x[i] == INFINITY);
        r.kind = MB__ROW_POSINF;
        return r;
    }
    if (m == -INFINITY) { r.kind = MB__ROW_ALLNEGINF; return r; }
    for (i = 0; i < V; i++) sum += (double)expf(x[i] - m); /* each term <= 1 */
    r.log_sum = log(sum);                                  /* sum >= 1 */
    return r;
}

/* log p_i for one entry of a classified row. */
static double mb__row_logp(const mb__row *r, float xi, int64_t V) {
    switch (r->kind) {
    case MB__ROW_FINITE: return ((double)xi - (double)r->max) - r->log_sum;
    case MB__ROW_POSINF: return xi == INFINITY ? -log((double)r->n_posinf) : -INFINITY;
    case MB__ROW_ALLNEGINF: return -log((double)V);
    case MB__ROW_NAN: break;
    }
    return NAN;
}

/* p_i for one entry of a classified row. */
static double mb__row_p(const mb__row *r, float xi, int64_t V) {
    switch (r->kind) {
    case MB__ROW_FINITE: return exp(((double)xi - (double)r->max) - r->log_sum);
    case MB__ROW_POSINF: return xi == INFINITY ? 1.0 / (double)r->n_posinf : 0.0;
    case MB__ROW_ALLNEGINF: return 1.0 / (double)V;
    case MB__ROW_NAN: break;
    }
    return NAN;
}

MBDEF void mb_softmax(float *out, const float *x, int64_t rows, int64_t V) {
    int64_t r;
    MB__OMP(parallel for if (rows * V > 65536))
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * V;
        float *orow = out + r * V;
        mb__row st = mb__row_stats(xr, V);
        int64_t i;
        for (i = 0; i < V; i++) orow[i] = (float)mb__row_p(&st, xr[i], V);
    }
}

MBDEF void mb_log_softmax(float *out, const float *x, int64_t rows, int64_t V) {
    int64_t r;
    MB__OMP(parallel for if (rows * V > 65536))
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * V;
        float *orow = out + r * V;
        mb__row st = mb__row_stats(xr, V);
        int64_t i;
        for (i = 0; i < V; i++) orow[i] = (float)mb__row_logp(&st, xr[i], V);
    }
}

MBDEF void mb_logsumexp(float *out, const float *x, int64_t rows, int64_t V) {
    int64_t r;
    MB__OMP(parallel for if (rows * V > 65536))
    for (r = 0; r < rows; r++) {
        mb__row st = mb__row_stats(x + r * V, V);
        switch (st.kind) {
        case MB__ROW_FINITE: out[r] = (float)((double)st.max + st.log_sum); break;
        case MB__ROW_POSINF: out[r] = INFINITY; break;
        case MB__ROW_ALLNEGINF: out[r] = -INFINITY; break;
        case MB__ROW_NAN: out[r] = NAN; break;
        }
    }
}

MBDEF mb_ce_options mb_ce_options_default(void) {
    mb_ce_options o;
    o.ignore_index = -100;
    o.reduction = MB_REDUCTION_MEAN;
    o.label_smoothing = 0.0f;
    return o;
}

/* Validates options and targets; counts the non-ignored rows. */
static mb_status mb__ce_check(const int32_t *targets, int64_t rows, int64_t V,
                              const mb_ce_options *o, int64_t *n_valid) {
    int64_t r, n = 0;
    if (rows < 0 || V < 1) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "cross-entropy: rows %lld, V %lld", (long long)rows, (long long)V);
    if (!(o->label_smoothing >= 0.0f && o->label_smoothing <= 1.0f))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "cross-entropy: label_smoothing %g not in [0,1]", (double)o->label_smoothing);
    if ((unsigned)o->reduction > MB_REDUCTION_NONE) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "cross-entropy: bad reduction");
    for (r = 0; r < rows; r++) {
        int32_t t = targets[r];
        if (t == o->ignore_index) continue;
        if (t < 0 || (int64_t)t >= V)
            return mb__fail(MB_STATUS_INVALID_ARGUMENT, "cross-entropy: target %d at row %lld is outside [0,%lld)", t, (long long)r, (long long)V);
        n++;
    }
    *n_valid = n;
    return MB_STATUS_OK;
}

/* Loss of one non-ignored row: (1-eps)*(-log p_y) + eps*mean_i(-log p_i). */
static double mb__ce_row_loss(const float *x, int64_t V, int32_t y, float eps) {
    mb__row st = mb__row_stats(x, V);
    double nll = -mb__row_logp(&st, x[y], V), loss = (1.0 - (double)eps) * nll;
    if (eps > 0.0f) {
        double s = 0.0;
        int64_t i;
        for (i = 0; i < V; i++) s -= mb__row_logp(&st, x[i], V);
        loss += (double)eps * s / (double)V;
    }
    return loss;
}

MBDEF mb_status mb_cross_entropy_forward(float *loss, const float *logits, const int32_t *targets,
                                         int64_t rows, int64_t V, const mb_ce_options *opt) {
    mb_ce_options o = opt ? *opt : mb_ce_options_default();
    int64_t n_valid = 0, r;
    double total = 0.0;
    mb_status s = mb__ce_check(targets, rows, V, &o, &n_valid);
    if (s != MB_STATUS_OK) return s;
    if (o.reduction == MB_REDUCTION_NONE) {
        MB__OMP(parallel for if (rows * V > 65536))
        for (r = 0; r < rows; r++)
            loss[r] = targets[r] == o.ignore_index ? 0.0f
                    : (float)mb__ce_row_loss(logits + r * V, V, targets[r], o.label_smoothing);
        return MB_STATUS_OK;
    }
    /* serial sum in row order: the result does not depend on thread count */
    for (r = 0; r < rows; r++)
        if (targets[r] != o.ignore_index) total += mb__ce_row_loss(logits + r * V, V, targets[r], o.label_smoothing);
    if (o.reduction == MB_REDUCTION_MEAN) total = n_valid > 0 ? total / (double)n_valid : NAN;
    loss[0] = (float)total;
    return MB_STATUS_OK;
}

MBDEF mb_status mb_cross_entropy_backward(float *dlogits, const float *dloss, const float *logits,
                                          const int32_t *targets, int64_t rows, int64_t V,
                                          const mb_ce_options *opt) {
    mb_ce_options o = opt ? *opt : mb_ce_options_default();
    int64_t n_valid = 0, r;
    double eps;
    mb_status s = mb__ce_check(targets, rows, V, &o, &n_valid);
    if (s != MB_STATUS_OK) return s;
    eps = (double)o.label_smoothing;
    MB__OMP(parallel for if (rows * V > 65536))
    for (r = 0; r < rows; r++) {
        const float *x = logits + r * V;
        float *dx = dlogits + r * V;
        int32_t y = targets[r];
        double g;
        mb__row st;
        int64_t i;
        if (y == o.ignore_index) { memset(dx, 0, (size_t)V * sizeof(float)); continue; }
        if (o.reduction == MB_REDUCTION_NONE) g = dloss[r];
        else if (o.reduction == MB_REDUCTION_SUM) g = dloss[0];
        else g = (double)dloss[0] / (double)n_valid;
        st = mb__row_stats(x, V);
        for (i = 0; i < V; i++) {
            double target_p = eps / (double)V + (i == y ? 1.0 - eps : 0.0);
            dx[i] = (float)((mb__row_p(&st, x[i], V) - target_p) * g);
        }
    }
    return MB_STATUS_OK;
}

#ifdef __cplusplus
}
#endif

#endif /* MAMBABYTE_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
MIT License

Copyright (c) 2026 the mambabyte authors

Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
*/
