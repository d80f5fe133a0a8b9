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

/* POSIX (fsync, mmap, getpid) under strict -std=c99: this must come before
   the first system header of the translation unit. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

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


/* ----------------------------------------------------------------- model */
typedef struct {
    int32_t vocab_size, d_model, n_layer, d_state, d_conv, expand, dt_rank;
} mb_config;
/* Seed 000's model: 256, 192, 4, 16, 4, 2, 12 (about 1.06M parameters). */
MBDEF mb_config mb_config_default(void);
/* MB_STATUS_OK when every field is in range (dt_rank 0 means ceil(d_model/16)
   and is filled in); otherwise INVALID_ARGUMENT with the reason. */
MBDEF mb_status mb_config_validate(mb_config *cfg);

/* One parameter tensor of the flat block (checkpoint order). */
typedef struct {
    char name[64];      /* PyTorch state_dict name, e.g. "layers.0.mixer.A_log" */
    int64_t offset;     /* in floats from the start of the block */
    int64_t numel;
    int ndim;
    int64_t shape[3];
    int weight_decay;   /* 1 for tensors with >= 2 dims except A_log */
} mb_tensor_info;
/* Fills out[0..n) (out may be NULL) and returns n, the number of tensors. */
MBDEF int mb_config_tensors(const mb_config *cfg, mb_tensor_info *out);
MBDEF int64_t mb_config_num_params(const mb_config *cfg);

typedef struct mb_model mb_model;
MBDEF mb_status mb_model_create(mb_model **out, const mb_config *cfg, uint64_t seed);
MBDEF mb_status mb_model_load(mb_model **out, const char *path);      /* any checkpoint */
MBDEF mb_status mb_model_save(const mb_model *m, const char *path);   /* atomic, no training state */
MBDEF void mb_model_free(mb_model *m);
MBDEF const mb_config *mb_model_config(const mb_model *m);
MBDEF int64_t mb_model_num_params(const mb_model *m);
MBDEF float *mb_model_params(mb_model *m); /* flat, in checkpoint order */
MBDEF float *mb_model_grads(mb_model *m);  /* same layout */
/* inputs, targets (targets may be NULL: no loss) are (B, T); the loss is the
   mean cross-entropy over targets that are not -100.  Keeps what backward needs. */
MBDEF mb_status mb_model_forward(mb_model *m, const uint8_t *inputs, const int32_t *targets,
                                 int B, int T, float *loss);
MBDEF const float *mb_model_logits(const mb_model *m); /* (B, T, 256) of the last forward */
MBDEF mb_status mb_model_backward(mb_model *m);         /* grads += d(mean CE)/d(params) */
MBDEF void mb_model_zero_grad(mb_model *m);
/* Time steps per scan chunk (states are kept only at chunk boundaries). */
MBDEF mb_status mb_model_set_scan_chunk(mb_model *m, int chunk);

/* ------------------------------------------------------------- streaming */
/* Per layer a conv_state (d_inner x d_conv) and an ssm_state (d_inner x
   d_state): O(1) memory and work per byte, no context window. */
typedef struct mb_stream mb_stream;
MBDEF mb_status mb_stream_create(mb_stream **out, const mb_model *m);
MBDEF void mb_stream_reset(mb_stream *s);
MBDEF const float *mb_stream_step(mb_stream *s, uint8_t byte); /* logits (256) for the next byte */
MBDEF mb_status mb_stream_copy(mb_stream *dst, const mb_stream *src);
MBDEF void mb_stream_free(mb_stream *s);

/* ------------------------------------------------------- CPU layer kernels */
/* The readable specification every CUDA kernel is checked against.  Shapes
   in the comments: N = B*T tokens, C = d_model, Di = d_inner, S = d_state,
   K = d_conv, R = dt_rank, X = R + 2S.  Gradients accumulate (+=) unless
   noted; all are deterministic whatever the thread count. */
MBDEF void mb__embedding_forward(float *out, const uint8_t *tokens, const float *wte, int64_t N, int C);
MBDEF void mb__embedding_backward(float *dwte, const float *dout, const uint8_t *tokens, int64_t N, int C);
MBDEF void mb__layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                 const float *b, int64_t N, int C);
MBDEF void mb__layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                  const float *w, const float *mean, const float *rstd, int64_t N, int C);
MBDEF void mb__matmul_forward(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC);
MBDEF void mb__matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                               const float *w, int64_t N, int IC, int OC);
MBDEF void mb__conv1d_forward(float *out, const float *xz, const float *w, const float *bias,
                              int B, int T, int Di, int K);
MBDEF void mb__conv1d_backward(float *dxz, float *dw, float *dbias, const float *dout, const float *xz,
                               const float *w, const float *bias, int B, int T, int Di, int K);
MBDEF void mb__scan_forward(float *out, float *states, const float *u, const float *delta, const float *dt_bias,
                            const float *A_log, const float *xdbl, const float *Dp, const float *xz,
                            int B, int T, int Di, int S, int R, int chunk);
/* scratch: B * (Di*S + 2*Di) floats (per-sequence partial sums, so the result
   does not depend on the thread count). */
MBDEF void mb__scan_backward(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                             float *dxz, float *scratch, const float *dout, const float *states, const float *u,
                             const float *delta, const float *dt_bias, const float *A_log, const float *xdbl,
                             const float *Dp, const float *xz, int B, int T, int Di, int S, int R, int chunk);


/* ----------------------------------------------------------- checkpoints */
/* Everything a run needs to continue bit-identically.  settings holds the
   run's flags (see mb_train_settings), so a resume can check them. */
typedef struct {
    int64_t batch, ctx, steps, warmup, grad_accum, save_every, seed;
    int32_t schedule;          /* 0 step, 1 time */
    int32_t sequential;        /* 1: consecutive windows instead of random ones */
    double lr, weight_decay, clip, beta1, beta2, eps, time_budget;
} mb_train_settings;
typedef struct {
    int64_t step;              /* optimizer steps completed */
    uint64_t data_rng;         /* the batch sampler's RNG state */
    int64_t data_pos;          /* the sequential sampler's position */
    double elapsed_s;          /* training time already spent (time schedule) */
    float *adam_m, *adam_v;    /* num_params each, owned by the caller */
    mb_train_settings settings;
} mb_train_state;

/* Writes the model (and, when ts != NULL, the training state) atomically:
   a temporary file beside path, fsync, rename, fsync of the folder.  On any
   failure the previous file at path is untouched. */
MBDEF mb_status mb_checkpoint_save(const char *path, const mb_model *m, const mb_train_state *ts);
/* Loads a checkpoint.  ts may be NULL; otherwise, when the file holds a
   training state, ts->adam_m/adam_v are allocated with MB_MALLOC (free
   with mb_train_state_free) and *has_state is set to 1. */
MBDEF mb_status mb_checkpoint_load(const char *path, mb_model **out, mb_train_state *ts, int *has_state);
MBDEF void mb_train_state_free(mb_train_state *ts);


/* --------------------------------------------------------------- training */
/* The learning rate at optimizer step s (0-based) of S: linear warm-up over
   W steps to lr_max, then cosine to 0 at step S. */
MBDEF double mb_lr_at_step(double lr_max, int64_t s, int64_t W, int64_t S);
/* The same shape over a fraction f in [0,1] of a time budget, warm-up over
   the fraction wf: reaches 0 at f = 1. */
MBDEF double mb_lr_at_fraction(double lr_max, double f, double wf);
/* sqrt(sum g^2) over n values, accumulated in double, in a fixed order. */
MBDEF double mb_grad_norm(const float *g, int64_t n);
/* PyTorch's clip_grad_norm_ coefficient: min(1, max_norm / (norm + 1e-6)). */
MBDEF float mb_clip_coef(double norm, double max_norm);
/* One AdamW update (torch.optim.AdamW semantics) of every parameter;
   t is the 1-based step; decay per tensor from mb_tensor_info.weight_decay. */
MBDEF void mb_adamw_update(mb_model *m, float *adam_m, float *adam_v, int64_t t, double lr, double beta1,
                           double beta2, double eps, double weight_decay);

/* ------------------------------------------------------------------- data */
typedef struct {
    const uint8_t *data; /* NULL when size is 0 */
    int64_t size;
    void *map_base;
    size_t map_len;
} mb_mapped_file;
/* Memory-maps a whole file read-only (the 541 MB WikiText-103 train split is
   never copied). */
MBDEF mb_status mb_map_file(mb_mapped_file *f, const char *path);
MBDEF void mb_unmap_file(mb_mapped_file *f);

/* Windows of T+1 bytes: inputs are bytes [0,T), targets bytes [1,T+1). */
typedef struct {
    const uint8_t *data;
    int64_t size;
    uint64_t rng;   /* random windows: splitmix64 state */
    int64_t pos;    /* sequential windows: next start */
    int sequential;
} mb_sampler;
MBDEF void mb_sampler_init(mb_sampler *s, const uint8_t *data, int64_t size, uint64_t seed, int sequential);
MBDEF mb_status mb_sampler_next(mb_sampler *s, uint8_t *inputs, int32_t *targets, int B, int T);

/* Length (1-4) of the valid UTF-8 character at s[0..n), or 0 if invalid
   (overlong forms, surrogates, > U+10FFFF and truncation are invalid). */
MBDEF int mb_utf8_char_len(const uint8_t *s, int64_t n);

/* ------------------------------------------------------------------- eval */
/* The WikiText char-level benchmark protocol: take the first max_chars
   Unicode characters of text (all of it if max_chars < 0); reset the
   stream, feed one 0x00 byte; then for each character predict the argmax
   over bytes 0..127 of the next-byte logits, count it correct when that byte
   is the character, and feed all of the character's UTF-8 bytes.  Also
   bits per byte and byte accuracy (argmax over 0..255) over the same bytes. */
typedef struct {
    int64_t chars, chars_correct, bytes, bytes_correct;
    double nll_bits;  /* sum of -log2 p(byte) */
} mb_eval_result;
typedef void (*mb_progress_fn)(void *user, int64_t done, int64_t total);
/* Invalid UTF-8 is MB_STATUS_BAD_FORMAT naming the byte offset; nothing is
   evaluated then.  progress (may be NULL) is called every 1024 characters. */
MBDEF mb_status mb_eval_text(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                             mb_eval_result *r, mb_progress_fn progress, void *user);

/* ---------------------------------------------------------------- trainer */
/* One optimizer step = grad_accum micro-batches of (batch, ctx), averaged;
   then the global norm, the non-finite guard, clipping and AdamW. */
typedef struct {
    mb_model *model;           /* borrowed */
    mb_train_state st;         /* step, sampler position, moments, settings */
    mb_sampler sampler;
    uint8_t *inputs;
    int32_t *targets;
    int64_t inject_nonfinite_step; /* testing hook: poison the gradient at this step (-1: never) */
} mb_trainer;
typedef struct {
    float loss;                /* mean over the micro-batches */
    double grad_norm;          /* before clipping */
    double lr;
    int applied;               /* 0 when the step was skipped as non-finite */
} mb_step_result;
/* settings must be complete (see mb_train_settings); data is the training
   text.  When resume is non-NULL its step, sampler state and moments are
   taken over (ownership of adam_m/adam_v moves to the trainer). */
MBDEF mb_status mb_trainer_init(mb_trainer *t, mb_model *m, const mb_train_settings *settings, const uint8_t *data,
                                int64_t size, mb_train_state *resume);
MBDEF mb_status mb_trainer_step(mb_trainer *t, double lr, mb_step_result *r);
/* The update half of mb_trainer_step, for callers that feed their own
   batches: the model's grads hold the sum over grad_accum micro-batches of
   d(mean loss)/d(params) and loss is their mean loss. */
MBDEF mb_status mb_trainer_apply(mb_trainer *t, double lr, float loss, mb_step_result *r);
MBDEF mb_status mb_trainer_save(const mb_trainer *t, const char *path);
MBDEF void mb_trainer_free(mb_trainer *t);


/* ------------------------------------------------------------------- CUDA */
/* Defined only by mambabyte_cuda.cuh's implementation (link its object).
   Plain extern, never MBDEF: they live in the CUDA translation unit.
   Parameters, gradients and AdamW moments are flat float32 blocks in
   checkpoint order, as mb_model_params.  See mambabyte_cuda.cuh. */
#define MB_CUDA_API_DECLARED
int mb_cuda_device_count(void);            /* 0 without a GPU or driver: never fails */
const char *mb_cuda_last_error(void);      /* "file:line: call: reason" of the last failure */
typedef struct mb_cuda_trainer mb_cuda_trainer;
/* precision: 0 fp32, 1 bf16 matrix inputs (float32 master weights, moments, scan, CE) */
mb_status mb_cuda_trainer_create(mb_cuda_trainer **out, const mb_config *cfg, int B, int T, int precision);
void mb_cuda_trainer_free(mb_cuda_trainer *t);
mb_status mb_cuda_trainer_set_scan_chunk(mb_cuda_trainer *t, int chunk); /* 1..64, default min(T,32) */
mb_status mb_cuda_trainer_upload(mb_cuda_trainer *t, const float *params, const float *adam_m, const float *adam_v);
mb_status mb_cuda_trainer_download(mb_cuda_trainer *t, float *params, float *adam_m, float *adam_v);
/* grads += d(mean CE)/d(params), as mb_model_forward + mb_model_backward */
mb_status mb_cuda_trainer_forward_backward(mb_cuda_trainer *t, const uint8_t *inputs, const int32_t *targets, float *loss);
mb_status mb_cuda_trainer_forward_logits(mb_cuda_trainer *t, const uint8_t *inputs, float *logits_host);
mb_status mb_cuda_trainer_grads(mb_cuda_trainer *t, float *grads_host);
mb_status mb_cuda_trainer_zero_grad(mb_cuda_trainer *t);
/* g *= grad_scale; norm; if finite: clip and one AdamW step (adam_step 1-based);
   gradients zeroed either way; *applied_out = 0 when the norm was not finite */
mb_status mb_cuda_trainer_update(mb_cuda_trainer *t, float grad_scale, double lr, double beta1, double beta2,
                                 double eps, double weight_decay, double clip, int64_t adam_step,
                                 double *grad_norm_out, int *applied_out);
typedef struct mb_cuda_stream mb_cuda_stream;
mb_status mb_cuda_stream_create(mb_cuda_stream **out, const mb_config *cfg, const float *params);
mb_status mb_cuda_stream_step(mb_cuda_stream *s, uint8_t byte, float *logits_host);
mb_status mb_cuda_stream_reset(mb_cuda_stream *s);
void mb_cuda_stream_free(mb_cuda_stream *s);

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
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

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
    char text[sizeof mb__error_text]; /* fmt's arguments may be mb_last_error() itself */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(mb__error_text, text, sizeof text);
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


/* ================================================================= RNG */
/* splitmix64: tiny, seedable, and its whole state is one integer, so a
   checkpoint can store it and resume exactly. */
static uint64_t mb__rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double mb__rng_uniform(uint64_t *state) { /* [0, 1) */
    return (double)(mb__rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}
static double mb__rng_normal(uint64_t *state) {
    double u1 = 1.0 - mb__rng_uniform(state), u2 = mb__rng_uniform(state); /* u1 in (0,1] */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ============================================================ numerics+ */
static float mb__sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    {
        float e = expf(x);
        return e / (1.0f + e);
    }
}
/* PyTorch's softplus (beta 1, threshold 20). */
static float mb__softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static float mb__softplus_grad(float x) { return x > 20.0f ? 1.0f : mb__sigmoid(x); }
static float mb__silu(float x) { return x * mb__sigmoid(x); }
static float mb__silu_grad(float x) {
    float s = mb__sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

/* ============================================================== config */
MBDEF mb_config mb_config_default(void) {
    mb_config c;
    c.vocab_size = 256;
    c.d_model = 192;
    c.n_layer = 4;
    c.d_state = 16;
    c.d_conv = 4;
    c.expand = 2;
    c.dt_rank = 12;
    return c;
}

#define MB__MAX_STATE 256
#define MB__SCAN_HBUF 4096 /* floats of h kept per channel per chunk: chunk * d_state <= this */
#ifndef MB_SCAN_CHUNK
#define MB_SCAN_CHUNK 32
#endif

MBDEF mb_status mb_config_validate(mb_config *c) {
    if (c->dt_rank == 0 && c->d_model > 0) c->dt_rank = (c->d_model + 15) / 16;
    if (c->vocab_size != 256) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "vocab_size must be 256 (bytes), got %d", c->vocab_size);
    if (c->d_model < 1 || c->d_model > 65536) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_model %d out of range [1, 65536]", c->d_model);
    if (c->n_layer < 1 || c->n_layer > 1024) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "n_layer %d out of range [1, 1024]", c->n_layer);
    if (c->d_state < 1 || c->d_state > MB__MAX_STATE) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_state %d out of range [1, %d]", c->d_state, MB__MAX_STATE);
    if (c->d_conv < 1 || c->d_conv > 64) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_conv %d out of range [1, 64]", c->d_conv);
    if (c->expand < 1 || c->expand > 16) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "expand %d out of range [1, 16]", c->expand);
    if (c->dt_rank < 1 || c->dt_rank > 65536) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "dt_rank %d out of range [1, 65536]", c->dt_rank);
    if ((int64_t)c->d_model * c->expand > 1048576) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_inner %lld too large", (long long)c->d_model * c->expand);
    return MB_STATUS_OK;
}

static void mb__tensor(mb_tensor_info *out, int *n, int64_t *offset, const char *name, int ndim,
                       int64_t d0, int64_t d1, int64_t d2, int decay) {
    if (out) {
        mb_tensor_info *t = &out[*n];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->offset = *offset;
        t->ndim = ndim;
        t->shape[0] = d0;
        t->shape[1] = ndim > 1 ? d1 : 1;
        t->shape[2] = ndim > 2 ? d2 : 1;
        t->numel = t->shape[0] * t->shape[1] * t->shape[2];
        t->weight_decay = decay;
    }
    *offset += d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
    (*n)++;
}

/* The sizes table, in checkpoint order: the one place the layout lives. */
MBDEF int mb_config_tensors(const mb_config *c, mb_tensor_info *out) {
    int n = 0, l;
    int64_t off = 0, C = c->d_model, Di = (int64_t)c->d_model * c->expand, S = c->d_state;
    char name[64];
    mb__tensor(out, &n, &off, "embedding.weight", 2, c->vocab_size, C, 1, 1);
    for (l = 0; l < c->n_layer; l++) {
#define MB__T(suffix, ndim, d0, d1, d2, decay) \
    (snprintf(name, sizeof name, "layers.%d.%s", l, suffix), mb__tensor(out, &n, &off, name, ndim, d0, d1, d2, decay))
        MB__T("norm.weight", 1, C, 1, 1, 0);
        MB__T("norm.bias", 1, C, 1, 1, 0);
        MB__T("mixer.in_proj.weight", 2, 2 * Di, C, 1, 1);
        MB__T("mixer.conv1d.weight", 3, Di, 1, c->d_conv, 1);
        MB__T("mixer.conv1d.bias", 1, Di, 1, 1, 0);
        MB__T("mixer.x_proj.weight", 2, c->dt_rank + 2 * S, Di, 1, 1);
        MB__T("mixer.dt_proj.weight", 2, Di, c->dt_rank, 1, 1);
        MB__T("mixer.dt_proj.bias", 1, Di, 1, 1, 0);
        MB__T("mixer.A_log", 2, Di, S, 1, 0);
        MB__T("mixer.D", 1, Di, 1, 1, 0);
        MB__T("mixer.out_proj.weight", 2, C, Di, 1, 1);
#undef MB__T
    }
    mb__tensor(out, &n, &off, "norm_f.weight", 1, C, 1, 1, 0);
    mb__tensor(out, &n, &off, "norm_f.bias", 1, C, 1, 1, 0);
    return n;
}

MBDEF int64_t mb_config_num_params(const mb_config *c) {
    int n = mb_config_tensors(c, NULL), i;
    int64_t total = 0;
    mb_tensor_info *t = (mb_tensor_info *)MB_MALLOC(sizeof(mb_tensor_info) * (size_t)n);
    if (!t) return -1;
    mb_config_tensors(c, t);
    for (i = 0; i < n; i++) total += t[i].numel;
    MB_FREE(t);
    return total;
}

/* =========================================================== CPU layers */

MBDEF void mb__embedding_forward(float *out, const uint8_t *tokens, const float *wte, int64_t N, int C) {
    /* out is (N,C), wte is (256,C) */
    int64_t n;
    MB__OMP(parallel for schedule(static))
    for (n = 0; n < N; n++) memcpy(out + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
}

MBDEF void mb__embedding_backward(float *dwte, const float *dout, const uint8_t *tokens, int64_t N, int C) {
    /* serial over tokens (fixed order), parallel over channel blocks */
    int64_t c0;
    MB__OMP(parallel for schedule(static))
    for (c0 = 0; c0 < C; c0 += 16) {
        int64_t n, c, c1 = c0 + 16 < C ? c0 + 16 : C;
        for (n = 0; n < N; n++) {
            float *d = dwte + (int64_t)tokens[n] * C;
            const float *g = dout + n * C;
            for (c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

MBDEF void mb__layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                 const float *b, int64_t N, int C) {
    /* out, inp are (N,C); mean, rstd are (N); eps 1e-5 as PyTorch */
    int64_t n;
    MB__OMP(parallel for schedule(static))
    for (n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float *o = out + n * C, m = 0.0f, v = 0.0f, s;
        int c;
        for (c = 0; c < C; c++) m += x[c];
        m /= (float)C;
        for (c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= (float)C;
        s = 1.0f / sqrtf(v + 1e-5f);
        for (c = 0; c < C; c++) o[c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

MBDEF void mb__layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                  const float *w, const float *mean, const float *rstd, int64_t N, int C) {
    int64_t n, c0;
    /* dinp: row-parallel */
    MB__OMP(parallel for schedule(static))
    for (n = 0; n < N; n++) {
        const float *x = inp + n * C, *g = dout + n * C;
        float *dx = dinp + n * C, m = mean[n], s = rstd[n], dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        int c;
        for (c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s, dnorm = w[c] * g[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * xhat;
        }
        dnorm_mean /= (float)C;
        dnorm_norm_mean /= (float)C;
        for (c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s, dnorm = w[c] * g[c];
            dx[c] += (dnorm - dnorm_mean - xhat * dnorm_norm_mean) * s;
        }
    }
    /* dw, db: channel-parallel, serial over tokens */
    MB__OMP(parallel for schedule(static))
    for (c0 = 0; c0 < C; c0 += 16) {
        int64_t c1 = c0 + 16 < C ? c0 + 16 : C, c;
        for (n = 0; n < N; n++) {
            const float *x = inp + n * C, *g = dout + n * C;
            for (c = c0; c < c1; c++) {
                dw[c] += (x[c] - mean[n]) * rstd[n] * g[c];
                db[c] += g[c];
            }
        }
    }
}

/* ---- matrix products: register-tiled, auto-vectorised portable C ----
   Every product here is a sum of a[s] * b[s] terms accumulated in a fixed
   order, each output element by one thread, so results do not depend on
   the thread count.  The inner kernel keeps an MR x NR tile of sums in
   registers (NR a multiple of the vector width: the compiler turns the j
   loop into vector FMAs) while one operand is broadcast and the other is
   read as rows of NR contiguous floats.
   Forward order, shared with mb__matvec: with nb = IC/16 full blocks,
     P_k = sum over j < nb of x[16j+k]*w[16j+k]   (k < 16, sequential in j)
     out = ((P_0 + P_1) + ... + P_15), then + x[t]*w[t] for t = 16nb..IC-1
   (out = 0 before the tail when IC < 16).  Backward: dinp and dw add their
   terms one by one in o and n order to the value already there. */
#if defined(__cplusplus)
#define MB__RESTRICT __restrict
#else
#define MB__RESTRICT restrict
#endif
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(FP_FAST_FMAF)
#define MB__FMA(a, b, c) fmaf(a, b, c)
#else
#define MB__FMA(a, b, c) ((a) * (b) + (c))
#endif
/* Tile sizes for the register file: MR x NR sums (twice that in the
   forward, which keeps its running total too), MRB x NR in the backward. */
#if defined(__AVX512F__)
#define MB__MM_NR 32
#define MB__MM_MR 6
#define MB__MM_MRB 12
#elif defined(__AVX__)
#define MB__MM_NR 16
#define MB__MM_MR 3
#define MB__MM_MRB 6
#else
#define MB__MM_NR 8
#define MB__MM_MR 2
#define MB__MM_MRB 4
#endif
#define MB__MM_KC 512 /* steps of one packed panel: KC x NR floats on the stack */
/* Fully unrolled tile loops keep the tile in registers (gcc does it by
   itself for the AVX-512 forward tile, and is slower when told to). */
#if defined(__GNUC__) && __GNUC__ >= 8 && !defined(__clang__) && !defined(__CUDACC__) && !defined(__INTEL_COMPILER)
#define MB__UNROLL _Pragma("GCC unroll 16")
#else
#define MB__UNROLL
#endif
#if defined(__AVX512F__)
#define MB__UNROLL_FWD
#else
#define MB__UNROLL_FWD MB__UNROLL
#endif

/* c (MR x NR, row stride ldc) += sum over s < steps, in order, of
   a_r[s*as] * b[s*bs + j]. */
static void mb__mm_kernel(float *MB__RESTRICT c, int64_t ldc, const float *const *ap, int64_t as,
                          const float *MB__RESTRICT b, int64_t bs, int64_t steps) {
    float acc[MB__MM_MRB][MB__MM_NR];
    const float *a[MB__MM_MRB];
    int64_t s;
    int r, j;
    for (r = 0; r < MB__MM_MRB; r++) a[r] = ap[r];
    for (r = 0; r < MB__MM_MRB; r++)
        for (j = 0; j < MB__MM_NR; j++) acc[r][j] = c[r * ldc + j];
    for (s = 0; s < steps; s++) {
        const float *MB__RESTRICT bp = b + s * bs;
        MB__UNROLL
        for (r = 0; r < MB__MM_MRB; r++) {
            float av = a[r][s * as];
            for (j = 0; j < MB__MM_NR; j++) acc[r][j] = MB__FMA(av, bp[j], acc[r][j]);
        }
    }
    for (r = 0; r < MB__MM_MRB; r++)
        for (j = 0; j < MB__MM_NR; j++) c[r * ldc + j] = acc[r][j];
}

/* Part of the forward's MR x NR tile in its order: sub-sums k in [k0, k1)
   of nb steps each (inputs k, k+16, ...), added in k order, then the tail
   steps [t0, t1) (inputs 16nb + t) one by one.  The sums start at 0 when
   first is set, else at c.  bp: the packed w^T rows of these steps, NR each. */
static void mb__mm_kernel_fwd(float *MB__RESTRICT c, int64_t ldc, const float *const *ap, const float *MB__RESTRICT bp,
                              int nb, int k0, int k1, int t0, int t1, int first) {
    float sum[MB__MM_MR][MB__MM_NR], acc[MB__MM_MR][MB__MM_NR];
    const float *a[MB__MM_MR];
    int r, j, k, s;
    MB__UNROLL_FWD
    for (r = 0; r < MB__MM_MR; r++) a[r] = ap[r];
    MB__UNROLL_FWD
    for (r = 0; r < MB__MM_MR; r++)
        for (j = 0; j < MB__MM_NR; j++) sum[r][j] = first ? 0.0f : c[r * ldc + j];
    for (k = k0; k < k1; k++) {
        MB__UNROLL_FWD
        for (r = 0; r < MB__MM_MR; r++) { /* the first term is a plain product, as in mb__dot_rows */
            float av = a[r][k];
            for (j = 0; j < MB__MM_NR; j++) acc[r][j] = av * bp[j];
        }
        for (s = 1; s < nb; s++) {
            MB__UNROLL_FWD
            for (r = 0; r < MB__MM_MR; r++) {
                float av = a[r][16 * s + k];
                for (j = 0; j < MB__MM_NR; j++) acc[r][j] = MB__FMA(av, bp[s * MB__MM_NR + j], acc[r][j]);
            }
        }
        bp += (int64_t)nb * MB__MM_NR;
        if (k == 0) {
            MB__UNROLL_FWD
            for (r = 0; r < MB__MM_MR; r++)
                for (j = 0; j < MB__MM_NR; j++) sum[r][j] = acc[r][j];
        } else {
            MB__UNROLL_FWD
            for (r = 0; r < MB__MM_MR; r++)
                for (j = 0; j < MB__MM_NR; j++) sum[r][j] += acc[r][j];
        }
    }
    for (s = t0; s < t1; s++, bp += MB__MM_NR) {
        MB__UNROLL_FWD
        for (r = 0; r < MB__MM_MR; r++) {
            float av = a[r][16 * nb + s];
            for (j = 0; j < MB__MM_NR; j++) sum[r][j] = MB__FMA(av, bp[j], sum[r][j]);
        }
    }
    MB__UNROLL_FWD
    for (r = 0; r < MB__MM_MR; r++)
        for (j = 0; j < MB__MM_NR; j++) c[r * ldc + j] = sum[r][j];
}

/* One output row in the forward order (the reference for the tiled path
   and the whole of mb__matvec).  out[o] for o in [0, OC). */
static void mb__dot_rows(float *MB__RESTRICT out, const float *MB__RESTRICT x, const float *MB__RESTRICT w, int IC,
                         int OC) {
    int nb = IC / 16, o;
    for (o = 0; o < OC; o++) {
        const float *MB__RESTRICT wr = w + (int64_t)o * IC;
        float acc[16], sum = 0.0f;
        int i, k;
        if (nb > 0) { /* the first term is a plain product */
            for (k = 0; k < 16; k++) acc[k] = x[k] * wr[k];
            for (i = 16; i < nb * 16; i += 16)
                for (k = 0; k < 16; k++) acc[k] = MB__FMA(x[i + k], wr[i + k], acc[k]);
            sum = acc[0];
            for (k = 1; k < 16; k++) sum += acc[k];
        }
        for (i = nb * 16; i < IC; i++) sum = MB__FMA(x[i], wr[i], sum);
        out[o] = sum;
    }
}

/* Step s of the forward's order -> input index i. */
static int mb__fwd_index(int s, int nb) { return s < 16 * nb ? (s % nb) * 16 + s / nb : s; }

MBDEF void mb__matmul_forward(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC) {
    const int MR = MB__MM_MR, NR = MB__MM_NR;
    int nb = IC / 16;
    if (N < 2 * MR || nb > MB__MM_KC) { /* few rows, or very long ones: one row at a time */
        int64_t n;
        MB__OMP(parallel for schedule(static) if (N * IC * OC > 65536))
        for (n = 0; n < N; n++) mb__dot_rows(out + n * OC, inp + n * ldi, w, IC, OC);
        return;
    }
    MB__OMP(parallel if (N * IC * OC > 65536))
    {
        float bp[MB__MM_KC * MB__MM_NR], cb[MB__MM_MR * MB__MM_NR];
        int64_t nmb = (N + MR - 1) / MR, mb;
        int o0, s0, s1, s, j;
        for (o0 = 0; o0 < OC; o0 += NR) {
            int nr = OC - o0 < NR ? OC - o0 : NR;
            /* the steps in chunks that fit bp: whole sub-sums, the tail last */
            for (s0 = 0; s0 < IC; s0 = s1) {
                if (s0 < 16 * nb) {
                    s1 = s0 + nb * (MB__MM_KC / nb);
                    if (s1 >= 16 * nb) s1 = IC - s0 <= MB__MM_KC ? IC : 16 * nb;
                } else {
                    s1 = IC;
                }
                for (s = s0; s < s1; s++) { /* w^T rows of these steps, zero-padded */
                    const float *src = w + (int64_t)o0 * IC + mb__fwd_index(s, nb);
                    for (j = 0; j < nr; j++) bp[(s - s0) * NR + j] = src[(int64_t)j * IC];
                    for (; j < NR; j++) bp[(s - s0) * NR + j] = 0.0f;
                }
                MB__OMP(for schedule(static) nowait)
                for (mb = 0; mb < nmb; mb++) {
                    const float *ap[MB__MM_MR];
                    int64_t n0 = mb * MR;
                    int r, rows = (int)(N - n0 < MR ? N - n0 : MR);
                    int k0 = s0 < 16 * nb ? s0 / nb : 16, k1 = s1 < 16 * nb ? s1 / nb : 16;
                    int t0 = s0 > 16 * nb ? s0 - 16 * nb : 0, t1 = s1 > 16 * nb ? s1 - 16 * nb : 0;
                    for (r = 0; r < MR; r++) ap[r] = inp + (n0 + (r < rows ? r : rows - 1)) * ldi;
                    if (rows == MR && nr == NR) { /* a whole tile: straight into out */
                        mb__mm_kernel_fwd(out + n0 * OC + o0, OC, ap, bp, nb, k0, k1, t0, t1, s0 == 0);
                        continue;
                    }
                    if (s0 > 0) /* continue from the previous chunk's sums */
                        for (r = 0; r < MR; r++)
                            for (j = 0; j < NR; j++) cb[r * NR + j] = r < rows && j < nr ? out[(n0 + r) * OC + o0 + j] : 0.0f;
                    mb__mm_kernel_fwd(cb, NR, ap, bp, nb, k0, k1, t0, t1, s0 == 0);
                    for (r = 0; r < rows; r++)
                        for (j = 0; j < nr; j++) out[(n0 + r) * OC + o0 + j] = cb[r * NR + j];
                }
            }
        }
    }
}

/* Packs rows [s0, s1) of b (row stride bs), columns [c0, c0+ncc), into bp
   (row stride NR), zero-padded to NR columns. */
static void mb__mm_pack(float *MB__RESTRICT bp, const float *MB__RESTRICT b, int64_t bs, int64_t s0, int64_t s1,
                        int64_t c0, int ncc) {
    int64_t s;
    int j;
    for (s = s0; s < s1; s++) {
        for (j = 0; j < ncc; j++) bp[(s - s0) * MB__MM_NR + j] = b[s * bs + c0 + j];
        for (; j < MB__MM_NR; j++) bp[(s - s0) * MB__MM_NR + j] = 0.0f;
    }
}

/* Loads (or stores) the valid part of an MR x NR tile of C at (r0, c0);
   tr: C is stored transposed (element (r, j) at C[j*ldc + r]). */
static void mb__mm_tile_io(float *MB__RESTRICT cb, float *MB__RESTRICT C, int64_t ldc, int tr, int64_t r0, int64_t c0,
                           int nrr, int ncc, int store) {
    int r, j;
    for (r = 0; r < MB__MM_MRB; r++)
        for (j = 0; j < MB__MM_NR; j++) {
            float *p = tr ? &C[(c0 + j) * ldc + r0 + r] : &C[(r0 + r) * ldc + c0 + j];
            if (r < nrr && j < ncc) {
                if (store) *p = cb[r * MB__MM_NR + j];
                else cb[r * MB__MM_NR + j] = *p;
            } else if (!store) {
                cb[r * MB__MM_NR + j] = 0.0f;
            }
        }
}

/* C (rows x cols, row stride ldc, transposed when tr) += sum over steps s in
   order of a[s*as + r*ar] * b[s*bs + j].  Each MR-row tile belongs to one
   thread; steps go in chunks of `chunk` (the tile passes through memory
   between chunks, which does not change the order); a partial column panel
   is packed zero-padded, once per chunk and thread. */
static void mb__mm_accum(float *C, int64_t ldc, int tr, int64_t rows, int64_t cols, const float *a, int64_t as,
                         int64_t ar, const float *b, int64_t bs, int64_t steps, int64_t chunk) {
    const int MR = MB__MM_MRB, NR = MB__MM_NR;
    int64_t nrb = (rows + MR - 1) / MR;
    if (chunk > MB__MM_KC && cols % NR != 0) chunk = MB__MM_KC;
    MB__OMP(parallel if (rows * cols * steps > 65536))
    {
        float bp[MB__MM_KC * MB__MM_NR], cb[MB__MM_MRB * MB__MM_NR];
        int64_t s0, c0, rb;
        for (s0 = 0; s0 < steps; s0 += chunk) {
            int64_t s1 = s0 + chunk < steps ? s0 + chunk : steps;
            for (c0 = 0; c0 < cols; c0 += NR) {
                int ncc = (int)(cols - c0 < NR ? cols - c0 : NR);
                const float *bb = b + s0 * bs + c0;
                int64_t bstride = bs;
                if (ncc < NR) {
                    mb__mm_pack(bp, b, bs, s0, s1, c0, ncc);
                    bb = bp;
                    bstride = NR;
                }
                MB__OMP(for schedule(static) nowait)
                for (rb = 0; rb < nrb; rb++) {
                    const float *ap[MB__MM_MRB];
                    int64_t r0 = rb * MR;
                    int nrr = (int)(rows - r0 < MR ? rows - r0 : MR), r;
                    for (r = 0; r < MR; r++) ap[r] = a + s0 * as + (r0 + (r < nrr ? r : nrr - 1)) * ar;
                    if (!tr && nrr == MR && ncc == NR) {
                        mb__mm_kernel(C + r0 * ldc + c0, ldc, ap, as, bb, bstride, s1 - s0);
                    } else {
                        mb__mm_tile_io(cb, C, ldc, tr, r0, c0, nrr, ncc, 0);
                        mb__mm_kernel(cb, NR, ap, as, bb, bstride, s1 - s0);
                        mb__mm_tile_io(cb, C, ldc, tr, r0, c0, nrr, ncc, 1);
                    }
                }
            }
        }
    }
}

/* dinp (+=, row stride ldi) = dout @ w, terms in o order;
   dw (+=) = dout^T @ inp, terms in n order. */
MBDEF void mb__matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                               const float *w, int64_t N, int IC, int OC) {
    /* dinp[n][i] += dout[n][o] * w[o][i]: rows n, columns i, steps o */
    if (dinp) mb__mm_accum(dinp, ldi, 0, N, IC, dout, 1, OC, w, IC, OC, OC);
    /* dw[o][i] += dout[n][o] * inp[n][i]: steps n; vectors along i, or along o when IC is narrow */
    if (IC >= MB__MM_NR || IC >= OC) mb__mm_accum(dw, IC, 0, OC, IC, dout, OC, 1, inp, ldi, N, 128);
    else mb__mm_accum(dw, IC, 1, IC, OC, inp, ldi, 1, dout, OC, N, 128);
}

/* Causal depthwise conv over time of x' (the first Di columns of xz, row
   stride 2Di), then SiLU.  out is (B,T,Di), w is (Di,K). */
MBDEF void mb__conv1d_forward(float *out, const float *xz, const float *w, const float *bias,
                              int B, int T, int Di, int K) {
    int64_t bt;
    MB__OMP(parallel for schedule(static))
    for (bt = 0; bt < (int64_t)B * T; bt++) {
        int64_t t = bt % T, base = bt - t; /* token index of this sequence's t=0 */
        float *o = out + bt * Di;
        int d, k;
        for (d = 0; d < Di; d++) o[d] = bias[d];
        for (k = 0; k < K; k++) {
            int64_t ts = t - (K - 1) + k;
            const float *x;
            if (ts < 0) continue;
            x = xz + (base + ts) * 2 * Di;
            for (d = 0; d < Di; d++) o[d] += w[(int64_t)d * K + k] * x[d];
        }
        for (d = 0; d < Di; d++) o[d] = mb__silu(o[d]);
    }
}

MBDEF void mb__conv1d_backward(float *dxz, float *dw, float *dbias, const float *dout, const float *xz,
                               const float *w, const float *bias, int B, int T, int Di, int K) {
    /* each thread owns a block of channels for all (b, t): deterministic */
    int64_t d0;
    MB__OMP(parallel for schedule(static))
    for (d0 = 0; d0 < Di; d0 += 16) {
        int d1 = (int)(d0 + 16 < Di ? d0 + 16 : Di), d, k, b, t;
        for (b = 0; b < B; b++) {
            const float *xs = xz + (int64_t)b * T * 2 * Di;
            float *dxs = dxz + (int64_t)b * T * 2 * Di;
            for (t = 0; t < T; t++) {
                const float *g = dout + ((int64_t)b * T + t) * Di;
                for (d = (int)d0; d < d1; d++) {
                    float pre = bias[d], dpre;
                    for (k = 0; k < K; k++) {
                        int ts = t - (K - 1) + k;
                        if (ts >= 0) pre += w[(int64_t)d * K + k] * xs[(int64_t)ts * 2 * Di + d];
                    }
                    dpre = g[d] * mb__silu_grad(pre);
                    dbias[d] += dpre;
                    for (k = 0; k < K; k++) {
                        int ts = t - (K - 1) + k;
                        if (ts < 0) continue;
                        dw[(int64_t)d * K + k] += dpre * xs[(int64_t)ts * 2 * Di + d];
                        dxs[(int64_t)ts * 2 * Di + d] += dpre * w[(int64_t)d * K + k];
                    }
                }
            }
        }
    }
}

/* The selective scan, fused with dt = softplus(delta + dt_bias), the D skip
   and the SiLU(z) gate:
       h_t = exp(dt_t*A) * h_{t-1} + dt_t * B_t * u_t      (A = -exp(A_log) < 0)
       out_t = (C_t . h_t + D*u_t) * silu(z_t)
   Only decays exp(dt*A) <= 1 are ever multiplied, so nothing overflows for
   any dt >= 0.  states (B, nchunks, Di, S) keeps h at each chunk start for
   the backward's recomputation: never a (B, T, Di, S) tensor. */
MBDEF void mb__scan_forward(float *out, float *states, const float *u, const float *delta, const float *dt_bias,
                            const float *A_log, const float *xdbl, const float *Dp, const float *xz,
                            int B, int T, int Di, int S, int R, int chunk) {
    int64_t bd, nchunks = (T + chunk - 1) / chunk, X = R + 2 * S;
    MB__OMP(parallel for schedule(static))
    for (bd = 0; bd < (int64_t)B * Di; bd++) {
        int64_t b = bd / Di, d = bd % Di, t;
        float h[MB__MAX_STATE], A[MB__MAX_STATE];
        int n;
        for (n = 0; n < S; n++) { h[n] = 0.0f; A[n] = -expf(A_log[d * S + n]); }
        for (t = 0; t < T; t++) {
            int64_t tok = b * T + t;
            const float *Bt = xdbl + tok * X + R, *Ct = Bt + S;
            float dt = mb__softplus(delta[tok * Di + d] + dt_bias[d]), ut = u[tok * Di + d], y = 0.0f;
            float z = xz[tok * 2 * Di + Di + d];
            if (t % chunk == 0) memcpy(states + ((b * nchunks + t / chunk) * Di + d) * S, h, (size_t)S * sizeof(float));
            for (n = 0; n < S; n++) {
                h[n] = expf(dt * A[n]) * h[n] + dt * Bt[n] * ut;
                y += Ct[n] * h[n];
            }
            out[tok * Di + d] = (y + Dp[d] * ut) * mb__silu(z);
        }
    }
}

MBDEF void mb__scan_backward(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                             float *dxz, float *scratch, const float *dout, const float *states, const float *u,
                             const float *delta, const float *dt_bias, const float *A_log, const float *xdbl,
                             const float *Dp, const float *xz, int B, int T, int Di, int S, int R, int chunk) {
    int64_t b, nchunks = (T + chunk - 1) / chunk, X = R + 2 * S, per_b = (int64_t)Di * S + 2 * Di;
    /* parallel over sequences; within one, channels in order, so dB and dC
       (summed over channels) are owned by one thread; the parameter sums go
       to per-sequence scratch and are added in sequence order below. */
    MB__OMP(parallel for schedule(static))
    for (b = 0; b < B; b++) {
        float *gA = scratch + b * per_b, *gD = gA + (int64_t)Di * S, *gbias = gD + Di;
        float hbuf[MB__SCAN_HBUF], A[MB__MAX_STATE], dh[MB__MAX_STATE];
        int64_t d;
        memset(gA, 0, (size_t)per_b * sizeof(float));
        for (d = 0; d < Di; d++) {
            int64_t c;
            int n;
            for (n = 0; n < S; n++) { A[n] = -expf(A_log[d * S + n]); dh[n] = 0.0f; }
            for (c = nchunks - 1; c >= 0; c--) {
                int64_t t0 = c * chunk, t1 = t0 + chunk < T ? t0 + chunk : T, t;
                const float *h0 = states + ((b * nchunks + c) * Di + d) * S;
                /* recompute h_t inside the chunk from its saved start */
                for (t = t0; t < t1; t++) {
                    int64_t tok = b * T + t;
                    const float *Bt = xdbl + tok * X + R, *hp = t == t0 ? h0 : hbuf + (t - t0 - 1) * S;
                    float dt = mb__softplus(delta[tok * Di + d] + dt_bias[d]), ut = u[tok * Di + d];
                    float *ht = hbuf + (t - t0) * S;
                    for (n = 0; n < S; n++) ht[n] = expf(dt * A[n]) * hp[n] + dt * Bt[n] * ut;
                }
                for (t = t1 - 1; t >= t0; t--) {
                    int64_t tok = b * T + t;
                    const float *Bt = xdbl + tok * X + R, *Ct = Bt + S;
                    const float *ht = hbuf + (t - t0) * S, *hp = t == t0 ? h0 : hbuf + (t - t0 - 1) * S;
                    float *dBt = dxdbl + tok * X + R, *dCt = dBt + S;
                    float x = delta[tok * Di + d] + dt_bias[d], dt = mb__softplus(x), ut = u[tok * Di + d];
                    float z = xz[tok * 2 * Di + Di + d], g = dout[tok * Di + d], y = Dp[d] * ut, dy, ddt = 0.0f, dut;
                    for (n = 0; n < S; n++) y += Ct[n] * ht[n];
                    dxz[tok * 2 * Di + Di + d] += g * y * mb__silu_grad(z);
                    dy = g * mb__silu(z);
                    gD[d] += dy * ut;
                    dut = dy * Dp[d];
                    for (n = 0; n < S; n++) {
                        float a = expf(dt * A[n]), dhn = dh[n] + dy * Ct[n];
                        dCt[n] += dy * ht[n];
                        ddt += dhn * (A[n] * a * hp[n] + Bt[n] * ut);
                        gA[d * S + n] += dhn * dt * a * hp[n] * A[n]; /* dA_log = dA * A */
                        dBt[n] += dhn * dt * ut;
                        dut += dhn * dt * Bt[n];
                        dh[n] = dhn * a;
                    }
                    du[tok * Di + d] += dut;
                    ddt *= mb__softplus_grad(x);
                    ddelta[tok * Di + d] = ddt;
                    gbias[d] += ddt;
                }
            }
        }
    }
    for (b = 0; b < B; b++) {
        const float *gA = scratch + b * per_b, *gD = gA + (int64_t)Di * S, *gbias = gD + Di;
        int64_t i;
        for (i = 0; i < (int64_t)Di * S; i++) dA_log[i] += gA[i];
        for (i = 0; i < Di; i++) { dD[i] += gD[i]; ddt_bias[i] += gbias[i]; }
    }
}

/* ================================================================ model */
/* Pointers into one flat block (parameters or gradients), split by the sizes
   table. */
typedef struct {
    float *norm_w, *norm_b, *in_proj, *conv_w, *conv_b, *x_proj, *dt_proj_w, *dt_proj_b, *A_log, *D, *out_proj;
} mb__layer_weights;
typedef struct {
    float *wte, *norm_f_w, *norm_f_b;
    mb__layer_weights *layer; /* n_layer */
} mb__weights;

/* Activations of one layer for a (B,T) batch: what backward needs. */
typedef struct {
    float *resid;              /* (N,C) the layer's input */
    float *ln, *ln_mean, *ln_rstd; /* (N,C), (N), (N) */
    float *xz;                 /* (N,2Di) in_proj output: x' | z */
    float *u;                  /* (N,Di) silu(conv(x')) */
    float *xdbl;               /* (N,X) dt_low | B | C */
    float *delta;              /* (N,Di) dt_proj output before bias */
    float *gated;              /* (N,Di) scan output y*silu(z) */
    float *states;             /* (B,nchunks,Di,S) h at chunk starts */
} mb__layer_acts;

struct mb_model {
    mb_config cfg;
    int ntensors;
    mb_tensor_info *tensors;
    int64_t num_params;
    float *params, *grads;
    mb__weights w, g;
    int scan_chunk;
    /* activations and backward scratch, sized for act_tokens tokens */
    int B, T;
    int64_t act_tokens, act_floats; /* capacity of inputs/targets and of act_block */
    float *act_block;
    mb__layer_acts *acts;
    float *resid_out, *lnf, *lnf_mean, *lnf_rstd, *logits, *mix_out;
    float *d_resid, *d_ln, *d_xz, *d_u, *d_xdbl, *d_delta, *d_gated, *d_logits, *scan_scratch;
    uint8_t *inputs;
    int32_t *targets;
    int have_targets;
};

static void mb__point_weights(mb__weights *w, float *base, const mb_config *c, const mb_tensor_info *t) {
    int l, i = 0;
    w->wte = base + t[i++].offset;
    for (l = 0; l < c->n_layer; l++) {
        mb__layer_weights *L = &w->layer[l];
        L->norm_w = base + t[i++].offset;
        L->norm_b = base + t[i++].offset;
        L->in_proj = base + t[i++].offset;
        L->conv_w = base + t[i++].offset;
        L->conv_b = base + t[i++].offset;
        L->x_proj = base + t[i++].offset;
        L->dt_proj_w = base + t[i++].offset;
        L->dt_proj_b = base + t[i++].offset;
        L->A_log = base + t[i++].offset;
        L->D = base + t[i++].offset;
        L->out_proj = base + t[i++].offset;
    }
    w->norm_f_w = base + t[i++].offset;
    w->norm_f_b = base + t[i++].offset;
}

static int mb__default_chunk(const mb_config *c) {
    int chunk = MB_SCAN_CHUNK;
    while (chunk > 1 && (int64_t)chunk * c->d_state > MB__SCAN_HBUF) chunk /= 2;
    return chunk;
}

/* A model with zeroed parameters; the caller initialises or loads them. */
static mb_status mb__model_alloc(mb_model **out, const mb_config *cfg_in) {
    mb_config cfg = *cfg_in;
    mb_model *m;
    mb_status s = mb_config_validate(&cfg);
    *out = NULL;
    if (s != MB_STATUS_OK) return s;
    m = (mb_model *)MB_MALLOC(sizeof(mb_model));
    if (!m) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "model struct");
    memset(m, 0, sizeof *m);
    m->cfg = cfg;
    m->ntensors = mb_config_tensors(&cfg, NULL);
    m->tensors = (mb_tensor_info *)MB_MALLOC(sizeof(mb_tensor_info) * (size_t)m->ntensors);
    m->w.layer = (mb__layer_weights *)MB_MALLOC(sizeof(mb__layer_weights) * (size_t)cfg.n_layer);
    m->g.layer = (mb__layer_weights *)MB_MALLOC(sizeof(mb__layer_weights) * (size_t)cfg.n_layer);
    if (!m->tensors || !m->w.layer || !m->g.layer) { mb_model_free(m); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "model tables"); }
    mb_config_tensors(&cfg, m->tensors);
    m->num_params = m->tensors[m->ntensors - 1].offset + m->tensors[m->ntensors - 1].numel;
    m->params = (float *)MB_MALLOC((size_t)m->num_params * sizeof(float));
    m->grads = (float *)MB_MALLOC((size_t)m->num_params * sizeof(float));
    if (!m->params || !m->grads) { mb_model_free(m); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "%lld parameters", (long long)m->num_params); }
    memset(m->params, 0, (size_t)m->num_params * sizeof(float));
    memset(m->grads, 0, (size_t)m->num_params * sizeof(float));
    mb__point_weights(&m->w, m->params, &cfg, m->tensors);
    mb__point_weights(&m->g, m->grads, &cfg, m->tensors);
    m->scan_chunk = mb__default_chunk(&cfg);
    *out = m;
    return MB_STATUS_OK;
}

static void mb__fill_uniform(float *x, int64_t n, double bound, uint64_t *rng) {
    int64_t i;
    for (i = 0; i < n; i++) x[i] = (float)((2.0 * mb__rng_uniform(rng) - 1.0) * bound);
}

/* Seed 000's initialisation, from our own seeded RNG. */
static void mb__model_init(mb_model *m, uint64_t seed) {
    const mb_config *c = &m->cfg;
    int64_t C = c->d_model, Di = (int64_t)C * c->expand, S = c->d_state, K = c->d_conv, R = c->dt_rank, i;
    uint64_t rng = seed;
    int l;
    for (i = 0; i < c->vocab_size * C; i++) m->w.wte[i] = (float)(0.02 * mb__rng_normal(&rng));
    for (l = 0; l < c->n_layer; l++) {
        mb__layer_weights *L = &m->w.layer[l];
        for (i = 0; i < C; i++) { L->norm_w[i] = 1.0f; L->norm_b[i] = 0.0f; }
        /* PyTorch defaults: kaiming-uniform a=sqrt(5) gives U(+-1/sqrt(fan_in)) */
        mb__fill_uniform(L->in_proj, 2 * Di * C, 1.0 / sqrt((double)C), &rng);
        mb__fill_uniform(L->conv_w, Di * K, 1.0 / sqrt((double)K), &rng);
        mb__fill_uniform(L->conv_b, Di, 1.0 / sqrt((double)K), &rng);
        mb__fill_uniform(L->x_proj, (R + 2 * S) * Di, 1.0 / sqrt((double)Di), &rng);
        mb__fill_uniform(L->dt_proj_w, Di * R, 1.0 / sqrt((double)R), &rng);
        for (i = 0; i < Di; i++) { /* dt log-uniform in [1e-3, 1e-1]; bias = softplus^-1(dt) */
            double dt = exp(mb__rng_uniform(&rng) * (log(0.1) - log(0.001)) + log(0.001));
            if (dt < 1e-4) dt = 1e-4;
            L->dt_proj_b[i] = (float)(dt + log(-expm1(-dt)));
        }
        for (i = 0; i < Di * S; i++) L->A_log[i] = (float)log((double)(i % S + 1));
        for (i = 0; i < Di; i++) L->D[i] = 1.0f;
        mb__fill_uniform(L->out_proj, C * Di, 1.0 / sqrt((double)Di), &rng);
    }
    for (i = 0; i < C; i++) { m->w.norm_f_w[i] = 1.0f; m->w.norm_f_b[i] = 0.0f; }
}

MBDEF mb_status mb_model_create(mb_model **out, const mb_config *cfg, uint64_t seed) {
    mb_status s = mb__model_alloc(out, cfg);
    if (s == MB_STATUS_OK) mb__model_init(*out, seed);
    return s;
}

static void mb__free_acts(mb_model *m) {
    MB_FREE(m->act_block);
    MB_FREE(m->acts);
    MB_FREE(m->inputs);
    MB_FREE(m->targets);
    m->act_block = NULL;
    m->acts = NULL;
    m->inputs = NULL;
    m->targets = NULL;
    m->act_tokens = 0;
    m->act_floats = 0;
}

MBDEF void mb_model_free(mb_model *m) {
    if (!m) return;
    mb__free_acts(m);
    MB_FREE(m->tensors);
    MB_FREE(m->w.layer);
    MB_FREE(m->g.layer);
    MB_FREE(m->params);
    MB_FREE(m->grads);
    MB_FREE(m);
}

MBDEF const mb_config *mb_model_config(const mb_model *m) { return &m->cfg; }
MBDEF int64_t mb_model_num_params(const mb_model *m) { return m->num_params; }
MBDEF float *mb_model_params(mb_model *m) { return m->params; }
MBDEF float *mb_model_grads(mb_model *m) { return m->grads; }
MBDEF const float *mb_model_logits(const mb_model *m) { return m->logits; }
MBDEF void mb_model_zero_grad(mb_model *m) { memset(m->grads, 0, (size_t)m->num_params * sizeof(float)); }

MBDEF mb_status mb_model_set_scan_chunk(mb_model *m, int chunk) {
    if (chunk < 1 || (int64_t)chunk * m->cfg.d_state > MB__SCAN_HBUF)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "scan chunk %d: need 1 <= chunk and chunk*d_state <= %d", chunk, MB__SCAN_HBUF);
    m->scan_chunk = chunk;
    m->have_targets = 0; /* saved states used the old chunking: forward again before backward */
    return MB_STATUS_OK;
}

/* One allocation for every activation of a (B,T) batch, split by a sizes
   list (llm.c's pattern).  Reallocated only when the batch grows. */
static mb_status mb__ensure_acts(mb_model *m, int B, int T) {
    const mb_config *c = &m->cfg;
    int64_t N = (int64_t)B * T, C = c->d_model, Di = (int64_t)C * c->expand, S = c->d_state;
    int64_t X = c->dt_rank + 2 * S, nchunks = (T + m->scan_chunk - 1) / m->scan_chunk, V = c->vocab_size;
    int64_t per_layer = N * (2 * C + 2 + 2 * Di + Di + X + Di + Di) + (int64_t)B * nchunks * Di * S;
    int64_t total = per_layer * c->n_layer + N * (C + C + 2 + V + C) /* resid_out lnf mean rstd logits mix_out */
                  + N * (C + C + 2 * Di + Di + X + Di + Di + V) + (int64_t)B * (Di * S + 2 * Di);
    float *p;
    int l;
    m->B = B;
    m->T = T;
    if (!m->acts || N > m->act_tokens || total > m->act_floats) {
        mb__free_acts(m);
        m->act_block = (float *)MB_MALLOC((size_t)total * sizeof(float));
        m->acts = (mb__layer_acts *)MB_MALLOC(sizeof(mb__layer_acts) * (size_t)c->n_layer);
        m->inputs = (uint8_t *)MB_MALLOC((size_t)N);
        m->targets = (int32_t *)MB_MALLOC((size_t)N * sizeof(int32_t));
        if (!m->act_block || !m->acts || !m->inputs || !m->targets) {
            mb__free_acts(m);
            return mb__fail(MB_STATUS_OUT_OF_MEMORY, "activations for B=%d T=%d (%.1f MB)", B, T, (double)total * 4 / 1e6);
        }
        m->act_tokens = N;
        m->act_floats = total;
    }
    p = m->act_block;
#define MB__TAKE(ptr, n) (ptr = p, p += (n))
    for (l = 0; l < c->n_layer; l++) {
        mb__layer_acts *a = &m->acts[l];
        MB__TAKE(a->resid, N * C);
        MB__TAKE(a->ln, N * C);
        MB__TAKE(a->ln_mean, N);
        MB__TAKE(a->ln_rstd, N);
        MB__TAKE(a->xz, N * 2 * Di);
        MB__TAKE(a->u, N * Di);
        MB__TAKE(a->xdbl, N * X);
        MB__TAKE(a->delta, N * Di);
        MB__TAKE(a->gated, N * Di);
        MB__TAKE(a->states, (int64_t)B * nchunks * Di * S);
    }
    MB__TAKE(m->resid_out, N * C);
    MB__TAKE(m->lnf, N * C);
    MB__TAKE(m->lnf_mean, N);
    MB__TAKE(m->lnf_rstd, N);
    MB__TAKE(m->logits, N * V);
    MB__TAKE(m->mix_out, N * C);
    MB__TAKE(m->d_resid, N * C);
    MB__TAKE(m->d_ln, N * C);
    MB__TAKE(m->d_xz, N * 2 * Di);
    MB__TAKE(m->d_u, N * Di);
    MB__TAKE(m->d_xdbl, N * X);
    MB__TAKE(m->d_delta, N * Di);
    MB__TAKE(m->d_gated, N * Di);
    MB__TAKE(m->d_logits, N * V);
    MB__TAKE(m->scan_scratch, (int64_t)B * (Di * S + 2 * Di));
#undef MB__TAKE
    return MB_STATUS_OK;
}

/* x (N,C) += y (N,C) */
static void mb__residual_add(float *x, const float *y, int64_t n) {
    int64_t i;
    MB__OMP(parallel for schedule(static) if (n > 65536))
    for (i = 0; i < n; i++) x[i] += y[i];
}

/* One Mamba mixer: ln (N,C) -> out (N,C). */
static void mb__mixer_forward(mb_model *m, int l, float *out) {
    const mb_config *c = &m->cfg;
    const mb__layer_weights *W = &m->w.layer[l];
    mb__layer_acts *a = &m->acts[l];
    int B = m->B, T = m->T, C = c->d_model, Di = C * c->expand, S = c->d_state, R = c->dt_rank, X = R + 2 * S;
    int64_t N = (int64_t)B * T;
    mb__matmul_forward(a->xz, a->ln, C, W->in_proj, N, C, 2 * Di);
    mb__conv1d_forward(a->u, a->xz, W->conv_w, W->conv_b, B, T, Di, c->d_conv);
    mb__matmul_forward(a->xdbl, a->u, Di, W->x_proj, N, Di, X);
    mb__matmul_forward(a->delta, a->xdbl, X, W->dt_proj_w, N, R, Di);
    mb__scan_forward(a->gated, a->states, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                     B, T, Di, S, R, m->scan_chunk);
    mb__matmul_forward(out, a->gated, Di, W->out_proj, N, Di, C);
}

MBDEF mb_status mb_model_forward(mb_model *m, const uint8_t *inputs, const int32_t *targets, int B, int T, float *loss) {
    const mb_config *c = &m->cfg;
    int64_t N = (int64_t)B * T, C = c->d_model;
    mb_status s;
    int l;
    if (B < 1 || T < 1) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "forward: B=%d T=%d must be >= 1", B, T);
    s = mb__ensure_acts(m, B, T);
    if (s != MB_STATUS_OK) return s;
    memcpy(m->inputs, inputs, (size_t)N);
    m->have_targets = targets != NULL;
    if (targets) memcpy(m->targets, targets, (size_t)N * sizeof(int32_t));
    mb__embedding_forward(m->acts[0].resid, inputs, m->w.wte, N, (int)C);
    for (l = 0; l < c->n_layer; l++) {
        mb__layer_acts *a = &m->acts[l];
        float *next = l + 1 < c->n_layer ? m->acts[l + 1].resid : m->resid_out;
        mb__layernorm_forward(a->ln, a->ln_mean, a->ln_rstd, a->resid, m->w.layer[l].norm_w, m->w.layer[l].norm_b, N, (int)C);
        mb__mixer_forward(m, l, m->mix_out);
        memcpy(next, a->resid, (size_t)(N * C) * sizeof(float));
        mb__residual_add(next, m->mix_out, N * C);
    }
    mb__layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, m->resid_out, m->w.norm_f_w, m->w.norm_f_b, N, (int)C);
    mb__matmul_forward(m->logits, m->lnf, C, m->w.wte, N, (int)C, c->vocab_size); /* tied head */
    if (targets) {
        float l_val;
        s = mb_cross_entropy_forward(&l_val, m->logits, targets, N, c->vocab_size, NULL);
        if (s != MB_STATUS_OK) { m->have_targets = 0; return s; }
        if (loss) *loss = l_val;
    } else if (loss) {
        *loss = NAN;
    }
    return MB_STATUS_OK;
}

static void mb__mixer_backward(mb_model *m, int l, const float *dout, float *dln) {
    const mb_config *c = &m->cfg;
    const mb__layer_weights *W = &m->w.layer[l];
    mb__layer_weights *G = &m->g.layer[l];
    mb__layer_acts *a = &m->acts[l];
    int B = m->B, T = m->T, C = c->d_model, Di = C * c->expand, S = c->d_state, R = c->dt_rank, X = R + 2 * S;
    int64_t N = (int64_t)B * T;
    memset(m->d_gated, 0, (size_t)(N * Di) * sizeof(float));
    memset(m->d_u, 0, (size_t)(N * Di) * sizeof(float));
    memset(m->d_xdbl, 0, (size_t)(N * X) * sizeof(float));
    memset(m->d_xz, 0, (size_t)(N * 2 * Di) * sizeof(float));
    mb__matmul_backward(m->d_gated, G->out_proj, dout, a->gated, Di, W->out_proj, N, Di, C);
    mb__scan_backward(m->d_u, m->d_delta, G->dt_proj_b, G->A_log, m->d_xdbl, G->D, m->d_xz, m->scan_scratch,
                      m->d_gated, a->states, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                      B, T, Di, S, R, m->scan_chunk);
    mb__matmul_backward(m->d_xdbl, G->dt_proj_w, m->d_delta, a->xdbl, X, W->dt_proj_w, N, R, Di);
    mb__matmul_backward(m->d_u, G->x_proj, m->d_xdbl, a->u, Di, W->x_proj, N, Di, X);
    mb__conv1d_backward(m->d_xz, G->conv_w, G->conv_b, m->d_u, a->xz, W->conv_w, W->conv_b, B, T, Di, c->d_conv);
    mb__matmul_backward(dln, G->in_proj, m->d_xz, a->ln, C, W->in_proj, N, C, 2 * Di);
}

MBDEF mb_status mb_model_backward(mb_model *m) {
    const mb_config *c = &m->cfg;
    int64_t N = (int64_t)m->B * m->T, C = c->d_model, V = c->vocab_size;
    float one = 1.0f;
    mb_status s;
    int l;
    if (!m->acts || !m->have_targets) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "backward needs a forward with targets first");
    s = mb_cross_entropy_backward(m->d_logits, &one, m->logits, m->targets, N, V, NULL);
    if (s != MB_STATUS_OK) return s;
    memset(m->d_ln, 0, (size_t)(N * C) * sizeof(float));
    mb__matmul_backward(m->d_ln, m->g.wte, m->d_logits, m->lnf, C, m->w.wte, N, (int)C, (int)V);
    memset(m->d_resid, 0, (size_t)(N * C) * sizeof(float));
    mb__layernorm_backward(m->d_resid, m->g.norm_f_w, m->g.norm_f_b, m->d_ln, m->resid_out, m->w.norm_f_w,
                           m->lnf_mean, m->lnf_rstd, N, (int)C);
    for (l = c->n_layer - 1; l >= 0; l--) {
        mb__layer_acts *a = &m->acts[l];
        /* the residual passes d_resid through; the mixer adds its input grad */
        memset(m->d_ln, 0, (size_t)(N * C) * sizeof(float));
        mb__mixer_backward(m, l, m->d_resid, m->d_ln);
        mb__layernorm_backward(m->d_resid, m->g.layer[l].norm_w, m->g.layer[l].norm_b, m->d_ln, a->resid,
                               m->w.layer[l].norm_w, a->ln_mean, a->ln_rstd, N, (int)C);
    }
    mb__embedding_backward(m->g.wte, m->d_resid, m->inputs, N, (int)C);
    return MB_STATUS_OK;
}

/* ============================================================ streaming */
struct mb_stream {
    const mb_model *m;
    float *block;          /* one allocation, split below */
    float *conv_state;     /* (L, Di, K): the last K inputs x' of each channel */
    float *ssm_state;      /* (L, Di, S) */
    float *A;              /* (L, Di, S) = -exp(A_log), cached */
    float *x, *ln, *xz, *u, *xdbl, *delta, *gated, *out, *logits;
    int64_t state_floats;  /* conv_state + ssm_state, contiguous */
};

/* out (OC) = w (OC,IC) @ x: the same summation order as one row of
   mb__matmul_forward, so streaming and the batch path agree bit for bit. */
static void mb__matvec(float *out, const float *x, const float *w, int IC, int OC) { mb__dot_rows(out, x, w, IC, OC); }

MBDEF mb_status mb_stream_create(mb_stream **out, const mb_model *m) {
    const mb_config *c = &m->cfg;
    int64_t L = c->n_layer, C = c->d_model, Di = C * c->expand, S = c->d_state, K = c->d_conv;
    int64_t X = c->dt_rank + 2 * S, V = c->vocab_size;
    int64_t total = L * Di * K + L * Di * S + L * Di * S + C + C + 2 * Di + Di + X + Di + Di + C + V + 2;
    mb_stream *s = (mb_stream *)MB_MALLOC(sizeof(mb_stream));
    float *p;
    int64_t l, i;
    *out = NULL;
    if (!s) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "stream");
    s->m = m;
    s->block = (float *)MB_MALLOC((size_t)total * sizeof(float));
    if (!s->block) { MB_FREE(s); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "stream state"); }
    p = s->block;
    s->conv_state = p; p += L * Di * K;
    s->ssm_state = p; p += L * Di * S;
    s->A = p; p += L * Di * S;
    s->x = p; p += C;
    s->ln = p; p += C;
    s->xz = p; p += 2 * Di;
    s->u = p; p += Di;
    s->xdbl = p; p += X;
    s->delta = p; p += Di;
    s->gated = p; p += Di;
    s->out = p; p += C;
    s->logits = p;
    s->state_floats = L * Di * (K + S);
    for (l = 0; l < L; l++)
        for (i = 0; i < Di * S; i++) s->A[l * Di * S + i] = -expf(m->w.layer[l].A_log[i]);
    mb_stream_reset(s);
    *out = s;
    return MB_STATUS_OK;
}

MBDEF void mb_stream_reset(mb_stream *s) { memset(s->conv_state, 0, (size_t)s->state_floats * sizeof(float)); }

MBDEF mb_status mb_stream_copy(mb_stream *dst, const mb_stream *src) {
    if (dst->m != src->m) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "stream copy between different models");
    memcpy(dst->conv_state, src->conv_state, (size_t)src->state_floats * sizeof(float));
    return MB_STATUS_OK;
}

MBDEF void mb_stream_free(mb_stream *s) {
    if (!s) return;
    MB_FREE(s->block);
    MB_FREE(s);
}

/* One byte through the whole model, mirroring mb_model_forward for T = 1
   with the conv and scan carried in the state.  Allocates nothing. */
MBDEF const float *mb_stream_step(mb_stream *s, uint8_t byte) {
    const mb_model *m = s->m;
    const mb_config *c = &m->cfg;
    int C = c->d_model, Di = C * c->expand, S = c->d_state, K = c->d_conv, R = c->dt_rank, X = R + 2 * S, l, d, k, n;
    float mean, rstd;
    memcpy(s->x, m->w.wte + (int64_t)byte * C, (size_t)C * sizeof(float));
    for (l = 0; l < c->n_layer; l++) {
        const mb__layer_weights *W = &m->w.layer[l];
        float *cs = s->conv_state + (int64_t)l * Di * K, *hs = s->ssm_state + (int64_t)l * Di * S;
        const float *A = s->A + (int64_t)l * Di * S, *Bt = s->xdbl + R, *Ct = Bt + S;
        mb__layernorm_forward(s->ln, &mean, &rstd, s->x, W->norm_w, W->norm_b, 1, C);
        mb__matvec(s->xz, s->ln, W->in_proj, C, 2 * Di);
        for (d = 0; d < Di; d++) { /* shift the window, append x', conv, SiLU */
            float *w = cs + (int64_t)d * K, pre = W->conv_b[d];
            for (k = 0; k + 1 < K; k++) w[k] = w[k + 1];
            w[K - 1] = s->xz[d];
            for (k = 0; k < K; k++) pre += W->conv_w[(int64_t)d * K + k] * w[k];
            s->u[d] = mb__silu(pre);
        }
        mb__matvec(s->xdbl, s->u, W->x_proj, Di, X);
        mb__matvec(s->delta, s->xdbl, W->dt_proj_w, R, Di);
        for (d = 0; d < Di; d++) { /* the scan's recurrence, one step */
            float dt = mb__softplus(s->delta[d] + W->dt_proj_b[d]), ut = s->u[d], y = 0.0f, *h = hs + (int64_t)d * S;
            const float *Ad = A + (int64_t)d * S;
            for (n = 0; n < S; n++) {
                h[n] = expf(dt * Ad[n]) * h[n] + dt * Bt[n] * ut;
                y += Ct[n] * h[n];
            }
            s->gated[d] = (y + W->D[d] * ut) * mb__silu(s->xz[Di + d]);
        }
        mb__matvec(s->out, s->gated, W->out_proj, Di, C);
        for (d = 0; d < C; d++) s->x[d] += s->out[d];
    }
    mb__layernorm_forward(s->ln, &mean, &rstd, s->x, m->w.norm_f_w, m->w.norm_f_b, 1, C);
    mb__matvec(s->logits, s->ln, m->w.wte, C, c->vocab_size);
    return s->logits;
}

/* ========================================================== checkpoints */
#define MB__CKPT_MAGIC 0x4D425954
#define MB__CKPT_VERSION 1
#define MB__STATE_MAGIC 0x4D425453 /* "STBM" little-endian: the training-state block */
#define MB__SETTINGS_SLOTS 16

static int mb__little_endian(void) {
    const uint32_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* Settings as 16 doubles (exact for every integer we store). */
static void mb__settings_pack(double *o, const mb_train_settings *s) {
    memset(o, 0, sizeof(double) * MB__SETTINGS_SLOTS);
    o[0] = (double)s->batch; o[1] = (double)s->ctx; o[2] = (double)s->steps; o[3] = (double)s->warmup;
    o[4] = (double)s->grad_accum; o[5] = (double)s->save_every; o[6] = (double)s->seed; o[7] = (double)s->schedule;
    o[8] = s->lr; o[9] = s->weight_decay; o[10] = s->clip; o[11] = s->beta1; o[12] = s->beta2; o[13] = s->eps;
    o[14] = s->time_budget; o[15] = (double)s->sequential;
}
/* Every slot finite; the integer slots whole and within 2^53; flags 0/1. */
static int mb__settings_valid(const double *o) {
    static const int int_slots[] = {0, 1, 2, 3, 4, 5, 6, 7, 15};
    size_t i;
    for (i = 0; i < MB__SETTINGS_SLOTS; i++)
        if (!isfinite(o[i])) return 0;
    for (i = 0; i < sizeof int_slots / sizeof int_slots[0]; i++) {
        double v = o[int_slots[i]];
        if (v != floor(v) || fabs(v) > 9007199254740992.0) return 0;
    }
    return (o[7] == 0 || o[7] == 1) && (o[15] == 0 || o[15] == 1);
}

static void mb__settings_unpack(mb_train_settings *s, const double *o) {
    s->batch = (int64_t)o[0]; s->ctx = (int64_t)o[1]; s->steps = (int64_t)o[2]; s->warmup = (int64_t)o[3];
    s->grad_accum = (int64_t)o[4]; s->save_every = (int64_t)o[5]; s->seed = (int64_t)o[6]; s->schedule = (int32_t)o[7];
    s->lr = o[8]; s->weight_decay = o[9]; s->clip = o[10]; s->beta1 = o[11]; s->beta2 = o[12]; s->eps = o[13];
    s->time_budget = o[14]; s->sequential = (int32_t)o[15];
}

/* Bytes of the training-state block for n parameters. */
static int64_t mb__state_bytes(int64_t n) { return 8 + 8 * 4 + 8 * MB__SETTINGS_SLOTS + 2 * 4 * n; }

static void mb__header(int32_t *h, const mb_config *c, int with_state) {
    memset(h, 0, 256 * sizeof(int32_t));
    h[0] = MB__CKPT_MAGIC; h[1] = MB__CKPT_VERSION; h[2] = c->vocab_size; h[3] = c->d_model; h[4] = c->n_layer;
    h[5] = c->d_state; h[6] = c->d_conv; h[7] = c->expand; h[8] = c->dt_rank;
    h[9] = 0;  /* LayerNorm */
    h[10] = 1; /* tied head */
    h[11] = 0; /* float32 */
    h[12] = with_state;
}

/* Writes all of parts to fd; 0 on success. */
static int mb__write_all(int fd, const void *data, int64_t bytes) {
    const char *p = (const char *)data;
    while (bytes > 0) {
        size_t chunk = bytes > (1 << 30) ? (size_t)1 << 30 : (size_t)bytes;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        bytes -= w;
    }
    return 0;
}

/* Reads exactly bytes; returns the count read (short at end of file) or -1. */
static int64_t mb__read_all(int fd, void *data, int64_t bytes) {
    char *p = (char *)data;
    int64_t got = 0;
    while (got < bytes) {
        size_t chunk = bytes - got > (1 << 30) ? (size_t)1 << 30 : (size_t)(bytes - got);
        ssize_t r = read(fd, p + got, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += r;
    }
    return got;
}

/* temp file beside path -> write -> fsync -> rename -> fsync the folder.
   A crash at any moment leaves either the old file or the new one. */
static mb_status mb__write_file_atomic(const char *path, int nparts, const void *const *parts, const int64_t *sizes) {
    char tmp[4096], dir[4096];
    const char *slash;
    int fd, i, saved;
    if (strlen(path) + 32 > sizeof tmp) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "path too long: %s", path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot create %s: %s", tmp, strerror(errno));
    for (i = 0; i < nparts; i++)
        if (mb__write_all(fd, parts[i], sizes[i]) != 0) goto fail;
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) { fd = -1; goto fail; }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    slash = strrchr(path, '/');
    if (slash) {
        size_t len = (size_t)(slash - path);
        memcpy(dir, path, len ? len : 1);
        dir[len ? len : 1] = '\0';
    } else {
        strcpy(dir, ".");
    }
    fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); } /* best effort: some filesystems refuse */
    return MB_STATUS_OK;
fail:
    saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    return mb__fail(MB_STATUS_IO_ERROR, "cannot write %s: %s (the previous file, if any, is intact)", path, strerror(saved));
}

MBDEF mb_status mb_checkpoint_save(const char *path, const mb_model *m, const mb_train_state *ts) {
    int32_t header[256];
    unsigned char state_head[8 + 8 * 4 + 8 * MB__SETTINGS_SLOTS];
    const void *parts[5];
    int64_t sizes[5], n = m->num_params;
    int np = 0;
    if (!mb__little_endian()) return mb__fail(MB_STATUS_UNSUPPORTED, "checkpoints are little-endian; this host is not");
    mb__header(header, &m->cfg, ts != NULL);
    parts[np] = header; sizes[np++] = sizeof header;
    parts[np] = m->params; sizes[np++] = 4 * n;
    if (ts) {
        uint32_t magic = MB__STATE_MAGIC, version = 1;
        double settings[MB__SETTINGS_SLOTS];
        mb__settings_pack(settings, &ts->settings);
        memcpy(state_head, &magic, 4);
        memcpy(state_head + 4, &version, 4);
        memcpy(state_head + 8, &ts->step, 8);
        memcpy(state_head + 16, &ts->data_rng, 8);
        memcpy(state_head + 24, &ts->data_pos, 8);
        memcpy(state_head + 32, &ts->elapsed_s, 8);
        memcpy(state_head + 40, settings, sizeof settings);
        parts[np] = state_head; sizes[np++] = sizeof state_head;
        parts[np] = ts->adam_m; sizes[np++] = 4 * n;
        parts[np] = ts->adam_v; sizes[np++] = 4 * n;
    }
    return mb__write_file_atomic(path, np, parts, sizes);
}

MBDEF mb_status mb_model_save(const mb_model *m, const char *path) { return mb_checkpoint_save(path, m, NULL); }

MBDEF void mb_train_state_free(mb_train_state *ts) {
    if (!ts) return;
    MB_FREE(ts->adam_m);
    MB_FREE(ts->adam_v);
    ts->adam_m = ts->adam_v = NULL;
}

/* Checks every header field; fills cfg. */
static mb_status mb__check_header(const int32_t *h, const char *path, mb_config *cfg) {
    int i;
    mb_status s;
    if ((uint32_t)h[0] != MB__CKPT_MAGIC) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: not a mambabyte checkpoint (magic 0x%08x, expected 0x%08x)", path, (unsigned)h[0], MB__CKPT_MAGIC);
    if (h[1] != MB__CKPT_VERSION) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: checkpoint version %d, this build reads version %d", path, h[1], MB__CKPT_VERSION);
    if (h[9] != 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: norm kind %d unsupported (0 = LayerNorm)", path, h[9]);
    if (h[10] != 1) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: tied-head flag %d unsupported (1 = tied)", path, h[10]);
    if (h[11] != 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: parameter dtype %d unsupported (0 = float32)", path, h[11]);
    if (h[12] != 0 && h[12] != 1) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training-state flag %d (must be 0 or 1)", path, h[12]);
    for (i = 13; i < 256; i++)
        if (h[i] != 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: reserved header field [%d] is %d (must be 0)", path, i, h[i]);
    cfg->vocab_size = h[2]; cfg->d_model = h[3]; cfg->n_layer = h[4]; cfg->d_state = h[5];
    cfg->d_conv = h[6]; cfg->expand = h[7]; cfg->dt_rank = h[8];
    if (cfg->dt_rank == 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: dt_rank 0 in header", path);
    s = mb_config_validate(cfg);
    if (s != MB_STATUS_OK) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: bad config in header: %s", path, mb_last_error());
    return MB_STATUS_OK;
}

MBDEF mb_status mb_checkpoint_load(const char *path, mb_model **out, mb_train_state *ts, int *has_state) {
    int32_t h[256];
    struct stat st;
    mb_config cfg;
    mb_model *m = NULL;
    int64_t n, expect, i;
    int fd, with_state;
    mb_status s;
    *out = NULL;
    if (has_state) *has_state = 0;
    if (!mb__little_endian()) return mb__fail(MB_STATUS_UNSUPPORTED, "checkpoints are little-endian; this host is not");
    if (stat(path, &st) != 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot open checkpoint %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return mb__fail(MB_STATUS_IO_ERROR, "checkpoint %s is not a regular file", path);
    fd = open(path, O_RDONLY);
    if (fd < 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot open checkpoint %s: %s", path, strerror(errno));
    i = mb__read_all(fd, h, sizeof h);
    if (i != (int64_t)sizeof h) {
        close(fd);
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: truncated: %lld bytes, the header alone is 1024", path, (long long)(i < 0 ? 0 : i));
    }
    s = mb__check_header(h, path, &cfg);
    if (s != MB_STATUS_OK) { close(fd); return s; }
    n = mb_config_num_params(&cfg);
    with_state = h[12];
    expect = 1024 + 4 * n + (with_state ? mb__state_bytes(n) : 0);
    if ((int64_t)st.st_size != expect) {
        close(fd);
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: %lld bytes, but its header (d_model %d, %d layers%s) needs %lld: %s", path,
                        (long long)st.st_size, cfg.d_model, cfg.n_layer, with_state ? ", training state" : "", (long long)expect,
                        (int64_t)st.st_size < expect ? "truncated" : "trailing data or a config that does not match");
    }
    s = mb__model_alloc(&m, &cfg);
    if (s != MB_STATUS_OK) { close(fd); return s; }
    if (mb__read_all(fd, m->params, 4 * n) != 4 * n) { close(fd); mb_model_free(m); return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path); }
    for (i = 0; i < n; i++) {
        if (!isfinite(m->params[i])) {
            char tname[64];
            int t = 0;
            while (t + 1 < m->ntensors && m->tensors[t + 1].offset <= i) t++;
            snprintf(tname, sizeof tname, "%s", m->tensors[t].name);
            i -= m->tensors[t].offset;
            close(fd);
            mb_model_free(m);
            return mb__fail(MB_STATUS_NON_FINITE, "%s: parameter %s[%lld] is not finite: the checkpoint is corrupt", path,
                            tname, (long long)i);
        }
    }
    if (with_state && ts) {
        unsigned char head[8 + 8 * 4 + 8 * MB__SETTINGS_SLOTS];
        uint32_t magic, version;
        double settings[MB__SETTINGS_SLOTS];
        memset(ts, 0, sizeof *ts);
        if (mb__read_all(fd, head, sizeof head) != (int64_t)sizeof head) { close(fd); mb_model_free(m); return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path); }
        memcpy(&magic, head, 4);
        memcpy(&version, head + 4, 4);
        if (magic != MB__STATE_MAGIC || version != 1) {
            close(fd);
            mb_model_free(m);
            return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training-state block has magic 0x%08x version %u", path, magic, version);
        }
        memcpy(&ts->step, head + 8, 8);
        memcpy(&ts->data_rng, head + 16, 8);
        memcpy(&ts->data_pos, head + 24, 8);
        memcpy(&ts->elapsed_s, head + 32, 8);
        memcpy(settings, head + 40, sizeof settings);
        if (!mb__settings_valid(settings)) {
            close(fd);
            mb_model_free(m);
            return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training settings out of range (corrupt checkpoint)", path);
        }
        mb__settings_unpack(&ts->settings, settings);
        ts->adam_m = (float *)MB_MALLOC((size_t)n * 4);
        ts->adam_v = (float *)MB_MALLOC((size_t)n * 4);
        if (!ts->adam_m || !ts->adam_v) { close(fd); mb_model_free(m); mb_train_state_free(ts); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "optimizer state"); }
        if (mb__read_all(fd, ts->adam_m, 4 * n) != 4 * n || mb__read_all(fd, ts->adam_v, 4 * n) != 4 * n) {
            close(fd); mb_model_free(m); mb_train_state_free(ts);
            return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path);
        }
        if (ts->step < 0 || ts->data_pos < 0 || !isfinite(ts->elapsed_s) || ts->elapsed_s < 0) {
            close(fd); mb_model_free(m); mb_train_state_free(ts);
            return mb__fail(MB_STATUS_BAD_FORMAT, "%s: negative step, data position or elapsed time (corrupt checkpoint)", path);
        }
        for (i = 0; i < n; i++) /* a NaN moment would turn the first update's parameters into NaN */
            if (!isfinite(ts->adam_m[i]) || !isfinite(ts->adam_v[i]) || ts->adam_v[i] < 0.0f) {
                close(fd); mb_model_free(m); mb_train_state_free(ts);
                return mb__fail(MB_STATUS_NON_FINITE, "%s: AdamW moment %lld is not finite (or v < 0): the checkpoint is corrupt", path, (long long)i);
            }
        if (has_state) *has_state = 1;
    }
    close(fd);
    *out = m;
    return MB_STATUS_OK;
}

MBDEF mb_status mb_model_load(mb_model **out, const char *path) { return mb_checkpoint_load(path, out, NULL, NULL); }


/* ============================================================= training */
MBDEF double mb_lr_at_step(double lr_max, int64_t s, int64_t W, int64_t S) {
    double p;
    if (s < W) return lr_max * (double)(s + 1) / (double)W;
    p = (double)(s - W) / (double)(S - W > 1 ? S - W : 1);
    if (p > 1.0) p = 1.0;
    return lr_max * 0.5 * (1.0 + cos(3.14159265358979323846 * p));
}

MBDEF double mb_lr_at_fraction(double lr_max, double f, double wf) {
    double p;
    if (f < 0.0) f = 0.0;
    if (f >= 1.0) return 0.0;
    if (f < wf) return lr_max * f / wf;
    p = (f - wf) / (1.0 - wf);
    return lr_max * 0.5 * (1.0 + cos(3.14159265358979323846 * p));
}

MBDEF double mb_grad_norm(const float *g, int64_t n) {
    double s = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) s += (double)g[i] * (double)g[i];
    return sqrt(s);
}

MBDEF float mb_clip_coef(double norm, double max_norm) {
    double c = max_norm / (norm + 1e-6);
    return (float)(c < 1.0 ? c : 1.0);
}

/* torch.optim.AdamW (foreach=False) step for float32 tensors:
     p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
     p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps) */
MBDEF void mb_adamw_update(mb_model *m, float *adam_m, float *adam_v, int64_t t, double lr, double beta1,
                           double beta2, double eps, double weight_decay) {
    const float b1 = (float)beta1, b2 = (float)beta2, one_b1 = (float)(1.0 - beta1), one_b2 = (float)(1.0 - beta2);
    const float step_size = (float)(lr / (1.0 - pow(beta1, (double)t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)t)), fe = (float)eps;
    int i;
    for (i = 0; i < m->ntensors; i++) {
        const mb_tensor_info *ti = &m->tensors[i];
        const float decay = ti->weight_decay ? (float)(1.0 - lr * weight_decay) : 1.0f;
        float *p = m->params + ti->offset, *g = m->grads + ti->offset, *mm = adam_m + ti->offset, *vv = adam_v + ti->offset;
        int64_t j;
        MB__OMP(parallel for schedule(static) if (ti->numel > 65536))
        for (j = 0; j < ti->numel; j++) {
            float gj = g[j], denom;
            p[j] *= decay;
            mm[j] = mm[j] * b1 + gj * one_b1;
            vv[j] = vv[j] * b2 + gj * gj * one_b2;
            denom = sqrtf(vv[j]) / bc2_sqrt + fe;
            p[j] -= step_size * (mm[j] / denom);
        }
    }
}

/* ================================================================= data */
MBDEF mb_status mb_map_file(mb_mapped_file *f, const char *path) {
    struct stat st;
    int fd;
    void *base;
    memset(f, 0, sizeof *f);
    fd = open(path, O_RDONLY);
    if (fd < 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mb__fail(MB_STATUS_IO_ERROR, "%s is not a regular file", path);
    }
    if (st.st_size == 0) { close(fd); return MB_STATUS_OK; }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (base == MAP_FAILED) return mb__fail(MB_STATUS_IO_ERROR, "cannot map %s: %s", path, strerror(errno));
    f->map_base = base;
    f->map_len = (size_t)st.st_size;
    f->data = (const uint8_t *)base;
    f->size = (int64_t)st.st_size;
    return MB_STATUS_OK;
}

MBDEF void mb_unmap_file(mb_mapped_file *f) {
    if (f->map_base) munmap(f->map_base, f->map_len);
    memset(f, 0, sizeof *f);
}

MBDEF void mb_sampler_init(mb_sampler *s, const uint8_t *data, int64_t size, uint64_t seed, int sequential) {
    s->data = data;
    s->size = size;
    s->rng = seed ^ 0xD1B54A32D192ED03ull; /* not the model-init stream */
    s->pos = 0;
    s->sequential = sequential;
}

MBDEF mb_status mb_sampler_next(mb_sampler *s, uint8_t *inputs, int32_t *targets, int B, int T) {
    int b, t;
    if (s->size < (int64_t)T + 1)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "the data has %lld bytes; a window of ctx+1 = %d is needed",
                        (long long)s->size, T + 1);
    for (b = 0; b < B; b++) {
        int64_t start;
        const uint8_t *w;
        if (s->sequential) {
            if (s->pos < 0 || s->pos > s->size - (int64_t)T - 1) s->pos = 0; /* wrap (or a bad stored position) */
            start = s->pos;
            s->pos += T;
        } else {
            start = (int64_t)(mb__rng_next(&s->rng) % (uint64_t)(s->size - T));
        }
        w = s->data + start;
        for (t = 0; t < T; t++) {
            inputs[(int64_t)b * T + t] = w[t];
            targets[(int64_t)b * T + t] = w[t + 1];
        }
    }
    return MB_STATUS_OK;
}

MBDEF int mb_utf8_char_len(const uint8_t *s, int64_t n) {
    uint8_t c, lo = 0x80, hi = 0xBF;
    int len, i;
    if (n < 1) return 0;
    c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

/* ================================================================= eval */
static int mb__argmax(const float *x, int n) {
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

MBDEF mb_status mb_eval_text(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                             mb_eval_result *r, mb_progress_fn progress, void *user) {
    mb_stream *s;
    const float *logits;
    int64_t end = 0, nchars = 0, pos = 0, c;
    mb_status st;
    memset(r, 0, sizeof *r);
    /* validate the whole evaluated prefix first: fail before any work */
    while (end < len && (max_chars < 0 || nchars < max_chars)) {
        int k = mb_utf8_char_len(text + end, len - end);
        if (k == 0) return mb__fail(MB_STATUS_BAD_FORMAT, "invalid UTF-8 at byte offset %lld (byte 0x%02x)", (long long)end, text[end]);
        end += k;
        nchars++;
    }
    st = mb_stream_create(&s, m);
    if (st != MB_STATUS_OK) return st;
    logits = mb_stream_step(s, 0x00);
    for (c = 0; c < nchars; c++) {
        int k = mb_utf8_char_len(text + pos, end - pos), j;
        r->chars_correct += k == 1 && mb__argmax(logits, 128) == text[pos];
        for (j = 0; j < k; j++) {
            uint8_t b = text[pos + j];
            mb__row row = mb__row_stats(logits, 256);
            r->nll_bits -= mb__row_logp(&row, logits[b], 256) / 0.69314718055994530942;
            r->bytes_correct += mb__argmax(logits, 256) == b;
            r->bytes++;
            logits = mb_stream_step(s, b);
        }
        pos += k;
        r->chars++;
        if (progress && (r->chars % 1024 == 0 || r->chars == nchars)) progress(user, r->chars, nchars);
    }
    mb_stream_free(s);
    return MB_STATUS_OK;
}

/* ============================================================== trainer */
MBDEF mb_status mb_trainer_init(mb_trainer *t, mb_model *m, const mb_train_settings *settings, const uint8_t *data,
                                int64_t size, mb_train_state *resume) {
    const mb_train_settings *s = settings;
    int64_t n = m->num_params, tokens;
    memset(t, 0, sizeof *t);
    t->inject_nonfinite_step = -1;
    if (s->batch < 1 || s->ctx < 1 || s->grad_accum < 1 || s->batch > (1 << 20) || s->ctx > (1 << 24))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "batch %lld, ctx %lld, grad_accum %lld must be >= 1", (long long)s->batch,
                        (long long)s->ctx, (long long)s->grad_accum);
    if (size < s->ctx + 1)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "the training data has %lld bytes; ctx %lld needs at least %lld",
                        (long long)size, (long long)s->ctx, (long long)s->ctx + 1);
    t->model = m;
    t->st.settings = *s;
    tokens = s->batch * s->ctx;
    t->inputs = (uint8_t *)MB_MALLOC((size_t)tokens);
    t->targets = (int32_t *)MB_MALLOC((size_t)tokens * sizeof(int32_t));
    if (!t->inputs || !t->targets) { mb_trainer_free(t); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "batch buffers"); }
    mb_sampler_init(&t->sampler, data, size, (uint64_t)s->seed, s->sequential != 0);
    if (resume) {
        t->st.step = resume->step;
        t->st.elapsed_s = resume->elapsed_s;
        t->st.adam_m = resume->adam_m;
        t->st.adam_v = resume->adam_v;
        resume->adam_m = resume->adam_v = NULL;
        t->sampler.rng = resume->data_rng;
        t->sampler.pos = resume->data_pos;
    } else {
        t->st.adam_m = (float *)MB_MALLOC((size_t)n * sizeof(float));
        t->st.adam_v = (float *)MB_MALLOC((size_t)n * sizeof(float));
        if (t->st.adam_m) memset(t->st.adam_m, 0, (size_t)n * sizeof(float));
        if (t->st.adam_v) memset(t->st.adam_v, 0, (size_t)n * sizeof(float));
    }
    if (!t->st.adam_m || !t->st.adam_v) { mb_trainer_free(t); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "optimizer state"); }
    return MB_STATUS_OK;
}

MBDEF mb_status mb_trainer_step(mb_trainer *t, double lr, mb_step_result *r) {
    const mb_train_settings *s = &t->st.settings;
    mb_model *m = t->model;
    int B = (int)s->batch, T = (int)s->ctx;
    int64_t k;
    double loss_sum = 0.0;
    mb_status st;
    mb_model_zero_grad(m);
    for (k = 0; k < s->grad_accum; k++) {
        float loss;
        st = mb_sampler_next(&t->sampler, t->inputs, t->targets, B, T);
        if (st == MB_STATUS_OK) st = mb_model_forward(m, t->inputs, t->targets, B, T, &loss);
        if (st == MB_STATUS_OK) st = mb_model_backward(m);
        if (st != MB_STATUS_OK) return st;
        loss_sum += loss;
    }
    return mb_trainer_apply(t, lr, (float)(loss_sum / (double)s->grad_accum), r);
}

MBDEF mb_status mb_trainer_apply(mb_trainer *t, double lr, float loss, mb_step_result *r) {
    const mb_train_settings *s = &t->st.settings;
    mb_model *m = t->model;
    int64_t n = m->num_params, i;
    memset(r, 0, sizeof *r);
    r->lr = lr;
    if (s->grad_accum > 1) { /* the mean over micro-batches, not their sum */
        float inv = 1.0f / (float)s->grad_accum;
        for (i = 0; i < n; i++) m->grads[i] *= inv;
    }
    if (t->st.step == t->inject_nonfinite_step) m->grads[0] = NAN;
    r->loss = loss;
    r->grad_norm = mb_grad_norm(m->grads, n);
    r->applied = isfinite(r->loss) && isfinite(r->grad_norm);
    if (r->applied) { /* the guard: a non-finite step changes nothing but the step count */
        float coef = mb_clip_coef(r->grad_norm, s->clip);
        if (coef < 1.0f)
            for (i = 0; i < n; i++) m->grads[i] *= coef;
        mb_adamw_update(m, t->st.adam_m, t->st.adam_v, t->st.step + 1, lr, s->beta1, s->beta2, s->eps, s->weight_decay);
    }
    t->st.step++;
    return MB_STATUS_OK;
}

MBDEF mb_status mb_trainer_save(const mb_trainer *t, const char *path) {
    mb_train_state st = t->st;
    st.data_rng = t->sampler.rng;
    st.data_pos = t->sampler.pos;
    return mb_checkpoint_save(path, t->model, &st);
}

MBDEF void mb_trainer_free(mb_trainer *t) {
    MB_FREE(t->inputs);
    MB_FREE(t->targets);
    mb_train_state_free(&t->st);
    t->inputs = NULL;
    t->targets = NULL;
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
