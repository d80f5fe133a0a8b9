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
     detail of this thread's last failure (a path...), set by mb_set_error.

   API OVERVIEW (details beside each declaration below)
     numerics    mb_softmax, mb_log_softmax, mb_logsumexp,
                 mb_cross_entropy_forward / _backward   (PyTorch semantics)
     model       mb_model_create/load/save/free, mb_model_forward/backward,
                 mb_model_params/grads (one flat block, checkpoint order),
                 mb_model_hash, mb_model_set_precision (bf16 matrix
                 products: AMX or AVX512-BF16, chosen at run time)
                 layout (shared with the CUDA side): MB_LAYER_TENSORS, mb_config_tensors,
                 mb_tensor_index / _matrix, mb_weights_point, MB_LAYER_ACTS, mb_layer_acts_place,
                 MB_MODEL_ACTS, mb_model_acts_place
     streaming   mb_stream_create/step/feed/reset/copy/free: O(1) state per
                 byte (a stream snapshots the weights); mb_stream_feed, the
                 parallel prefill; mb_sample_byte, mb_stream_generate
     files       mb_checkpoint_save/load (atomic: temp file, fsync, rename)
     training    mb_train_settings_default (seed 000's recipe), mb_trainer_*
                 (one step: batches, guard, clip, AdamW), mb_train_run (the
                 whole loop: schedule, time budget, saves, callback),
                 mb_train_settings_resume (what a resume may change); the
                 settings' one table: MB_TRAIN_SETTINGS, mb_train_field_*
                 mb_adamw_update, mb_grad_norm, mb_lr_at_step / _at_fraction;
                 the lines front ends print: mb_train_progress_line,
                 mb_trainer_describe, mb_train_report_describe
     data        mb_dataset_open (a WikiText folder or a file, mmapped),
                 mb_dataset_split_path, mb_dataset_describe,
                 mb_batcher_* (random or sequential training windows)
     eval        mb_eval_text: the WikiText char-accuracy protocol;
                 mb_stream_predict_char / _top_chars, mb_eval_text_exact:
                 the exact greedy character (argmax over all characters);
                 mb_eval_describe
     CUDA        mb_cuda_* (defined only when mambabyte_cuda.cuh is linked);
                 mb_cuda_trainer_attach puts a trainer's steps on the GPU

   TRAINING FROM YOUR PROGRAM
         mb_config cfg = mb_config_default();
         mb_train_settings set = mb_train_settings_default();
         mb_dataset d;  mb_model *m;  mb_trainer tr;  mb_train_report rep;
         mb_train_options opt = {"model.bin", 0, my_callback, my_state};
         mb_dataset_open(&d, "data/wikitext-103", NULL);
         mb_model_create(&m, &cfg, (uint64_t)set.seed);
         mb_trainer_init(&tr, m, &set, d.train, d.train_size, NULL);
         mb_train_run(&tr, &opt, &rep);      (m now holds the trained weights)
     (check each mb_status; free with mb_trainer_free, mb_model_free,
     mb_dataset_close).  my_callback(user, progress) returns non-zero to stop.

   IMPLEMENTATION SECTIONS (in this order, after the declarations)
     utilities, numerics, RNG, config (the tensor table), CPU layers (each
     layer's forward and backward side by side; "----" sub-banners: norms,
     matrix products in float32 and in bf16, vector math, SIMD scan helpers,
     the conv, the scan: its reference, then its fast chunked path), model
     (activations, forward, backward), streaming (and sampling), checkpoints,
     safetensors (mamba_ssm / Hugging Face files both ways), data, eval, then
     the three training sections side by side: training (schedule, AdamW),
     trainer (one step), train loop.  Each starts with a "= name =" banner.

   PLATFORM
     POSIX (Linux, macOS, the BSDs): mmap, fsync, rename and clock_gettime.

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
     [9] norm kind (0 LayerNorm, 1 RMSNorm) [10] tied head (1; 0: a separate
     lm_head.weight is stored) [11] param dtype
     (0 float32) [12] training state follows (0/1) [13] data-parallel ranks
     that trained it (0 or 1: one process) [14] named settings in the
     training state (0 in files before them), the rest 0.
     Then every parameter as float32 in mb_config_tensors order (the names
     are mamba_ssm's without "backbone.", but NOT its order: mamba_ssm's
     state_dict lists A_log and D first in each mixer):
       embedding.weight (256, d_model)
       per layer i: layers.i.norm.weight, layers.i.norm.bias (d_model; no
         bias under RMSNorm),
         layers.i.mixer.in_proj.weight (2*d_inner, d_model),
         layers.i.mixer.conv1d.weight (d_inner, 1, d_conv),
         layers.i.mixer.conv1d.bias (d_inner),
         layers.i.mixer.x_proj.weight (dt_rank + 2*d_state, d_inner),
         layers.i.mixer.dt_proj.weight (d_inner, dt_rank),
         layers.i.mixer.dt_proj.bias (d_inner),
         layers.i.mixer.A_log (d_inner, d_state), layers.i.mixer.D (d_inner),
         layers.i.mixer.out_proj.weight (d_model, d_inner)
       norm_f.weight, norm_f.bias (d_model; no bias under RMSNorm)
       lm_head.weight (256, d_model) only when [10] is 0
     When [12] is 1 the training state follows: uint32 magic 0x4D425453,
     uint32 version 1, int64 step, uint64 batcher RNG, int64 sequential
     position, float64 elapsed seconds, [14] settings (a MB_TRAIN_SETTINGS
     key NUL-padded to 24 bytes, a float64; one missing takes its default;
     [14] 0: mb__v1_settings' 16 float64), AdamW m, then v (float32); then,
     when [15] (rows with carried state, else 0) is not 0, their states
     (mb_model_set_carry's layout, [15] rows, float32; every rank's).

   LICENSE: MIT, at the end of this file.
*/
#ifndef MAMBABYTE_H
#define MAMBABYTE_H

/* POSIX (fsync, mmap, getpid) under strict -std=c99: this must come before
   the first system header of the translation unit. */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
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
/* Records that detail (printf-style) and returns s: the one error channel,
   which the CUDA companion and callers' backends report through too. */
MBDEF mb_status mb_set_error(mb_status s, const char *fmt, ...);

/* -------------------------------------------------------------- numerics */
/* x and out are (rows, V) row-major; out may alias x. */
MBDEF void mb_softmax(float *out, const float *x, int64_t rows, int64_t V);
MBDEF void mb_log_softmax(float *out, const float *x, int64_t rows, int64_t V);
MBDEF void mb_logsumexp(float *out /* rows */, const float *x, int64_t rows, int64_t V);

typedef enum { MB_REDUCTION_MEAN = 0, MB_REDUCTION_SUM = 1, MB_REDUCTION_NONE = 2 } mb_reduction;
#define MB_IGNORE_INDEX (-100) /* PyTorch's: a row without a target */
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
typedef enum { MB_NORM_LAYERNORM = 0, MB_NORM_RMSNORM = 1 } mb_norm_kind;
#define MB_MAX_CONV 64 /* d_conv's limit (mb_config_validate; the CUDA conv keeps a window of it) */
typedef struct {
    int32_t vocab_size, d_model, n_layer, d_state, d_conv, expand, dt_rank;
    int32_t norm;        /* mb_norm_kind: LayerNorm (weight, bias) or RMSNorm (weight only); eps 1e-5 */
    int32_t untied_head; /* 0: logits = norm_f(x) . embedding^T; 1: a separate lm_head.weight (V, C) */
} mb_config;
/* Seed 000's model: 256, 192, 4, 16, 4, 2, dt_rank 0 (derived: ceil(d_model/16),
   12 here, and it follows a changed d_model), LayerNorm, tied head (about
   1.06M parameters).  A zeroed norm / untied_head is that default. */
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
/* The parameter layout, written once: every tensor as
   ENTRY(ID, field, name, ndim, d0, d1, d2, weight_decay), in checkpoint order.
   The file (and the flat block) holds the tensors before the layers, then
   n_layer times the per-layer list (named "layers.<l>.<name>"), then the
   tensors after the layers.  Shapes are in C = d_model, Di = d_model*expand,
   S = d_state, K = d_conv, R = dt_rank, X = R + 2S, V = vocab_size; `field`
   is the pointer's name in the implementation's weight structs. */
#define MB_TENSORS_BEFORE_LAYERS(ENTRY) \
    ENTRY(EMBEDDING, wte,       "embedding.weight",      2, V,  C,  1, 1)
#define MB_LAYER_TENSORS(ENTRY) \
    ENTRY(NORM_W,    norm_w,    "norm.weight",           1, C,  1,  1, 0) \
    ENTRY(NORM_B,    norm_b,    "norm.bias",             1, C,  1,  1, 0) \
    ENTRY(IN_PROJ,   in_proj,   "mixer.in_proj.weight",  2, 2 * Di, C, 1, 1) \
    ENTRY(CONV_W,    conv_w,    "mixer.conv1d.weight",   3, Di, 1,  K, 1) \
    ENTRY(CONV_B,    conv_b,    "mixer.conv1d.bias",     1, Di, 1,  1, 0) \
    ENTRY(X_PROJ,    x_proj,    "mixer.x_proj.weight",   2, X,  Di, 1, 1) \
    ENTRY(DT_W,      dt_proj_w, "mixer.dt_proj.weight",  2, Di, R,  1, 1) \
    ENTRY(DT_B,      dt_proj_b, "mixer.dt_proj.bias",    1, Di, 1,  1, 0) \
    ENTRY(A_LOG,     A_log,     "mixer.A_log",           2, Di, S,  1, 0) \
    ENTRY(D,         D,         "mixer.D",               1, Di, 1,  1, 0) \
    ENTRY(OUT_PROJ,  out_proj,  "mixer.out_proj.weight", 2, C,  Di, 1, 1)
#define MB_TENSORS_AFTER_LAYERS(ENTRY) \
    ENTRY(NORM_F_W,  norm_f_w,  "norm_f.weight",         1, C,  1,  1, 0) \
    ENTRY(NORM_F_B,  norm_f_b,  "norm_f.bias",           1, C,  1,  1, 0) \
    ENTRY(LM_HEAD,   lm_head,   "lm_head.weight",        2, V,  C,  1, 1)
/* Not every config holds every entry: RMSNorm has no norm.bias / norm_f.bias
   and a tied head no lm_head.weight (mb_tensor_index gives -1 for them, and
   their weight pointers are NULL); the others keep the lists' order. */
#define MB__TENSOR_ID(ID, field, name, ndim, d0, d1, d2, decay) MB_TENSOR_##ID,
#define MB__TENSOR_ONE(ID, field, name, ndim, d0, d1, d2, decay) +1
/* Per-layer tensors (MB_TENSOR_NORM_W ... MB_TENSOR_OUT_PROJ) and the
   globals (MB_TENSOR_EMBEDDING, MB_TENSOR_NORM_F_W, MB_TENSOR_NORM_F_B,
   MB_TENSOR_LM_HEAD). */
typedef enum { MB_LAYER_TENSORS(MB__TENSOR_ID) MB_NUM_LAYER_TENSORS } mb_layer_tensor;
typedef enum {
    MB_TENSORS_BEFORE_LAYERS(MB__TENSOR_ID) MB_TENSORS_AFTER_LAYERS(MB__TENSOR_ID) MB_NUM_GLOBAL_TENSORS
} mb_global_tensor;
enum { MB__NUM_TENSORS_BEFORE_LAYERS = 0 MB_TENSORS_BEFORE_LAYERS(MB__TENSOR_ONE) };

/* Fills out[0..n) (out may be NULL) and returns n, the number of tensors. */
MBDEF int mb_config_tensors(const mb_config *cfg, mb_tensor_info *out);
/* Index into mb_config_tensors' table of layer `layer`'s tensor `field` (an
   mb_layer_tensor), or with layer -1 of the global tensor `field` (an
   mb_global_tensor); -1 when out of range or absent from this config (an
   RMSNorm bias, a tied head's lm_head).  cfg is a validated config. */
MBDEF int mb_tensor_index(const mb_config *cfg, int layer, int field);
/* The per-layer weights of matrix products, in forward order. */
#define MB_LAYER_MATRICES(ENTRY) ENTRY(IN_PROJ) ENTRY(X_PROJ) ENTRY(DT_W) ENTRY(OUT_PROJ)
/* Such a weight (or the head's: layer -1, MB_TENSOR_LM_HEAD, which is the
   embedding when tied) as a matrix of *out rows by *in columns (d0 and
   d1*d2 of its entry); returns its mb_tensor_index. */
MBDEF int mb_tensor_matrix(const mb_config *cfg, int layer, int field, int *in, int *out);
/* The activations of one layer, written once: ENTRY(name, floats, bf16) in
   block order, in N = B*T tokens, B, nch = the scan's chunks and the shapes'
   letters above; bf16 1: the CUDA trainer's bf16 products read a copy too. */
#define MB_LAYER_ACTS(ENTRY) \
    ENTRY(resid, N * C, 0) ENTRY(ln, N * C, 1)    /* the layer's input, its norm */ \
    ENTRY(ln_mean, N, 0) ENTRY(ln_rstd, N, 0)     /* the norm's statistics */ \
    ENTRY(xz, N * 2 * Di, 0) ENTRY(u, N * Di, 1)  /* in_proj's output x' | z; silu(conv(x')) */ \
    ENTRY(xdbl, N * X, 0) ENTRY(delta, N * Di, 0) /* x_proj's dt_low | B | C; dt_proj's, before the bias */ \
    ENTRY(gated, N * Di, 1) ENTRY(states, B * nch * Di * S, 0) /* the scan's y * silu(z); its h at the chunks' starts */ \
    ENTRY(conv_in, B * K * Di, 0) /* a carried conv window at the start (mb_model_set_carry) */
#define MB__ACT_PTR(name, floats, bf16) float *name;
typedef struct { MB_LAYER_ACTS(MB__ACT_PTR) } mb_layer_acts;
/* The one layout of both trainers' activations (and gradients') and both streams': a's buffers for (B, T)
   from base (NULL: only measures), returning the floats they take.  chunk: the scan's (0: no states);
   bf16 1: only the buffers with a bf16 copy, in 2-byte elements (the others NULL). */
MBDEF int64_t mb_layer_acts_place(mb_layer_acts *a, float *base, const mb_config *cfg, int B, int T, int chunk, int bf16);
/* The model's activations after its layers', the same way: ENTRY(name, floats, who), V the vocabulary;
   who: 1 the CPU model's, 2 the CUDA trainer's, 3 both. */
#define MB_MODEL_ACTS(ENTRY) \
    ENTRY(resid_out, N * C, 3) ENTRY(lnf, N * C, 3) ENTRY(lnf_mean, N, 3) ENTRY(lnf_rstd, N, 3) ENTRY(logits, N * V, 3) \
    ENTRY(mix_out, N * C, 1) ENTRY(d_logits, N * V, 1) ENTRY(scan_scratch, B * (Di * S + 2 * Di), 1) \
    ENTRY(loss_rows, N, 2) ENTRY(loss_dev, 1, 2) /* the per-row losses, their mean */
typedef struct { MB_MODEL_ACTS(MB__ACT_PTR) } mb_model_acts;
/* As mb_layer_acts_place for the entries of who (the others NULL). */
MBDEF int64_t mb_model_acts_place(mb_model_acts *a, float *base, const mb_config *cfg, int B, int T, int who);
/* Pointers into a flat block (parameters or gradients), one per entry of the
   layout lists, set by mb_weights_point from a tensor table t (mb_config_tensors';
   NULL where the config has no such tensor or t's offset is -1): the CPU
   model's and stream's, the CUDA trainer's and stream's.  w->layer: n_layer, the caller's. */
#define MB__TENSOR_PTR(ID, field, name, ndim, d0, d1, d2, decay) float *field;
typedef struct { MB_LAYER_TENSORS(MB__TENSOR_PTR) } mb_layer_weights;
typedef struct {
    MB_TENSORS_BEFORE_LAYERS(MB__TENSOR_PTR) MB_TENSORS_AFTER_LAYERS(MB__TENSOR_PTR)
    mb_layer_weights *layer;
} mb_weights;
MBDEF void mb_weights_point(mb_weights *w, float *base, const mb_config *cfg, const mb_tensor_info *t);
MBDEF int64_t mb_config_num_params(const mb_config *cfg);

typedef struct mb_model mb_model;
MBDEF mb_status mb_model_create(mb_model **out, const mb_config *cfg, uint64_t seed);
/* Any checkpoint of this project, or a safetensors file (see below). */
MBDEF mb_status mb_model_load(mb_model **out, const char *path);
MBDEF mb_status mb_model_save(const mb_model *m, const char *path);   /* atomic, no training state */
MBDEF void mb_model_free(mb_model *m);
MBDEF const mb_config *mb_model_config(const mb_model *m);
MBDEF int64_t mb_model_num_params(const mb_model *m);
MBDEF float *mb_model_params(mb_model *m); /* flat, in checkpoint order */
MBDEF uint64_t mb_model_hash(const mb_model *m); /* FNV-1a (64-bit) of the parameters' bytes: equal weights, equal hash */
MBDEF float *mb_model_grads(mb_model *m);  /* same layout */
/* inputs, targets (targets may be NULL: no loss) are (B, T); the loss is the
   mean cross-entropy over targets that are not -100.  Keeps what backward needs. */
MBDEF mb_status mb_model_forward(mb_model *m, const uint8_t *inputs, const int32_t *targets,
                                 int B, int T, float *loss);
MBDEF const float *mb_model_logits(const mb_model *m); /* (B, T, 256) of the last forward */
MBDEF mb_status mb_model_backward(mb_model *m);         /* grads += d(mean CE)/d(params) */
MBDEF void mb_model_zero_grad(mb_model *m);
/* Carried state (truncated BPTT): with state non-NULL each forward starts
   every row from it and leaves there the state after its window; layer l
   holds the rows' scan states (B, d_state, d_inner), then their conv
   windows (B, d_conv, d_inner: the last d_conv inputs x', oldest first, as
   a stream's): mb_carry_floats(cfg, B) floats, zero at a sequence start.
   It is an input: no gradient flows into it.  NULL (the default): from zero. */
MBDEF void mb_model_set_carry(mb_model *m, float *state);
MBDEF int64_t mb_carry_floats(const mb_config *cfg, int64_t B);
/* Time steps per scan chunk (states are kept only at chunk boundaries). */
MBDEF mb_status mb_model_set_scan_chunk(mb_model *m, int chunk);
/* The matrix products of mb_model_forward / mb_model_backward (the linear
   layers and the head): MB_PRECISION_FP32, the default, or
   MB_PRECISION_BF16: operands rounded to bf16, products and sums in
   float32 (AMX tiles where the CPU has them, else AVX512-BF16), while the
   weights, gradients, AdamW, norms, conv, scan and cross-entropy stay
   float32.  A CPU with neither keeps the float32 products (still
   MB_STATUS_OK: mb_model_precision says FP32, the describe line why).
   MB_PRECISION_TF32 is the CUDA trainer's only: MB_STATUS_UNSUPPORTED.
   The numbering is mb_cuda_trainer_attach's.  A run setting, not saved
   with the weights; streams and eval store their own (mb_stream_create_ex).  After a
   change, backward needs a new forward. */
#define MB_PRECISION_FP32 0
#define MB_PRECISION_BF16 1
#define MB_PRECISION_TF32 2
MBDEF mb_status mb_model_set_precision(mb_model *m, int precision);
MBDEF int mb_model_precision(const mb_model *m); /* the products' precision in effect */
/* "float32 products", "bf16 products: AMX tiles (tdpbf16ps)", "bf16
   products: AVX512-BF16 (vdpbf16ps)", or "bf16 requested but this CPU has
   no AVX512-BF16 or AMX: float32 products". */
MBDEF const char *mb_model_precision_describe(const mb_model *m);

/* ------------------------------------------------------------- streaming */
/* Per layer a conv window (d_conv x d_inner) and a scan state (d_state x
   d_inner): O(1) memory and work per byte, no context window.  The logits
   equal mb_model_forward's bit for bit.
   mb_stream_create snapshots ALL of the model: it copies every parameter
   once (the matrices only in the packed layout one step and the feed read,
   the rest as they are: about the model's size, plus a tied head's
   V x d_model packed copy) and the config.  After it
   returns the stream never reads the model again: the model may change
   (an optimizer step) or be freed, and the stream keeps computing with the
   weights it was created from.  To follow new weights, create a new stream.
   mb_stream_create_ex picks the matrices' stored precision (each step reads
   them all, so bytes/s scale with their size): MB_PRECISION_FP32 (what
   mb_stream_create does), _BF16, or _INT8: int8 with a float32 scale per
   MB_INT8_GROUP weights along the input (one 64-byte line of int8s per
   scale: 6% on top, and an outlier spoils only its group).  Norms, conv,
   A, D, biases, the state and every sum stay float32; at bf16/int8 the
   logits differ from float32's within the bounds in the README. */
#define MB_PRECISION_INT8 3
#define MB_INT8_GROUP 64
typedef struct mb_stream mb_stream;
MBDEF mb_status mb_stream_create(mb_stream **out, const mb_model *m);
MBDEF mb_status mb_stream_create_ex(mb_stream **out, const mb_model *m, int precision);
MBDEF void mb_stream_reset(mb_stream *s); /* back to the zero state (as just created) */
MBDEF const float *mb_stream_step(mb_stream *s, uint8_t byte); /* logits (256) for the next byte */
/* Prefill: advances the stream over bytes[0..n) with the parallel (chunked,
   multi-threaded) forward, starting from the stream's current state.  The
   state afterwards is exactly what n calls of mb_stream_step would leave,
   and row i of logits (n x 256; NULL: not computed) is bit for bit what
   mb_stream_step returns after bytes[i]; feeds and steps mix freely.  n = 0
   does nothing.  Works in passes of up to 2048 bytes in a workspace of the
   stream's own (allocated on the first feed, freed by mb_stream_free).
   To prefill a prompt and then sample: feed all but its last byte with
   logits NULL, then mb_stream_step the last one.  Does not touch the
   pointer mb_stream_step returned before. */
MBDEF mb_status mb_stream_feed(mb_stream *s, const uint8_t *bytes, int64_t n, float *logits);
/* Copies src's state (conv windows and scan states) into dst; dst keeps its
   own weights.  Both must have been created from models of the same
   config (else MB_STATUS_INVALID_ARGUMENT, dst unchanged); they need not
   share a model or weights. */
MBDEF mb_status mb_stream_copy(mb_stream *dst, const mb_stream *src);
MBDEF void mb_stream_free(mb_stream *s);
/* k independent streams over one snapshot (at an MB_PRECISION_*), stepped
   together: mb_streams_step advances streams idx[0..n) (distinct, < k) by
   bytes[0..n) and returns their logits, row r (256 floats) for idx[r]; the
   products take the n rows at once, so each weight is read once per n
   bytes.  Row r equals one stream's mb_stream_step bit for bit.  The
   pointer is valid until the next call.  mb_streams_feed: mb_stream_feed
   for stream i; mb_streams_reset: stream i back to the zero state. */
typedef struct mb_streams mb_streams;
MBDEF mb_status mb_streams_create(mb_streams **out, const mb_model *m, int k, int precision);
MBDEF const float *mb_streams_step(mb_streams *b, const int *idx, const uint8_t *bytes, int n);
MBDEF mb_status mb_streams_feed(mb_streams *b, int i, const uint8_t *bytes, int64_t n, float *logits);
MBDEF void mb_streams_reset(mb_streams *b, int i);
MBDEF void mb_streams_free(mb_streams *b);

/* -------------------------------------------------------------- sampling */
/* One byte drawn from logits (256), the semantics of `mambabyte sample`:
   temperature <= 0 is the argmax (the first of equal maxima); otherwise
   the logits are divided by temperature (as (float)(logit / temperature)),
   those below the top_k-th largest scaled value are dropped (top_k 0 or
   >= 256 keeps all; values equal to the cut are all kept), mb_softmax
   gives p, and with u = one uniform [0,1) draw from *rng (splitmix64, the
   header's RNG; advances *rng by one) the result is the first byte b < 255
   with p[0] + ... + p[b] > u, else 255.  Greedy draws leave *rng as is. */
MBDEF int mb_sample_byte(const float *logits, double temperature, int top_k, uint64_t *rng);
/* Generation as `mambabyte sample` does it: resets s, conditions it on the
   0x00 start byte (as eval does) and prompt[0..prompt_len) (prefilled with
   mb_stream_feed), then draws n bytes with mb_sample_byte, each fed back.
   out (n bytes, or NULL) receives them; on_byte (or NULL) is called after
   each and stops the generation early by returning nonzero.  *generated
   (or NULL) gets the number drawn.  The same arguments and *rng give the
   same bytes. */
MBDEF mb_status mb_stream_generate(mb_stream *s, const uint8_t *prompt, int64_t prompt_len, int64_t n, double temperature,
                                   int top_k, uint64_t *rng, uint8_t *out, int (*on_byte)(void *user, int byte), void *user,
                                   int64_t *generated);

/* ----------------------------------------------------------- speculation */
/* mb_stream_generate with the same arguments and output guarantee, faster:
   a drafter proposes up to k bytes, s checks them in one mb_stream_feed,
   keeps the longest prefix it agrees with plus one byte of its own, and
   rolls its state back to there.  Greedy (temperature <= 0): the same bytes
   as mb_stream_generate.  Sampling: the same distribution (not the same
   bytes for a seed): byte x is kept with probability min(1, p(x)/q(x)), else
   one is drawn from max(0, p - q) normalised, p and q the target's and the
   draft's distributions as mb_sample_byte forms them.  Either way s ends in
   plain generation's state over the bytes drawn.  The drafter is a stream
   (draft: a smaller model, or the target's weights at a lower stream
   precision) that the call resets and keeps in step with s, or (draft NULL)
   prompt lookup: the bytes that followed the longest earlier match of the
   text's last bytes in prompt + output (q: all mass on its byte). */
#define MB_SPEC_MAX_DRAFT 64
typedef struct {
    mb_stream *draft; /* the draft stream (not s), or NULL: prompt lookup */
    int draft_len;    /* most bytes drafted per round, 1..MB_SPEC_MAX_DRAFT (0: 8) */
    int fixed;        /* 1: always draft_len; 0: start there, -1 after a rejection, +2 after a full accept */
    int lookup_min;   /* lookup: the shortest match that drafts (0: 3 bytes) */
    int64_t rounds, drafted, accepted; /* out: target feeds, bytes proposed, bytes kept */
} mb_spec_options;
MBDEF mb_status mb_stream_generate_spec(mb_stream *s, const uint8_t *prompt, int64_t prompt_len, int64_t n, double temperature,
                                        int top_k, uint64_t *rng, uint8_t *out, int (*on_byte)(void *user, int byte),
                                        void *user, int64_t *generated, mb_spec_options *opt);

/* ----------------------------------------------------------- checkpoints */
/* The training settings, written once, one line per field:
   FIELD(ID, field, kind, flag, lo, hi, default, resume role, help).  They
   generate mb_train_settings, MB_FIELD_*, the table of mb_train_field_desc,
   get/set, mb_train_settings_default, mb_train_settings_resume and the
   checkpoint's named settings.  kind: INT (int64_t), NUM (double), SWITCH
   (int32_t 0/1), SCHEDULE (int32_t: "step" 0, "time" 1).  Resume role:
   TRAJ defines the trajectory (the checkpoint's value; another one given
   is an error), STOP is a stop condition (the user's value when given),
   BUDGET is TRAJ under the time schedule and STOP under the step one.  A
   negative default is a sentinel the help line explains. */
#define MB_TRAIN_SETTINGS(FIELD) \
    FIELD(BATCH,        batch,        INT,      "--batch",        1, 1 << 20, 16,   TRAJ, "sequences per micro-batch") \
    FIELD(CTX,          ctx,          INT,      "--ctx",          1, 1 << 24, 1024, TRAJ, "bytes per sequence") \
    FIELD(STEPS,        steps,        INT,      "--steps",        1, 1e12,    4000, TRAJ, "optimizer steps") \
    FIELD(WARMUP,       warmup,       INT,      "--warmup",       0, 1e12, MB_WARMUP_AUTO, TRAJ, "linear warm-up steps (default: 5% of the steps)") \
    FIELD(GRAD_ACCUM,   grad_accum,   INT,      "--grad-accum",   1, 1 << 20, 1,    TRAJ, "micro-batches averaged per step") \
    FIELD(SAVE_EVERY,   save_every,   INT,      "--save-every",   0, 1e12,    0,    STOP, "also save every N steps (0: only at the end)") \
    FIELD(SEED,         seed,         INT,      "--seed",         0, 9007199254740992.0, 1337, TRAJ, "seed for init and batches") \
    FIELD(SCHEDULE,     schedule,     SCHEDULE, "--schedule",     0, 1,       0,    TRAJ, "step, or time: the lr follows the budget's elapsed fraction") \
    FIELD(SEQUENTIAL,   sequential,   SWITCH,   "--sequential",   0, 1,       0,    TRAJ, "consecutive windows (passes over the data) instead of random ones") \
    FIELD(LR,           lr,           NUM,      "--lr",           0, 10,      3e-4, TRAJ, "peak learning rate") \
    FIELD(WEIGHT_DECAY, weight_decay, NUM,      "--weight-decay", 0, 10,      0.1,  TRAJ, "AdamW weight decay on >=2-dim weights except A_log") \
    FIELD(CLIP,         clip,         NUM,      "--clip",         0, 1e9,     1.0,  TRAJ, "global grad-norm clip") \
    FIELD(BETA1,        beta1,        NUM,      "--beta1",        0, 0.999999, 0.9, TRAJ, "AdamW beta1") \
    FIELD(BETA2,        beta2,        NUM,      "--beta2",        0, 0.999999, 0.95, TRAJ, "AdamW beta2") \
    FIELD(EPS,          eps,          NUM,      "--eps",          1e-30, 1,   1e-8, TRAJ, "AdamW eps") \
    FIELD(TIME_BUDGET,  time_budget,  NUM,      "--time-budget",  0, 1e9,     0,    BUDGET, \
          "seconds: stop cleanly and save before this (0 none; per run unless --schedule time); given alone, it also "\
          "changes the lr, batch, ctx, schedule and steps (the short-budget recipe; the flags you give are kept)") \
    FIELD(CARRY_STATE,  carry_state,  SWITCH,   "--carry-state",  0, 1,       0,    TRAJ, \
          "each row's window follows its last one and starts from its carried state (truncated BPTT; over --sequential)")
/* The model's sizes that a run sets (int32_t fields of mb_config; the
   defaults are mb_config_default's), in the same form; role MODEL: the
   checkpoint's, another one given is an error. */
#define MB_TRAIN_MODEL_FIELDS(FIELD) \
    FIELD(D_MODEL, d_model, INT, "--d-model", 1, 65536, 192, MODEL, "model width") \
    FIELD(N_LAYER, n_layer, INT, "--n-layer", 1, 1024,  4,   MODEL, "layers") \
    FIELD(D_STATE, d_state, INT, "--d-state", 1, 256,   16,  MODEL, "SSM state size") \
    FIELD(D_CONV,  d_conv,  INT, "--d-conv",  1, 64,    4,   MODEL, "conv width") \
    FIELD(EXPAND,  expand,  INT, "--expand",  1, 16,    2,   MODEL, "d_inner = expand * d_model")
#define MB__CTYPE_INT int64_t
#define MB__CTYPE_NUM double
#define MB__CTYPE_SWITCH int32_t
#define MB__CTYPE_SCHEDULE int32_t
#define MB__SETTING_MEMBER(ID, field, kind, ...) MB__CTYPE_##kind field;
/* warmup's default: floor(MB_WARMUP_SHARE * steps + 0.5), resolved by mb_trainer_init. */
#define MB_WARMUP_AUTO (-1)
#define MB_WARMUP_SHARE 0.05
/* A run's flags (the fields above); a checkpoint keeps them so a resume can check them. */
typedef struct { MB_TRAIN_SETTINGS(MB__SETTING_MEMBER) } mb_train_settings;
/* Everything a run needs to continue bit-identically. */
typedef struct {
    int64_t step;              /* optimizer steps completed */
    uint64_t data_rng;         /* the batcher's RNG state */
    int64_t data_pos;          /* the sequential batcher's position */
    double elapsed_s;          /* training time already spent (time schedule) */
    int32_t ranks;             /* data-parallel processes that trained it (header [13]; 0 in older files = 1) */
    float *adam_m, *adam_v;    /* num_params each, owned by the caller */
    mb_train_settings settings;
    float *carry;              /* carry_state: every rank's rows (mb_carry_floats of batch x grad_accum x ranks), or NULL; the same owner */
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

/* safetensors (Hugging Face), for mamba_ssm's MambaLMHeadModel: tensor names
   as this project's or mamba_ssm's (backbone.embedding.weight,
   backbone.layers.{i}.norm.weight, ...mixer.A_log, backbone.norm_f.weight,
   lm_head.weight; the "backbone." prefix optional), in any order, F32, BF16
   or F16 (converted to float32).  The config comes from the shapes
   (embedding (256, C); in_proj (2*expand*C, C); A_log (Di, S); conv1d
   (Di, 1, K); dt_proj (Di, R); a norm bias: LayerNorm, else RMSNorm;
   lm_head.weight: untied unless it equals the embedding bit for bit).  When
   a config.json sits beside the file, its d_model, n_layer, vocab_size,
   rms_norm, tie_embeddings and ssm_cfg.{d_state, d_conv, expand} must
   agree.  A missing, unexpected or duplicated tensor, a shape that does not
   fit, an offset outside the file or another dtype is an error naming it. */
MBDEF mb_status mb_model_load_safetensors(mb_model **out, const char *path);
/* The same from memory (the whole file; config_json NULL: none); `what`
   names the source in errors. */
MBDEF mb_status mb_model_from_safetensors(mb_model **out, const uint8_t *data, int64_t size, const char *config_json,
                                          int64_t config_len, const char *what);
/* Writes float32 safetensors with mamba_ssm's names ("backbone." prefix;
   lm_head.weight always, the embedding's copy when tied), atomically like
   mb_checkpoint_save. */
MBDEF mb_status mb_model_save_safetensors(const mb_model *m, const char *path);
/* mamba_ssm's config.json for m (d_model, n_layer, vocab_size 256, ssm_cfg
   {d_state, d_conv, expand, dt_rank}, rms_norm, tie_embeddings,
   pad_vocab_size_multiple 8), written atomically to path; the safetensors
   loader's config.json check accepts it. */
MBDEF mb_status mb_model_save_config_json(const mb_model *m, const char *path);


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

/* Seed 000's recipe (the defaults of MB_TRAIN_SETTINGS): batch 16, ctx
   1024, 4000 steps, lr 3e-4 (AdamW betas 0.9 / 0.95, eps 1e-8, weight decay
   0.1), grad-norm clip 1.0, linear warm-up over 5% of the steps (warmup
   MB_WARMUP_AUTO: 200 of 4000, and it follows a changed steps), cosine to
   0, step schedule, grad_accum 1, seed 1337, random windows, no time
   budget, saves only at the end. */
MBDEF mb_train_settings mb_train_settings_default(void);
/* The recipe for a time budget (s->time_budget > 0), measured on this
   project's 2-core CPU machine (docs/RESULTS.md): seed 000's settings
   were tuned for 4000 steps on a GPU, and under a short budget on a CPU
   they take only a few dozen steps of batch 16 x ctx 1024 at lr 3e-4.  Each
   of schedule (time), lr, batch, ctx and steps (enough that the budget, not
   the step count, ends the run) that the user did not give (bits of given,
   MB_GIVEN below) gets the recipe's value; given fields are kept.  why (n
   bytes, or NULL) gets one line saying what was chosen and why ("" when
   nothing changed).  Returns the number of fields changed. */
MBDEF int mb_train_settings_for_budget(mb_train_settings *s, uint32_t given, char *why, size_t n);

/* The fields a user sets (MB_TRAIN_SETTINGS, then MB_TRAIN_MODEL_FIELDS),
   for flags and resume reconciliation: bit MB_GIVEN(f) of a mask says the
   user gave field f (at most 32 fields). */
#define MB__FIELD_ID(ID, ...) MB_FIELD_##ID,
typedef enum { MB_TRAIN_SETTINGS(MB__FIELD_ID) MB_TRAIN_MODEL_FIELDS(MB__FIELD_ID) MB_FIELD_COUNT } mb_train_field;
#define MB_GIVEN(f) (1u << (f))
/* What a user needs to set field f from a command line or keywords: the
   flag as typed, the keyword (the struct field's name), the kind of value,
   the accepted range and a one-line help. */
typedef enum { MB_KIND_INT = 0, MB_KIND_NUM, MB_KIND_SWITCH /* 0/1 */, MB_KIND_SCHEDULE /* "step" 0 / "time" 1 */ } mb_field_kind;
typedef struct {
    const char *flag;          /* "--time-budget" */
    const char *key;           /* "time_budget" */
    mb_field_kind kind;
    double lo, hi;             /* accepted values */
    const char *help;
    int64_t offset;            /* the field's offset in mb_train_settings; -1: a field of mb_config */
} mb_train_field_info;
MBDEF int mb_train_field_count(void); /* MB_FIELD_COUNT, for bindings */
/* NULL when f is out of range. */
MBDEF const mb_train_field_info *mb_train_field_desc(int f);
/* The flag as a user types it ("--time-budget"); NULL when f is out of range. */
MBDEF const char *mb_train_field_flag(int f);
/* Field f's value in s (or cfg) as a double; NaN when f is out of range. */
MBDEF double mb_train_field_get(const mb_train_settings *s, const mb_config *cfg, int f);
/* Sets field f of s (or, for the model fields, of cfg) to v: integers are
   truncated, schedule and sequential are 0/1; setting d_model resets
   dt_rank to 0 (derived).  INVALID_ARGUMENT when f is out of range. */
MBDEF mb_status mb_train_field_set(mb_train_settings *s, mb_config *cfg, int f, double v);
/* Resume reconciliation.  On entry *s and *cfg hold what the user asked for
   (only the fields in `given` count); ck and ck_cfg are the checkpoint's.
   Each given field follows its resume role (MB_TRAIN_SETTINGS): the model
   fields and the TRAJ ones must equal the checkpoint's (otherwise
   MB_STATUS_INVALID_ARGUMENT with an error naming the flag), STOP ones take
   the user's value.  Fields not given take the checkpoint's. */
MBDEF mb_status mb_train_settings_resume(mb_train_settings *s, mb_config *cfg, uint32_t given,
                                         const mb_train_settings *ck, const mb_config *ck_cfg);

/* Monotonic seconds: the one clock of the library, the CLI and the bench. */
MBDEF double mb_clock_seconds(void);

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

/* A training text and its evaluation text, memory-mapped: a WikiText-style
   folder (wiki.train.raw; wiki.valid.raw unless eval_path is given) or one
   file, evaluated on eval_path or else on its last 5% (from a character
   boundary; that tail is then not trained on). */
typedef struct {
    mb_mapped_file train_file, eval_file;
    const uint8_t *train, *eval;   /* eval points into train_file when eval_is_tail */
    int64_t train_size, eval_size;
    int eval_is_tail;
    char train_path[4096], eval_path[4096];
} mb_dataset;
MBDEF mb_status mb_dataset_open(mb_dataset *d, const char *path, const char *eval_path);
MBDEF void mb_dataset_close(mb_dataset *d);
/* The file of a split ("train", "valid", "test") of path: path/wiki.<split>.raw
   when path is a folder, else path itself.  Writes at most n bytes to out;
   returns whether path is a folder. */
MBDEF int mb_dataset_split_path(char *out, size_t n, const char *path, const char *split);
/* "data: training on P (N bytes); evaluating on Q" (or "... on its last 5% (M bytes)"). */
MBDEF int mb_dataset_describe(char *buf, size_t n, const mb_dataset *d);

/* The training batcher: draws windows of T+1 bytes for each of B rows
   (inputs are bytes [0,T), targets bytes [1,T+1)), at random positions or
   consecutively (passes over the data).  It draws windows, not bytes: the
   byte sampler for generation is mb_sample_byte. */
typedef struct {
    const uint8_t *data;
    int64_t size;
    uint64_t rng;   /* random windows: splitmix64 state */
    int64_t pos;    /* sequential windows: next start */
    int sequential;
} mb_batcher;
MBDEF void mb_batcher_init(mb_batcher *b, const uint8_t *data, int64_t size, uint64_t seed, int sequential);
MBDEF mb_status mb_batcher_next(mb_batcher *b, uint8_t *inputs, int32_t *targets, int B, int T);
/* Advances b exactly as mb_batcher_next would, without copying the windows
   (a data-parallel rank passes over the other ranks' micro-batches). */
MBDEF mb_status mb_batcher_skip(mb_batcher *b, int B, int T);

/* Length (1-4) of the valid UTF-8 character at s[0..n), or 0 if invalid
   (overlong forms, surrogates, > U+10FFFF and truncation are invalid). */
MBDEF int mb_utf8_char_len(const uint8_t *s, int64_t n);

/* ------------------------------------------------------------------- eval */
/* The WikiText char-level benchmark protocol: take the first max_chars
   Unicode characters of text (all of it if max_chars < 0); reset the
   stream, feed one 0x00 byte; then for each character predict the argmax
   over bytes 0..127 of the next-byte logits, count it correct when that byte
   is the character, and feed all of the character's UTF-8 bytes.  Also
   bits per byte and byte accuracy (argmax over 0..255) over the same bytes.
   Computed with mb_stream_feed (the text is known, so one parallel pass
   over it): the same result, field for field, as stepping byte by byte. */
typedef struct {
    int64_t chars, chars_correct, bytes, bytes_correct;
    double nll_bits;  /* sum of -log2 p(byte) */
} mb_eval_result;
typedef void (*mb_progress_fn)(void *user, int64_t done, int64_t total);
/* Invalid UTF-8 is MB_STATUS_BAD_FORMAT naming the byte offset; nothing is
   evaluated then.  progress (may be NULL) is called every 1024 characters. */
MBDEF mb_status mb_eval_text(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                             mb_eval_result *r, mb_progress_fn progress, void *user);
/* The same with the stream's weights at an MB_PRECISION_* (mb_stream_create_ex). */
MBDEF mb_status mb_eval_text_ex(const mb_model *m, int precision, const uint8_t *text, int64_t len, int64_t max_chars,
                                mb_eval_result *r, mb_progress_fn progress, void *user);
/* The same on a stream (reset first), so its model may be freed before. */
MBDEF mb_status mb_eval_stream(mb_stream *s, const uint8_t *text, int64_t len, int64_t max_chars, mb_eval_result *r,
                               mb_progress_fn progress, void *user);

/* Exact greedy characters.  The protocol above predicts a byte in 0..127;
   the character the model actually finds most likely may be multi-byte.
   P(char | text) is the product of its UTF-8 bytes' conditional
   probabilities; its score here is log P: the sum, in byte order, of each
   byte's log-probability (log-softmax in double, as bits per byte). */
typedef struct {
    uint8_t bytes[4];          /* the character's UTF-8 bytes */
    int32_t len;               /* 1..4 */
    double logp;               /* log P(char | the stream's text so far) */
} mb_char_score;
/* The argmax over every valid UTF-8 character (mb_utf8_char_len's rules:
   U+0000..U+10FFFF without surrogates) of P(char), from the stream's
   current state; logits are the next-byte logits there (what the last
   mb_stream_step returned).  A multi-byte character's probability is at
   most its prefixes', so the search is best-first over lead bytes and
   prefixes, stepping saved copies of the state, and every prefix that
   cannot beat the best complete character so far is pruned: usually no
   lead byte beats the best ASCII byte and nothing is stepped.  s is
   stepped and then put back: on return its state and the logits buffer
   mb_stream_step returns are as on entry.  Ties (equal scores) go to the
   smaller code point, and ASCII characters rank as their logits do (the
   first of equal maxima), so an ASCII answer is exactly the protocol's
   argmax over bytes 0..127.  A row with a NaN scores -inf for its bytes. */
MBDEF mb_status mb_stream_predict_char(mb_stream *s, const float *logits, mb_char_score *out);
/* The k (1..65536) most probable characters, best first, in out[0..k), by
   the same search and tie rule (out[0] is mb_stream_predict_char's). */
MBDEF mb_status mb_stream_top_chars(mb_stream *s, const float *logits, int k, mb_char_score *out);
/* mb_eval_text's protocol, scored by both rules: `base` holds exactly what
   mb_eval_text returns (the ASCII rule), and the exact rule's prediction
   (mb_stream_predict_char) is counted correct when it is the character. */
typedef struct {
    mb_eval_result base;
    int64_t exact_correct;           /* characters the exact rule got right */
    int64_t exact_multibyte;         /* predictions that were multi-byte characters */
    int64_t exact_multibyte_correct; /* ... and right */
    int64_t search_steps;            /* stream steps the searches took */
} mb_eval_exact_result;
MBDEF mb_status mb_eval_text_exact(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                                   mb_eval_exact_result *r, mb_progress_fn progress, void *user);
MBDEF mb_status mb_eval_text_exact_ex(const mb_model *m, int precision, const uint8_t *text, int64_t len, int64_t max_chars,
                                      mb_eval_exact_result *r, mb_progress_fn progress, void *user);
/* The results as `mambabyte eval` prints them: "eval on LABEL: C chars, B
   bytes", then char accuracy, bits per byte, byte accuracy and chars/s
   over seconds; with exact, both rules (r from mb_eval_text_exact;
   otherwise only r->base is read). */
MBDEF int mb_eval_describe(char *buf, size_t n, const char *label, const mb_eval_exact_result *r, int exact, double seconds);

/* ---------------------------------------------------------------- trainer */
/* One optimizer step = grad_accum micro-batches of (batch, ctx), averaged;
   then the global norm, the non-finite guard, clipping and AdamW.  The step
   runs on the CPU unless a backend is attached (mb_cuda_trainer_attach);
   everything else (the batcher, the step count, the schedule, saves) is the
   same on every backend. */
typedef struct mb_trainer mb_trainer;
typedef struct {
    float loss;                /* mean over the micro-batches */
    double grad_norm;          /* before clipping */
    double lr;
    int applied;               /* 0 when the step was skipped as non-finite */
} mb_step_result;
/* Where the step runs.  All NULL: the CPU (the model's own buffers). */
typedef struct {
    const char *name;                                               /* "cpu", "cuda fp32", "cuda bf16" */
    void *impl;                                                     /* the backend's state */
    mb_status (*step)(mb_trainer *t, double lr, mb_step_result *r); /* as mb_trainer_step */
    mb_status (*sync)(mb_trainer *t);     /* live parameters and moments -> t->model, t->st */
    void (*release)(mb_trainer *t);       /* called by mb_trainer_free */
    const char *(*last_error)(void);      /* detail of the backend's last failure */
} mb_train_backend;
/* Data-parallel training: how the ranks (processes) talk.  mambabyte_mpi.h
   builds one over MPI; a trainer without one is a single process.  Every
   rank runs the same loop on the same settings; rank r takes micro-batches
   r*grad_accum .. r*grad_accum + grad_accum-1 of the one seeded stream of
   windows (so N ranks at batch B are one process at grad_accum N*B/B), the
   gradients are summed over the ranks before the guard, clipping and AdamW,
   and rank 0 alone saves (with carry_state, every rank's carried rows) and calls the callback. */
typedef struct {
    int rank, size;
    int local_rank;            /* rank among this node's processes: the CUDA backend uses GPU local_rank mod (GPUs here) */
    int deterministic;         /* 1: every sum in rank order, on the host and (NCCL) on the GPU */
    void *impl;
    /* x (n floats) <- the sum over the ranks, the same on every rank; a
       deterministic one adds in rank order: ((x_0 + x_1) + x_2) ... */
    mb_status (*sum_floats)(void *impl, float *x, int64_t n);
    mb_status (*sum_doubles)(void *impl, double *x, int n); /* the same, in rank order */
    mb_status (*broadcast)(void *impl, double *x, int n);   /* x <- rank 0's x */
    const char *(*last_error)(void);                        /* detail of its last failure */
} mb_train_comm;
struct mb_trainer {
    mb_model *model;           /* borrowed */
    mb_train_state st;         /* step, batcher position, moments, settings */
    mb_batcher batcher;
    uint8_t *inputs;           /* (batch, ctx) of the current micro-batch */
    int32_t *targets;
    mb_train_backend backend;
    const mb_train_comm *comm; /* borrowed; NULL: one process (mb_trainer_set_comm) */
    float *grad_acc;           /* the micro-batches' gradient sum when grad_accum > 1 */
    double comm_s;             /* seconds spent summing gradients over the ranks (data-parallel) */
    int64_t inject_nonfinite_step; /* testing hooks: poison the gradient at this 0-based step, */
    int64_t inject_nonfinite_from; /* or at every step from this one (-1: never) */
    float *carry_mb;           /* carry_state: the drawn micro-batch's rows in st.carry */
};
/* settings must be complete (see mb_train_settings; warmup MB_WARMUP_AUTO
   is resolved into the trainer's copy, and so saved); data is the training
   text.  When resume is non-NULL its step, batcher state and moments are
   taken over (ownership of adam_m/adam_v moves to the trainer). */
MBDEF mb_status mb_trainer_init(mb_trainer *t, mb_model *m, const mb_train_settings *settings, const uint8_t *data,
                                int64_t size, mb_train_state *resume);
MBDEF mb_status mb_trainer_step(mb_trainer *t, double lr, mb_step_result *r);
/* Micro-batch k (0 <= k < grad_accum x ranks) of this step's part of the one
   seeded stream: drawn into t->inputs / t->targets when it is this rank's
   (*mine = 1), skipped otherwise.  Every backend's step draws through it. */
MBDEF mb_status mb_trainer_draw(mb_trainer *t, int64_t k, int *mine);
/* Makes t one rank of a data-parallel run (before its first step).  A
   resumed trainer must have the checkpoint's rank count. */
MBDEF mb_status mb_trainer_set_comm(mb_trainer *t, const mb_train_comm *comm);
/* The update half of the CPU step, for callers that feed their own
   batches: the model's grads hold the sum over the step's grad_accum x
   ranks micro-batches of d(mean loss)/d(params) and loss is their mean. */
MBDEF mb_status mb_trainer_apply(mb_trainer *t, double lr, float loss, mb_step_result *r);
/* A backend's kernels under mb_trainer_step's one policy (the micro-batches drawn in order, the sums
   over the ranks, the testing hooks, the result, the step count).  loss_sum: the step's, where a
   backend sums on the host (one that sums on the device reports it from update). */
typedef struct {
    /* this rank's micro-batch (t->inputs, t->targets): its gradient and loss added to the step's (first: they start) */
    mb_status (*micro_batch)(mb_trainer *t, int first, double *loss_sum);
    mb_status (*sum_ranks)(mb_trainer *t, double *loss_sum); /* the sums over t->comm's ranks (adds to t->comm_s) */
    /* the gradient times scale (the mean), one NaN when poison, its norm; then unless the loss or the
       norm is non-finite (the guard), clipping and AdamW at step t->st.step + 1 */
    mb_status (*update)(mb_trainer *t, double lr, float scale, int poison, double *loss_sum, double *grad_norm);
} mb_step_kernels;
/* mb_trainer_step's policy on k: a backend's step calls it with its own. */
MBDEF mb_status mb_trainer_step_on(mb_trainer *t, const mb_step_kernels *k, double lr, mb_step_result *r);
/* 1 when the testing hooks poison the gradient of the coming step. */
MBDEF int mb_trainer_poisoned(const mb_trainer *t);
/* Brings a backend's live parameters and moments into t->model and t->st
   (a no-op on the CPU).  mb_trainer_save and mb_train_run do it for you. */
MBDEF mb_status mb_trainer_sync(mb_trainer *t);
MBDEF mb_status mb_trainer_save(mb_trainer *t, const char *path); /* atomic, with the training state */
MBDEF void mb_trainer_free(mb_trainer *t);

/* ------------------------------------------------------------ train loop */
/* What the callback sees after every step. */
typedef struct {
    int64_t step;              /* optimizer steps done, this one included */
    int64_t steps;             /* the planned total (settings.steps) */
    float loss;                /* this step's mean loss */
    double lr, grad_norm;      /* grad norm before clipping */
    double tokens_per_s;       /* training tokens per second since mb_train_run began */
    double elapsed_s;          /* training time, including the time before a resume */
    double eta_s;              /* seconds left, by the steps or by the time budget, whichever ends first */
    double progress;           /* 0..1 of the steps, or of the time budget when by_time */
    int by_time;               /* the time budget, not the step count, ends the run first */
    int applied;               /* 0: skipped as non-finite (nothing changed but the step count) */
    int nonfinite_run;         /* consecutive skipped steps, this one included */
    int saves;                 /* this step is saved (save_every) as soon as the callback returns:
                                  log first, then save, so no log lags its checkpoint */
} mb_train_progress;
/* Called after every step; return non-zero to stop (the run then saves,
   as at its end, and reports MB_TRAIN_INTERRUPTED). */
typedef int (*mb_train_callback)(void *user, const mb_train_progress *p);

/* The progress line every front end prints (the CLI, the Python package):
   "step 20/4000 | loss 2.1234 | lr 3.00e-04 | norm 0.412 | 51234 tok/s |
   00:12 elapsed | ETA 40:03", with "step 20 (4% of the time budget)" when
   the budget ends the run first.  Returns snprintf's count. */
MBDEF int mb_train_progress_line(char *buf, size_t n, const mb_train_progress *p);
/* The other lines every front end prints around a run (each returns
   snprintf's count):
     mb_trainer_describe: "model: d_model 192, 4 layers, ...: N parameters"
       and "train: batch 16 x ctx 1024 x accum 1, ... device cpu, 2 threads"
       (and "resumed from FILE at step S" when resumed_from is not NULL);
     mb_train_report_describe: "done: S steps, T tokens, final loss L, X s,
       R tokens/s", after "time budget: stopping at step S ..." when the
       budget ended the run, and followed by the time spent summing
       gradients when several ranks trained. */
MBDEF int mb_trainer_describe(char *buf, size_t n, const mb_trainer *t, const char *resumed_from);
/* "mm:ss", or "h:mm:ss" from an hour on (negative or non-finite: 00:00). */
MBDEF void mb_format_duration(char *buf, size_t n, double seconds);

typedef struct {
    const char *out;           /* checkpoint path; NULL: never save */
    int64_t stop_at;           /* stop after this step, schedule unchanged (0: run to settings.steps) */
    mb_train_callback callback; /* may be NULL */
    void *user;
} mb_train_options;

#define MB_MAX_NON_FINITE_STEPS 10 /* non-finite steps in a row that stop mb_train_run */
typedef enum {
    MB_TRAIN_FINISHED = 0,     /* settings.steps done */
    MB_TRAIN_TIME_BUDGET,      /* stopped cleanly before the time budget would pass */
    MB_TRAIN_STOP_AT,          /* paused at stop_at: resume to continue */
    MB_TRAIN_INTERRUPTED,      /* the callback asked to stop */
    MB_TRAIN_NON_FINITE,       /* MB_MAX_NON_FINITE_STEPS in a row: stopped, nothing saved since the last good checkpoint */
    MB_TRAIN_FAILED            /* an error: see the returned status and mb_last_error() */
} mb_train_outcome;

typedef struct {
    mb_train_outcome outcome;
    int64_t steps_run;         /* optimizer steps taken by this call */
    double elapsed_s;          /* training time, including the time before a resume */
    double tokens_per_s;       /* of this call */
    float last_loss;           /* of the last applied step (NaN if none) */
    int saved;                 /* the final checkpoint was written to out */
    double comm_s;             /* of this call's time, the seconds spent summing gradients over the ranks */
    double tokens;             /* training tokens of this call, over all ranks */
} mb_train_report;
MBDEF int mb_train_report_describe(char *buf, size_t n, const mb_trainer *t, const mb_train_report *r); /* see mb_trainer_describe */

/* The whole training loop over t: the lr schedule (by step, or by the
   elapsed fraction of the time budget), the time budget (stops before the
   next step could pass it), stop_at, the non-finite guard (a skipped step
   is reported to the callback; MB_MAX_NON_FINITE_STEPS in a row end the run with
   MB_STATUS_NON_FINITE), atomic saves every settings.save_every steps and
   at the end.  On return t->model and t->st hold the final state on every
   backend.  Never prints.  Returns MB_STATUS_OK for the outcomes FINISHED,
   TIME_BUDGET, STOP_AT and INTERRUPTED.  opt may be NULL (no saves). */
MBDEF mb_status mb_train_run(mb_trainer *t, const mb_train_options *opt, mb_train_report *rep);

/* ------------------------------------------------------------------- CUDA */
/* Defined only by mambabyte_cuda.cuh's implementation (link its object).
   Plain extern, never MBDEF: they live in the CUDA translation unit.
   Parameters, gradients and AdamW moments are flat float32 blocks in
   checkpoint order, as mb_model_params.  See mambabyte_cuda.cuh. */
#define MB_CUDA_API_DECLARED
int mb_cuda_device_count(void);            /* 0 without a GPU or driver: never fails */
const char *mb_cuda_last_error(void);      /* = mb_last_error(), kept for one version: the CUDA side reports there */
/* Moves t's steps onto a GPU (local_rank mod the GPUs when data-parallel)
   at an MB_PRECISION_*: the parameters and moments are uploaded and
   t->backend is set; the loop, batcher, guard and saves stay the library's.
   On failure t is unchanged (still the CPU) and mb_last_error() says why: the CUDA
   error string (e.g. a driver older than the runtime), no device, or a
   config the kernels do not support. */
mb_status mb_cuda_trainer_attach(mb_trainer *t, int precision);
typedef struct mb_cuda_trainer mb_cuda_trainer;
/* precision: MB_PRECISION_FP32, _BF16 (matrix inputs) or _TF32 (float32 master weights, moments, scan, CE) */
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
/* As mb_model_set_carry (state in host memory, borrowed, NULL: from zero):
   each forward starts from it and leaves the rows' new state there. */
mb_status mb_cuda_trainer_set_carry(mb_cuda_trainer *t, float *state);
/* g *= grad_scale; norm; if finite: clip and one AdamW step (adam_step 1-based);
   gradients zeroed either way; *applied_out = 0 when the norm was not finite */
mb_status mb_cuda_trainer_update(mb_cuda_trainer *t, float grad_scale, double lr, double beta1, double beta2,
                                 double eps, double weight_decay, double clip, int64_t adam_step,
                                 double *grad_norm_out, int *applied_out);
/* The trainer runs on its own stream, and after a first eager run replays
   forward-backward and the update as two CUDA graphs (one submission each).
   on 0 launches every operation instead (as MB_CUDA_GRAPH=0 and
   MB_CUDA_SYNC=1 do); a capture the driver refuses also turns them off. */
mb_status mb_cuda_trainer_set_graphs(mb_cuda_trainer *t, int on);
int mb_cuda_trainer_graphs(const mb_cuda_trainer *t); /* 1 while graphs are on */
typedef struct mb_cuda_stream mb_cuda_stream;
mb_status mb_cuda_stream_create(mb_cuda_stream **out, const mb_config *cfg, const float *params);
mb_status mb_cuda_stream_step(mb_cuda_stream *s, uint8_t byte, float *logits_host);
mb_status mb_cuda_stream_reset(mb_cuda_stream *s);
void mb_cuda_stream_free(mb_cuda_stream *s);

#ifdef __cplusplus
}
#endif
#endif /* MAMBABYTE_H */

/* The library's internal kernels (mb__), declared for the implementation
   and for programs that test or time them (define MB_INTERNAL before the
   include); not part of the public API, and may change between versions. */
#if (defined(MAMBABYTE_IMPLEMENTATION) || defined(MB_INTERNAL)) && !defined(MB__INTERNAL_DECLARED)
#define MB__INTERNAL_DECLARED
#ifdef __cplusplus
extern "C" {
#endif
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
/* RMSNorm (mamba_ssm's rms_norm): out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + 1e-5). */
MBDEF void mb__rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int64_t N, int C);
MBDEF void mb__rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                const float *rstd, int64_t N, int C);
MBDEF void mb__matmul_forward(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC);
MBDEF void mb__matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                               const float *w, int64_t N, int IC, int OC);
/* The same products with bf16 operands and float32 sums (--precision bf16;
   see "bf16 matrix products" in the implementation).  path: one of the
   kernels below, MB__BF16_NONE being the scalar reference; a path this CPU
   cannot run computes as the reference.  wp: w packed by
   mb__bf16_pack_weight (mb__bf16_packed_size dwords), or NULL to pack it
   here; w is read only by the reference.  Each output element is one
   thread's, in a fixed order: results do not depend on the thread count. */
enum { MB__BF16_NONE = 0, MB__BF16_AVX512 = 1, MB__BF16_AMX = 2 };
/* Bit 1 << path for each path this CPU and OS can run (bit 0 always). */
MBDEF int mb__bf16_paths(void);
/* Testing: mb__bf16_paths() reports only the paths in mask from now on
   (as on a CPU without the others); -1 restores them all.  A process
   started with MB_TEST_BF16_PATHS=mask begins so. */
MBDEF void mb__bf16_limit_paths(int mask);
MBDEF uint16_t mb__bf16_from_float(float x); /* round to nearest even; NaN stays NaN */
MBDEF int64_t mb__bf16_packed_size(int IC, int OC);
MBDEF void mb__bf16_pack_weight(uint32_t *wp, const float *w, int IC, int OC);
MBDEF void mb__matmul_forward_bf16(int path, float *out, const float *inp, int64_t ldi, const float *w, const uint32_t *wp,
                                   int64_t N, int IC, int OC);
MBDEF void mb__matmul_backward_bf16(int path, float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                                    const float *w, const uint32_t *wp, int64_t N, int IC, int OC);
/* The scalar references: operands rounded by mb__bf16_from_float, sums in
   the kernels' order. */
MBDEF void mb__matmul_forward_bf16_ref(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC);
MBDEF void mb__matmul_backward_bf16_ref(float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                                        const float *w, int64_t N, int IC, int OC);
MBDEF void mb__conv1d_forward(float *out, const float *xz, const float *w, const float *bias,
                              int B, int T, int Di, int K);
/* The same from a given start: win (B, K, Di) holds each sequence's inputs
   x' before t = 0, oldest first (a stream's conv window; its rows 1..K-1 are
   read); NULL is mb__conv1d_forward (taps before t = 0 are skipped). */
MBDEF void mb__conv1d_forward_from(float *out, const float *xz, const float *w, const float *bias, const float *win,
                                   int B, int T, int Di, int K);
MBDEF void mb__conv1d_backward(float *dxz, float *dw, float *dbias, const float *dout, const float *xz,
                               const float *w, const float *bias, int B, int T, int Di, int K);
/* The same after mb__conv1d_forward_from's win (the taps before t = 0 add to dw only). */
MBDEF void mb__conv1d_backward_from(float *dxz, float *dw, float *dbias, const float *dout, const float *xz, const float *w,
                                    const float *bias, const float *win, int B, int T, int Di, int K);
MBDEF void mb__scan_forward(float *out, float *states, const float *u, const float *delta, const float *dt_bias,
                            const float *A_log, const float *xdbl, const float *Dp, const float *xz,
                            int B, int T, int Di, int S, int R, int chunk);
/* The same from a given state: h (B, S, Di) holds each sequence's scan state
   before t = 0 on entry and after t = T-1 on exit (NULL: from zero, as
   mb__scan_forward); states may be NULL (not kept). */
MBDEF void mb__scan_forward_from(float *out, float *states, float *h, const float *u, const float *delta,
                                 const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                                 const float *xz, int B, int T, int Di, int S, int R, int chunk);
/* The references of the scan (one channel at a time, every h kept): the
   readable specification of the fast paths, which the tests hold against
   them.  Same outputs and accumulation as mb__scan_forward /
   mb__scan_backward; slow, and the backward allocates T*S floats. */
MBDEF void mb__scan_forward_ref(float *out, const float *u, const float *delta, const float *dt_bias, const float *A_log,
                                const float *xdbl, const float *Dp, const float *xz, int B, int T, int Di, int S, int R);
MBDEF mb_status mb__scan_backward_ref(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                                      float *dxz, const float *dout, const float *u, const float *delta,
                                      const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                                      const float *xz, int B, int T, int Di, int S, int R);
/* The fast path of the scan backward.  du, dxz (its z half) and dxdbl (its B
   and C columns) and the parameter gradients accumulate; ddelta is written.
   scratch: B * (Di*S + 2*Di) floats (per-sequence partial sums, so the result
   does not depend on the thread count). */
MBDEF void mb__scan_backward(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                             float *dxz, float *scratch, const float *dout, const float *states, const float *u,
                             const float *delta, const float *dt_bias, const float *A_log, const float *xdbl,
                             const float *Dp, const float *xz, int B, int T, int Di, int S, int R, int chunk);

#ifdef __cplusplus
}
#endif
#endif /* internal declarations */

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
#include <time.h>
#include <unistd.h>

#if defined(__AVX512F__) && defined(__FMA__) && !defined(MB_NO_INTRINSICS)
#include <immintrin.h>
#endif
/* The bf16 matrix products' AVX512-BF16 and AMX kernels (see "bf16 matrix
   products"): compiled with target attributes whatever -march says and
   chosen at run time (CPUID, XGETBV), so GCC >= 11 or Clang >= 12 on
   x86-64; nvcc's host pass and MB_NO_INTRINSICS leave them out. */
#if defined(__x86_64__) && !defined(__CUDACC__) && !defined(MB_NO_INTRINSICS) && !defined(__INTEL_COMPILER) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11))
#define MB__BF16_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* gcc's tuning for recent Intel cores (-march=native on Sapphire Rapids)
   prefers 256-bit vectors even where AVX-512 is present; the kernels here
   are laid out for 32 512-bit registers (the backward's 12 x 32 matrix
   tile is 24 zmm accumulators but 48 ymm ones, which spill).  Measured on
   such a core: the matrix products' backward 55 -> 86 GFLOP/s, one thread.
   Only a preference: the ISA, and so every result, is the same. */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER) && defined(__AVX512F__)
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")
#define MB__PUSHED_TARGET 1
#endif

#ifndef MB_MALLOC
#define MB_MALLOC(n) malloc(n)
#define MB_FREE(p) free(p)
#ifndef MB_CALLOC
#define MB_CALLOC(n) calloc(1, n) /* zeroed: the C library maps big blocks lazily */
#endif
#endif
#ifndef MB_ASSERT
#include <assert.h>
#define MB_ASSERT(x) assert(x)
#endif

#define MB__THREAD_LOCAL __thread /* GCC, Clang, ICC: the compilers of the POSIX systems this targets */

/* OpenMP pragmas through a macro so a build without -fopenmp stays warning-free.
   A loop with less work than MB__OMP_MIN_WORK (elements or multiply-adds, as
   the loop counts them) stays on the calling thread: waking the team costs
   more; the norms' rows go parallel sooner. */
#define MB__OMP_MIN_WORK 65536
#define MB__OMP_MIN_NORM 16384
#ifdef _OPENMP
#include <omp.h>
#define MB__PRAGMA(x) _Pragma(#x)
#define MB__OMP(x) MB__PRAGMA(omp x)
#define mb__max_threads() omp_get_max_threads()
#else
#define MB__OMP(x)
#define mb__max_threads() 1
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================ utilities */
/* snprintf at buf + *k (buf holds n bytes): *k grows by the full length,
   as snprintf counts, so a cut line still reports its length; nothing is
   written past the end. */
static void mb__appendf(char *buf, size_t n, size_t *k, const char *fmt, ...) {
    va_list ap;
    int w;
    va_start(ap, fmt);
    w = vsnprintf(*k < n ? buf + *k : NULL, *k < n ? n - *k : 0, fmt, ap);
    va_end(ap);
    if (w > 0) *k += (size_t)w;
}

static MB__THREAD_LOCAL char mb__error_text[512];

MBDEF const char *mb_last_error(void) { return mb__error_text; }

/* `return mb__fail(MB_STATUS_IO_ERROR, "cannot open %s", path);` */
#define mb__fail mb_set_error
MBDEF mb_status mb_set_error(mb_status s, const char *fmt, ...) {
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

/* Each row classified once, then every entry through one of the two functions above. */
static void mb__rows_apply(float *out, const float *x, int64_t rows, int64_t V,
                           double (*entry)(const mb__row *, float, int64_t)) {
    int64_t r;
    MB__OMP(parallel for if (rows * V > MB__OMP_MIN_WORK))
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * V;
        float *orow = out + r * V;
        mb__row st = mb__row_stats(xr, V);
        int64_t i;
        for (i = 0; i < V; i++) orow[i] = (float)entry(&st, xr[i], V);
    }
}

MBDEF void mb_softmax(float *out, const float *x, int64_t rows, int64_t V) { mb__rows_apply(out, x, rows, V, mb__row_p); }
MBDEF void mb_log_softmax(float *out, const float *x, int64_t rows, int64_t V) { mb__rows_apply(out, x, rows, V, mb__row_logp); }

MBDEF void mb_logsumexp(float *out, const float *x, int64_t rows, int64_t V) {
    int64_t r;
    MB__OMP(parallel for if (rows * V > MB__OMP_MIN_WORK))
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
    o.ignore_index = MB_IGNORE_INDEX;
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
        MB__OMP(parallel for if (rows * V > MB__OMP_MIN_WORK))
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
    MB__OMP(parallel for if (rows * V > MB__OMP_MIN_WORK))
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

/* ============================================================== config */
MBDEF mb_config mb_config_default(void) {
    mb_config c;
    memset(&c, 0, sizeof c); /* dt_rank 0: derived from d_model; LayerNorm; tied head */
    c.vocab_size = 256;
#define MB__CONFIG_DEFAULT(ID, field, kind, flag, lo, hi, dflt, ...) c.field = dflt;
    MB_TRAIN_MODEL_FIELDS(MB__CONFIG_DEFAULT)
#undef MB__CONFIG_DEFAULT
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
    if (c->d_conv < 1 || c->d_conv > MB_MAX_CONV) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_conv %d out of range [1, %d]", c->d_conv, MB_MAX_CONV);
    if (c->expand < 1 || c->expand > 16) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "expand %d out of range [1, 16]", c->expand);
    if (c->dt_rank < 1 || c->dt_rank > 65536) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "dt_rank %d out of range [1, 65536]", c->dt_rank);
    if (c->norm != MB_NORM_LAYERNORM && c->norm != MB_NORM_RMSNORM) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "norm kind %d unknown (0 LayerNorm, 1 RMSNorm)", c->norm);
    if (c->untied_head != 0 && c->untied_head != 1) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "untied_head %d must be 0 or 1", c->untied_head);
    if ((int64_t)c->d_model * c->expand > 1048576) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "d_inner %lld too large", (long long)c->d_model * c->expand);
    return MB_STATUS_OK;
}

/* Which layout entries a config holds (see MB_TENSORS_AFTER_LAYERS). */
static int mb__layer_used(const mb_config *c, int field) {
    return field != (int)MB_TENSOR_NORM_B || c->norm == MB_NORM_LAYERNORM;
}
static int mb__global_used(const mb_config *c, int field) {
    if (field == (int)MB_TENSOR_NORM_F_B) return c->norm == MB_NORM_LAYERNORM;
    if (field == (int)MB_TENSOR_LM_HEAD) return c->untied_head == 1;
    return 1;
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

/* The sizes table, in checkpoint order, expanded from MB_TENSORS_BEFORE_LAYERS,
   MB_LAYER_TENSORS and MB_TENSORS_AFTER_LAYERS: the one place the layout lives. */
static int mb__config_layout(const mb_config *c, mb_tensor_info *out, int64_t *total) {
    int n = 0, l;
    int64_t off = 0;
    const int64_t C = c->d_model, Di = (int64_t)c->d_model * c->expand, S = c->d_state, K = c->d_conv;
    const int64_t R = c->dt_rank ? c->dt_rank : (C + 15) / 16; /* 0: derived, as mb_config_validate does */
    const int64_t X = R + 2 * S, V = c->vocab_size;
    char name[64];
#define MB__T(ID, field, suffix, ndim, d0, d1, d2, decay) \
    if (mb__global_used(c, MB_TENSOR_##ID)) mb__tensor(out, &n, &off, suffix, ndim, d0, d1, d2, decay);
#define MB__LT(ID, field, suffix, ndim, d0, d1, d2, decay) \
    if (mb__layer_used(c, MB_TENSOR_##ID)) { \
        snprintf(name, sizeof name, "layers.%d.%s", l, suffix); \
        mb__tensor(out, &n, &off, name, ndim, d0, d1, d2, decay); \
    }
    MB_TENSORS_BEFORE_LAYERS(MB__T)
    for (l = 0; l < c->n_layer; l++) {
        MB_LAYER_TENSORS(MB__LT)
    }
    MB_TENSORS_AFTER_LAYERS(MB__T)
#undef MB__T
#undef MB__LT
    *total = off;
    return n;
}
MBDEF int mb_config_tensors(const mb_config *c, mb_tensor_info *out) {
    int64_t total;
    return mb__config_layout(c, out, &total);
}

/* An entry's position among the entries the config holds. */
MBDEF int mb_tensor_index(const mb_config *c, int layer, int field) {
    int i, per = 0, pos = 0;
    for (i = 0; i < (int)MB_NUM_LAYER_TENSORS; i++) per += mb__layer_used(c, i);
    if (layer >= 0) {
        if (layer >= c->n_layer || field < 0 || field >= (int)MB_NUM_LAYER_TENSORS || !mb__layer_used(c, field)) return -1;
        for (i = 0; i < (int)MB__NUM_TENSORS_BEFORE_LAYERS; i++) pos += mb__global_used(c, i);
        for (i = 0; i < field; i++) pos += mb__layer_used(c, i);
        return pos + layer * per;
    }
    if (layer != -1 || field < 0 || field >= (int)MB_NUM_GLOBAL_TENSORS || !mb__global_used(c, field)) return -1;
    for (i = 0; i < field; i++) pos += mb__global_used(c, i);
    return field < (int)MB__NUM_TENSORS_BEFORE_LAYERS ? pos : pos + c->n_layer * per;
}

MBDEF int mb_tensor_matrix(const mb_config *c, int layer, int field, int *in, int *out) {
    const int64_t C = c->d_model, Di = (int64_t)c->d_model * c->expand, S = c->d_state, K = c->d_conv, R = c->dt_rank;
    const int64_t X = R + 2 * S, V = c->vocab_size;
    *in = *out = 0;
    if (layer < 0 && field == MB_TENSOR_LM_HEAD && !c->untied_head) field = MB_TENSOR_EMBEDDING;
#define MB__M(ID, f, name, ndim, d0, d1, d2, decay) if (field == MB_TENSOR_##ID) { *out = (int)(d0); *in = (int)((d1) * (d2)); }
    if (layer < 0) { MB_TENSORS_BEFORE_LAYERS(MB__M) MB_TENSORS_AFTER_LAYERS(MB__M) }
    else { MB_LAYER_TENSORS(MB__M) }
#undef MB__M
    return mb_tensor_index(c, layer, field);
}

MBDEF int64_t mb_layer_acts_place(mb_layer_acts *a, float *base, const mb_config *c, int B, int T, int chunk, int bf16) {
    const int64_t N = (int64_t)B * T, nch = chunk > 0 ? (T + chunk - 1) / chunk : 0, C = c->d_model;
    const int64_t Di = C * c->expand, S = c->d_state, X = c->dt_rank + 2 * S, K = c->d_conv;
    int64_t off = 0, n;
#define MB__PLACE(name, floats, copy) \
    n = !bf16 ? (floats) : copy ? ((floats) + 1) / 2 : 0; \
    if (base) a->name = n ? base + off : NULL; \
    off += n;
    MB_LAYER_ACTS(MB__PLACE)
#undef MB__PLACE
    return off;
}
MBDEF int64_t mb_model_acts_place(mb_model_acts *a, float *base, const mb_config *c, int B, int T, int who) {
    const int64_t N = (int64_t)B * T, C = c->d_model, Di = C * c->expand, S = c->d_state, V = c->vocab_size;
    int64_t off = 0, n;
#define MB__PLACE(name, floats, w) \
    n = who & (w) ? (floats) : 0; \
    if (base) a->name = n ? base + off : NULL; \
    off += n;
    MB_MODEL_ACTS(MB__PLACE)
#undef MB__PLACE
    return off;
}

MBDEF int64_t mb_config_num_params(const mb_config *c) {
    int64_t total;
    mb__config_layout(c, NULL, &total);
    return total;
}

/* =========================================================== CPU layers */
/* ---- embedding and norms ---- */
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
    /* out, inp are (N,C); mean, rstd are (N); eps 1e-5 as PyTorch.  One row
       (streaming) stays on the calling thread. */
    int64_t n;
    MB__OMP(parallel for schedule(static) if (N * C > MB__OMP_MIN_NORM))
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

MBDEF void mb__rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int64_t N, int C) {
    /* out, inp are (N,C); rstd is (N); no centring and no bias */
    int64_t n;
    MB__OMP(parallel for schedule(static) if (N * C > MB__OMP_MIN_NORM))
    for (n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float *o = out + n * C, v = 0.0f, s;
        int c;
        for (c = 0; c < C; c++) v += x[c] * x[c];
        v /= (float)C;
        s = 1.0f / sqrtf(v + 1e-5f);
        for (c = 0; c < C; c++) o[c] = x[c] * s * w[c];
        rstd[n] = s;
    }
}

MBDEF void mb__rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                const float *rstd, int64_t N, int C) {
    /* y = xhat * w with xhat = x * s: dx = s * (dn - xhat * mean(dn * xhat)), dn = w * dy */
    int64_t n, c0;
    MB__OMP(parallel for schedule(static))
    for (n = 0; n < N; n++) {
        const float *x = inp + n * C, *g = dout + n * C;
        float *dx = dinp + n * C, s = rstd[n], dnorm_norm_mean = 0.0f;
        int c;
        for (c = 0; c < C; c++) dnorm_norm_mean += w[c] * g[c] * (x[c] * s);
        dnorm_norm_mean /= (float)C;
        for (c = 0; c < C; c++) dx[c] += (w[c] * g[c] - x[c] * s * dnorm_norm_mean) * s;
    }
    MB__OMP(parallel for schedule(static))
    for (c0 = 0; c0 < C; c0 += 16) {
        int64_t c1 = c0 + 16 < C ? c0 + 16 : C, c;
        for (n = 0; n < N; n++) {
            const float *x = inp + n * C, *g = dout + n * C;
            for (c = c0; c < c1; c++) dw[c] += x[c] * rstd[n] * g[c];
        }
    }
}

/* The config's norm: LayerNorm (mean, rstd, bias) or RMSNorm (rstd only; b,
   db and mean unused). */
static void mb__norm_forward(const mb_config *cfg, float *out, float *mean, float *rstd, const float *inp,
                             const float *w, const float *b, int64_t N, int C) {
    if (cfg->norm == MB_NORM_RMSNORM) mb__rmsnorm_forward(out, rstd, inp, w, N, C);
    else mb__layernorm_forward(out, mean, rstd, inp, w, b, N, C);
}
static void mb__norm_backward(const mb_config *cfg, float *dinp, float *dw, float *db, const float *dout,
                              const float *inp, const float *w, const float *mean, const float *rstd, int64_t N, int C) {
    if (cfg->norm == MB_NORM_RMSNORM) mb__rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
    else mb__layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
}

/* ---- matrix products: register-tiled, auto-vectorised portable C ----
   Every product here is a sum of a[s] * b[s] terms accumulated in a fixed
   order, each output element by one thread, so results do not depend on
   the thread count.  The inner kernel keeps an MR x NR tile of sums in
   registers (NR a multiple of the vector width: the compiler turns the j
   loop into vector FMAs) while one operand is broadcast and the other is
   read as rows of NR contiguous floats.
   Forward order, shared with mb__dot_rows: with nb = IC/16 full blocks,
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
/* A 16-iteration loop of fmaf that gcc would otherwise unroll into scalar
   code before its vectoriser sees it. */
#if defined(__GNUC__) && __GNUC__ >= 8 && !defined(__clang__) && !defined(__CUDACC__) && !defined(__INTEL_COMPILER)
#define MB__VECLOOP _Pragma("GCC unroll 1")
#else
#define MB__VECLOOP
#endif
/* MB__PREFETCH: a hint, no effect on results. */
#if defined(__GNUC__)
#define MB__PREFETCH(p) __builtin_prefetch(p)
#define MB__PREFETCH_W(p) __builtin_prefetch(p, 1) /* to be written */
#else
#define MB__PREFETCH(p) ((void)0)
#define MB__PREFETCH_W(p) ((void)0)
#endif
/* Small helpers that must be inlined into the loops that call them for the
   compiler to vectorise those loops. */
#if defined(__GNUC__)
#define MB__INLINE static inline __attribute__((always_inline, unused))
#else
#define MB__INLINE static inline
#endif

/* c (MR x NR, row stride ldc) += sum over s < steps, in order, of
   a_r[s*as] * b[s*bs + j]. */
MB__INLINE void mb__mm_kernel(float *MB__RESTRICT c, int64_t ldc, const float *const *ap, int64_t as,
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
        if (as > 1) { /* a's rows are far apart (dw's dout rows): fetch ahead, the hardware does not */
            MB__PREFETCH(a[0] + (s + 12) * as);
            MB__PREFETCH(a[MB__MM_MRB - 1] + (s + 12) * as);
        }
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

/* One output row in the forward order (the reference for the tiled path,
   and the path for few or very long rows).  out[o] for o in [0, OC). */
/* Outputs o..o+rows-1 (rows <= 4, a constant after inlining): their FMA
   chains and final sums interleave. */
MB__INLINE void mb__dot_rows4(float *MB__RESTRICT out, const float *MB__RESTRICT x, const float *MB__RESTRICT wr, int IC,
                              int rows) {
    float acc[4][16], sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int nb = IC / 16, i, k, r;
    if (nb > 0) { /* the first term is a plain product */
        for (r = 0; r < rows; r++) {
            MB__VECLOOP
            for (k = 0; k < 16; k++) acc[r][k] = x[k] * wr[(int64_t)r * IC + k];
        }
        for (i = 16; i < nb * 16; i += 16)
            for (r = 0; r < rows; r++) {
                MB__VECLOOP
                for (k = 0; k < 16; k++) acc[r][k] = MB__FMA(x[i + k], wr[(int64_t)r * IC + i + k], acc[r][k]);
            }
        for (r = 0; r < rows; r++) sum[r] = acc[r][0];
        for (k = 1; k < 16; k++)
            for (r = 0; r < rows; r++) sum[r] += acc[r][k];
    }
    for (i = nb * 16; i < IC; i++)
        for (r = 0; r < rows; r++) sum[r] = MB__FMA(x[i], wr[(int64_t)r * IC + i], sum[r]);
    for (r = 0; r < rows; r++) out[r] = sum[r];
}

static void mb__dot_rows(float *MB__RESTRICT out, const float *MB__RESTRICT x, const float *MB__RESTRICT w, int IC,
                         int OC) {
    int o;
    for (o = 0; o + 4 <= OC; o += 4) mb__dot_rows4(out + o, x, w + (int64_t)o * IC, IC, 4);
    for (; o < OC; o++) mb__dot_rows4(out + o, x, w + (int64_t)o * IC, IC, 1);
}

/* Step s of the forward's order -> input index i. */
static int mb__fwd_index(int s, int nb) { return s < 16 * nb ? (s % nb) * 16 + s / nb : s; }

/* w (OC, IC) packed whole into the forward's panels: NR outputs side by
   side (zero-padded), the steps in the forward's order; panel p at
   wp + p*NR*IC.  mb__matmul_packed (and mb_stream_feed, which keeps its
   weights this way) reads them. */
static int64_t mb__matvec_packed_floats(int IC, int OC) {
    return (int64_t)((OC + MB__MM_NR - 1) / MB__MM_NR) * MB__MM_NR * IC;
}
static void mb__matvec_pack(float *wp, const float *w, int IC, int OC) {
    int nb = IC / 16, o0, s, j;
    for (o0 = 0; o0 < OC; o0 += MB__MM_NR) {
        int nr = OC - o0 < MB__MM_NR ? OC - o0 : MB__MM_NR;
        float *p = wp + (int64_t)o0 * IC;
        for (s = 0; s < IC; s++) {
            const float *src = w + (int64_t)o0 * IC + mb__fwd_index(s, nb);
            for (j = 0; j < nr; j++) p[(int64_t)s * MB__MM_NR + j] = src[(int64_t)j * IC];
            for (; j < MB__MM_NR; j++) p[(int64_t)s * MB__MM_NR + j] = 0.0f;
        }
    }
}
/* The forward's MR x NR tile of out at rows n0.., columns o0.. from one
   packed panel bp holding all IC steps. */
static void mb__mm_fwd_tile(float *out, const float *inp, int64_t ldi, const float *bp, int64_t N, int IC, int OC,
                            int64_t n0, int o0) {
    const float *ap[MB__MM_MR];
    float cb[MB__MM_MR * MB__MM_NR];
    int nb = IC / 16, nr = OC - o0 < MB__MM_NR ? OC - o0 : MB__MM_NR;
    int rows = (int)(N - n0 < MB__MM_MR ? N - n0 : MB__MM_MR), r, j;
    for (r = 0; r < MB__MM_MR; r++) ap[r] = inp + (n0 + (r < rows ? r : rows - 1)) * ldi;
    if (rows == MB__MM_MR && nr == MB__MM_NR) {
        mb__mm_kernel_fwd(out + n0 * OC + o0, OC, ap, bp, nb, nb > 0 ? 0 : 16, 16, 0, IC - 16 * nb, 1);
        return;
    }
    mb__mm_kernel_fwd(cb, MB__MM_NR, ap, bp, nb, nb > 0 ? 0 : 16, 16, 0, IC - 16 * nb, 1);
    for (r = 0; r < rows; r++)
        for (j = 0; j < nr; j++) out[(n0 + r) * OC + o0 + j] = cb[r * MB__MM_NR + j];
}

MBDEF void mb__matmul_forward(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC) {
    const int MR = MB__MM_MR, NR = MB__MM_NR;
    int nb = IC / 16;
    if (N < 2 * MR || nb > MB__MM_KC) { /* few rows, or very long ones: one row at a time */
        int64_t n;
        MB__OMP(parallel for schedule(static) if (N * IC * OC > MB__OMP_MIN_WORK))
        for (n = 0; n < N; n++) mb__dot_rows(out + n * OC, inp + n * ldi, w, IC, OC);
        return;
    }
    if (mb__matvec_packed_floats(IC, OC) <= MB__MM_KC * MB__MM_NR) {
        /* all of w fits one thread's panel buffer (dt_proj's 12 inputs): packed
           once, each row tile writes its whole rows, which reach memory in
           order (panel by panel, the rows' parts are written far apart and the
           output was 2.5x slower in a training step) */
        MB__OMP(parallel if (N * IC * OC > MB__OMP_MIN_WORK))
        {
            float bp[MB__MM_KC * MB__MM_NR];
            int64_t nmb = (N + MR - 1) / MR, mb;
            int o0;
            mb__matvec_pack(bp, w, IC, OC);
            MB__OMP(for schedule(static))
            for (mb = 0; mb < nmb; mb++)
                for (o0 = 0; o0 < OC; o0 += NR) mb__mm_fwd_tile(out, inp, ldi, bp + (int64_t)o0 * IC, N, IC, OC, mb * MR, o0);
        }
        return;
    }
    MB__OMP(parallel if (N * IC * OC > MB__OMP_MIN_WORK))
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
                    if (s0 == 0 && n0 + 2 * MR <= N) /* the next tile's output lines, far apart: ask for them early */
                        for (r = 0; r < MR; r++) {
                            MB__PREFETCH_W(out + (n0 + MR + r) * OC + o0);
                            MB__PREFETCH_W(out + (n0 + MR + r) * OC + o0 + NR - 1);
                        }
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

/* Loads (or stores) the valid nrr x ncc part of an mr x nr tile cb (row
   stride nr) of C at (r0, c0); tr: C is stored transposed (element (r, j)
   at C[j*ldc + r]).  A load zeroes the rest of the tile. */
static void mb__tile_io(float *MB__RESTRICT cb, int mr, int nr, float *MB__RESTRICT C, int64_t ldc, int tr, int64_t r0,
                        int64_t c0, int nrr, int ncc, int store) {
    int r, j;
    for (r = 0; r < mr; r++)
        for (j = 0; j < nr; j++) {
            float *p = tr ? &C[(c0 + j) * ldc + r0 + r] : &C[(r0 + r) * ldc + c0 + j];
            if (r < nrr && j < ncc) {
                if (store) *p = cb[r * nr + j];
                else cb[r * nr + j] = *p;
            } else if (!store) {
                cb[r * nr + j] = 0.0f;
            }
        }
}
/* ... an MRB x NR tile of the float32 products. */
static void mb__mm_tile_io(float *MB__RESTRICT cb, float *MB__RESTRICT C, int64_t ldc, int tr, int64_t r0, int64_t c0,
                           int nrr, int ncc, int store) {
    mb__tile_io(cb, MB__MM_MRB, MB__MM_NR, C, ldc, tr, r0, c0, nrr, ncc, store);
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
    MB__OMP(parallel if (rows * cols * steps > MB__OMP_MIN_WORK))
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

/* ---- bf16 matrix products (--precision bf16 on the CPU) ----
   The three products above with both operands rounded to bf16 (round to
   nearest even, as vcvtne2ps2bf16 does: NaN stays NaN, quieted; a float32
   subnormal becomes a signed zero) and every product and sum in float32.
   The summed index k goes in pairs (2q, 2q+1), the odd member 0 when K is
   odd, and each output adds pair after pair
       c = (c + a[2q+1]*b[2q+1]) + a[2q]*b[2q]
   (a product of two bf16 values is exact in float32), which is what
   vdpbf16ps does in each lane: so the AVX512-BF16 path is bit for bit the
   scalar reference, except that the instruction flushes sums in float32's
   subnormal range to zero.  AMX's tdpbf16ps adds a tile's 32 products in
   an order of its own: close to the reference, not equal (tests/test_bf16.c
   bounds it).
   Layouts (a pair is one uint32_t, the even member in the low half):
     packed pairs  row q holds the pairs (m[2q][x], m[2q+1][x]) of every
                   column x of a k-major matrix m: rows padded to a multiple
                   of 16, columns to 32, with zeros.  B always (vdpbf16ps's
                   lanes and AMX's VNNI layout at once), and A of dw, whose
                   dout is k-major too (the zmm tile broadcasts its pairs).
     pair rows     row r holds the pairs (a[r][2q], a[r][2q+1]) along one
                   row: A of the forward and of dinp, rounded a block of
                   rows at a time by the thread that owns the block (AMX's
                   A tiles take this layout; for dw they get it by a
                   transpose of the packed pairs).
   The weights (B of the forward and of dinp) are packed by
   mb__bf16_pack_weight; a model does it once per forward.  The vector
   conversions are mb__bf_pack's, 32 values per vcvtne2ps2bf16. */
#define MB__BF_NR 32    /* columns of a tile: two zmm, or two AMX tiles, of float32 sums */
#define MB__BF_MR 12    /* AVX512-BF16: rows of the register tile (24 zmm of sums) */
#define MB__BF_MRX 32   /* AMX: rows of a tile block (2 x 2 tiles of 16 x 16 sums) */
#define MB__BF_KQ 256   /* pairs of one rounded block of A: 32 x 256 dwords, 32 KB on the stack */

static uint32_t mb__bf16_bits(float x) {
    uint32_t u, r;
    memcpy(&u, &x, 4);
    r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;               /* to nearest even; large values become inf */
    r = (u & 0x7F800000u) == 0 ? (u >> 16) & 0x8000u : r;      /* zero, subnormal: a signed zero */
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x40u : r; /* NaN: quiet, sign and top payload kept */
}
MBDEF uint16_t mb__bf16_from_float(float x) { return (uint16_t)mb__bf16_bits(x); }
/* The float32 value of a bf16 value (exact). */
static float mb__bf16_value(uint32_t b) {
    float f;
    b <<= 16;
    memcpy(&f, &b, 4);
    return f;
}

static int64_t mb__bf_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
/* Rows of the packed pairs of K summed values: ceil(K/2), padded to 16. */
static int64_t mb__bf_pair_rows(int64_t K) { return mb__bf_round_up((K + 1) / 2, 16); }

/* ---- which kernels this machine runs ----
   CPUID says what the core has and XGETBV what the OS saves on a context
   switch (XCR0: opmask and the upper zmm halves for AVX-512, bits 5-7;
   the tile config and data for AMX, bits 17-18); Linux also hands out the
   tile data only on request (arch_prctl ARCH_REQ_XCOMP_PERM, once per
   process, for every thread).  AMX is used only beside AVX512-BF16 (the
   conversions are AVX-512's). */
static int mb__bf16_allowed = -1;
MBDEF void mb__bf16_limit_paths(int mask) { mb__bf16_allowed = mask; }
#if defined(MB__BF16_X86)
static uint64_t mb__xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}
/* syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0,
   without the headers that declare syscall() only outside strict C99. */
static int mb__amx_permission(void) {
#if defined(__linux__)
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "0"(158L /* SYS_arch_prctl */), "D"(0x1023L), "S"(18L) : "rcx", "r11", "memory");
    return ret == 0;
#else
    return 0;
#endif
}
static int mb__bf16_detect(void) {
    unsigned int a, b, c, d, ebx7, edx7, sub7;
    int paths = 1 << MB__BF16_NONE;
    uint64_t xcr0;
    if (!__get_cpuid(0, &a, &b, &c, &d) || a < 7) return paths;
    __cpuid(1, a, b, c, d);
    if (!(c >> 27 & 1u)) return paths; /* no OSXSAVE: no XGETBV, no AVX state */
    xcr0 = mb__xgetbv0();
    __cpuid_count(7, 0, sub7, ebx7, c, edx7);
    if (sub7 < 1) return paths;
    __cpuid_count(7, 1, a, b, c, d);
    if (!((ebx7 >> 16 & 1u) && (ebx7 >> 30 & 1u) && (ebx7 >> 31 & 1u) && (a >> 5 & 1u) && (xcr0 & 0xE6u) == 0xE6u))
        return paths; /* AVX512F, BW, VL, BF16 and the OS's zmm state */
    paths |= 1 << MB__BF16_AVX512;
    if ((edx7 >> 22 & 1u) && (edx7 >> 24 & 1u) && (xcr0 & 0x60000u) == 0x60000u && mb__amx_permission())
        paths |= 1 << MB__BF16_AMX;
    return paths;
}
MBDEF int mb__bf16_paths(void) {
    static int cached = 0; /* 0: not yet (bit 0 is always set once known) */
    int p = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (!p) {
        const char *mask = getenv("MB_TEST_BF16_PATHS"); /* testing hook: a process that sees fewer kernels */
        if (mask && mb__bf16_allowed == -1) mb__bf16_allowed = atoi(mask);
        __atomic_store_n(&cached, p = mb__bf16_detect(), __ATOMIC_RELEASE);
    }
    return p & (mb__bf16_allowed | 1);
}
#else
MBDEF int mb__bf16_paths(void) { return 1 << MB__BF16_NONE & (mb__bf16_allowed | 1); }
#endif

/* ---- packing: rounding to bf16 pairs ---- */
#if defined(MB__BF16_X86)
#define MB__BF16_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define MB__BF16_AMX_FN __attribute__((target("amx-tile,amx-bf16")))
/* 32 floats (lo, then hi) -> 32 bf16 in order: 16 pairs along the row. */
MB__BF16_AVX512_FN static void mb__bf_cvt_row(uint32_t *d, const float *s, int64_t nq) {
    int64_t q;
    for (q = 0; q + 16 <= nq; q += 16)
        _mm512_storeu_si512((void *)(d + q), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 2 * q + 16), _mm512_loadu_ps(s + 2 * q)));
}
/* 16 floats of two rows -> their 16 pairs, column by column. */
MB__BF16_AVX512_FN static void mb__bf_cvt_two(uint32_t *d, const float *s0, const float *s1, int64_t nx) {
    __m512i idx;
    uint16_t ix[32];
    int64_t x;
    int j;
    for (j = 0; j < 16; j++) { /* [s0's 16 | s1's 16] -> s0[0], s1[0], s0[1], ... */
        ix[2 * j] = (uint16_t)j;
        ix[2 * j + 1] = (uint16_t)(16 + j);
    }
    idx = _mm512_loadu_si512((const void *)ix);
    for (x = 0; x + 16 <= nx; x += 16) {
        __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s1 + x), _mm512_loadu_ps(s0 + x));
        _mm512_storeu_si512((void *)(d + x), _mm512_permutexvar_epi16(idx, v));
    }
}
#endif

/* Pairs along k of the float matrix m(k, x) = src[k*sk + x*sx] (k < K,
   x < X), rounded: dst[(q - q0)*dq + x*dx] = (m(2q, x), m(2q+1, x)) for
   pairs q in [q0, q1), the odd member 0 at 2q+1 = K, pairs past the end 0.
   Where this CPU has AVX512-BF16, the two layouts the kernels read go 32
   values per instruction: along a row (sk == 1, dq == 1: pair rows) and
   down pairs of rows (sx == 1, dx == 1: packed pairs); the rest, and any
   other strides, pair by pair in C. */
static void mb__bf_pack(uint32_t *MB__RESTRICT dst, int64_t dq, int64_t dx, const float *MB__RESTRICT src, int64_t sk,
                        int64_t sx, int64_t K, int64_t X, int64_t q0, int64_t q1) {
    int64_t qf = K / 2 < q1 ? K / 2 : q1, q, x, done = 0; /* pairs [q0, qf) are whole */
#if defined(MB__BF16_X86)
    const int vec = mb__bf16_paths() >> MB__BF16_AVX512 & 1;
#else
    const int vec = 0;
#endif
    if (qf < q0) qf = q0;
    if (sk == 1) {
        for (x = 0; x < X; x++) {
            const float *s = src + x * sx;
            uint32_t *d = dst + x * dx; /* pair q at d[(q - q0)*dq] */
#if defined(MB__BF16_X86)
            if (vec && dq == 1) {
                done = (qf - q0) / 16 * 16;
                mb__bf_cvt_row(d, s + 2 * q0, done);
            }
#endif
            for (q = q0 + done; q < qf; q++) d[(q - q0) * dq] = mb__bf16_bits(s[2 * q]) | mb__bf16_bits(s[2 * q + 1]) << 16;
        }
    } else {
        for (q = q0; q < qf; q++) {
            const float *s0 = src + 2 * q * sk, *s1 = s0 + sk;
            uint32_t *d = dst + (q - q0) * dq;
#if defined(MB__BF16_X86)
            if (vec && dx == 1 && sx == 1) {
                done = X / 16 * 16;
                mb__bf_cvt_two(d, s0, s1, done);
            }
#endif
            for (x = done; x < X; x++) d[x * dx] = mb__bf16_bits(s0[x * sx]) | mb__bf16_bits(s1[x * sx]) << 16;
        }
    }
    (void)vec;
    for (q = qf; q < q1; q++) /* the half pair, then zeros */
        for (x = 0; x < X; x++)
            dst[(q - q0) * dq + x * dx] = 2 * q < K ? mb__bf16_bits(src[2 * q * sk + x * sx]) : 0u;
}

/* The packed pairs of m(k, x) = src[k*sk + x*sx] (k < K, x < X):
   mb__bf_pair_rows(K) rows of ld = roundup(X, 32) dwords, zero-padded,
   and MB__BF_MR zero dwords after them (the zmm tile reads up to 11 rows
   past the last column).  sk == 1 (pairs along src's rows) goes through a
   block of pair rows on the stack and a transpose. */
static void mb__bf_pack_pairs(uint32_t *dst, const float *src, int64_t sk, int64_t sx, int64_t K, int64_t X) {
    const int64_t Q = mb__bf_pair_rows(K), ld = mb__bf_round_up(X, MB__BF_NR);
    int64_t q0;
    MB__OMP(parallel for schedule(static) if (K * X > MB__OMP_MIN_WORK))
    for (q0 = 0; q0 < Q; q0 += 16) {
        int64_t q, x;
        if (sk == 1) {
            uint32_t t[MB__BF_NR * 16];
            int64_t x0;
            for (x0 = 0; x0 < X; x0 += MB__BF_NR) { /* 32 columns x 16 pairs, then their transpose */
                int64_t nx = X - x0 < MB__BF_NR ? X - x0 : MB__BF_NR;
                mb__bf_pack(t, 1, 16, src + x0 * sx, 1, sx, K, nx, q0, q0 + 16);
                for (q = 0; q < 16; q++)
                    for (x = 0; x < nx; x++) dst[(q0 + q) * ld + x0 + x] = t[x * 16 + q];
            }
        } else {
            mb__bf_pack(dst + q0 * ld, ld, 1, src, sk, sx, K, X, q0, q0 + 16);
        }
        for (q = q0; q < q0 + 16; q++)
            for (x = X; x < ld; x++) dst[q * ld + x] = 0u;
    }
    memset(dst + Q * ld, 0, MB__BF_MR * sizeof(uint32_t));
}
static size_t mb__bf_pairs_bytes(int64_t K, int64_t X) {
    return (size_t)(mb__bf_pair_rows(K) * mb__bf_round_up(X, MB__BF_NR) + MB__BF_MR) * sizeof(uint32_t);
}

/* A weight w (OC, IC) as the forward's B (the pairs of w^T: k = i, columns
   o) followed by dinp's (the pairs of w: k = o, columns i). */
MBDEF int64_t mb__bf16_packed_size(int IC, int OC) {
    return (int64_t)((mb__bf_pairs_bytes(IC, OC) + mb__bf_pairs_bytes(OC, IC)) / sizeof(uint32_t));
}
MBDEF void mb__bf16_pack_weight(uint32_t *wp, const float *w, int IC, int OC) {
    mb__bf_pack_pairs(wp, w, 1, IC, IC, OC);
    mb__bf_pack_pairs(wp + mb__bf_pairs_bytes(IC, OC) / sizeof(uint32_t), w, IC, 1, OC, IC);
}

/* The reference: c(r, j) (+= when acc, else =) the pairs' sum above of
   a(r, k) b(k, j), a(r, k) = a[r*ar + k*ak], b(k, j) = b[k*bk + j*bj],
   c(r, j) = c[r*cr + j]. */
static void mb__bf_gemm_ref(float *c, int64_t cr, int acc, const float *a, int64_t ar, int64_t ak, const float *b,
                            int64_t bk, int64_t bj, int64_t rows, int64_t cols, int64_t K) {
    int64_t r;
    MB__OMP(parallel for schedule(static) if (rows * cols * K > MB__OMP_MIN_WORK))
    for (r = 0; r < rows; r++) {
        int64_t j, k;
        for (j = 0; j < cols; j++) {
            float s = acc ? c[r * cr + j] : 0.0f;
            for (k = 0; k < K; k += 2) {
                float a0 = mb__bf16_value(mb__bf16_bits(a[r * ar + k * ak])), b0 = mb__bf16_value(mb__bf16_bits(b[k * bk + j * bj]));
                float a1 = k + 1 < K ? mb__bf16_value(mb__bf16_bits(a[r * ar + (k + 1) * ak])) : 0.0f;
                float b1 = k + 1 < K ? mb__bf16_value(mb__bf16_bits(b[(k + 1) * bk + j * bj])) : 0.0f;
                s = (s + a1 * b1) + a0 * b0;
            }
            c[r * cr + j] = s;
        }
    }
}

MBDEF void mb__matmul_forward_bf16_ref(float *out, const float *inp, int64_t ldi, const float *w, int64_t N, int IC, int OC) {
    mb__bf_gemm_ref(out, OC, 0, inp, ldi, 1, w, 1, IC, N, OC, IC);
}
MBDEF void mb__matmul_backward_bf16_ref(float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                                        const float *w, int64_t N, int IC, int OC) {
    if (dinp) mb__bf_gemm_ref(dinp, ldi, 1, dout, OC, 1, w, IC, 1, N, IC, OC);
    mb__bf_gemm_ref(dw, IC, 1, dout, 1, OC, inp, ldi, 1, OC, IC, N);
}

/* ---- the kernels ---- */
#if defined(MB__BF16_X86)
/* c (12 x 32, row stride ldc) = (first) or += the pairs q < nq of
   a[q*aq + r*ar] (one pair, broadcast) . b[q*ldb + j] (32 pairs): 24 zmm
   of sums, two loads and 12 broadcasts per 24 vdpbf16ps. */
MB__BF16_AVX512_FN MB__INLINE void mb__bf_tile_avx512(float *MB__RESTRICT c, int64_t ldc, const uint32_t *MB__RESTRICT a,
                                                      int64_t aq, int64_t ar, const uint32_t *MB__RESTRICT b, int64_t ldb,
                                                      int64_t nq, int first) {
    __m512 acc[MB__BF_MR][2];
    int64_t q;
    int r;
    MB__UNROLL
    for (r = 0; r < MB__BF_MR; r++) {
        acc[r][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
        acc[r][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + 16);
    }
    for (q = 0; q < nq; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(b + q * ldb));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(b + q * ldb + 16));
        MB__UNROLL
        for (r = 0; r < MB__BF_MR; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[q * aq + r * ar]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    MB__UNROLL
    for (r = 0; r < MB__BF_MR; r++) {
        _mm512_storeu_ps(c + r * ldc, acc[r][0]);
        _mm512_storeu_ps(c + r * ldc + 16, acc[r][1]);
    }
}
/* A as pair rows (a[r*lda + q]), or as packed pairs (a[q*lda + r]). */
MB__BF16_AVX512_FN static void mb__bf_tile_avx512_rows(float *c, int64_t ldc, const uint32_t *a, int64_t lda, const uint32_t *b,
                                                       int64_t ldb, int64_t nq, int first) {
    mb__bf_tile_avx512(c, ldc, a, 1, lda, b, ldb, nq, first);
}
MB__BF16_AVX512_FN static void mb__bf_tile_avx512_pairs(float *c, int64_t ldc, const uint32_t *a, int64_t lda, const uint32_t *b,
                                                        int64_t ldb, int64_t nq, int first) {
    mb__bf_tile_avx512(c, ldc, a, lda, 1, b, ldb, nq, first);
}

/* AMX: tiles 0-3 the 2 x 2 blocks of 16 x 16 sums, 4-5 A's two row halves
   (16 rows x 16 pairs each), 6-7 B's two column halves (16 pairs x 16
   columns); all 16 rows of 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} mb__amx_config;
MB__BF16_AMX_FN static void mb__amx_begin(void) {
    mb__amx_config cfg;
    int t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* not _tile_loadconfig: gcc 12's asm names 8 bytes of the config as
       its input, and then drops the stores to the rest */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}
MB__BF16_AMX_FN static void mb__amx_end(void) { _tile_release(); }

/* c (32 x 32, row stride ldc) = (first) or += A B over nq pairs (a
   multiple of 16): A pair rows (a + r*lda), B packed pairs (ld ldb).
   two_r / two_c: the second row / column half is used. */
MB__BF16_AMX_FN static void mb__bf_tile_amx(float *c, int64_t ldc, const uint32_t *a, int64_t lda, const uint32_t *b,
                                            int64_t ldb, int64_t nq, int first, int two_r, int two_c) {
    const long sc = (long)(ldc * 4), sa = (long)(lda * 4), sb = (long)(ldb * 4);
    float *c1 = c + 16 * ldc;
    int64_t q;
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, c, sc);
        if (two_c) _tile_loadd(1, c + 16, sc);
        if (two_r) _tile_loadd(2, c1, sc);
        if (two_r && two_c) _tile_loadd(3, c1 + 16, sc);
    }
    for (q = 0; q < nq; q += 16) {
        _tile_loadd(4, a + q, sa);
        _tile_loadd(6, b + q * ldb, sb);
        _tile_dpbf16ps(0, 4, 6);
        if (two_c) {
            _tile_loadd(7, b + q * ldb + 16, sb);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (two_r) {
            _tile_loadd(5, a + 16 * lda + q, sa);
            _tile_dpbf16ps(2, 5, 6);
            if (two_c) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, sc);
    if (two_c) _tile_stored(1, c + 16, sc);
    if (two_r) _tile_stored(2, c1, sc);
    if (two_r && two_c) _tile_stored(3, c1 + 16, sc);
}
#endif

/* C (rows x cols, row stride ldc, transposed when tr) = (acc 0) or += A B,
   k < K in pairs, B packed pairs (ld ldb).  A is either float rows
   a(r, k) = a[r*lda + k], rounded here a block of rows (12, or 32 for AMX)
   and MB__BF_KQ pairs at a time by the thread that owns the block, or
   packed pairs ap (ld ldap; a block's tile reads them as they are, AMX
   through a transpose into pair rows).  A block's sums pass through C
   between chunks of pairs, which keeps the order. */
static void mb__bf_gemm(int path, float *C, int64_t ldc, int tr, int acc, const float *a, int64_t lda, const uint32_t *ap,
                        int64_t ldap, int64_t rows, const uint32_t *bp, int64_t ldb, int64_t cols, int64_t K) {
#if defined(MB__BF16_X86)
    const int amx = path == MB__BF16_AMX, MR = amx ? MB__BF_MRX : MB__BF_MR;
    const int64_t Q = amx ? mb__bf_pair_rows(K) : (K + 1) / 2, nrb = (rows + MR - 1) / MR;
    MB__OMP(parallel if (rows * cols * K > MB__OMP_MIN_WORK))
    {
        uint32_t ab[MB__BF_MRX * MB__BF_KQ];
        float cb[MB__BF_MRX * MB__BF_NR];
        int64_t rb;
        if (amx) mb__amx_begin();
        MB__OMP(for schedule(static))
        for (rb = 0; rb < nrb; rb++) {
            const int64_t r0 = rb * MR;
            const int nr = (int)(rows - r0 < MR ? rows - r0 : MR);
            int64_t q0 = 0, c0, q, r;
            do { /* at least once: K = 0 still writes the zeros */
                const int64_t nq = Q - q0 < MB__BF_KQ ? Q - q0 : MB__BF_KQ;
                const int first = !acc && q0 == 0;
                if (a) { /* round this block of A */
                    mb__bf_pack(ab, 1, MB__BF_KQ, a + r0 * lda, 1, lda, K, nr, q0, q0 + nq);
                    if (nr < MR) memset(ab + nr * MB__BF_KQ, 0, sizeof(uint32_t) * (size_t)((MR - nr) * MB__BF_KQ));
                } else if (amx) { /* packed pairs -> pair rows (ap's zero columns pad the block) */
                    for (q = 0; q < nq; q++)
                        for (r = 0; r < MR; r++) ab[r * MB__BF_KQ + q] = ap[(q0 + q) * ldap + r0 + r];
                }
                for (c0 = 0; c0 < cols; c0 += MB__BF_NR) {
                    const int nc = (int)(cols - c0 < MB__BF_NR ? cols - c0 : MB__BF_NR);
                    const uint32_t *b = bp + q0 * ldb + c0;
                    const int direct = !tr && nr == MR && nc == MB__BF_NR; /* a whole tile: straight into C */
                    float *c = direct ? C + r0 * ldc + c0 : cb;
                    int64_t ldt = direct ? ldc : MB__BF_NR;
                    if (!direct && !first) mb__tile_io(cb, MR, MB__BF_NR, C, ldc, tr, r0, c0, nr, nc, 0);
                    if (amx) mb__bf_tile_amx(c, ldt, ab, MB__BF_KQ, b, ldb, nq, first, nr > 16, nc > 16);
                    else if (a) mb__bf_tile_avx512_rows(c, ldt, ab, MB__BF_KQ, b, ldb, nq, first);
                    else mb__bf_tile_avx512_pairs(c, ldt, ap + q0 * ldap + r0, ldap, b, ldb, nq, first);
                    if (!direct) mb__tile_io(cb, MR, MB__BF_NR, C, ldc, tr, r0, c0, nr, nc, 1);
                }
                q0 += nq;
            } while (q0 < Q);
        }
        if (amx) mb__amx_end();
    }
#else
    (void)path; (void)C; (void)ldc; (void)tr; (void)acc; (void)a; (void)lda; (void)ap; (void)ldap; (void)rows; (void)bp;
    (void)ldb; (void)cols; (void)K;
    MB_ASSERT(0); /* no kernels here: the callers take the reference */
#endif
}

/* The path the products take: the reference for MB__BF16_NONE and for a
   path this CPU cannot run. */
static int mb__bf_path(int path) {
    return path > MB__BF16_NONE && path <= MB__BF16_AMX && (mb__bf16_paths() >> path & 1) ? path : MB__BF16_NONE;
}

/* wp, or w packed into *own (MB_MALLOC; NULL when it cannot be allocated). */
static const uint32_t *mb__bf_weight(const uint32_t *wp, uint32_t **own, const float *w, int IC, int OC) {
    *own = NULL;
    if (wp) return wp;
    if ((*own = (uint32_t *)MB_MALLOC((size_t)mb__bf16_packed_size(IC, OC) * sizeof(uint32_t))))
        mb__bf16_pack_weight(*own, w, IC, OC);
    return *own;
}

MBDEF void mb__matmul_forward_bf16(int path, float *out, const float *inp, int64_t ldi, const float *w, const uint32_t *wp,
                                   int64_t N, int IC, int OC) {
    uint32_t *own = NULL;
    path = mb__bf_path(path);
    if (path != MB__BF16_NONE) wp = mb__bf_weight(wp, &own, w, IC, OC);
    /* out[n][o] = inp[n][i] . w^T[i][o]: rows n, columns o, k = i (memory short: the reference) */
    if (path == MB__BF16_NONE || !wp) mb__matmul_forward_bf16_ref(out, inp, ldi, w, N, IC, OC);
    else mb__bf_gemm(path, out, OC, 0, 0, inp, ldi, NULL, 0, N, wp, mb__bf_round_up(OC, MB__BF_NR), OC, IC);
    MB_FREE(own);
}

MBDEF void mb__matmul_backward_bf16(int path, float *dinp, float *dw, const float *dout, const float *inp, int64_t ldi,
                                    const float *w, const uint32_t *wp, int64_t N, int IC, int OC) {
    const int64_t ldo = mb__bf_round_up(OC, MB__BF_NR), ldx = mb__bf_round_up(IC, MB__BF_NR);
    uint32_t *own = NULL, *pko = NULL, *pki;
    path = mb__bf_path(path);
    if (path != MB__BF16_NONE) {
        if (dinp) wp = mb__bf_weight(wp, &own, w, IC, OC);
        pko = (uint32_t *)MB_MALLOC(mb__bf_pairs_bytes(N, OC) + mb__bf_pairs_bytes(N, IC));
    }
    if (path == MB__BF16_NONE || (dinp && !wp) || !pko) {
        mb__matmul_backward_bf16_ref(dinp, dw, dout, inp, ldi, w, N, IC, OC);
    } else {
        /* dinp[n][i] += dout[n][o] . w[o][i]: rows n, columns i, k = o */
        if (dinp)
            mb__bf_gemm(path, dinp, ldi, 0, 1, dout, OC, NULL, 0, N, wp + mb__bf_pairs_bytes(IC, OC) / sizeof(uint32_t), ldx, IC, OC);
        /* dw[o][i] += dout^T[o][n] . inp[n][i], k = n: both packed pairs; the
           zmm tile with a narrow IC: dw^T[i][o] += inp^T[i][n] . dout[n][o] */
        pki = pko + mb__bf_pairs_bytes(N, OC) / sizeof(uint32_t);
        mb__bf_pack_pairs(pko, dout, OC, 1, N, OC);
        mb__bf_pack_pairs(pki, inp, ldi, 1, N, IC);
        if (path == MB__BF16_AVX512 && IC < MB__BF_NR && IC < OC)
            mb__bf_gemm(path, dw, IC, 1, 1, NULL, 0, pki, ldx, IC, pko, ldo, OC, N);
        else
            mb__bf_gemm(path, dw, IC, 0, 1, NULL, 0, pko, ldo, OC, pki, ldx, IC, N);
    }
    MB_FREE(own);
    MB_FREE(pko);
}

/* ---- vector math ----
   Vectorisable float32 exp, log1p-based softplus and sigmoid: branch-free
   scalar code that gcc turns into SIMD when called in a loop (libm's expf
   and log1pf are not vectorised without -ffast-math).  Within 3 ulp of the
   C library on the ranges used; NaN in, NaN out. */
MB__INLINE float mb__bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
MB__INLINE uint32_t mb__float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* exp(x): 2^k * exp(r), k = round(x / ln2), r = x - k*ln2 (two-part ln2),
   exp(r) by Cephes' degree-5 polynomial; within 1 ulp of expf between the
   bounds.  Exactly 0 below -87.33 (expf gives subnormals there, which are
   slow in the products that follow), +inf above 88.37 (expf: finite up to
   88.72; no caller goes there).  NaN stays NaN. */
MB__INLINE float mb__exp(float x) {
    float xc = x < -87.33654475f ? -87.33654475f : x > 88.37626266f ? 88.37626266f : x;
    float t = MB__FMA(xc, 1.44269504088896341f, 12582912.0f); /* round to nearest integer, kept in t's low bits */
    float k = t - 12582912.0f;
    float r = MB__FMA(k, -0.693359375f, xc), p;
    r = MB__FMA(k, 2.12194440e-4f, r);
    p = MB__FMA(1.9875691500e-4f, r, 1.3981999507e-3f);
    p = MB__FMA(p, r, 8.3334519073e-3f);
    p = MB__FMA(p, r, 4.1665795894e-2f);
    p = MB__FMA(p, r, 1.6666665459e-1f);
    p = MB__FMA(p, r, 5.0000001201e-1f);
    p = MB__FMA(p, r * r, r) + 1.0f;
    p = p * mb__bits_to_float((uint32_t)((int32_t)(mb__float_to_bits(t) - 0x4B400000u) + 127) << 23);
    return x < -87.33654475f ? 0.0f : x > 88.37626266f ? (float)INFINITY : p;
}

/* log(x) for x >= 1 (finite): x = 2^m * f, f in [sqrt(1/2), sqrt(2)),
   log f by Cephes' polynomial in f - 1. */
MB__INLINE float mb__log_ge1(float x) {
    uint32_t b = mb__float_to_bits(x);
    int32_t m = (int32_t)(b >> 23) - 127;
    float f = mb__bits_to_float((b & 0x007FFFFFu) | 0x3F800000u), z, z2, p;
    int big = f > 1.41421356f;
    f = big ? f * 0.5f : f;
    m = big ? m + 1 : m;
    z = f - 1.0f;
    z2 = z * z;
    p = 7.0376836292e-2f;
    p = p * z - 1.1514610310e-1f;
    p = p * z + 1.1676998740e-1f;
    p = p * z - 1.2420140846e-1f;
    p = p * z + 1.4249322787e-1f;
    p = p * z - 1.6668057665e-1f;
    p = p * z + 2.0000714765e-1f;
    p = p * z - 2.4999993993e-1f;
    p = p * z + 3.3333331174e-1f;
    p = p * z * z2;
    p = p + (float)m * -2.12194440e-4f;
    p = p - 0.5f * z2;
    return z + p + (float)m * 0.693359375f;
}

/* c ? a : b through the bits: gcc vectorises it even when b needs a division
   (with -ftrapping-math a plain ?: keeps the division behind a branch). */
MB__INLINE float mb__pick(int c, float a, float b) {
    uint32_t m = (uint32_t)0 - (uint32_t)(c != 0);
    return mb__bits_to_float((mb__float_to_bits(a) & m) | (mb__float_to_bits(b) & ~m));
}

/* PyTorch's softplus (threshold 20): x, or log(1 + e^x) with the rounding
   of u = 1 + e^x corrected: log1p(e) = log(u) - ((u - 1) - e) / u. */
MB__INLINE float mb__softplus_v(float x) {
    float e = mb__exp(x), u = 1.0f + e, l = mb__log_ge1(u) - ((u - 1.0f) - e) / u;
    return mb__pick((x > 20.0f) | (x != x), x, l);
}

/* 1 / (1 + e^-x) through e^-|x|, which never overflows. */
MB__INLINE float mb__sigmoid_v(float x) {
    float e = mb__exp(-fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

/* ---- SIMD scan helpers ----
   The conv's and the scan's inner loops run over blocks of MB__SCAN_DB = 16
   channels, one vector of floats on AVX-512, with the vectorisable mb__exp /
   mb__softplus_v / mb__sigmoid_v. */
#define MB__SCAN_DB 16

/* The 16 lanes v[0] + ... + v[15] as a pairwise tree (in place). */
MB__INLINE float mb__tree_sum16(float *v) {
    int k;
    for (k = 0; k < 8; k++) v[k] += v[k + 8];
    for (k = 0; k < 4; k++) v[k] += v[k + 4];
    for (k = 0; k < 2; k++) v[k] += v[k + 2];
    return v[0] + v[1];
}

/* Copies 16 values of channels d0.. of a row, repeating the last valid one
   past nd (so a partial block never reads outside the row). */
MB__INLINE void mb__scan_load(float *dst, const float *src, int nd) {
    int j;
    if (nd == MB__SCAN_DB) {
        for (j = 0; j < MB__SCAN_DB; j++) dst[j] = src[j];
    } else {
        for (j = 0; j < MB__SCAN_DB; j++) dst[j] = src[j < nd ? j : nd - 1];
    }
}

/* The 16 values of channels d0.. of a row as a pointer: the row itself
   when the block is whole (a copy through memory would stall the vector
   loads that follow it), else buf holding mb__scan_load's padded copy. */
MB__INLINE const float *mb__scan_row(float *buf, const float *src, int nd) {
    if (nd == MB__SCAN_DB) return src;
    mb__scan_load(buf, src, nd);
    return buf;
}

/* The scan's core on 16 channels, split in two so that the batch forward
   can run the part without a dependence between tokens ahead of the
   recurrence (the out-of-order core cannot overlap a token's ~500
   instructions with the next token's by itself):
     mb__scan_decays16:  a[n] = exp(dt*A[n]),  b[n] = (dt*B[n])*u      any tokens, in any order
     mb__scan_recur16:   h[n] = a[n]*h[n] + b[n],  y = (0 + C[0]h[0]) + C[1]h[1] + ...   token after token
   Every forward (batch, prefill, stream step) goes through these two, so
   their bits agree.  h, A, a, b are S rows of 16 lanes (h and A hs / as
   floats apart).  On AVX-512 the lanes are one register (y never leaves
   it), and mb__exp16 gives mb__exp's bits for every float (checked over all
   2^32 of them): the same operations in the same order, except that it
   scales by 2^k with vscalefps and skips the clamp, whose lanes it masks
   (16 instructions where the clamped form took 22).
   Each piece here has two builds, operation for operation the same (the
   kernel tests compare them bit for bit where MB__FMA fuses): _portable in
   plain C, and _avx512 with intrinsics.  A build for AVX-512 (-march=native
   on such a CPU) calls the _avx512 ones directly; another x86-64 build
   (make lib PORTABLE=1) compiles them with a target attribute and calls
   them when the CPU has AVX-512F and FMA (mb__scan_avx512); elsewhere the
   _portable ones run. */
MB__INLINE void mb__scan_decays16_portable(float *MB__RESTRICT a, float *MB__RESTRICT b, const float *MB__RESTRICT A, int64_t as,
                                           const float *dt, const float *u, const float *Bt, int S) {
    int n, j;
    for (n = 0; n < S; n++)
        for (j = 0; j < MB__SCAN_DB; j++) {
            a[n * MB__SCAN_DB + j] = mb__exp(dt[j] * A[n * as + j]);
            b[n * MB__SCAN_DB + j] = dt[j] * Bt[n] * u[j];
        }
}
MB__INLINE void mb__scan_recur16_portable(float *MB__RESTRICT h, int64_t hs, const float *MB__RESTRICT a, const float *MB__RESTRICT b,
                                          const float *Ct, int S, float *y) {
    int n, j;
    for (j = 0; j < MB__SCAN_DB; j++) y[j] = 0.0f;
    for (n = 0; n < S; n++)
        for (j = 0; j < MB__SCAN_DB; j++) {
            float v = a[n * MB__SCAN_DB + j] * h[n * hs + j] + b[n * MB__SCAN_DB + j];
            h[n * hs + j] = v;
            y[j] += Ct[n] * v;
        }
}
MB__INLINE void mb__scan_recompute16_portable(float *MB__RESTRICT ht, float *MB__RESTRICT at, const float *hp, const float *A,
                                              const float *dt, const float *u, const float *Bt, int S) {
    int n, j;
    for (n = 0; n < S; n++)
        for (j = 0; j < MB__SCAN_DB; j++) {
            float a = mb__exp(dt[j] * A[n * MB__SCAN_DB + j]);
            at[n * MB__SCAN_DB + j] = a;
            ht[n * MB__SCAN_DB + j] = a * hp[n * MB__SCAN_DB + j] + dt[j] * Bt[n] * u[j];
        }
}
MB__INLINE void mb__scan_bwd_states16_portable(float *y, float *ddt, float *du, float *MB__RESTRICT pB, float *MB__RESTRICT pC,
                                               float *MB__RESTRICT gA, float *MB__RESTRICT dh, const float *at, const float *ht,
                                               const float *hp, const float *A, const float *Bt, const float *Ct, const float *dy,
                                               const float *dt, const float *u, int S) {
    float acc[2][3][MB__SCAN_DB];
    int n, j;
    for (j = 0; j < MB__SCAN_DB; j++) {
        acc[0][0][j] = y[j]; acc[0][1][j] = ddt[j]; acc[0][2][j] = du[j];
        acc[1][0][j] = acc[1][1][j] = acc[1][2][j] = 0.0f;
    }
    for (n = 0; n < S; n++) {
        const int o = n * MB__SCAN_DB, e = n & 1;
        for (j = 0; j < MB__SCAN_DB; j++) {
            float a = at[o + j], h = ht[o + j], dhn = MB__FMA(dy[j], Ct[n], dh[o + j]), ah = A[o + j] * a * hp[o + j];
            float ddn = dhn * dt[j];
            acc[e][0][j] = MB__FMA(Ct[n], h, acc[e][0][j]);
            acc[e][1][j] = MB__FMA(dhn, MB__FMA(Bt[n], u[j], ah), acc[e][1][j]);
            acc[e][2][j] = MB__FMA(ddn, Bt[n], acc[e][2][j]);
            pC[o + j] = MB__FMA(dy[j], h, pC[o + j]);
            pB[o + j] = MB__FMA(ddn, u[j], pB[o + j]);
            gA[o + j] = MB__FMA(ddn, ah, gA[o + j]);
            dh[o + j] = dhn * a;
        }
    }
    for (j = 0; j < MB__SCAN_DB; j++) {
        y[j] = acc[0][0][j] + acc[1][0][j];
        ddt[j] = acc[0][1][j] + acc[1][1][j];
        du[j] = acc[0][2][j] + acc[1][2][j];
    }
}
MB__INLINE void mb__scan_gather16_portable(float *MB__RESTRICT dst, const float *src, int S, int nd, int neg_exp) {
    int n, j;
    for (n = 0; n < S; n++)
        for (j = 0; j < MB__SCAN_DB; j++) {
            float v = src[(j < nd ? j : nd - 1) * S + n];
            dst[n * MB__SCAN_DB + j] = neg_exp ? -mb__exp(v) : v;
        }
}
MB__INLINE void mb__scan_scatter16_portable(float *dst, const float *MB__RESTRICT src, int S, int nd) {
    int n, j;
    for (j = 0; j < nd; j++)
        for (n = 0; n < S; n++) dst[j * S + n] = src[n * MB__SCAN_DB + j];
}

#if defined(__AVX512F__) && defined(__FMA__) && !defined(MB_NO_INTRINSICS)
#define MB__SCAN_AVX512 1 /* compiled for AVX-512: called directly */
#define MB__SCAN_AVX512_FN MB__INLINE
#define MB__SCAN_AVX512_IN MB__INLINE
#elif defined(MB__BF16_X86)
#define MB__SCAN_AVX512 2 /* compiled with a target attribute, chosen at run time */
#define MB__SCAN_AVX512_FN static __attribute__((target("avx512f,fma")))
#define MB__SCAN_AVX512_IN static inline __attribute__((always_inline, target("avx512f,fma")))
#endif
#if defined(MB__SCAN_AVX512)
MB__SCAN_AVX512_IN __m512 mb__exp16(__m512 x) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654475f), _CMP_NLT_UQ); /* not below; NaN is kept */
    __mmask16 above = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.37626266f), _CMP_GT_OQ);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic), k = _mm512_sub_ps(t, magic), r, p;
    r = _mm512_fmadd_ps(k, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
    p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    /* p * 2^k in one instruction (exact, as mb__exp's multiply by the
       power of two built from t's bits is for every k it reaches); zero
       below the range, +inf above it */
    p = _mm512_maskz_scalef_ps(keep, p, k);
    return _mm512_mask_mov_ps(p, above, _mm512_set1_ps((float)INFINITY));
}
MB__SCAN_AVX512_FN void mb__scan_decays16_avx512(float *MB__RESTRICT a, float *MB__RESTRICT b, const float *MB__RESTRICT A, int64_t as,
                                                 const float *dt, const float *u, const float *Bt, int S) {
    const __m512 vdt = _mm512_loadu_ps(dt), vu = _mm512_loadu_ps(u);
    int n;
    for (n = 0; n < S; n++) {
        _mm512_storeu_ps(a + n * MB__SCAN_DB, mb__exp16(_mm512_mul_ps(vdt, _mm512_loadu_ps(A + n * as))));
        _mm512_storeu_ps(b + n * MB__SCAN_DB, _mm512_mul_ps(_mm512_mul_ps(vdt, _mm512_set1_ps(Bt[n])), vu));
    }
}
MB__SCAN_AVX512_FN void mb__scan_recur16_avx512(float *MB__RESTRICT h, int64_t hs, const float *MB__RESTRICT a, const float *MB__RESTRICT b,
                                                const float *Ct, int S, float *y) {
    __m512 vy = _mm512_setzero_ps();
    int n;
    for (n = 0; n < S; n++) {
        __m512 hn = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(a + n * MB__SCAN_DB), _mm512_loadu_ps(h + n * hs)),
                                  _mm512_loadu_ps(b + n * MB__SCAN_DB));
        _mm512_storeu_ps(h + n * hs, hn);
        vy = _mm512_add_ps(vy, _mm512_mul_ps(_mm512_set1_ps(Ct[n]), hn));
    }
    _mm512_storeu_ps(y, vy);
}
/* The scan backward's recompute of one token: at[n] = exp(dt*A[n]),
   ht[n] = at[n]*hp[n] + (dt*B[n])*u, rows of 16 lanes, the forward's
   operations (so the forward's h, bit for bit). */
MB__SCAN_AVX512_FN void mb__scan_recompute16_avx512(float *MB__RESTRICT ht, float *MB__RESTRICT at, const float *hp, const float *A,
                                                    const float *dt, const float *u, const float *Bt, int S) {
    const __m512 vdt = _mm512_loadu_ps(dt), vu = _mm512_loadu_ps(u);
    int n;
    for (n = 0; n < S; n++) {
        __m512 a = mb__exp16(_mm512_mul_ps(vdt, _mm512_loadu_ps(A + n * MB__SCAN_DB)));
        _mm512_storeu_ps(at + n * MB__SCAN_DB, a);
        _mm512_storeu_ps(ht + n * MB__SCAN_DB, _mm512_add_ps(_mm512_mul_ps(a, _mm512_loadu_ps(hp + n * MB__SCAN_DB)),
                                                            _mm512_mul_ps(_mm512_mul_ps(vdt, _mm512_set1_ps(Bt[n])), vu)));
    }
}
/* One token of the scan backward's reverse sweep over the S states of 16
   channels (rows of 16 lanes): with dhn = dh + dy*C[n], ah = A*a*h_prev and
   ddn = dhn*dt,
     y += C[n]*h,  ddt += dhn*(B[n]*u + ah),  du += ddn*B[n]         (summed over n)
     pC += dy*h,  pB += ddn*u,  gA += ddn*ah,  dh = dhn*a            (per state)
   twelve operations per state.  The three sums over n alternate between
   two accumulators (even and odd n, added at the end) so that each chain
   is half as long: y, ddt, du come in holding their values before the
   states and the odd sums start at zero. */
/* (one state of mb__scan_bwd_states16, its three sums in y, ddt, du) */
#define MB__SCAN_BWD_STATE16(n, y, ddt, du) do { \
        const int o_ = (n) * MB__SCAN_DB; \
        const __m512 a_ = _mm512_loadu_ps(at + o_), h_ = _mm512_loadu_ps(ht + o_); \
        const __m512 cn_ = _mm512_set1_ps(Ct[n]), bn_ = _mm512_set1_ps(Bt[n]); \
        const __m512 dhn_ = _mm512_fmadd_ps(vdy, cn_, _mm512_loadu_ps(dh + o_)); \
        const __m512 ah_ = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(A + o_), a_), _mm512_loadu_ps(hp + o_)); \
        const __m512 ddn_ = _mm512_mul_ps(dhn_, vdt); \
        y = _mm512_fmadd_ps(cn_, h_, y); \
        ddt = _mm512_fmadd_ps(dhn_, _mm512_fmadd_ps(bn_, vu, ah_), ddt); \
        du = _mm512_fmadd_ps(ddn_, bn_, du); \
        _mm512_storeu_ps(pC + o_, _mm512_fmadd_ps(vdy, h_, _mm512_loadu_ps(pC + o_))); \
        _mm512_storeu_ps(pB + o_, _mm512_fmadd_ps(ddn_, vu, _mm512_loadu_ps(pB + o_))); \
        _mm512_storeu_ps(gA + o_, _mm512_fmadd_ps(ddn_, ah_, _mm512_loadu_ps(gA + o_))); \
        _mm512_storeu_ps(dh + o_, _mm512_mul_ps(dhn_, a_)); \
    } while (0)
MB__SCAN_AVX512_FN void mb__scan_bwd_states16_avx512(float *y, float *ddt, float *du, float *MB__RESTRICT pB, float *MB__RESTRICT pC,
                                                     float *MB__RESTRICT gA, float *MB__RESTRICT dh, const float *at, const float *ht,
                                                     const float *hp, const float *A, const float *Bt, const float *Ct, const float *dy,
                                                     const float *dt, const float *u, int S) {
    const __m512 vdy = _mm512_loadu_ps(dy), vdt = _mm512_loadu_ps(dt), vu = _mm512_loadu_ps(u);
    __m512 y0 = _mm512_loadu_ps(y), t0 = _mm512_loadu_ps(ddt), u0 = _mm512_loadu_ps(du);
    __m512 y1 = _mm512_setzero_ps(), t1 = y1, u1 = y1;
    int n;
    for (n = 0; n + 1 < S; n += 2) { /* even states into the first sums, odd into the second */
        MB__SCAN_BWD_STATE16(n, y0, t0, u0);
        MB__SCAN_BWD_STATE16(n + 1, y1, t1, u1);
    }
    if (n < S) MB__SCAN_BWD_STATE16(n, y0, t0, u0);
    _mm512_storeu_ps(y, _mm512_add_ps(y0, y1));
    _mm512_storeu_ps(ddt, _mm512_add_ps(t0, t1));
    _mm512_storeu_ps(du, _mm512_add_ps(u0, u1));
}
#undef MB__SCAN_BWD_STATE16
/* The rows of S values of 16 channels (src[j*S + n], channel j < nd; the
   last one repeated past nd) as S rows of 16 lanes: dst[n*16 + j], or
   -exp of them (neg_exp: A from A_log).  And back, the nd valid lanes.
   (No intrinsic with an undefined pass-through here: with target
   attributes, gcc 12's C++ warns about its self-initialised variable.) */
MB__SCAN_AVX512_IN __m512i mb__scan_lane_offsets(int S, int nd) {
    int32_t off[MB__SCAN_DB];
    int j;
    for (j = 0; j < MB__SCAN_DB; j++) off[j] = (j < nd ? j : nd - 1) * S;
    return _mm512_loadu_si512((const void *)off);
}
MB__SCAN_AVX512_FN void mb__scan_gather16_avx512(float *MB__RESTRICT dst, const float *src, int S, int nd, int neg_exp) {
    const __m512i off = mb__scan_lane_offsets(S, nd), sign = _mm512_set1_epi32((int)0x80000000u);
    int n;
    for (n = 0; n < S; n++) {
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)0xFFFF, off, src + n, 4);
        if (neg_exp) v = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mb__exp16(v)), sign));
        _mm512_storeu_ps(dst + n * MB__SCAN_DB, v);
    }
}
MB__SCAN_AVX512_FN void mb__scan_scatter16_avx512(float *dst, const float *MB__RESTRICT src, int S, int nd) {
    const __m512i off = mb__scan_lane_offsets(S, nd);
    const __mmask16 valid = (__mmask16)((1u << nd) - 1u);
    int n;
    for (n = 0; n < S; n++) _mm512_mask_i32scatter_ps(dst + n, valid, off, _mm512_loadu_ps(src + n * MB__SCAN_DB), 4);
}
#endif
#if MB__SCAN_AVX512 == 2
/* Testing: 0 makes mb__scan_avx512() say no from now on (as on a CPU
   without AVX-512); a process started with MB_TEST_SCAN_AVX512=0 begins so. */
static int mb__scan_allow_avx512 = -1;
static int mb__scan_avx512(void) {
    static int cached = 0; /* 0: not yet; 1: no; 2: yes */
    int p = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (!p) {
        unsigned int a, b, c, d, c1;
        const char *env = getenv("MB_TEST_SCAN_AVX512");
        if (env && mb__scan_allow_avx512 == -1) mb__scan_allow_avx512 = atoi(env);
        p = 1;
        if (__get_cpuid(1, &a, &b, &c1, &d) && (c1 >> 27 & 1u) && (c1 >> 12 & 1u) && __get_cpuid_count(7, 0, &a, &b, &c, &d))
            p = (b >> 16 & 1u) && (mb__xgetbv0() & 0xE6u) == 0xE6u ? 2 : 1; /* AVX512F, FMA and the OS's zmm state */
        __atomic_store_n(&cached, p, __ATOMIC_RELEASE);
    }
    return p == 2 && mb__scan_allow_avx512 != 0;
}
#define MB__SCAN_PICK(f) (mb__scan_avx512() ? f##_avx512 : f##_portable)
#elif MB__SCAN_AVX512 == 1
#define mb__scan_avx512() 1
#define MB__SCAN_PICK(f) f##_avx512
#else
#define mb__scan_avx512() 0
#define MB__SCAN_PICK(f) f##_portable
#endif
#define mb__scan_decays16 MB__SCAN_PICK(mb__scan_decays16)
#define mb__scan_recur16 MB__SCAN_PICK(mb__scan_recur16)
#define mb__scan_recompute16 MB__SCAN_PICK(mb__scan_recompute16)
#define mb__scan_bwd_states16 MB__SCAN_PICK(mb__scan_bwd_states16)
#define mb__scan_gather16 MB__SCAN_PICK(mb__scan_gather16)
#define mb__scan_scatter16 MB__SCAN_PICK(mb__scan_scatter16)
/* ---- the conv (and, for streaming, one step of the conv and of the scan) ----
   Causal depthwise conv over time of x' (the first Di columns of xz, row
   stride 2Di), then SiLU.  out is (B,T,Di), w is (Di,K). */
MBDEF void mb__conv1d_forward(float *out, const float *xz, const float *w, const float *bias,
                              int B, int T, int Di, int K) {
    mb__conv1d_forward_from(out, xz, w, bias, NULL, B, T, Di, K);
}
/* One token of the conv for the channels of wT: u = SiLU(bias + w[0]x[0] + ...
   + w[K-1]x[K-1]) with x[k] = rows[k] (NULL: a tap before the sequence,
   skipped) and wT the taps transposed, (K, ld).  The batch forward and the
   stream step both call it, so their bits agree. */
MB__INLINE void mb__conv_row(float *MB__RESTRICT u, const float *const *rows, const float *MB__RESTRICT wT, int64_t ld,
                             const float *MB__RESTRICT bias, int n, int K) {
    int d, k;
    for (d = 0; d < n; d++) u[d] = bias[d];
    for (k = 0; k < K; k++) {
        const float *MB__RESTRICT wk = wT + (int64_t)k * ld, *MB__RESTRICT xk = rows[k];
        if (xk)
            for (d = 0; d < n; d++) u[d] += wk[d] * xk[d];
    }
    for (d = 0; d < n; d++) u[d] = u[d] * mb__sigmoid_v(u[d]);
}
MBDEF void mb__conv1d_forward_from(float *out, const float *xz, const float *w, const float *bias, const float *win,
                                   int B, int T, int Di, int K) {
    /* token rows in parallel, each a vector loop over channels; the taps
       transposed on the stack for a slab of channels at a time */
    enum { WT = 8192 };
    float wT[WT];
    int slab = WT / K < Di ? WT / K : Di, c0;
    for (c0 = 0; c0 < Di; c0 += slab) {
        int nc = Di - c0 < slab ? Di - c0 : slab, d, k;
        int64_t row;
        for (k = 0; k < K; k++)
            for (d = 0; d < nc; d++) wT[k * nc + d] = w[(int64_t)(c0 + d) * K + k];
        MB__OMP(parallel for schedule(static))
        for (row = 0; row < (int64_t)B * T; row++) {
            int64_t b = row / T, t = row % T, ts;
            const float *rows[64];
            int j;
            for (j = 0; j < K; j++) {
                ts = t - (K - 1) + j;
                rows[j] = ts >= 0 ? xz + (b * T + ts) * 2 * Di + c0 : win ? win + (b * K + K + ts) * Di + c0 : NULL;
            }
            mb__conv_row(out + row * Di + c0, rows, wT, nc, bias + c0, nc, K);
        }
    }
}

MBDEF void mb__conv1d_backward(float *dxz, float *dw, float *dbias, const float *dout, const float *xz,
                               const float *w, const float *bias, int B, int T, int Di, int K) {
    mb__conv1d_backward_from(dxz, dw, dbias, dout, xz, w, bias, NULL, B, T, Di, K);
}
MBDEF void mb__conv1d_backward_from(float *dxz, float *dw, float *dbias, const float *dout, const float *xz, const float *w,
                                    const float *bias, const float *win, int B, int T, int Di, int K) {
    /* each thread owns a block of 16 channels for all (b, t): deterministic;
       dw and dbias of the block are summed in registers in (b, t) order */
    const int DB = MB__SCAN_DB;
    int64_t d0;
    MB__OMP(parallel for schedule(static))
    for (d0 = 0; d0 < Di; d0 += DB) {
        int nd = (int)(Di - d0 < DB ? Di - d0 : DB), j, k, b, t;
        float wt[64][MB__SCAN_DB], gw[64][MB__SCAN_DB], bs[MB__SCAN_DB], gb[MB__SCAN_DB];
        float x[64][MB__SCAN_DB], gc[MB__SCAN_DB], pre[MB__SCAN_DB], dpre[MB__SCAN_DB];
        const float *xr[64];
        for (k = 0; k < K; k++)
            for (j = 0; j < DB; j++) {
                wt[k][j] = w[(d0 + (j < nd ? j : nd - 1)) * K + k];
                gw[k][j] = j < nd ? dw[(d0 + j) * K + k] : 0.0f;
            }
        mb__scan_load(bs, bias + d0, nd);
        for (j = 0; j < DB; j++) gb[j] = j < nd ? dbias[d0 + j] : 0.0f;
        for (b = 0; b < B; b++) {
            const float *xs = xz + (int64_t)b * T * 2 * Di + d0;
            float *dxs = dxz + (int64_t)b * T * 2 * Di + d0;
            for (t = 0; t < T; t++) {
                int k0 = t < K - 1 && !win ? K - 1 - t : 0; /* taps before the sequence start: skipped, or win's */
                /* the rows ahead, one line each and far apart: the hardware does not fetch them */
                MB__PREFETCH(xs + (int64_t)(t + 8) * 2 * Di);
                MB__PREFETCH_W(dxs + (int64_t)(t + 8) * 2 * Di);
                MB__PREFETCH(dout + ((int64_t)b * T + t + 8) * Di + d0);
                const float *g = mb__scan_row(gc, dout + ((int64_t)b * T + t) * Di + d0, nd);
                for (j = 0; j < DB; j++) pre[j] = bs[j];
                for (k = k0; k < K; k++) {
                    int64_t ts = t - (K - 1) + k;
                    xr[k] = mb__scan_row(x[k], ts >= 0 ? xs + ts * 2 * Di : win + ((int64_t)b * K + K + ts) * Di + d0, nd);
                    for (j = 0; j < DB; j++) pre[j] += wt[k][j] * xr[k][j];
                }
                for (j = 0; j < DB; j++) {
                    float sg = mb__sigmoid_v(pre[j]);
                    dpre[j] = g[j] * (sg * (1.0f + pre[j] * (1.0f - sg)));
                    gb[j] += dpre[j];
                }
                for (k = k0; k < K; k++) {
                    float *dx = dxs + (int64_t)(t - (K - 1) + k) * 2 * Di;
                    for (j = 0; j < DB; j++) gw[k][j] += dpre[j] * xr[k][j];
                    if (t - (K - 1) + k < 0) continue; /* win's: an input, no gradient */
                    if (nd == DB)
                        for (j = 0; j < DB; j++) dx[j] += dpre[j] * wt[k][j];
                    else
                        for (j = 0; j < nd; j++) dx[j] += dpre[j] * wt[k][j];
                }
            }
        }
        for (j = 0; j < nd; j++) {
            dbias[d0 + j] = gb[j];
            for (k = 0; k < K; k++) dw[(d0 + j) * K + k] = gw[k][j];
        }
    }
}

/* One time step of the conv and of the scan forward for all channels, for
   streaming: per element the same operations as mb__conv1d_forward and
   mb__scan_forward (with A = -mb__exp(A_log) as there), so a stream that
   uses them (and mb__matvec_packed) reproduces the batch forward bit for
   bit.  The states are laid out (K, Di) and (S, Di), and the weights they
   need transposed the same way, so that the channel loops are vector loops.
   win: the last K inputs x', oldest first; u (Di) receives SiLU(conv). */
static void mb__conv_step(float *MB__RESTRICT u, float *MB__RESTRICT win, const float *MB__RESTRICT x,
                                     const float *MB__RESTRICT wT, const float *MB__RESTRICT bias, int Di, int K) {
    const float *rows[64];
    int k;
    memmove(win, win + Di, sizeof(float) * (size_t)(K - 1) * (size_t)Di);
    memcpy(win + (int64_t)(K - 1) * Di, x, sizeof(float) * (size_t)Di);
    for (k = 0; k < K; k++) rows[k] = win + (int64_t)k * Di;
    mb__conv_row(u, rows, wT, Di, bias, Di, K);
}
/* dt (Di) holds delta on entry and dt = softplus(delta + dt_bias) on exit;
   h, AT are (S, Di); Bt, Ct (S); out (Di) receives (C.h + D u) * silu(z). */
static void mb__scan_step(float *MB__RESTRICT out, float *MB__RESTRICT h, float *MB__RESTRICT dt,
                                     const float *MB__RESTRICT AT, const float *MB__RESTRICT dt_bias,
                                     const float *MB__RESTRICT u, const float *MB__RESTRICT Bt, const float *MB__RESTRICT Ct,
                                     const float *MB__RESTRICT Dp, const float *MB__RESTRICT z, int Di, int S) {
    int d, n, j;
    int d16 = Di - Di % MB__SCAN_DB; /* whole blocks of 16 channels in place, as the batch forward does them */
    float a[MB__MAX_STATE * MB__SCAN_DB], bu[MB__MAX_STATE * MB__SCAN_DB];
    for (d = 0; d < Di; d++) dt[d] = mb__softplus_v(dt[d] + dt_bias[d]);
    for (d = 0; d < d16; d += MB__SCAN_DB) {
        mb__scan_decays16(a, bu, AT + d, Di, dt + d, u + d, Bt, S);
        mb__scan_recur16(h + d, Di, a, bu, Ct, S, out + d);
    }
    if (d16 < Di) { /* the last, partial block through the same core, its lanes padded as the batch forward pads them */
        int nd = Di - d16;
        float hp[MB__MAX_STATE * MB__SCAN_DB], Ap[MB__MAX_STATE * MB__SCAN_DB], dp[MB__SCAN_DB], up[MB__SCAN_DB], y[MB__SCAN_DB];
        mb__scan_load(dp, dt + d16, nd);
        mb__scan_load(up, u + d16, nd);
        for (n = 0; n < S; n++) {
            mb__scan_load(hp + n * MB__SCAN_DB, h + (int64_t)n * Di + d16, nd);
            mb__scan_load(Ap + n * MB__SCAN_DB, AT + (int64_t)n * Di + d16, nd);
        }
        mb__scan_decays16(a, bu, Ap, MB__SCAN_DB, dp, up, Bt, S);
        mb__scan_recur16(hp, MB__SCAN_DB, a, bu, Ct, S, y);
        for (j = 0; j < nd; j++) {
            out[d16 + j] = y[j];
            for (n = 0; n < S; n++) h[(int64_t)n * Di + d16 + j] = hp[n * MB__SCAN_DB + j];
        }
    }
    for (d = 0; d < Di; d++) out[d] = (out[d] + Dp[d] * u[d]) * (z[d] * mb__sigmoid_v(z[d]));
}

/* ---- the scan, reference: one (sequence, channel) at a time, in the order of
   the definition below.  Names: dt = softplus(delta + dt_bias), a = exp(dt*A)
   the decay, h the state (S per channel), y = C.h + D*u before the gate. */
MBDEF void mb__scan_forward_ref(float *out, const float *u, const float *delta, const float *dt_bias, const float *A_log,
                                const float *xdbl, const float *Dp, const float *xz, int B, int T, int Di, int S, int R) {
    int64_t X = R + 2 * S, b, t;
    int d, n;
    float h[MB__MAX_STATE];
    for (b = 0; b < B; b++)
        for (d = 0; d < Di; d++) {
            for (n = 0; n < S; n++) h[n] = 0.0f;
            for (t = 0; t < T; t++) {
                int64_t tok = b * T + t;
                const float *Bt = xdbl + tok * X + R, *Ct = Bt + S;
                float dt = mb__softplus_v(delta[tok * Di + d] + dt_bias[d]), ut = u[tok * Di + d], z = xz[tok * 2 * Di + Di + d];
                float y = 0.0f;
                for (n = 0; n < S; n++) {
                    float A = -mb__exp(A_log[(int64_t)d * S + n]);
                    h[n] = mb__exp(dt * A) * h[n] + dt * Bt[n] * ut;
                    y += Ct[n] * h[n];
                }
                out[tok * Di + d] = (y + Dp[d] * ut) * (z * mb__sigmoid_v(z));
            }
        }
}

MBDEF mb_status mb__scan_backward_ref(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                                      float *dxz, const float *dout, const float *u, const float *delta,
                                      const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                                      const float *xz, int B, int T, int Di, int S, int R) {
    int64_t X = R + 2 * S, b, t;
    int d, n;
    float *hs = (float *)MB_MALLOC(sizeof(float) * (size_t)(T + 1) * (size_t)S); /* h_{t-1} at row t, h_t at row t+1 */
    float dh[MB__MAX_STATE], A[MB__MAX_STATE];
    if (!hs) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "scan reference: %d x %d states", T + 1, S);
    for (b = 0; b < B; b++)
        for (d = 0; d < Di; d++) {
            for (n = 0; n < S; n++) {
                A[n] = -mb__exp(A_log[(int64_t)d * S + n]);
                hs[n] = 0.0f;
                dh[n] = 0.0f;
            }
            for (t = 0; t < T; t++) { /* the forward again, keeping every h */
                int64_t tok = b * T + t;
                float dt = mb__softplus_v(delta[tok * Di + d] + dt_bias[d]), ut = u[tok * Di + d];
                for (n = 0; n < S; n++)
                    hs[(t + 1) * S + n] = mb__exp(dt * A[n]) * hs[t * S + n] + dt * xdbl[tok * X + R + n] * ut;
            }
            for (t = T - 1; t >= 0; t--) { /* then backward through time, dh the adjoint of h_t */
                int64_t tok = b * T + t;
                const float *Bt = xdbl + tok * X + R, *Ct = Bt + S, *ht = hs + (t + 1) * S, *hprev = hs + t * S;
                float *dBt = dxdbl + tok * X + R, *dCt = dBt + S;
                float x = delta[tok * Di + d] + dt_bias[d], dt = mb__softplus_v(x), ut = u[tok * Di + d];
                float z = xz[tok * 2 * Di + Di + d], g = dout[tok * Di + d], y = Dp[d] * ut, dy, ddt = 0.0f, dut;
                float sz = mb__sigmoid_v(z);
                for (n = 0; n < S; n++) y += Ct[n] * ht[n];
                dy = g * (z * sz);                            /* d out / d y */
                dxz[tok * 2 * Di + Di + d] += g * (sz * (1.0f + z * (1.0f - sz))) * y; /* silu' */
                dD[d] += dy * ut;
                dut = dy * Dp[d];
                for (n = 0; n < S; n++) {
                    float a = mb__exp(dt * A[n]), dhn = dh[n] + dy * Ct[n];
                    dCt[n] += dy * ht[n];
                    ddt += dhn * (A[n] * a * hprev[n] + Bt[n] * ut);
                    dA_log[(int64_t)d * S + n] += dhn * dt * a * hprev[n] * A[n]; /* dA/dA_log = A */
                    dBt[n] += dhn * dt * ut;
                    dut += dhn * dt * Bt[n];
                    dh[n] = dhn * a; /* to h_{t-1} */
                }
                du[tok * Di + d] += dut;
                ddt *= mb__sigmoid_v(x); /* softplus' */
                ddelta[tok * Di + d] = ddt;
                ddt_bias[d] += ddt;
            }
        }
    MB_FREE(hs);
    return MB_STATUS_OK;
}

/* ---- the scan, fast path: 16 channels of one sequence side by side in the
   vector lanes (a task per (sequence, block of 16)), states kept only at
   chunk starts.
   The selective scan, fused with dt = softplus(delta + dt_bias), the D skip
   and the SiLU(z) gate:
       h_t = exp(dt_t*A) * h_{t-1} + dt_t * B_t * u_t      (A = -exp(A_log) < 0)
       out_t = (C_t . h_t + D*u_t) * silu(z_t)
   Only decays exp(dt*A) <= 1 are ever multiplied, so nothing overflows for
   any dt >= 0.  states (B, nchunks, Di, S) keeps h at each chunk start for
   the backward's recomputation: never a (B, T, Di, S) tensor. */
#define MB__SCAN_ROWS 256 /* (token, state) rows of a tile of tokens whose per-token values are kept */
MBDEF void mb__scan_forward(float *out, float *states, const float *u, const float *delta, const float *dt_bias,
                            const float *A_log, const float *xdbl, const float *Dp, const float *xz,
                            int B, int T, int Di, int S, int R, int chunk) {
    mb__scan_forward_from(out, states, NULL, u, delta, dt_bias, A_log, xdbl, Dp, xz, B, T, Di, S, R, chunk);
}
MBDEF void mb__scan_forward_from(float *out, float *states, float *h0, const float *u, const float *delta,
                                 const float *dt_bias, const float *A_log, const float *xdbl, const float *Dp,
                                 const float *xz, int B, int T, int Di, int S, int R, int chunk) {
    const int DB = MB__SCAN_DB, L = S < MB__SCAN_ROWS ? MB__SCAN_ROWS / S : 1; /* L tokens per tile */
    int64_t nchunks = (T + chunk - 1) / chunk, X = R + 2 * S, ndb = (Di + DB - 1) / DB, bj;
    /* each (sequence, block of 16 channels) is one task: h is (S, 16); a
       tile of L tokens at a time: their dt, decays and inputs (no dependence
       between tokens), then the recurrence, then the gate */
    MB__OMP(parallel for schedule(static))
    for (bj = 0; bj < (int64_t)B * ndb; bj++) {
        int64_t b = bj / ndb, d0 = (bj % ndb) * DB, t0, t;
        int nd = (int)(Di - d0 < DB ? Di - d0 : DB), n, j;
        float h[MB__MAX_STATE][MB__SCAN_DB], A[MB__MAX_STATE][MB__SCAN_DB];
        float a[MB__SCAN_ROWS > MB__MAX_STATE ? MB__SCAN_ROWS : MB__MAX_STATE][MB__SCAN_DB];
        float bu[MB__SCAN_ROWS > MB__MAX_STATE ? MB__SCAN_ROWS : MB__MAX_STATE][MB__SCAN_DB];
        float ut[MB__SCAN_ROWS][MB__SCAN_DB], y[MB__SCAN_ROWS][MB__SCAN_DB];
        float dt[MB__SCAN_DB], zt[MB__SCAN_DB], bias[MB__SCAN_DB], Dv[MB__SCAN_DB];
        mb__scan_load(bias, dt_bias + d0, nd);
        mb__scan_load(Dv, Dp + d0, nd);
        for (n = 0; n < S; n++)
            for (j = 0; j < DB; j++) {
                h[n][j] = h0 ? h0[(b * S + n) * Di + d0 + (j < nd ? j : nd - 1)] : 0.0f;
                A[n][j] = -mb__exp(A_log[(d0 + (j < nd ? j : nd - 1)) * S + n]);
            }
        for (t0 = 0; t0 < T; t0 += L) {
            int len = (int)(T - t0 < L ? T - t0 : L), k;
            for (k = 0; k < len; k++) {
                int64_t tok = b * T + t0 + k;
                const float *ds = mb__scan_row(dt, delta + tok * Di + d0, nd), *us = mb__scan_row(ut[k], u + tok * Di + d0, nd);
                for (j = 0; j < DB; j++) dt[j] = mb__softplus_v(ds[j] + bias[j]);
                mb__scan_decays16(a[k * S], bu[k * S], A[0], MB__SCAN_DB, dt, us, xdbl + tok * X + R, S);
            }
            for (k = 0; k < len; k++) {
                t = t0 + k;
                if (states && t % chunk == 0) { /* h at the chunk start, (Di, S) layout */
                    float *st = states + ((b * nchunks + t / chunk) * Di + d0) * S;
                    for (j = 0; j < nd; j++)
                        for (n = 0; n < S; n++) st[(int64_t)j * S + n] = h[n][j];
                }
                mb__scan_recur16(h[0], MB__SCAN_DB, a[k * S], bu[k * S], xdbl + (b * T + t) * X + R + S, S, y[k]);
            }
            for (k = 0; k < len; k++) {
                int64_t tok = b * T + t0 + k;
                const float *zs = mb__scan_row(zt, xz + tok * 2 * Di + Di + d0, nd), *us = nd == DB ? u + tok * Di + d0 : ut[k];
                float *os = out + tok * Di + d0;
                for (j = 0; j < DB; j++) y[k][j] = (y[k][j] + Dv[j] * us[j]) * (zs[j] * mb__sigmoid_v(zs[j]));
                if (nd == DB) /* whole blocks: a fixed-length copy */
                    for (j = 0; j < DB; j++) os[j] = y[k][j];
                else
                    for (j = 0; j < nd; j++) os[j] = y[k][j];
            }
        }
        if (h0) /* the state after the last step, for the caller to continue from */
            for (n = 0; n < S; n++)
                for (j = 0; j < nd; j++) h0[(b * S + n) * Di + d0 + j] = h[n][j];
    }
}

/* The scan backward's operands (as CUDA's scan_ctx), shared by its pieces. */
typedef struct {
    float *du, *ddelta, *dxdbl, *dxz, *scratch;
    const float *dout, *states, *u, *delta, *dt_bias, *A_log, *xdbl, *Dp, *xz;
    int T, Di, S, R, X, chunk, nch;
    int L, park, keep; /* steps of a tile; dh parked in ddelta; tile starts kept: every keep-th of a chunk (0: none) */
} mb__scan_ctx;

/* One thread's rows of 16 lanes: a tile's (step, state) rows, its dt, and
   one block's state rows.  The tile arrays are 4 rows longer: 256 bytes
   apart modulo 4 KB, the loads of one do not wait on stores to another
   (measured: 3-5 % of the backward). */
#define MB__SCAN_FAST 512 /* (step, state) rows of a tile: tiles of chunk steps, or MB__SCAN_FAST / S of a longer chunk */
#define MB__SCAN_ROWS_PAD (MB__SCAN_FAST + 4)
typedef struct {
    float h[MB__SCAN_ROWS_PAD][MB__SCAN_DB], a[MB__SCAN_ROWS_PAD][MB__SCAN_DB], dt[MB__SCAN_ROWS_PAD][MB__SCAN_DB];
    float pB[MB__SCAN_ROWS_PAD][MB__SCAN_DB], pC[MB__SCAN_ROWS_PAD][MB__SCAN_DB];
    float st[4 * MB__MAX_STATE][MB__SCAN_DB]; /* dh, A, h0, the A_log sums: S rows each, side by side */
} mb__scan_bwd_buf;

/* One step of the backward's recompute for the 16 channels from d0: dt =
   softplus(delta + dt_bias), and h, a from hp (mb__scan_recompute16). */
MB__INLINE void mb__scan_bwd_recompute(const mb__scan_ctx *k, int64_t tok, int64_t d0, int nd, const float *bias, float *dt,
                                       float *ht, float *at, const float *hp, const float *A) {
    float dc[MB__SCAN_DB], uc[MB__SCAN_DB];
    const float *ds = mb__scan_row(dc, k->delta + tok * k->Di + d0, nd), *ut = mb__scan_row(uc, k->u + tok * k->Di + d0, nd);
    int j;
    for (j = 0; j < MB__SCAN_DB; j++) dt[j] = mb__softplus_v(ds[j] + bias[j]);
    mb__scan_recompute16(ht, at, hp, A, dt, ut, k->xdbl + tok * k->X + k->R, k->S);
}

/* One tile of the backward, steps t0..t0+len-1 of sequence b, for the 16
   channels from d0: h recomputed inside the tile from its chunk's saved
   start (stepped on through the chunk's earlier steps when the tile starts
   later), then the reverse sweep.  dB, dC collect in lane partials w->pB,
   w->pC (summed by the caller); the per-channel parameter sums go on in
   (tile, step) order.  dh: the adjoint of h after the tile on entry, before
   it on exit; with park it waits between tiles in the S rows of ddelta
   before the tile (written only later), else it stays in w.  Without
   park, a chunk's last tile keeps the starts of every keep-th earlier
   tile of the chunk (in the dt rows past its own) for them to step on from. */
static void mb__scan_bwd_tile(const mb__scan_ctx *k, mb__scan_bwd_buf *w, int64_t b, int64_t t0, int len, int64_t d0) {
    const int DB = MB__SCAN_DB, S = k->S, Di = k->Di, nd = (int)(Di - d0 < DB ? Di - d0 : DB), park = k->park;
    const int64_t T = k->T, X = k->X, c = t0 / k->chunk, tc = c * k->chunk, t1 = t0 + len, span = (int64_t)k->keep * k->L;
    const int last = t1 == (tc + k->chunk < T ? tc + k->chunk : T); /* the chunk's last tile, its first done */
    const int64_t ts = span && !last ? tc + (t0 - tc) / span * span : tc; /* h known at ts */
    const int cont = !park && t1 < T; /* after this block's previous tile: A, dh and the A_log sums are in w */
    float (*ck)[MB__SCAN_DB] = w->dt + k->L;
    float *gA = k->scratch + b * ((int64_t)Di * S + 2 * Di), *gD = gA + (int64_t)Di * S, *gbias = gD + Di;
    float (*dh)[MB__SCAN_DB] = w->st, (*A)[MB__SCAN_DB] = dh + S, (*h0)[MB__SCAN_DB] = A + S, (*gAb)[MB__SCAN_DB] = h0 + S;
    float bias[MB__SCAN_DB], Dv[MB__SCAN_DB], gDb[MB__SCAN_DB], gbb[MB__SCAN_DB];
    int64_t t;
    int i, n, j;
    mb__scan_load(bias, k->dt_bias + d0, nd);
    mb__scan_load(Dv, k->Dp + d0, nd);
    if (!cont) mb__scan_gather16(A[0], k->A_log + d0 * S, S, nd, 1); /* A = -exp(A_log) */
    if (!cont) mb__scan_gather16(gAb[0], gA + d0 * S, S, nd, 0);
    if (ts > tc) memcpy(h0, ck[(ts - tc) / span * S - S], sizeof(float) * (size_t)(S * DB));
    else mb__scan_gather16(h0[0], k->states + ((b * k->nch + c) * Di + d0) * S, S, nd, 0);
    if (t1 == T || park)
        for (n = 0; n < S; n++)
            for (j = 0; j < DB; j++) dh[n][j] = t1 == T || j >= nd ? 0.0f : k->ddelta[(b * T + t1 - S + n) * Di + d0 + j];
    for (j = 0; j < DB; j++) {
        gDb[j] = gD[d0 + (j < nd ? j : nd - 1)];
        gbb[j] = gbias[d0 + (j < nd ? j : nd - 1)];
    }
    for (t = ts; t < t0; t++) { /* before the tile: its start moves on (kept on the way by a chunk's last tile) */
        if (span && last && t > tc && (t - tc) % span == 0)
            memcpy(ck[(t - tc) / span * S - S], h0, sizeof(float) * (size_t)(S * DB));
        mb__scan_bwd_recompute(k, b * T + t, d0, nd, bias, w->dt[0], w->h[0], w->a[0], h0[0], A[0]);
        memcpy(h0, w->h, sizeof(float) * (size_t)(S * DB));
    }
    for (i = 0; i < len; i++) /* h (and the decays) inside the tile; dt kept for the sweep */
        mb__scan_bwd_recompute(k, b * T + t0 + i, d0, nd, bias, w->dt[i], w->h[i * S], w->a[i * S],
                               i > 0 ? w->h[(i - 1) * S] : h0[0], A[0]);
    for (i = len - 1; i >= 0; i--) {
        int64_t tok = b * T + t0 + i;
        const float *Bt = k->xdbl + tok * X + k->R, *Ct = Bt + S;
        float sg[MB__SCAN_DB], dc[MB__SCAN_DB], uc[MB__SCAN_DB], zc[MB__SCAN_DB], gc[MB__SCAN_DB], gs[MB__SCAN_DB];
        float dy[MB__SCAN_DB], y[MB__SCAN_DB], ddt[MB__SCAN_DB], dut[MB__SCAN_DB];
        float *dxzt = k->dxz + tok * 2 * Di + Di + d0, *dut_o = k->du + tok * Di + d0, *ddt_o = k->ddelta + tok * Di + d0;
        const float *dt = w->dt[i], *ds = mb__scan_row(dc, k->delta + tok * Di + d0, nd);
        const float *ut = mb__scan_row(uc, k->u + tok * Di + d0, nd), *zt = mb__scan_row(zc, k->xz + tok * 2 * Di + Di + d0, nd);
        const float *g = mb__scan_row(gc, k->dout + tok * Di + d0, nd);
        for (j = nd; j < DB; j++) gc[j] = 0.0f; /* lanes past Di add nothing to dB, dC */
        for (j = 0; j < DB; j++) {
            float x = ds[j] + bias[j], sz = mb__sigmoid_v(zt[j]);
            sg[j] = mb__sigmoid_v(x); /* softplus'(x) */
            dy[j] = g[j] * (zt[j] * sz);
            gs[j] = g[j] * (sz * (1.0f + zt[j] * (1.0f - sz))); /* g * silu'(z) */
            y[j] = Dv[j] * ut[j];
            ddt[j] = 0.0f;
            dut[j] = dy[j] * Dv[j];
        }
        mb__scan_bwd_states16(y, ddt, dut, w->pB[i * S], w->pC[i * S], gAb[0], dh[0], w->a[i * S], w->h[i * S],
                              i > 0 ? w->h[(i - 1) * S] : h0[0], A[0], Bt, Ct, dy, dt, ut, S);
        for (j = 0; j < DB; j++) {
            gDb[j] += dy[j] * ut[j];
            ddt[j] *= sg[j];
            gbb[j] += ddt[j];
            y[j] *= gs[j];
        }
        if (nd == DB) {
            for (j = 0; j < DB; j++) { dxzt[j] += y[j]; dut_o[j] += dut[j]; ddt_o[j] = ddt[j]; }
        } else {
            for (j = 0; j < nd; j++) { dxzt[j] += y[j]; dut_o[j] += dut[j]; ddt_o[j] = ddt[j]; }
        }
    }
    for (j = 0; j < nd; j++) {
        gD[d0 + j] = gDb[j];
        gbias[d0 + j] = gbb[j];
    }
    if (park || t0 == 0) mb__scan_scatter16(gA + d0 * S, gAb[0], S, nd);
    if (park && t0 > 0)
        for (n = 0; n < S; n++)
            for (j = 0; j < nd; j++) k->ddelta[(b * T + t0 - S + n) * Di + d0 + j] = dh[n][j];
}

/* The backward of one sequence: tiles from the last, and in each tile every
   block of 16 channels, so that the sums over channels (dB, dC) collect in
   the tile's lane partials and only those are summed across lanes.  That
   order needs dh parked in ddelta, so every tile but the first must start
   S or more steps in; otherwise (a tile shorter than S) each block runs
   through all the tiles in turn, its dh kept, and its own lane sums go to
   dB, dC (another order of the sum over channels). */
static void mb__scan_bwd_seq(const mb__scan_ctx *k, int64_t b) {
    const int DB = MB__SCAN_DB, S = k->S, L = k->L;
    const int64_t ndb = (k->Di + DB - 1) / DB, T = k->T, nb = k->park ? ndb : 1; /* blocks per pass over the tiles */
    mb__scan_bwd_buf w;
    int64_t g, t0, t1, blk, c;
    int i, n;
    for (g = 0; g < ndb; g += nb)
        for (t1 = T; t1 > 0; t1 = t0) {
            int len;
            c = (t1 - 1) / k->chunk;
            t0 = c * k->chunk + (t1 - 1 - c * k->chunk) / L * L;
            len = (int)(t1 - t0);
            memset(w.pB, 0, sizeof(float) * (size_t)(len * S * DB));
            memset(w.pC, 0, sizeof(float) * (size_t)(len * S * DB));
            for (blk = g; blk < g + nb; blk++) mb__scan_bwd_tile(k, &w, b, t0, len, blk * DB);
            for (i = 0; i < len; i++) { /* the tile's dB and dC: the lane partials, summed */
                float *dBt = k->dxdbl + (b * T + t0 + i) * k->X + k->R;
                for (n = 0; n < S; n++) {
                    dBt[n] += mb__tree_sum16(w.pB[i * S + n]);
                    dBt[S + n] += mb__tree_sum16(w.pC[i * S + n]);
                }
            }
        }
}

MBDEF void mb__scan_backward(float *du, float *ddelta, float *ddt_bias, float *dA_log, float *dxdbl, float *dD,
                             float *dxz, float *scratch, const float *dout, const float *states, const float *u,
                             const float *delta, const float *dt_bias, const float *A_log, const float *xdbl,
                             const float *Dp, const float *xz, int B, int T, int Di, int S, int R, int chunk) {
    const int L = chunk * S <= MB__SCAN_FAST ? chunk : MB__SCAN_FAST / S, park = T <= L || L >= S;
    const int more = (chunk + L - 1) / L - 1, slots = (MB__SCAN_FAST - L) / S; /* earlier tiles of a chunk; starts that fit */
    const mb__scan_ctx k = {du, ddelta, dxdbl, dxz, scratch, dout, states, u, delta, dt_bias, A_log, xdbl, Dp, xz,
                            T, Di, S, R, R + 2 * S, chunk, (T + chunk - 1) / chunk,
                            L, park, park || !more || !slots ? 0 : (more + slots - 1) / slots};
    int64_t b, per_b = (int64_t)Di * S + 2 * Di;
    /* parallel over sequences; within one, channels in order, so dB and dC
       (summed over channels) are owned by one thread; the parameter sums go
       to per-sequence scratch and are added in sequence order below */
    MB__OMP(parallel for schedule(static))
    for (b = 0; b < B; b++) {
        memset(scratch + b * per_b, 0, (size_t)per_b * sizeof(float));
        mb__scan_bwd_seq(&k, b);
    }
    for (b = 0; b < B; b++) {
        const float *gA = scratch + b * per_b, *gD = gA + (int64_t)Di * S, *gbias = gD + Di;
        int64_t i;
        for (i = 0; i < (int64_t)Di * S; i++) dA_log[i] += gA[i];
        for (i = 0; i < Di; i++) { dD[i] += gD[i]; ddt_bias[i] += gbias[i]; }
    }
}

/* ================================================================ model */
struct mb_model {
    mb_config cfg;
    int ntensors;
    mb_tensor_info *tensors;
    int64_t num_params;
    float *params, *grads;
    mb_weights w, g;
    int scan_chunk;
    float *carry; /* mb_model_set_carry's (borrowed), or NULL */
    /* activations and backward scratch, sized for act_tokens tokens */
    int B, T;
    int64_t act_tokens, act_floats; /* capacity of inputs/targets and of act_block */
    int64_t act_used;               /* floats the current (B,T) carved from act_block */
    float *act_block;
    mb_layer_acts *acts, dacts;     /* n_layer (what backward needs), and the gradients' (no states) */
    mb_model_acts ma;               /* MB_MODEL_ACTS's, the CPU's */
    uint8_t *inputs;
    int32_t *targets;
    int have_targets;
    /* mb_model_set_precision: the products' precision and kernel, and for
       bf16 the matrices packed once per forward (mb__bf16_pack_weight; at
       bf16_off[tensor index], MB_MALLOC on first use) */
    int precision, bf16_path;
    uint32_t *bf16_w;
    int64_t *bf16_off;
};

/* base + the tensor's offset, NULL when the config has no such tensor (or
   its offset is -1: a stream's matrices, held only packed). */
static float *mb__tensor_ptr(float *base, const mb_config *c, const mb_tensor_info *t, int layer, int field) {
    int i = mb_tensor_index(c, layer, field);
    return i < 0 || t[i].offset < 0 ? NULL : base + t[i].offset;
}

MBDEF void mb_weights_point(mb_weights *w, float *base, const mb_config *c, const mb_tensor_info *t) {
    int l;
#define MB__PG(ID, field, name, ndim, d0, d1, d2, decay) w->field = mb__tensor_ptr(base, c, t, -1, MB_TENSOR_##ID);
#define MB__PL(ID, field, name, ndim, d0, d1, d2, decay) L->field = mb__tensor_ptr(base, c, t, l, MB_TENSOR_##ID);
    MB_TENSORS_BEFORE_LAYERS(MB__PG)
    MB_TENSORS_AFTER_LAYERS(MB__PG)
    for (l = 0; l < c->n_layer; l++) {
        mb_layer_weights *L = &w->layer[l];
        MB_LAYER_TENSORS(MB__PL)
    }
#undef MB__PG
#undef MB__PL
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
    m->w.layer = (mb_layer_weights *)MB_MALLOC(sizeof(mb_layer_weights) * (size_t)cfg.n_layer);
    m->g.layer = (mb_layer_weights *)MB_MALLOC(sizeof(mb_layer_weights) * (size_t)cfg.n_layer);
    if (!m->tensors || !m->w.layer || !m->g.layer) { mb_model_free(m); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "model tables"); }
    mb_config_tensors(&cfg, m->tensors);
    m->num_params = m->tensors[m->ntensors - 1].offset + m->tensors[m->ntensors - 1].numel;
    m->params = (float *)MB_MALLOC((size_t)m->num_params * sizeof(float));
    /* zeroed without being touched where MB_CALLOC is calloc: a model that is
       only loaded and streamed never makes its gradients resident (the
       memory of a large model stays about its own size, not twice) */
#ifdef MB_CALLOC
    m->grads = (float *)MB_CALLOC((size_t)m->num_params * sizeof(float));
#else
    m->grads = (float *)MB_MALLOC((size_t)m->num_params * sizeof(float));
    if (m->grads) memset(m->grads, 0, (size_t)m->num_params * sizeof(float));
#endif
    if (!m->params || !m->grads) { mb_model_free(m); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "%lld parameters", (long long)m->num_params); }
    memset(m->params, 0, (size_t)m->num_params * sizeof(float));
    mb_weights_point(&m->w, m->params, &cfg, m->tensors);
    mb_weights_point(&m->g, m->grads, &cfg, m->tensors);
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
        mb_layer_weights *L = &m->w.layer[l];
        for (i = 0; i < C; i++) L->norm_w[i] = 1.0f;
        if (L->norm_b) memset(L->norm_b, 0, (size_t)C * sizeof(float));
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
    for (i = 0; i < C; i++) m->w.norm_f_w[i] = 1.0f;
    if (m->w.norm_f_b) memset(m->w.norm_f_b, 0, (size_t)C * sizeof(float));
    /* drawn last, so a tied model's init does not depend on the head kind */
    if (m->w.lm_head)
        for (i = 0; i < c->vocab_size * C; i++) m->w.lm_head[i] = (float)(0.02 * mb__rng_normal(&rng));
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
    m->act_tokens = m->act_floats = 0;
}

MBDEF void mb_model_free(mb_model *m) {
    if (!m) return;
    mb__free_acts(m);
    MB_FREE(m->bf16_w);
    MB_FREE(m->bf16_off);
    MB_FREE(m->tensors);
    MB_FREE(m->w.layer);
    MB_FREE(m->g.layer);
    MB_FREE(m->params);
    MB_FREE(m->grads);
    MB_FREE(m);
}

MBDEF const mb_config *mb_model_config(const mb_model *m) { return &m->cfg; }
MBDEF int64_t mb_model_num_params(const mb_model *m) { return m->num_params; }
MBDEF uint64_t mb_model_hash(const mb_model *m) {
    uint64_t hash = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)m->params;
    size_t k, nb = (size_t)m->num_params * sizeof(float);
    for (k = 0; k < nb; k++) hash = (hash ^ p[k]) * 1099511628211ull;
    return hash;
}
MBDEF float *mb_model_params(mb_model *m) { return m->params; }
MBDEF float *mb_model_grads(mb_model *m) { return m->grads; }
MBDEF const float *mb_model_logits(const mb_model *m) { return m->ma.logits; }
MBDEF void mb_model_zero_grad(mb_model *m) { memset(m->grads, 0, (size_t)m->num_params * sizeof(float)); }
MBDEF void mb_model_set_carry(mb_model *m, float *state) { m->carry = state; }
MBDEF int64_t mb_carry_floats(const mb_config *c, int64_t B) {
    return B * c->n_layer * (c->d_state + c->d_conv) * (int64_t)c->d_model * c->expand;
}

MBDEF mb_status mb_model_set_scan_chunk(mb_model *m, int chunk) {
    if (chunk < 1 || (int64_t)chunk * m->cfg.d_state > MB__SCAN_HBUF)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "scan chunk %d: need 1 <= chunk and chunk*d_state <= %d", chunk, MB__SCAN_HBUF);
    m->scan_chunk = chunk;
    m->have_targets = 0; /* saved states used the old chunking: forward again before backward */
    return MB_STATUS_OK;
}

/* bf16 products are on: requested, and a kernel this CPU runs. */
static int mb__bf_on(const mb_model *m) { return m->precision == MB_PRECISION_BF16 && m->bf16_path != MB__BF16_NONE; }

MBDEF mb_status mb_model_set_precision(mb_model *m, int precision) {
    int paths = mb__bf16_paths();
    if (precision == MB_PRECISION_TF32)
        return mb__fail(MB_STATUS_UNSUPPORTED, "precision tf32 is the CUDA trainer's only: the CPU products are fp32 or bf16");
    if (precision != MB_PRECISION_FP32 && precision != MB_PRECISION_BF16)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "precision %d: 0 fp32, 1 bf16 (2 tf32: CUDA only)", precision);
    m->precision = precision;
    m->bf16_path = precision != MB_PRECISION_BF16 ? MB__BF16_NONE
                   : paths >> MB__BF16_AMX & 1     ? MB__BF16_AMX
                   : paths >> MB__BF16_AVX512 & 1  ? MB__BF16_AVX512
                                                   : MB__BF16_NONE;
    m->have_targets = 0; /* the saved activations came from the other products: forward again before backward */
    return MB_STATUS_OK;
}

MBDEF int mb_model_precision(const mb_model *m) { return mb__bf_on(m) ? MB_PRECISION_BF16 : MB_PRECISION_FP32; }

MBDEF const char *mb_model_precision_describe(const mb_model *m) {
    if (m->precision != MB_PRECISION_BF16) return "float32 products";
    if (m->bf16_path == MB__BF16_AMX) return "bf16 products: AMX tiles (tdpbf16ps)";
    if (m->bf16_path == MB__BF16_AVX512) return "bf16 products: AVX512-BF16 (vdpbf16ps)";
    return "bf16 requested but this CPU has no AVX512-BF16 or AMX: float32 products";
}

/* One allocation for every activation of a (B,T) batch (llm.c's pattern):
   n_layer times MB_LAYER_ACTS, the gradients' (no states), then the
   model's MB_MODEL_ACTS.  The same expansions measure the block and carve
   it, so the two cannot disagree.  Returns the floats they take; with base
   NULL it only measures (m->acts is not touched). */
static int64_t mb__layout_acts(mb_model *m, float *base, int B, int T) {
    const mb_config *c = &m->cfg;
    int64_t off = 0;
    int l;
    for (l = 0; l <= c->n_layer; l++)
        off += mb_layer_acts_place(!base ? NULL : l < c->n_layer ? &m->acts[l] : &m->dacts, base ? base + off : NULL, c, B, T,
                                   l < c->n_layer ? m->scan_chunk : 0, 0);
    return off + mb_model_acts_place(&m->ma, base ? base + off : NULL, c, B, T, 1);
}

static mb_status mb__ensure_acts(mb_model *m, int B, int T) {
    const mb_config *c = &m->cfg;
    const int64_t N = (int64_t)B * T, total = mb__layout_acts(m, NULL, B, T);
    int64_t used;
    m->B = B;
    m->T = T;
    if (!m->acts || N > m->act_tokens || total > m->act_floats) {
        mb__free_acts(m);
        m->act_block = (float *)MB_MALLOC((size_t)total * sizeof(float));
        m->acts = (mb_layer_acts *)MB_MALLOC(sizeof(mb_layer_acts) * (size_t)c->n_layer);
        m->inputs = (uint8_t *)MB_MALLOC((size_t)N);
        m->targets = (int32_t *)MB_MALLOC((size_t)N * sizeof(int32_t));
        if (!m->act_block || !m->acts || !m->inputs || !m->targets) {
            mb__free_acts(m);
            return mb__fail(MB_STATUS_OUT_OF_MEMORY, "activations for B=%d T=%d (%.1f MB)", B, T, (double)total * 4 / 1e6);
        }
        m->act_tokens = N;
        m->act_floats = total;
    }
    used = mb__layout_acts(m, m->act_block, B, T);
    MB_ASSERT(used == total && used <= m->act_floats);
    m->act_used = used;
    return MB_STATUS_OK;
}

/* x (N,C) += y (N,C) */
static void mb__residual_add(float *x, const float *y, int64_t n) {
    int64_t i;
    MB__OMP(parallel for schedule(static) if (n > MB__OMP_MIN_WORK))
    for (i = 0; i < n; i++) x[i] += y[i];
}

/* The model's matrix products: layer j / 4's MB_LAYER_MATRICES, then the
   head (j = 4 n_layer: l -1).  Matrix j's layer and field, its shape and
   (returned) its tensor index. */
#define MB__MAT(ID) MB_TENSOR_##ID,
static const int mb__layer_matrices[] = {MB_LAYER_MATRICES(MB__MAT)};
#undef MB__MAT
enum { MB__NUM_LAYER_MATRICES = sizeof mb__layer_matrices / sizeof mb__layer_matrices[0] };
static int mb__matrix_at(const mb_config *c, int j, int *l, int *field, int *IC, int *OC) {
    *l = j / MB__NUM_LAYER_MATRICES < c->n_layer ? j / MB__NUM_LAYER_MATRICES : -1;
    *field = *l < 0 ? MB_TENSOR_LM_HEAD : mb__layer_matrices[j % MB__NUM_LAYER_MATRICES];
    return mb_tensor_matrix(c, *l, *field, IC, OC);
}

/* Packs every matrix for this forward's bf16 products (the weights change
   at every optimizer step; the backward reuses the forward's packing),
   each at bf16_off[its tensor index]. */
static mb_status mb__bf_pack_model(mb_model *m) {
    const int n = MB__NUM_LAYER_MATRICES * m->cfg.n_layer + 1, nt = m->ntensors;
    int j, i, l, f, IC, OC;
    if (!m->bf16_off) {
        int64_t total = 0;
        if (!(m->bf16_off = (int64_t *)MB_MALLOC(sizeof(int64_t) * (size_t)(nt + 1))))
            return mb__fail(MB_STATUS_OUT_OF_MEMORY, "bf16 weights");
        for (j = 0; j < n; j++) {
            i = mb__matrix_at(&m->cfg, j, &l, &f, &IC, &OC);
            m->bf16_off[i] = total;
            total += mb__bf16_packed_size(IC, OC);
        }
        m->bf16_off[nt] = total;
    }
    if (!m->bf16_w && !(m->bf16_w = (uint32_t *)MB_MALLOC(sizeof(uint32_t) * (size_t)m->bf16_off[nt])))
        return mb__fail(MB_STATUS_OUT_OF_MEMORY, "bf16 weights (%.1f MB)", (double)m->bf16_off[nt] * 4 / 1e6);
    for (j = 0; j < n; j++) {
        i = mb__matrix_at(&m->cfg, j, &l, &f, &IC, &OC);
        mb__bf16_pack_weight(m->bf16_w + m->bf16_off[i], m->params + m->tensors[i].offset, IC, OC);
    }
    return MB_STATUS_OK;
}

/* Layer l's matrix `field` (l = -1, MB_TENSOR_LM_HEAD: the head) applied
   forward: out = inp @ w^T, in float32 unless the model's bf16 products are on. */
static void mb__linear_forward(const mb_model *m, int l, int field, float *out, const float *inp, int64_t ldi, int64_t N) {
    int IC, OC, i = mb_tensor_matrix(&m->cfg, l, field, &IC, &OC);
    const float *w = m->params + m->tensors[i].offset;
    if (mb__bf_on(m)) mb__matmul_forward_bf16(m->bf16_path, out, inp, ldi, w, m->bf16_w + m->bf16_off[i], N, IC, OC);
    else mb__matmul_forward(out, inp, ldi, w, N, IC, OC);
}
/* ... and backward: dinp += dout @ w, dw += dout^T @ inp. */
static void mb__linear_backward(const mb_model *m, int l, int field, float *dinp, const float *dout, const float *inp,
                                int64_t ldi, int64_t N) {
    int IC, OC, i = mb_tensor_matrix(&m->cfg, l, field, &IC, &OC);
    const float *w = m->params + m->tensors[i].offset;
    float *dw = m->grads + m->tensors[i].offset;
    if (mb__bf_on(m)) mb__matmul_backward_bf16(m->bf16_path, dinp, dw, dout, inp, ldi, w, m->bf16_w + m->bf16_off[i], N, IC, OC);
    else mb__matmul_backward(dinp, dw, dout, inp, ldi, w, N, IC, OC);
}

/* One Mamba mixer: ln (N,C) -> out (N,C). */
static void mb__mixer_forward(mb_model *m, int l, float *out) {
    const mb_config *c = &m->cfg;
    const mb_layer_weights *W = &m->w.layer[l];
    mb_layer_acts *a = &m->acts[l];
    int B = m->B, T = m->T, C = c->d_model, Di = C * c->expand, S = c->d_state, R = c->dt_rank, X = R + 2 * S;
    int64_t N = (int64_t)B * T, K = c->d_conv, b, k;
    /* a carried state: h in place (the scan leaves the new one; states keeps the old), the window via conv_in */
    float *h = m->carry ? m->carry + (int64_t)l * B * (S + K) * Di : NULL, *win = h ? h + (int64_t)B * S * Di : NULL;
    mb__linear_forward(m, l, MB_TENSOR_IN_PROJ, a->xz, a->ln, C, N);   /* (N,C) -> (N,2Di) */
    if (win) memcpy(a->conv_in, win, sizeof(float) * (size_t)(B * K * Di));
    mb__conv1d_forward_from(a->u, a->xz, W->conv_w, W->conv_b, win ? a->conv_in : NULL, B, T, Di, (int)K);
    for (b = 0; win && b < B; b++) /* the new window: the last K of (window, x'_0 .. x'_{T-1}) */
        for (k = 0; k < K; k++) {
            int64_t ts = T - K + k;
            memcpy(win + (b * K + k) * Di, ts >= 0 ? a->xz + (b * T + ts) * 2 * Di : a->conv_in + (b * K + K + ts) * Di,
                   sizeof(float) * (size_t)Di);
        }
    mb__linear_forward(m, l, MB_TENSOR_X_PROJ, a->xdbl, a->u, Di, N);  /* (N,Di) -> (N,X) */
    mb__linear_forward(m, l, MB_TENSOR_DT_W, a->delta, a->xdbl, X, N); /* (N,R of X) -> (N,Di) */
    mb__scan_forward_from(a->gated, a->states, h, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                          B, T, Di, S, R, m->scan_chunk);
    mb__linear_forward(m, l, MB_TENSOR_OUT_PROJ, out, a->gated, Di, N); /* (N,Di) -> (N,C) */
}

MBDEF mb_status mb_model_forward(mb_model *m, const uint8_t *inputs, const int32_t *targets, int B, int T, float *loss) {
    const mb_config *c = &m->cfg;
    int64_t N = (int64_t)B * T, C = c->d_model;
    mb_status s;
    int l;
    if (B < 1 || T < 1) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "forward: B=%d T=%d must be >= 1", B, T);
    s = mb__ensure_acts(m, B, T);
    if (s == MB_STATUS_OK && mb__bf_on(m)) s = mb__bf_pack_model(m);
    if (s != MB_STATUS_OK) return s;
    memcpy(m->inputs, inputs, (size_t)N);
    m->have_targets = targets != NULL;
    if (targets) memcpy(m->targets, targets, (size_t)N * sizeof(int32_t));
    mb__embedding_forward(m->acts[0].resid, inputs, m->w.wte, N, (int)C);
    for (l = 0; l < c->n_layer; l++) {
        mb_layer_acts *a = &m->acts[l];
        float *next = l + 1 < c->n_layer ? m->acts[l + 1].resid : m->ma.resid_out;
        mb__norm_forward(c, a->ln, a->ln_mean, a->ln_rstd, a->resid, m->w.layer[l].norm_w, m->w.layer[l].norm_b, N, (int)C);
        mb__mixer_forward(m, l, m->ma.mix_out);
        memcpy(next, a->resid, (size_t)(N * C) * sizeof(float));
        mb__residual_add(next, m->ma.mix_out, N * C);
    }
    mb__norm_forward(c, m->ma.lnf, m->ma.lnf_mean, m->ma.lnf_rstd, m->ma.resid_out, m->w.norm_f_w, m->w.norm_f_b, N, (int)C);
    mb__linear_forward(m, -1, MB_TENSOR_LM_HEAD, m->ma.logits, m->ma.lnf, C, N); /* (N,C) -> (N,V) */
    if (targets) {
        float l_val;
        s = mb_cross_entropy_forward(&l_val, m->ma.logits, targets, N, c->vocab_size, NULL);
        if (s != MB_STATUS_OK) { m->have_targets = 0; return s; }
        if (loss) *loss = l_val;
    } else if (loss) {
        *loss = NAN;
    }
    return MB_STATUS_OK;
}

static void mb__mixer_backward(mb_model *m, int l, const float *dout, float *dln) {
    const mb_config *c = &m->cfg;
    const mb_layer_weights *W = &m->w.layer[l];
    mb_layer_weights *G = &m->g.layer[l];
    mb_layer_acts *a = &m->acts[l];
    int B = m->B, T = m->T, C = c->d_model, Di = C * c->expand, S = c->d_state, R = c->dt_rank, X = R + 2 * S;
    int64_t N = (int64_t)B * T;
    mb_layer_acts *d = &m->dacts;
    memset(d->gated, 0, (size_t)(N * Di) * sizeof(float));
    memset(d->u, 0, (size_t)(N * Di) * sizeof(float));
    memset(d->xdbl, 0, (size_t)(N * X) * sizeof(float));
    memset(d->xz, 0, (size_t)(N * 2 * Di) * sizeof(float));
    mb__linear_backward(m, l, MB_TENSOR_OUT_PROJ, d->gated, dout, a->gated, Di, N);
    mb__scan_backward(d->u, d->delta, G->dt_proj_b, G->A_log, d->xdbl, G->D, d->xz, m->ma.scan_scratch,
                      d->gated, a->states, a->u, a->delta, W->dt_proj_b, W->A_log, a->xdbl, W->D, a->xz,
                      B, T, Di, S, R, m->scan_chunk);
    mb__linear_backward(m, l, MB_TENSOR_DT_W, d->xdbl, d->delta, a->xdbl, X, N);
    mb__linear_backward(m, l, MB_TENSOR_X_PROJ, d->u, d->xdbl, a->u, Di, N);
    mb__conv1d_backward_from(d->xz, G->conv_w, G->conv_b, d->u, a->xz, W->conv_w, W->conv_b, m->carry ? a->conv_in : NULL,
                             B, T, Di, c->d_conv);
    mb__linear_backward(m, l, MB_TENSOR_IN_PROJ, dln, d->xz, a->ln, C, N);
}

MBDEF mb_status mb_model_backward(mb_model *m) {
    const mb_config *c = &m->cfg;
    int64_t N = (int64_t)m->B * m->T, C = c->d_model, V = c->vocab_size;
    mb_layer_acts *d = &m->dacts;
    float one = 1.0f;
    mb_status s;
    int l;
    if (!m->acts || !m->have_targets) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "backward needs a forward with targets first");
    s = mb_cross_entropy_backward(m->ma.d_logits, &one, m->ma.logits, m->targets, N, V, NULL);
    if (s != MB_STATUS_OK) return s;
    memset(d->ln, 0, (size_t)(N * C) * sizeof(float));
    mb__linear_backward(m, -1, MB_TENSOR_LM_HEAD, d->ln, m->ma.d_logits, m->ma.lnf, C, N);
    memset(d->resid, 0, (size_t)(N * C) * sizeof(float));
    mb__norm_backward(c, d->resid, m->g.norm_f_w, m->g.norm_f_b, d->ln, m->ma.resid_out, m->w.norm_f_w,
                      m->ma.lnf_mean, m->ma.lnf_rstd, N, (int)C);
    for (l = c->n_layer - 1; l >= 0; l--) {
        mb_layer_acts *a = &m->acts[l];
        /* the residual passes d_resid through; the mixer adds its input grad */
        memset(d->ln, 0, (size_t)(N * C) * sizeof(float));
        mb__mixer_backward(m, l, d->resid, d->ln);
        mb__norm_backward(c, d->resid, m->g.layer[l].norm_w, m->g.layer[l].norm_b, d->ln, a->resid,
                          m->w.layer[l].norm_w, a->ln_mean, a->ln_rstd, N, (int)C);
    }
    mb__embedding_backward(m->g.wte, d->resid, m->inputs, N, (int)C);
    return MB_STATUS_OK;
}

/* ============================================================ streaming */
/* A stream is a snapshot of the whole model taken at mb_stream_create, with
   each weight held once: the five matrices (in_proj, x_proj, dt_proj,
   out_proj, the head) only in the packed panels one step reads fastest,
   which mb_stream_feed's batch products read too (mb__matmul_packed); the
   vectors, the embedding, conv and A_log in their checkpoint layout (vecs);
   and conv and A again transposed to (K, Di) and (S, Di) for the step (those
   are under 1% of a model).  A tied head is packed apart from the embedding
   (V x C floats).  Nothing points into the model, so a stream made before the
   weights change keeps the old ones, and the model may be freed. */
#ifndef MB__FEED_CHUNK
#define MB__FEED_CHUNK 2048 /* bytes per pass of mb_stream_feed: its workspace holds this many */
#endif
/* A matrix as a stream holds it: w packed (float32), or q (bf16, or int8
   with its scales sc) in mb__quantize's panels. */
typedef struct { const float *w, *sc; const void *q; int IC, OC, prec; } mb__packed;
static int mb__slot(int l, int field) { return (l + 1) * MB_NUM_LAYER_TENSORS + field; } /* l -1: the head */
struct mb_stream {
    mb_config cfg;         /* the model's (validated) config */
    float *vecs;           /* the model's tensors except the five matrices, in checkpoint order */
    mb_weights w;         /* pointers into vecs (w.layer: n_layer, owned); the matrices' are NULL */
    float *block;          /* one allocation, split below */
    float *conv_state;     /* (L, K, Di): the last K inputs x' of each layer, oldest first */
    float *ssm_state;      /* (L, S, Di): the scan state; follows conv_state (state_floats) */
    float *AT;             /* (L, S, Di) = -exp(A_log), transposed */
    float *conv_wT;        /* (L, K, Di) conv weights, transposed */
    mb__packed *packed;    /* the matrices' packed copies (mb__matvec_pack), at mb__slot(layer, field) */
    void *qblock;          /* bf16 / int8: the matrices (packed[].q) */
    mb_layer_acts a;       /* one token's activations (resid: the residual stream) */
    float *out, *logits;
    int64_t state_floats;  /* conv_state + ssm_state, contiguous */
    /* mb_stream_feed's workspace for feed_cap tokens (NULL until the first feed) */
    float *feed_block, *fd_mix;
    mb_layer_acts fd;
    int64_t feed_cap;
};

/* out (OC) = w (OC,IC) @ x from a copy of w packed once (mb__matvec_pack)
   into the forward's panels: NR outputs side by side (zero-padded), input
   rows in the forward's step order.  Each output's operations are exactly
   those of mb__matmul_forward / mb__dot_rows (bit for bit), but with the outputs in the
   vector lanes there is no sum across lanes (about 3x faster per byte when
   streaming; see docs/BENCHMARKS.md). */
/* nq (1..4, a constant after inlining) panels at once: independent chains
   cover the FMA latency. */
MB__INLINE void mb__matvec_panels(float *MB__RESTRICT sum, const float *MB__RESTRICT x, const float *MB__RESTRICT bp,
                                  int IC, int nq) {
    float acc[4][MB__MM_NR];
    int nb = IC / 16, k, s, j, q;
    const int64_t ps = (int64_t)IC * MB__MM_NR; /* floats per panel */
    for (q = 0; q < nq; q++)
        for (j = 0; j < MB__MM_NR; j++) sum[q * MB__MM_NR + j] = 0.0f;
    for (k = 0; k < (nb > 0 ? 16 : 0); k++) {
        const float *MB__RESTRICT bk = bp + (int64_t)k * nb * MB__MM_NR;
        for (q = 0; q < nq; q++)
            for (j = 0; j < MB__MM_NR; j++) acc[q][j] = x[k] * bk[q * ps + j];
        for (s = 1; s < nb; s++) {
            for (q = 0; q < nq; q++) { /* the weights stream from L3: ask for them early */
                MB__PREFETCH(bk + q * ps + (s + 16) * MB__MM_NR);
                MB__PREFETCH(bk + q * ps + (s + 16) * MB__MM_NR + 16);
            }
            for (q = 0; q < nq; q++)
                for (j = 0; j < MB__MM_NR; j++) acc[q][j] = MB__FMA(x[16 * s + k], bk[q * ps + s * MB__MM_NR + j], acc[q][j]);
        }
        for (q = 0; q < nq; q++)
            for (j = 0; j < MB__MM_NR; j++) sum[q * MB__MM_NR + j] = k == 0 ? acc[q][j] : sum[q * MB__MM_NR + j] + acc[q][j];
    }
    for (s = 16 * nb; s < IC; s++)
        for (q = 0; q < nq; q++)
            for (j = 0; j < MB__MM_NR; j++)
                sum[q * MB__MM_NR + j] = MB__FMA(x[s], bp[q * ps + s * MB__MM_NR + j], sum[q * MB__MM_NR + j]);
}
/* A matrix of more weights than this splits a stream's product over the
   threads by outputs (each output's sums unchanged): measured, the split lost
   at 147K weights and gained from 262K (docs/BENCHMARKS.md, issues 28 and 29). */
#ifndef MB__STREAM_OMP_MIN
#define MB__STREAM_OMP_MIN (3 << 16)
#endif
/* Block b of mb__matvec_packed: 4 panels of MB__MM_NR outputs (or the last ones singly). */
MB__INLINE void mb__matvec_block(float *MB__RESTRICT out, const float *MB__RESTRICT x, const float *MB__RESTRICT wp,
                                        int IC, int OC, int np, int b) {
    float sum[4 * MB__MM_NR];
    int p0 = 4 * b, j, nq = np - p0 >= 4 ? 4 : 1, q;
    if (nq == 4) mb__matvec_panels(sum, x, wp + (int64_t)p0 * MB__MM_NR * IC, IC, 4);
    else mb__matvec_panels(sum, x, wp + (int64_t)p0 * MB__MM_NR * IC, IC, 1);
    for (q = 0; q < nq; q++) {
        int o0 = (p0 + q) * MB__MM_NR, nr = OC - o0 < MB__MM_NR ? OC - o0 : MB__MM_NR;
        for (j = 0; j < nr; j++) out[o0 + j] = sum[q * MB__MM_NR + j];
    }
    for (p0 += nq; nq == 1 && p0 < np; p0++) { /* the last block's other single panels */
        mb__matvec_panels(sum, x, wp + (int64_t)p0 * MB__MM_NR * IC, IC, 1);
        for (j = 0; j < MB__MM_NR && p0 * MB__MM_NR + j < OC; j++) out[p0 * MB__MM_NR + j] = sum[j];
    }
}
static void mb__matvec_packed(float *MB__RESTRICT out, const float *MB__RESTRICT x, const float *MB__RESTRICT wp,
                                         int IC, int OC) {
    int np = (OC + MB__MM_NR - 1) / MB__MM_NR, nb = (np + 3) / 4, b;
    if ((int64_t)IC * OC <= MB__STREAM_OMP_MIN) { /* no parallel region at all: its outlining slows the small case ~10% */
        for (b = 0; b < nb; b++) mb__matvec_block(out, x, wp, IC, OC, np, b);
        return;
    }
    MB__OMP(parallel for schedule(static))
    for (b = 0; b < nb; b++) mb__matvec_block(out, x, wp, IC, OC, np, b);
}

/* out (N, OC) = inp (N, IC; row stride ldi) @ w^T from w packed by
   mb__matvec_pack: mb__matmul_forward's tiles and kernel with the panel read
   in place (the packed layout is the one that function builds on its stack),
   so every element takes the same operations as there and as in
   mb__matvec_packed: bit for bit the batch forward. */
static void mb__matmul_packed(float *out, const float *inp, int64_t ldi, const float *wp, int64_t N, int IC, int OC) {
    const int MR = MB__MM_MR, NR = MB__MM_NR;
    int np = (OC + NR - 1) / NR;
    int64_t nmb = (N + MR - 1) / MR, t;
    if (N < 2 * MR) { /* as mb__matmul_forward: few rows one at a time */
        for (t = 0; t < N; t++) mb__matvec_packed(out + t * OC, inp + t * ldi, wp, IC, OC);
        return;
    }
    MB__OMP(parallel for schedule(static) if (N * IC * OC > MB__OMP_MIN_WORK))
    for (t = 0; t < (int64_t)np * nmb; t++) {
        int o0 = (int)(t / nmb) * NR;
        mb__mm_fwd_tile(out, inp, ldi, wp + (int64_t)o0 * IC, N, IC, OC, (t % nmb) * MR, o0);
    }
}

/* ---- k-row products for streams: out[t*OC + o] for T rows x_t at once,
   each weight read once per group of up to 6 rows.  bf16 / int8: q is
   panels of 16 outputs, input by input (zero-padded past OC), an int8
   panel's scales 16 per group of MB_INT8_GROUP inputs (sc[panel][group][16]),
   each weight made float32 (an int8 one times its scale).  Every sum is a
   float32 FMA chain per output in mb__matvec_panels' order (float32: 16
   sub-sums of IC/16 steps, then the tail; bf16 / int8: the tail alone, in
   input order), so a row's bits depend neither on T nor on the other rows. */
#define MB__QP 16 /* outputs per panel */
#define MB__KROWS_MAX 64 /* float32 rows up to which a product takes these kernels (more: mb__matmul_packed's tiles) */
/* Vectors of 16 outputs per pass of R rows: 8 FMA chains or more, in the
   registers with the weights (and float32's second set, the sub-sums). */
#define MB__KROWS_C(R, f32) ((R) >= 4 ? ((f32) ? 2 : 4) : (R) == 3 || ((R) == 2 && (f32)) ? 4 : 8)
#if defined(MB__SCAN_AVX512)
/* Vector (16 outputs) at element `at` of q as float32 (sv: its int8 scales). */
MB__SCAN_AVX512_IN __m512 mb__krows_w(const mb__packed *q, int prec, int64_t at, __m512 sv) {
    const __mmask16 all = 0xFFFF; /* the maskz forms: GCC's unmasked ones warn (maybe-uninitialized) in C++ */
    if (prec == MB_PRECISION_FP32) return _mm512_loadu_ps(q->w + at);
    if (prec == MB_PRECISION_BF16)
        return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256((const __m256i *)((const uint16_t *)q->q + at))), 16));
    return _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(all, _mm512_maskz_cvtepi8_epi32(all, _mm_loadu_si128((const __m128i *)((const int8_t *)q->q + at)))), sv);
}
/* Rows x_0..x_{R-1} times output vectors v0..v0+C-1 (R, C, prec constants
   after inlining; vectors past the last repeat it and are not stored).
   float32 vectors are halves of mb__matvec_pack's MB__MM_NR = 32 panels. */
MB__SCAN_AVX512_IN void mb__krows_avx512_n(float *out, int64_t ldo, const float *x, int64_t ldx, const mb__packed *q, int v0,
                                          int R, int C, int prec) {
    __m512 acc[6][8], sum[6][8], w[8], sv[8];
    const int IC = q->IC, nv = (q->OC + 15) / 16, f32 = prec == MB_PRECISION_FP32, vp = f32 ? 2 : 1, vs = 16 * vp;
    const int nb = f32 ? IC / 16 : 0, ng = (IC + MB_INT8_GROUP - 1) / MB_INT8_GROUP;
    int64_t at[8];
    int r, c, k, j, s;
    for (c = 0; c < C; c++) {
        const int v = v0 + c < nv ? v0 + c : nv - 1;
        at[c] = (int64_t)(v / vp) * IC * vs + v % vp * 16;
        for (r = 0, sv[c] = _mm512_setzero_ps(); r < R; r++) sum[r][c] = _mm512_setzero_ps();
    }
    for (k = 0; k < (nb > 0 ? 16 : 0); k++) {
        for (j = 0; j < nb; j++) {
            for (c = 0; c < C; c++) w[c] = mb__krows_w(q, prec, at[c] + (int64_t)(k * nb + j) * vs, sv[c]);
            for (r = 0; r < R; r++) { /* the first term is a plain product */
                const __m512 xv = _mm512_set1_ps(x[r * ldx + 16 * j + k]);
                for (c = 0; c < C; c++) acc[r][c] = j ? _mm512_fmadd_ps(xv, w[c], acc[r][c]) : _mm512_mul_ps(xv, w[c]);
            }
        }
        for (r = 0; r < R; r++)
            for (c = 0; c < C; c++) sum[r][c] = k ? _mm512_add_ps(sum[r][c], acc[r][c]) : acc[r][c];
    }
    for (s = 16 * nb; s < IC; s++) {
        for (c = 0; c < C && prec == MB_PRECISION_INT8 && s % MB_INT8_GROUP == 0; c++)
            sv[c] = _mm512_loadu_ps(q->sc + (at[c] / ((int64_t)IC * 16) * ng + s / MB_INT8_GROUP) * 16);
        for (c = 0; c < C; c++) w[c] = mb__krows_w(q, prec, at[c] + (int64_t)s * vs, sv[c]);
        for (r = 0; r < R; r++) {
            const __m512 xv = _mm512_set1_ps(x[r * ldx + s]);
            for (c = 0; c < C; c++) sum[r][c] = _mm512_fmadd_ps(xv, w[c], sum[r][c]);
        }
    }
    for (c = 0; c < C && v0 + c < nv; c++) {
        const int n = q->OC - 16 * (v0 + c) < 16 ? q->OC - 16 * (v0 + c) : 16;
        for (r = 0; r < R; r++) _mm512_mask_storeu_ps(out + r * ldo + 16 * (v0 + c), (__mmask16)((1u << n) - 1u), sum[r][c]);
    }
}
#define MB__KROWS_N(r, c) mb__krows_avx512_n(out, ldo, x, ldx, q, v0, r, c, prec)
MB__SCAN_AVX512_IN void mb__krows_avx512_p(float *out, int64_t ldo, const float *x, int64_t ldx, const mb__packed *q, int v0, int R, int C, int prec) {
    const int f = prec == MB_PRECISION_FP32;
    if (R <= 2 && !f) R == 1 ? (C == 8 ? MB__KROWS_N(1, 8) : MB__KROWS_N(1, 4)) : (C == 8 ? MB__KROWS_N(2, 8) : MB__KROWS_N(2, 4));
    else if (R <= 3) R == 2 ? MB__KROWS_N(2, 4) : MB__KROWS_N(3, 4);
    else R == 4 ? MB__KROWS_N(4, MB__KROWS_C(4, f)) : R == 5 ? MB__KROWS_N(5, MB__KROWS_C(5, f)) : MB__KROWS_N(6, MB__KROWS_C(6, f));
}
MB__SCAN_AVX512_FN void mb__krows_avx512(float *out, int64_t ldo, const float *x, int64_t ldx, const mb__packed *q, int v0, int R, int C) {
#if MB__MM_NR == 32
    if (q->prec == MB_PRECISION_FP32) mb__krows_avx512_p(out, ldo, x, ldx, q, v0, R, C, MB_PRECISION_FP32); else
#endif
    if (q->prec == MB_PRECISION_BF16) mb__krows_avx512_p(out, ldo, x, ldx, q, v0, R, C, MB_PRECISION_BF16);
    else mb__krows_avx512_p(out, ldo, x, ldx, q, v0, R, C, MB_PRECISION_INT8);
}
#endif
/* bf16 / int8 in plain C, the same operations (bit for bit where MB__FMA is fmaf). */
MB__INLINE void mb__krows_portable(float *out, int64_t ldo, const float *x, int64_t ldx, const mb__packed *q, int v0, int R, int C) {
    const int ng = (q->IC + MB_INT8_GROUP - 1) / MB_INT8_GROUP, nv = (q->OC + MB__QP - 1) / MB__QP;
    int t, k, p, l;
    for (p = v0; p < v0 + C && p < nv; p++)
        for (t = 0; t < R; t++) {
            float acc[MB__QP] = {0};
            for (k = 0; k < q->IC; k++)
                for (l = 0; l < MB__QP; l++) {
                    const int64_t i = ((int64_t)p * q->IC + k) * MB__QP + l;
                    const float w = q->prec == MB_PRECISION_BF16 ? mb__bf16_value(((const uint16_t *)q->q)[i])
                                  : (float)((const int8_t *)q->q)[i] * q->sc[((int64_t)p * ng + k / MB_INT8_GROUP) * MB__QP + l];
                    acc[l] = MB__FMA(x[t * ldx + k], w, acc[l]);
                }
            for (l = 0; l < MB__QP && p * MB__QP + l < q->OC; l++) out[t * ldo + p * MB__QP + l] = acc[l];
        }
}
#define mb__krows MB__SCAN_PICK(mb__krows)
/* Tile b of out (T, OC) = x (T, IC; row stride ldx) @ q^T: outputs
   128b..128b+127 (in L1 / L2 while the rows pass), the rows in groups of
   at most 6 (as even as they go), 4 vectors a pass where 8 would be mostly padding. */
static void mb__krows_tile(float *out, const float *x, int64_t ldx, int64_t T, const mb__packed *q, int b) {
    const int nv = (q->OC + 15) / 16, ng = (int)((T + 5) / 6);
    int64_t t0 = 0;
    int g, v, R, C;
    for (g = 0; g < ng; g++, t0 += R)
        for (v = 8 * b, R = (int)((T - t0) / (ng - g)); v < 8 * b + 8 && v < nv; v += C) {
            C = MB__KROWS_C(R, q->prec == MB_PRECISION_FP32);
            mb__krows(out + t0 * q->OC, q->OC, x + t0 * ldx, ldx, q, v, R, C == 8 && nv - v <= 4 ? (C = 4) : C);
        }
}
/* out (T, OC) = x (T, IC; row stride ldx) @ q^T at q's precision: these
   kernels in tiles of 128 outputs, or float32's one row and long feeds
   mb__matmul_packed's (the same sums). */
static void mb__packed_linear(float *out, const float *x, int64_t ldx, int64_t T, const mb__packed *q) {
    const int nt = (q->OC + 127) / 128;
    int b;
    if (q->prec == MB_PRECISION_FP32 && (T == 1 || T > MB__KROWS_MAX || MB__MM_NR != 32 || !mb__scan_avx512())) {
        mb__matmul_packed(out, x, ldx, q->w, T, q->IC, q->OC);
        return;
    }
    if (T * q->IC * q->OC <= MB__STREAM_OMP_MIN) { /* no parallel region: the fork would cost more (see mb__matvec_packed) */
        for (b = 0; b < nt; b++) mb__krows_tile(out, x, ldx, T, q, b);
        return;
    }
    MB__OMP(parallel for schedule(static))
    for (b = 0; b < nt; b++) mb__krows_tile(out, x, ldx, T, q, b);
}
/* Bytes of q (and its scales) for a matrix at precision prec. */
static int64_t mb__qbytes(int IC, int OC, int prec) {
    const int64_t n = (int64_t)(OC + MB__QP - 1) / MB__QP * MB__QP * IC;
    return prec == MB_PRECISION_BF16 ? 2 * n : n + 4 * (n / IC) * ((IC + MB_INT8_GROUP - 1) / MB_INT8_GROUP);
}
/* q (and sc) from the float32 w (OC, IC): bf16 rounded to nearest even; int8
   round(w / scale) with scale = the group's max |w| / 127. */
static void mb__quantize(mb__packed *q, void *dst, const float *w) {
    const int npan = (q->OC + MB__QP - 1) / MB__QP, ng = (q->IC + MB_INT8_GROUP - 1) / MB_INT8_GROUP;
    int o, k, j;
    q->q = dst;
    q->sc = (const float *)((int8_t *)dst + (int64_t)npan * MB__QP * q->IC);
    memset(dst, 0, (size_t)mb__qbytes(q->IC, q->OC, q->prec));
    for (o = 0; o < q->OC; o++)
        for (k = 0; k < q->IC; k += MB_INT8_GROUP) {
            const float *r = w + (int64_t)o * q->IC + k;
            const int n = q->IC - k < MB_INT8_GROUP ? q->IC - k : MB_INT8_GROUP;
            const int64_t at = ((int64_t)(o / MB__QP) * q->IC + k) * MB__QP + o % MB__QP; /* + j * MB__QP */
            float amax = 0.0f;
            for (j = 0; j < n && q->prec == MB_PRECISION_BF16; j++) ((uint16_t *)dst)[at + j * MB__QP] = mb__bf16_from_float(r[j]);
            if (q->prec == MB_PRECISION_BF16) continue;
            for (j = 0; j < n; j++) amax = fabsf(r[j]) > amax ? fabsf(r[j]) : amax;
            ((float *)q->sc)[((int64_t)(o / MB__QP) * ng + k / MB_INT8_GROUP) * MB__QP + o % MB__QP] = amax / 127.0f;
            for (j = 0; j < n && amax > 0.0f; j++) ((int8_t *)dst)[at + j * MB__QP] = (int8_t)lrintf(r[j] * (127.0f / amax));
        }
}

/* 1 for the tensors a stream holds only packed (a tied head's embedding is also a vector table). */
static int mb__stream_packs(const mb_config *c, int i) {
    int j, l, f, IC, OC;
    for (j = 0; j < MB__NUM_LAYER_MATRICES * c->n_layer + 1; j++)
        if (mb__matrix_at(c, j, &l, &f, &IC, &OC) == i) return i != mb_tensor_index(c, -1, MB_TENSOR_EMBEDDING);
    return 0;
}

/* Layer l's matrix `field` (-1, MB_TENSOR_LM_HEAD: the head) over T rows from its packed copy. */
static void mb__stream_linear(const mb_stream *s, int l, int field, float *out, const float *inp, int64_t ldi, int64_t T) {
    mb__packed_linear(out, inp, ldi, T, &s->packed[mb__slot(l, field)]);
}

MBDEF mb_status mb_stream_create(mb_stream **out, const mb_model *m) { return mb_stream_create_ex(out, m, MB_PRECISION_FP32); }
MBDEF mb_status mb_stream_create_ex(mb_stream **out, const mb_model *m, int precision) {
    const mb_config *c = &m->cfg;
    int L = c->n_layer, C = c->d_model, Di = C * c->expand, S = c->d_state, K = c->d_conv, l, f, d, n, k, i, j, IC, OC;
    const int nmat = MB__NUM_LAYER_MATRICES * L + 1;
    int64_t total = (int64_t)L * (2 * K * Di + 2 * S * Di) + mb_layer_acts_place(NULL, NULL, c, 1, 1, 0, 0) + C + c->vocab_size;
    int64_t nvec = 0, qtotal = 0;
    mb_stream *s;
    mb_tensor_info *ti;
    float *p;
    char *qp;
    *out = NULL;
    if (precision != MB_PRECISION_FP32 && precision != MB_PRECISION_BF16 && precision != MB_PRECISION_INT8)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "stream precision %d: streams store fp32, bf16 or int8", precision);
    if (!(s = (mb_stream *)MB_MALLOC(sizeof(mb_stream)))) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "stream");
    memset(s, 0, sizeof *s);
    s->cfg = *c;
    for (i = 0; i < m->ntensors; i++)
        if (!mb__stream_packs(c, i)) nvec += m->tensors[i].numel;
    for (j = 0; j < nmat; j++) {
        mb__matrix_at(c, j, &l, &f, &IC, &OC);
        if (precision == MB_PRECISION_FP32) total += mb__matvec_packed_floats(IC, OC);
        else qtotal += mb__qbytes(IC, OC, precision);
    }
    s->block = (float *)MB_MALLOC((size_t)total * sizeof(float));
    qp = (char *)(s->qblock = qtotal ? MB_MALLOC((size_t)qtotal) : NULL);
    s->vecs = (float *)MB_MALLOC((size_t)nvec * sizeof(float));
    s->w.layer = (mb_layer_weights *)MB_MALLOC(sizeof(mb_layer_weights) * (size_t)L);
    s->packed = (mb__packed *)MB_MALLOC(sizeof(mb__packed) * (size_t)(L + 1) * MB_NUM_LAYER_TENSORS);
    ti = (mb_tensor_info *)MB_MALLOC(sizeof(mb_tensor_info) * (size_t)m->ntensors);
    if (!s->block || !s->vecs || !s->w.layer || !s->packed || !ti || (qtotal && !qp)) {
        MB_FREE(ti);
        mb_stream_free(s);
        return mb__fail(MB_STATUS_OUT_OF_MEMORY, "stream state");
    }
    /* the kept tensors close up in vecs; the packed ones get no room (offset -1: pointer NULL) */
    memcpy(ti, m->tensors, sizeof(mb_tensor_info) * (size_t)m->ntensors);
    for (i = 0, nvec = 0; i < m->ntensors; i++) {
        if (mb__stream_packs(c, i)) { ti[i].offset = -1; continue; }
        memcpy(s->vecs + nvec, m->params + m->tensors[i].offset, (size_t)ti[i].numel * sizeof(float));
        ti[i].offset = nvec;
        nvec += ti[i].numel;
    }
    mb_weights_point(&s->w, s->vecs, c, ti);
    MB_FREE(ti);
    p = s->block;
    s->conv_state = p; p += (int64_t)L * K * Di;
    s->ssm_state = p; p += (int64_t)L * S * Di;
    s->AT = p; p += (int64_t)L * S * Di;
    s->conv_wT = p; p += (int64_t)L * K * Di;
    for (j = 0; j < nmat; j++) { /* the matrices from the model, the rest from the stream's copy */
        mb__packed *q;
        i = mb__matrix_at(c, j, &l, &f, &IC, &OC);
        q = &s->packed[mb__slot(l, f)];
        q->IC = IC;
        q->OC = OC;
        if ((q->prec = precision) != MB_PRECISION_FP32) {
            mb__quantize(q, qp, m->params + m->tensors[i].offset);
            qp += mb__qbytes(IC, OC, precision);
            continue;
        }
        q->w = p;
        mb__matvec_pack(p, m->params + m->tensors[i].offset, IC, OC);
        p += mb__matvec_packed_floats(IC, OC);
    }
    p += mb_layer_acts_place(&s->a, p, c, 1, 1, 0, 0);
    s->out = p; p += C;
    s->logits = p;
    s->state_floats = (int64_t)L * Di * (K + S);
    for (l = 0; l < L; l++) {
        const mb_layer_weights *W = &s->w.layer[l];
        for (n = 0; n < S; n++) /* the same A as the batch scan computes */
            for (d = 0; d < Di; d++) s->AT[((int64_t)l * S + n) * Di + d] = -mb__exp(W->A_log[(int64_t)d * S + n]);
        for (k = 0; k < K; k++)
            for (d = 0; d < Di; d++) s->conv_wT[((int64_t)l * K + k) * Di + d] = W->conv_w[(int64_t)d * K + k];
    }
    mb_stream_reset(s);
    *out = s;
    return MB_STATUS_OK;
}

MBDEF void mb_stream_reset(mb_stream *s) { memset(s->conv_state, 0, (size_t)s->state_floats * sizeof(float)); }

/* Same config field by field (so also the same state layout and size): the
   state of one is a state of the other. */
MBDEF mb_status mb_stream_copy(mb_stream *dst, const mb_stream *src) {
    if (memcmp(&dst->cfg, &src->cfg, sizeof dst->cfg) != 0 || dst->state_floats != src->state_floats) /* int32s: no padding */
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "stream copy between models of different configs");
    if (dst != src) memcpy(dst->conv_state, src->conv_state, (size_t)src->state_floats * sizeof(float));
    return MB_STATUS_OK;
}

MBDEF void mb_stream_free(mb_stream *s) {
    if (!s) return;
    MB_FREE(s->feed_block);
    MB_FREE(s->block);
    MB_FREE(s->qblock);
    MB_FREE(s->vecs);
    MB_FREE(s->w.layer);
    MB_FREE(s->packed);
    MB_FREE(s);
}

/* n bytes, each through the whole model with its own state (row r's conv
   window conv[r], scan state ssm[r]): mb_model_forward for T = 1 per row,
   the products over the n rows at once (each weight read once per n
   bytes).  A row's operations do not depend on n or on the other rows, so
   each row's logits are one stream's bit for bit, and those equal the batch
   forward's.  Rows may share a state: then each continues from the one
   before (a short feed); with chain, row r > 0 has its own and starts each
   layer from row r - 1's (a short feed that keeps every state it passes).
   logits NULL: no head. */
static void mb__step_rows(const mb_stream *s, float *const *conv, float *const *ssm, const uint8_t *bytes, int n,
                          const mb_layer_acts *a, float *out, float *logits, int chain) {
    const mb_config *c = &s->cfg;
    int L = c->n_layer, C = c->d_model, Di = C * c->expand, S = c->d_state, K = c->d_conv, R = c->dt_rank;
    int X = R + 2 * S, l, r;
    for (r = 0; r < n; r++) memcpy(a->resid + (int64_t)r * C, s->w.wte + (int64_t)bytes[r] * C, (size_t)C * sizeof(float));
    for (l = 0; l < L; l++) {
        const mb_layer_weights *W = &s->w.layer[l];
        mb__norm_forward(c, a->ln, a->ln_mean, a->ln_rstd, a->resid, W->norm_w, W->norm_b, n, C);
        mb__stream_linear(s, l, MB_TENSOR_IN_PROJ, a->xz, a->ln, C, n); /* [x', z] */
        for (r = 0; r < n; r++) {
            float *win = conv[r] + (int64_t)l * K * Di;
            if (chain && r > 0) memcpy(win, conv[r - 1] + (int64_t)l * K * Di, sizeof(float) * (size_t)(K * Di));
            mb__conv_step(a->u + (int64_t)r * Di, win, a->xz + (int64_t)r * 2 * Di, s->conv_wT + (int64_t)l * K * Di, W->conv_b, Di, K);
        }
        mb__stream_linear(s, l, MB_TENSOR_X_PROJ, a->xdbl, a->u, Di, n); /* [dt_low, B, C] */
        mb__stream_linear(s, l, MB_TENSOR_DT_W, a->delta, a->xdbl, X, n);
        for (r = 0; r < n; r++) {
            const float *xd = a->xdbl + (int64_t)r * X;
            float *h = ssm[r] + (int64_t)l * S * Di;
            if (chain && r > 0) memcpy(h, ssm[r - 1] + (int64_t)l * S * Di, sizeof(float) * (size_t)(S * Di));
            mb__scan_step(a->gated + (int64_t)r * Di, h, a->delta + (int64_t)r * Di, s->AT + (int64_t)l * S * Di,
                          W->dt_proj_b, a->u + (int64_t)r * Di, xd + R, xd + R + S, W->D, a->xz + (int64_t)r * 2 * Di + Di, Di, S);
        }
        mb__stream_linear(s, l, MB_TENSOR_OUT_PROJ, out, a->gated, Di, n);
        for (r = 0; r < n * C; r++) a->resid[r] += out[r];
    }
    if (!logits) return;
    mb__norm_forward(c, a->ln, a->ln_mean, a->ln_rstd, a->resid, s->w.norm_f_w, s->w.norm_f_b, n, C);
    mb__stream_linear(s, -1, MB_TENSOR_LM_HEAD, logits, a->ln, C, n);
}
MBDEF const float *mb_stream_step(mb_stream *s, uint8_t byte) { /* allocates nothing */
    mb__step_rows(s, &s->conv_state, &s->ssm_state, &byte, 1, &s->a, s->out, s->logits, 0);
    return s->logits;
}

/* k streams over one snapshot: k states, activations for k rows. */
struct mb_streams {
    mb_stream *s; /* the weights (its own state is a scratch for feeds) */
    int k;
    float *block, *out, *logits, **conv, **ssm, **rc, **rs;
    mb_layer_acts a;
};
MBDEF mb_status mb_streams_create(mb_streams **out, const mb_model *m, int k, int precision) {
    mb_streams *b;
    int64_t sf, total;
    int i;
    mb_status st;
    *out = NULL;
    if (k < 1) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "streams: k=%d", k);
    if (!(b = (mb_streams *)MB_MALLOC(sizeof *b))) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "streams");
    memset(b, 0, sizeof *b);
    if ((st = mb_stream_create_ex(&b->s, m, precision)) != MB_STATUS_OK) { MB_FREE(b); return st; }
    sf = b->s->state_floats;
    total = k * sf + mb_layer_acts_place(NULL, NULL, &m->cfg, 1, k, 0, 0) + (int64_t)k * (m->cfg.d_model + m->cfg.vocab_size);
    b->k = k;
    b->block = (float *)MB_MALLOC((size_t)total * sizeof(float));
    b->conv = (float **)MB_MALLOC(4 * (size_t)k * sizeof(float *));
    if (!b->block || !b->conv) { mb_streams_free(b); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "streams state (%d)", k); }
    memset(b->block, 0, (size_t)k * (size_t)sf * sizeof(float));
    b->ssm = b->conv + k, b->rc = b->ssm + k, b->rs = b->rc + k;
    for (i = 0; i < k; i++) { /* as one stream's: (L, K, Di) window, then (L, S, Di) scan state */
        b->conv[i] = b->block + i * sf;
        b->ssm[i] = b->conv[i] + (b->s->ssm_state - b->s->conv_state);
    }
    b->out = b->block + k * sf + mb_layer_acts_place(&b->a, b->block + k * sf, &m->cfg, 1, k, 0, 0);
    b->logits = b->out + (int64_t)k * m->cfg.d_model;
    *out = b;
    return MB_STATUS_OK;
}
MBDEF void mb_streams_reset(mb_streams *b, int i) { memset(b->conv[i], 0, (size_t)b->s->state_floats * sizeof(float)); }
MBDEF mb_status mb_streams_feed(mb_streams *b, int i, const uint8_t *bytes, int64_t n, float *logits) {
    mb_status st;
    if (i < 0 || i >= b->k) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "streams feed: stream %d of %d", i, b->k);
    memcpy(b->s->conv_state, b->conv[i], (size_t)b->s->state_floats * sizeof(float));
    st = mb_stream_feed(b->s, bytes, n, logits);
    memcpy(b->conv[i], b->s->conv_state, (size_t)b->s->state_floats * sizeof(float));
    return st;
}
MBDEF const float *mb_streams_step(mb_streams *b, const int *idx, const uint8_t *bytes, int n) {
    int r;
    for (r = 0; r < n; r++) b->rc[r] = b->conv[idx[r]], b->rs[r] = b->ssm[idx[r]];
    mb__step_rows(b->s, b->rc, b->rs, bytes, n, &b->a, b->out, b->logits, 0);
    return b->logits;
}
MBDEF void mb_streams_free(mb_streams *b) {
    if (!b) return;
    mb_stream_free(b->s);
    MB_FREE(b->block);
    MB_FREE(b->conv);
    MB_FREE(b);
}

/* The feed's workspace for T tokens (grown, never shrunk). */
static mb_status mb__stream_feed_alloc(mb_stream *s, int64_t T) {
    const int64_t total = mb_layer_acts_place(NULL, NULL, &s->cfg, 1, (int)T, 0, 0) + T * s->cfg.d_model;
    if (s->feed_cap >= T) return MB_STATUS_OK;
    MB_FREE(s->feed_block);
    s->feed_cap = 0;
    if (!(s->feed_block = (float *)MB_MALLOC((size_t)total * sizeof(float))))
        return mb__fail(MB_STATUS_OUT_OF_MEMORY, "stream feed workspace (%.1f MB)", (double)total * 4 / 1e6);
    s->fd_mix = s->feed_block + mb_layer_acts_place(&s->fd, s->feed_block, &s->cfg, 1, (int)T, 0, 0);
    s->feed_cap = T;
    return MB_STATUS_OK;
}

/* mb_model_forward's layer sequence over T bytes (B = 1) with the conv and
   the scan started from the stream's state (mb__conv1d_forward_from,
   mb__scan_forward_from) instead of from zero.  Every element takes the
   same operations as in mb_stream_step: the batch products equal the packed
   ones bit for bit, the conv adds its K taps from the bias in the same
   order (from a fresh stream both add the zero window's terms), the scan
   starts from the same h with the same A; so the logits and the state are
   bit-identical to T steps, however the bytes are split into feeds. */
MBDEF mb_status mb_stream_feed(mb_stream *s, const uint8_t *bytes, int64_t n, float *logits) {
    const mb_config *c = &s->cfg;
    int L = c->n_layer, C = c->d_model, Di = C * c->expand, S = c->d_state, K = c->d_conv, R = c->dt_rank;
    int X = R + 2 * S, V = c->vocab_size, l;
    int64_t i0;
    const mb_layer_acts *a = &s->fd;
    mb_status st;
    if (n < 0 || (n > 0 && !bytes))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "stream feed: n=%lld bytes=%p", (long long)n, (const void *)bytes);
    if (n == 0) return MB_STATUS_OK;
    st = mb__stream_feed_alloc(s, n < MB__FEED_CHUNK ? n : MB__FEED_CHUNK);
    if (st != MB_STATUS_OK) return st;
    if (n <= MB__KROWS_MAX) { /* short (a speculative check): the steps' conv and scan row after row on the one state */
        float *cs[MB__KROWS_MAX], *ss[MB__KROWS_MAX];
        for (i0 = 0; i0 < n; i0++) cs[i0] = s->conv_state, ss[i0] = s->ssm_state;
        mb__step_rows(s, cs, ss, bytes, (int)n, a, s->fd_mix, logits, 0);
        return MB_STATUS_OK;
    }
    for (i0 = 0; i0 < n; i0 += MB__FEED_CHUNK) {
        int T = (int)(n - i0 < MB__FEED_CHUNK ? n - i0 : MB__FEED_CHUNK);
        mb__embedding_forward(a->resid, bytes + i0, s->w.wte, T, C);
        for (l = 0; l < L; l++) {
            const mb_layer_weights *W = &s->w.layer[l];
            float *win = s->conv_state + (int64_t)l * K * Di;
            int k;
            mb__norm_forward(c, a->ln, a->ln_mean, a->ln_rstd, a->resid, W->norm_w, W->norm_b, T, C);
            mb__stream_linear(s, l, MB_TENSOR_IN_PROJ, a->xz, a->ln, C, T);
            mb__conv1d_forward_from(a->u, a->xz, W->conv_w, W->conv_b, win, 1, T, Di, K);
            /* the window after these T inputs: the last K of (window, x'_0 .. x'_{T-1}) */
            if (T < K) memmove(win, win + (int64_t)T * Di, sizeof(float) * (size_t)(K - T) * (size_t)Di);
            for (k = T < K ? K - T : 0; k < K; k++)
                memcpy(win + (int64_t)k * Di, a->xz + (int64_t)(T - K + k) * 2 * Di, sizeof(float) * (size_t)Di);
            mb__stream_linear(s, l, MB_TENSOR_X_PROJ, a->xdbl, a->u, Di, T);
            mb__stream_linear(s, l, MB_TENSOR_DT_W, a->delta, a->xdbl, X, T);
            mb__scan_forward_from(a->gated, NULL, s->ssm_state + (int64_t)l * S * Di, a->u, a->delta, W->dt_proj_b,
                                  W->A_log, a->xdbl, W->D, a->xz, 1, T, Di, S, R, T);
            mb__stream_linear(s, l, MB_TENSOR_OUT_PROJ, s->fd_mix, a->gated, Di, T);
            mb__residual_add(a->resid, s->fd_mix, (int64_t)T * C);
        }
        if (logits) {
            mb__norm_forward(c, a->ln, a->ln_mean, a->ln_rstd, a->resid, s->w.norm_f_w, s->w.norm_f_b, T, C);
            mb__stream_linear(s, -1, MB_TENSOR_LM_HEAD, logits + i0 * V, a->ln, C, T);
        }
    }
    return MB_STATUS_OK;
}

/* A short feed (n <= MB_SPEC_MAX_DRAFT + 1) that keeps every state it passes:
   keep + r * state_floats becomes the state after bytes[0..r] and s's own
   state does not move, so a speculative check rolls back to any prefix by
   one copy instead of a second feed.  Logits and states as mb_stream_feed's. */
static mb_status mb__stream_feed_keep(mb_stream *s, const uint8_t *bytes, int n, float *keep, float *logits) {
    float *cs[MB_SPEC_MAX_DRAFT + 1], *ss[MB_SPEC_MAX_DRAFT + 1];
    mb_status st = mb__stream_feed_alloc(s, n);
    int r;
    if (st != MB_STATUS_OK) return st;
    memcpy(keep, s->conv_state, sizeof(float) * (size_t)s->state_floats);
    for (r = 0; r < n; r++) cs[r] = keep + r * s->state_floats, ss[r] = cs[r] + (s->ssm_state - s->conv_state);
    mb__step_rows(s, cs, ss, bytes, n, &s->fd, s->fd_mix, logits, 1);
    return MB_STATUS_OK;
}

/* ------------------------------------------------------------- sampling */
static int mb__argmax(const float *x, int n); /* eval section: the first of equal maxima */
/* p (256): the distribution mb_sample_byte draws from (temperature > 0). */
static void mb__sample_probs(float *p, const float *logits, double temperature, int top_k) {
    float scaled[256], cut;
    int v;
    for (v = 0; v < 256; v++) scaled[v] = (float)(logits[v] / temperature);
    if (top_k > 0 && top_k < 256) { /* the k-th largest scaled logit is the cut; values equal to it stay */
        float sorted[256];
        int a, c;
        memcpy(sorted, scaled, sizeof sorted);
        for (a = 0; a < top_k; a++)
            for (c = a + 1; c < 256; c++)
                if (sorted[c] > sorted[a]) { float t = sorted[a]; sorted[a] = sorted[c]; sorted[c] = t; }
        cut = sorted[top_k - 1];
        for (v = 0; v < 256; v++) if (scaled[v] < cut) scaled[v] = -INFINITY;
    }
    mb_softmax(p, scaled, 1, 256);
}
/* The first byte b < 255 with p[0] + ... + p[b] > u (one uniform draw), else 255. */
static int mb__draw(const float *p, uint64_t *rng) {
    double u = mb__rng_uniform(rng), acc = 0.0;
    int b;
    for (b = 0; b < 255; b++) { acc += p[b]; if (u < acc) break; }
    return b;
}
MBDEF int mb_sample_byte(const float *logits, double temperature, int top_k, uint64_t *rng) {
    float p[256];
    if (temperature <= 0.0) return mb__argmax(logits, 256);
    mb__sample_probs(p, logits, temperature, top_k);
    return mb__draw(p, rng);
}

/* s reset and conditioned on 0x00 and prompt[0..len-1); *last: the byte still to step (the prompt's last, or 0x00). */
static mb_status mb__stream_prime(mb_stream *s, const uint8_t *prompt, int64_t len, uint8_t *last) {
    mb_stream_reset(s);
    *last = 0x00;
    if (len == 0) return MB_STATUS_OK;
    mb_stream_step(s, 0x00);
    *last = prompt[len - 1];
    return mb_stream_feed(s, prompt, len - 1, NULL);
}
MBDEF mb_status mb_stream_generate(mb_stream *s, const uint8_t *prompt, int64_t prompt_len, int64_t n, double temperature,
                                   int top_k, uint64_t *rng, uint8_t *out, int (*on_byte)(void *user, int byte), void *user,
                                   int64_t *generated) {
    const float *logits;
    int64_t i;
    uint8_t last;
    mb_status st;
    if (generated) *generated = 0;
    if (!s || !rng || prompt_len < 0 || n < 0 || (prompt_len > 0 && !prompt))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "mb_stream_generate: invalid argument");
    if ((st = mb__stream_prime(s, prompt, prompt_len, &last)) != MB_STATUS_OK) return st;
    logits = mb_stream_step(s, last);
    for (i = 0; i < n; i++) {
        int b = mb_sample_byte(logits, temperature, top_k, rng);
        if (out) out[i] = (uint8_t)b;
        logits = mb_stream_step(s, (uint8_t)b); /* the state includes every byte drawn */
        if (generated) *generated = i + 1;
        if (on_byte && on_byte(user, b)) break;
    }
    return MB_STATUS_OK;
}

/* ----------------------------------------------------------- speculation */
/* The stream's state (conv windows and scans) saved to or restored from buf:
   a copy of the state alone, where mb_stream_copy needs a second stream. */
static void mb__spec_state(mb_stream *s, float *buf, int save) {
    size_t bytes = (size_t)s->state_floats * sizeof(float);
    if (save) memcpy(buf, s->conv_state, bytes); else memcpy(s->conv_state, buf, bytes);
}
/* s, fed f bytes since snap was saved (of which seq[0..keep) still stand),
   brought to the state after seq[0..j): on from there when all f stand and
   j >= f, else from snap (a short feed costs at most its steps). */
static mb_status mb__spec_sync(mb_stream *s, float *snap, int f, int keep, const uint8_t *seq, int j) {
    if (j < f || keep < f) { mb__spec_state(s, snap, 0); f = 0; }
    return mb_stream_feed(s, seq + f, j - f, NULL);
}
#define MB__SPEC_WINDOW 65536 /* lookup searches the last this many bytes */
/* Prompt lookup: up to k bytes into d that followed the longest earlier
   match (>= lo bytes, at most 32 compared; the latest of equals) of h's
   end; a match overlapping the end continues the period. */
static int mb__spec_lookup(const uint8_t *h, int64_t n, int lo, int k, uint8_t *d) {
    int64_t i, best = -1;
    int m, bl = lo - 1;
    for (i = n - 1; i > 0 && i > n - MB__SPEC_WINDOW; i--) {
        for (m = 0; m < 32 && m < i && h[i - 1 - m] == h[n - 1 - m]; m++) {}
        if (m > bl) { bl = m; best = i; }
    }
    if (best < 0) return 0;
    for (m = 0; m < k; m++) d[m] = best + m < n ? h[best + m] : d[best + m - n];
    return m;
}

MBDEF mb_status mb_stream_generate_spec(mb_stream *s, const uint8_t *prompt, int64_t prompt_len, int64_t n, double temperature,
                                        int top_k, uint64_t *rng, uint8_t *out, int (*on_byte)(void *user, int byte),
                                        void *user, int64_t *generated, mb_spec_options *o) {
    mb_stream *ds = o ? o->draft : NULL;
    const int kmax = o && o->draft_len > 0 ? o->draft_len : 8, lo = o && o->lookup_min > 0 ? o->lookup_min : 3;
    const int greedy = temperature <= 0.0, V = 256;
    int k = kmax, stop = 0, rejected = 0;
    int64_t hn = prompt_len, done = 0;
    uint8_t seq[MB_SPEC_MAX_DRAFT + 2], *h;
    float *lg, *q, *keep, *dsnap, p[256];
    mb_status st = MB_STATUS_OK;
    if (generated) *generated = 0;
    if (!s || !o || !rng || prompt_len < 0 || n < 0 || (prompt_len > 0 && !prompt) || kmax > MB_SPEC_MAX_DRAFT)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "mb_stream_generate_spec: invalid argument");
    if (ds && (ds == s || ds->cfg.vocab_size != s->cfg.vocab_size))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "draft model: %s", ds == s ? "the target's own stream (create another)" : "another vocabulary size");
    o->rounds = o->drafted = o->accepted = 0;
    h = (uint8_t *)MB_MALLOC((size_t)(prompt_len + n + 1));
    lg = (float *)MB_MALLOC(sizeof(float) * (size_t)((2 * MB_SPEC_MAX_DRAFT + 1) * V + (kmax + 1) * s->state_floats +
                                                     (ds ? ds->state_floats : 0)));
    if (!h || !lg) { MB_FREE(h); MB_FREE(lg); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "speculative generation buffers"); }
    q = lg + (MB_SPEC_MAX_DRAFT + 1) * V; /* the draft's distributions */
    keep = q + MB_SPEC_MAX_DRAFT * V; /* the target's state after each byte of a check, or before it */
    dsnap = keep + (kmax + 1) * s->state_floats;
    if (prompt_len > 0) memcpy(h, prompt, (size_t)prompt_len);
    st = mb__stream_prime(s, prompt, prompt_len, &seq[0]);
    if (st == MB_STATUS_OK && ds) st = mb__stream_prime(ds, prompt, prompt_len, &seq[0]);
    while (st == MB_STATUS_OK && done < n && !stop) {
        int nd = 0, a, j, m, f, v, keeping;
        /* seq = [the byte not yet fed, the draft]; q[i]: the draft's distribution for seq[1 + i] */
        if (ds) {
            const float *dl;
            mb__spec_state(ds, dsnap, 1);
            for (dl = mb_stream_step(ds, seq[0]); nd < k; nd++) {
                if (!greedy) mb__sample_probs(q + nd * V, dl, temperature, top_k);
                seq[1 + nd] = (uint8_t)(greedy ? mb__argmax(dl, V) : mb__draw(q + nd * V, rng));
                if (nd + 1 < k) dl = mb_stream_step(ds, seq[1 + nd]);
            }
        } else
            nd = mb__spec_lookup(h, hn, lo, k, seq + 1);
        /* The check keeps the state after each byte when the last round rejected a draft (rolling back
           is then one copy), else it saves the state once and feeds: keeping costs about a tenth of the
           feed, a rollback's second feed more (docs/BENCHMARKS.md), and rounds tend to repeat. */
        keeping = nd > 0 && rejected;
        if (nd == 0) memcpy(lg, mb_stream_step(s, seq[0]), sizeof(float) * (size_t)V); /* nothing drafted: one step */
        else if (keeping) st = mb__stream_feed_keep(s, seq, nd + 1, keep, lg);
        else mb__spec_state(s, keep, 1), st = mb_stream_feed(s, seq, nd + 1, lg);
        if (st != MB_STATUS_OK) break;
        for (a = 0; a < nd; a++) { /* lg row a: the target's logits for seq[1 + a] */
            const int x = seq[1 + a];
            float z = 0.0f;
            if (greedy) { if (mb__argmax(lg + a * V, V) == x) continue; break; }
            mb__sample_probs(p, lg + a * V, temperature, top_k);
            if (mb__rng_uniform(rng) * (ds ? q[a * V + x] : 1.0f) < p[x]) continue; /* accepted with probability min(1, p/q) */
            for (v = 0; v < V; v++) z += p[v] = fmaxf(0.0f, p[v] - (ds ? q[a * V + v] : (float)(v == x)));
            if (z > 0.0f) for (v = 0; v < V; v++) p[v] /= z;
            else mb__sample_probs(p, lg + a * V, temperature, top_k); /* p == q up to rounding */
            break;
        }
        seq[1 + a] = (uint8_t)(a < nd && !greedy ? mb__draw(p, rng) : mb_sample_byte(lg + a * V, temperature, top_k, rng));
        o->rounds++, o->drafted += nd, o->accepted += a;
        for (j = 1; j <= a + 1 && done < n && !stop; j++) {
            h[hn++] = seq[j];
            if (out) out[done] = seq[j];
            if (generated) *generated = done + 1;
            done++;
            stop = on_byte && on_byte(user, seq[j]);
        }
        /* the target's state after seq[0..m): the next round feeds seq[1 + a] first; at the end plain's,
           every byte drawn fed.  Kept states stand up to a + 1 (past them the check read rejected drafts). */
        m = stop || done == n ? j : a + 1;
        f = keeping ? (m < a + 1 ? m : a + 1) : nd + 1; /* the bytes of seq the state holds now */
        if (keeping) mb__spec_state(s, keep + (int64_t)(f - 1) * s->state_floats, 0);
        if ((st = mb__spec_sync(s, keep, f, a + 1, seq, m)) != MB_STATUS_OK || stop || done == n) break;
        if (nd > 0) rejected = a < nd;
        if (ds && (st = mb__spec_sync(ds, dsnap, nd, a + 1, seq, a + 1)) != MB_STATUS_OK) break;
        seq[0] = seq[1 + a];
        if (!o->fixed && nd > 0) k = a == nd ? (k + 2 < kmax ? k + 2 : kmax) : (k > 1 ? k - 1 : 1);
    }
    MB_FREE(h);
    MB_FREE(lg);
    return st;
}

/* ========================================================== checkpoints */
#define MB__CKPT_MAGIC 0x4D425954
#define MB__CKPT_VERSION 1
#define MB__CKPT_HEADER_INTS 256  /* the int32 header before the parameters (1024 bytes) */
#define MB__STATE_MAGIC 0x4D425453 /* "STBM" little-endian: the training-state block */
#define MB__STATE_HEAD 40          /* its magic, version, step, data_rng, data_pos, elapsed_s */
#define MB__SETTING_BYTES 32       /* a named setting: its key NUL-padded to 24 bytes, a float64 */
#define MB__MAX_SETTINGS 1024      /* header [14]'s range */
#define MB__SETTING_ONE(...) +1
#define MB__KEY_FITS(ID, field, ...) char ID[sizeof(#field) <= 24 ? 1 : -1];
enum { MB__NUM_SETTINGS = 0 MB_TRAIN_SETTINGS(MB__SETTING_ONE) }; /* MB_FIELD_ 0 .. this-1 */
typedef struct { MB_TRAIN_SETTINGS(MB__KEY_FITS) } mb__setting_keys_fit; /* fails to compile when a key is too long */
/* Files from before the named settings (header [14] 0) hold these 16 float64: frozen. */
static const char *const mb__v1_settings[16] = {"batch", "ctx", "steps", "warmup", "grad_accum", "save_every", "seed",
                                                "schedule", "lr", "weight_decay", "clip", "beta1", "beta2", "eps",
                                                "time_budget", "sequential"};

static int mb__little_endian(void) {
    const uint32_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* Bytes of the training-state block for n parameters and count named settings (0: the 16 of older files). */
static int64_t mb__state_bytes(int64_t n, int count) {
    return MB__STATE_HEAD + (count ? (int64_t)count * MB__SETTING_BYTES : 8 * 16) + 2 * 4 * n;
}

/* Every setting as (key, value): float64 is exact for every integer we store. */
static void mb__settings_pack(unsigned char *o, const mb_train_settings *s) {
    int f;
    memset(o, 0, MB__NUM_SETTINGS * MB__SETTING_BYTES);
    for (f = 0; f < MB__NUM_SETTINGS; f++) {
        const char *key = mb_train_field_desc(f)->key;
        double v = mb_train_field_get(s, NULL, f);
        memcpy(o + f * MB__SETTING_BYTES, key, strlen(key));
        memcpy(o + f * MB__SETTING_BYTES + 24, &v, 8);
    }
}
/* Finite; the integer kinds whole and within 2^53; the switches 0/1. */
static int mb__setting_valid(mb_field_kind k, double v) {
    if (!isfinite(v)) return 0;
    if (k == MB_KIND_NUM) return 1;
    if (v != floor(v) || fabs(v) > 9007199254740992.0) return 0;
    return k == MB_KIND_INT || v == 0 || v == 1;
}
/* count named settings (0: the 16 unnamed ones of older files) over the
   defaults; 0, with the key in bad (25 bytes), when one is unknown, repeated or out of range. */
static int mb__settings_unpack(mb_train_settings *s, const unsigned char *p, int count, char *bad) {
    uint64_t seen = 0;
    int i, f;
    *s = mb_train_settings_default();
    for (i = 0; i < (count ? count : 16); i++) {
        double v;
        const unsigned char *at = count ? p + i * MB__SETTING_BYTES : p + 8 * i;
        memset(bad, 0, 25);
        memcpy(bad, count ? (const char *)at : mb__v1_settings[i], count ? 24 : strlen(mb__v1_settings[i]));
        memcpy(&v, count ? at + 24 : at, 8);
        for (f = 0; f < MB__NUM_SETTINGS && strcmp(bad, mb_train_field_desc(f)->key) != 0; f++) {}
        if (f == MB__NUM_SETTINGS || (seen >> f & 1) || !mb__setting_valid(mb_train_field_desc(f)->kind, v)) return 0;
        seen |= (uint64_t)1 << f;
        mb_train_field_set(s, NULL, f, v);
    }
    return 1;
}

static void mb__header(int32_t *h, const mb_config *c, int with_state, int32_t ranks) {
    memset(h, 0, MB__CKPT_HEADER_INTS * sizeof(int32_t));
    h[0] = MB__CKPT_MAGIC; h[1] = MB__CKPT_VERSION; h[2] = c->vocab_size; h[3] = c->d_model; h[4] = c->n_layer;
    h[5] = c->d_state; h[6] = c->d_conv; h[7] = c->expand; h[8] = c->dt_rank;
    h[9] = c->norm;          /* 0 LayerNorm, 1 RMSNorm */
    h[10] = !c->untied_head; /* 1 tied head, 0 lm_head.weight stored after norm_f */
    h[11] = 0; /* float32 */
    h[12] = with_state;
    h[13] = with_state && ranks > 1 ? ranks : 0;
    h[14] = with_state ? MB__NUM_SETTINGS : 0;
}
/* The rows whose carried state a training state holds, or would ([15]): every rank's. */
static int64_t mb__carry_rows(const mb_train_state *ts) {
    return ts->settings.batch * ts->settings.grad_accum * (ts->ranks > 1 ? ts->ranks : 1);
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
    int32_t header[MB__CKPT_HEADER_INTS];
    unsigned char state_head[MB__STATE_HEAD + MB__NUM_SETTINGS * MB__SETTING_BYTES];
    const void *parts[6];
    int64_t sizes[6], n = m->num_params;
    int np = 0;
    if (!mb__little_endian()) return mb__fail(MB_STATUS_UNSUPPORTED, "checkpoints are little-endian; this host is not");
    mb__header(header, &m->cfg, ts != NULL, ts ? ts->ranks : 0);
    header[15] = ts && ts->carry ? (int32_t)mb__carry_rows(ts) : 0;
    parts[np] = header; sizes[np++] = sizeof header;
    parts[np] = m->params; sizes[np++] = 4 * n;
    if (ts) {
        uint32_t magic = MB__STATE_MAGIC, version = 1;
        memcpy(state_head, &magic, 4);
        memcpy(state_head + 4, &version, 4);
        memcpy(state_head + 8, &ts->step, 8);
        memcpy(state_head + 16, &ts->data_rng, 8);
        memcpy(state_head + 24, &ts->data_pos, 8);
        memcpy(state_head + 32, &ts->elapsed_s, 8);
        mb__settings_pack(state_head + MB__STATE_HEAD, &ts->settings);
        parts[np] = state_head; sizes[np++] = sizeof state_head;
        parts[np] = ts->adam_m; sizes[np++] = 4 * n;
        parts[np] = ts->adam_v; sizes[np++] = 4 * n;
        if (header[15]) { parts[np] = ts->carry; sizes[np++] = 4 * mb_carry_floats(&m->cfg, header[15]); }
    }
    return mb__write_file_atomic(path, np, parts, sizes);
}

MBDEF mb_status mb_model_save(const mb_model *m, const char *path) { return mb_checkpoint_save(path, m, NULL); }

MBDEF void mb_train_state_free(mb_train_state *ts) {
    if (!ts) return;
    MB_FREE(ts->adam_m);
    MB_FREE(ts->adam_v);
    MB_FREE(ts->carry);
    ts->adam_m = ts->adam_v = ts->carry = NULL;
}

/* Checks every header field; fills cfg. */
static mb_status mb__check_header(const int32_t *h, const char *path, mb_config *cfg) {
    int i;
    mb_status s;
    if ((uint32_t)h[0] != MB__CKPT_MAGIC) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: not a mambabyte checkpoint (magic 0x%08x, expected 0x%08x)", path, (unsigned)h[0], MB__CKPT_MAGIC);
    if (h[1] != MB__CKPT_VERSION) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: checkpoint version %d, this build reads version %d", path, h[1], MB__CKPT_VERSION);
    if (h[9] != 0 && h[9] != 1) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: norm kind %d unsupported (0 = LayerNorm, 1 = RMSNorm)", path, h[9]);
    if (h[10] != 0 && h[10] != 1) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: tied-head flag %d unsupported (1 = tied, 0 = lm_head stored)", path, h[10]);
    if (h[11] != 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: parameter dtype %d unsupported (0 = float32)", path, h[11]);
    if (h[12] != 0 && h[12] != 1) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training-state flag %d (must be 0 or 1)", path, h[12]);
    if (h[13] < 0 || h[13] > (1 << 20) || (h[13] != 0 && h[12] != 1))
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: rank count %d (0..2^20, and only with a training state)", path, h[13]);
    if (h[14] < 0 || h[14] > MB__MAX_SETTINGS) /* (and 0 without a state: checked after the size) */
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: named settings count %d (0..%d)", path, h[14], MB__MAX_SETTINGS);
    if (h[15] < 0 || h[15] > (1 << 24) || (h[15] && h[12] != 1))
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: carried rows %d (0..2^24, and only with a training state)", path, h[15]);
    for (i = 16; i < 256; i++)
        if (h[i] != 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: reserved header field [%d] is %d (must be 0)", path, i, h[i]);
    cfg->vocab_size = h[2]; cfg->d_model = h[3]; cfg->n_layer = h[4]; cfg->d_state = h[5];
    cfg->d_conv = h[6]; cfg->expand = h[7]; cfg->dt_rank = h[8]; cfg->norm = h[9]; cfg->untied_head = !h[10];
    if (cfg->dt_rank == 0) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: dt_rank 0 in header", path);
    s = mb_config_validate(cfg);
    if (s != MB_STATUS_OK) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: bad config in header: %s", path, mb_last_error());
    return MB_STATUS_OK;
}

/* The first non-finite value of m's parameters, named by tensor (MB_STATUS_OK when none). */
static mb_status mb__check_params_finite(const mb_model *m, const char *path) {
    int64_t i;
    int t = 0;
    for (i = 0; i < m->num_params && isfinite(m->params[i]); i++) {}
    if (i == m->num_params) return MB_STATUS_OK;
    while (t + 1 < m->ntensors && m->tensors[t + 1].offset <= i) t++;
    return mb__fail(MB_STATUS_NON_FINITE, "%s: parameter %s[%lld] is not finite: the checkpoint is corrupt", path,
                    m->tensors[t].name, (long long)(i - m->tensors[t].offset));
}

/* The training-state block after the parameters (fd is there) into the zeroed ts. */
static mb_status mb__read_state(int fd, mb_train_state *ts, const int32_t *h, const mb_config *cfg, int64_t n, const char *path) {
    unsigned char head[MB__STATE_HEAD + MB__MAX_SETTINGS * MB__SETTING_BYTES];
    int64_t bytes = mb__state_bytes(0, h[14]), i;
    uint32_t magic, version;
    char key[25];
    if (mb__read_all(fd, head, bytes) != bytes) return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path);
    memcpy(&magic, head, 4);
    memcpy(&version, head + 4, 4);
    if (magic != MB__STATE_MAGIC || version != 1)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training-state block has magic 0x%08x version %u", path, magic, version);
    memcpy(&ts->step, head + 8, 8);
    memcpy(&ts->data_rng, head + 16, 8);
    memcpy(&ts->data_pos, head + 24, 8);
    memcpy(&ts->elapsed_s, head + 32, 8);
    ts->ranks = h[13] > 1 ? h[13] : 1;
    if (!mb__settings_unpack(&ts->settings, head + MB__STATE_HEAD, h[14], key))
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: training setting '%s' unknown, repeated or out of range (corrupt checkpoint)", path, key);
    ts->adam_m = (float *)MB_MALLOC((size_t)n * 4);
    ts->adam_v = (float *)MB_MALLOC((size_t)n * 4);
    if (!ts->adam_m || !ts->adam_v) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "optimizer state");
    if (mb__read_all(fd, ts->adam_m, 4 * n) != 4 * n || mb__read_all(fd, ts->adam_v, 4 * n) != 4 * n)
        return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path);
    if (h[15] && (h[15] != mb__carry_rows(ts) || !ts->settings.carry_state))
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: %d carried rows, but batch x grad_accum x ranks is %lld", path, h[15],
                        (long long)mb__carry_rows(ts));
    if (h[15]) {
        int64_t cb = 4 * mb_carry_floats(cfg, h[15]);
        if (!(ts->carry = (float *)MB_MALLOC((size_t)cb))) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "carried state");
        if (mb__read_all(fd, ts->carry, cb) != cb) return mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path);
    }
    if (ts->step < 0 || ts->data_pos < 0 || !isfinite(ts->elapsed_s) || ts->elapsed_s < 0)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: negative step, data position or elapsed time (corrupt checkpoint)", path);
    for (i = 0; i < n; i++) /* a NaN moment would turn the first update's parameters into NaN */
        if (!isfinite(ts->adam_m[i]) || !isfinite(ts->adam_v[i]) || ts->adam_v[i] < 0.0f)
            return mb__fail(MB_STATUS_NON_FINITE, "%s: AdamW moment %lld is not finite (or v < 0): the checkpoint is corrupt", path, (long long)i);
    return MB_STATUS_OK;
}

MBDEF mb_status mb_checkpoint_load(const char *path, mb_model **out, mb_train_state *ts, int *has_state) {
    int32_t h[MB__CKPT_HEADER_INTS];
    struct stat st;
    mb_config cfg;
    mb_model *m = NULL;
    int64_t n, expect, got;
    int fd = -1, with_state = 0;
    mb_status s;
    *out = NULL;
    if (has_state) *has_state = 0;
    if (!mb__little_endian()) return mb__fail(MB_STATUS_UNSUPPORTED, "checkpoints are little-endian; this host is not");
    if (stat(path, &st) != 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot open checkpoint %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return mb__fail(MB_STATUS_IO_ERROR, "checkpoint %s is not a regular file", path);
    fd = open(path, O_RDONLY);
    if (fd < 0) return mb__fail(MB_STATUS_IO_ERROR, "cannot open checkpoint %s: %s", path, strerror(errno));
    got = mb__read_all(fd, h, sizeof h);
    if (got != (int64_t)sizeof h) {
        s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: truncated: %lld bytes, the header alone is %d", path, (long long)(got < 0 ? 0 : got),
                     (int)sizeof h);
        goto done;
    }
    if ((s = mb__check_header(h, path, &cfg)) != MB_STATUS_OK) goto done;
    n = mb_config_num_params(&cfg);
    with_state = h[12];
    if (with_state && ts) memset(ts, 0, sizeof *ts);
    expect = (int64_t)sizeof h + 4 * n + (with_state ? mb__state_bytes(n, h[14]) + 4 * mb_carry_floats(&cfg, h[15]) : 0);
    if ((int64_t)st.st_size != expect) {
        s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: %lld bytes, but its header (d_model %d, %d layers%s) needs %lld: %s", path,
                     (long long)st.st_size, cfg.d_model, cfg.n_layer, with_state ? ", training state" : "", (long long)expect,
                     (int64_t)st.st_size < expect ? "truncated" : "trailing data or a config that does not match");
        goto done;
    }
    if (!with_state && h[14] != 0) {
        s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: %d named settings but no training state", path, h[14]);
        goto done;
    }
    if ((s = mb__model_alloc(&m, &cfg)) != MB_STATUS_OK) goto done;
    if (mb__read_all(fd, m->params, 4 * n) != 4 * n) s = mb__fail(MB_STATUS_IO_ERROR, "%s: read failed", path);
    else s = mb__check_params_finite(m, path);
    if (s == MB_STATUS_OK && with_state && ts) s = mb__read_state(fd, ts, h, &cfg, n, path);
done: /* the one way out */
    close(fd);
    if (s != MB_STATUS_OK) {
        if (with_state && ts) mb_train_state_free(ts);
        mb_model_free(m);
        return s;
    }
    if (has_state) *has_state = with_state && ts;
    *out = m;
    return MB_STATUS_OK;
}

/* This project's checkpoint (its magic first) or a safetensors file (an
   8-byte length, then the JSON header's '{'). */
MBDEF mb_status mb_model_load(mb_model **out, const char *path) {
    unsigned char head[9];
    struct stat st;
    /* only a regular file is opened (a FIFO would block): the rest is the checkpoint loader's error */
    int fd = stat(path, &st) == 0 && S_ISREG(st.st_mode) ? open(path, O_RDONLY) : -1;
    int64_t got = fd >= 0 ? mb__read_all(fd, head, 9) : -1;
    if (fd >= 0) close(fd);
    *out = NULL;
    if (got == 9 && head[8] == '{' && !(head[0] == 0x54 && head[1] == 0x59 && head[2] == 0x42 && head[3] == 0x4D))
        return mb_model_load_safetensors(out, path);
    return mb_checkpoint_load(path, out, NULL, NULL);
}

/* ========================================================== safetensors */
/* The Hugging Face format: an 8-byte little-endian header length N, N bytes
   of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
   "__metadata__": {...}}, then the raw data (offsets from its start).  The
   header is untrusted: the parser below is bounded (length, depth, names,
   dims, tensor count), and every shape and offset is checked against the
   file before a byte of data is read. */
#define MB__ST_MAX_HEADER (100 << 20)
#define MB__ST_MAX_TENSORS 65536
#define MB__ST_MAX_DEPTH 32
#define MB__ST_NAME 128

typedef struct { const char *p, *end; int depth; } mb__json;
typedef struct {
    char name[MB__ST_NAME]; /* without a "backbone." prefix */
    int dtype;              /* 0 F32, 1 BF16, 2 F16, -1 another (dtype_name) */
    char dtype_name[16];
    int ndim;
    int64_t shape[8];
    uint64_t begin, end;
} mb__st_tensor;

static void mb__js_ws(mb__json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}
static int mb__js_eat(mb__json *j, char c) {
    mb__js_ws(j);
    if (j->p < j->end && *j->p == c) { j->p++; return 1; }
    return 0;
}
/* A string into out (cap bytes, NUL-terminated); 0 when malformed or longer.
   \u escapes outside ASCII become '?' (no name we look up has them). */
static int mb__js_string(mb__json *j, char *out, size_t cap) {
    size_t n = 0;
    if (!mb__js_eat(j, '"')) return 0;
    while (j->p < j->end && *j->p != '"') {
        char c = *j->p++;
        if ((unsigned char)c < 0x20) return 0;
        if (c == '\\') {
            if (j->p >= j->end) return 0;
            c = *j->p++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                unsigned v = 0;
                int k;
                if (j->end - j->p < 4) return 0;
                for (k = 0; k < 4; k++) {
                    char h = *j->p++;
                    v = v * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 99);
                    if (v > 0xFFFF) return 0;
                }
                c = v > 0 && v < 0x80 ? (char)v : '?';
                break;
            }
            default: return 0;
            }
        }
        if (out) {
            if (n + 1 >= cap) return 0;
            out[n] = c;
        }
        n++;
    }
    if (j->p >= j->end) return 0;
    j->p++;
    if (out) out[n] = '\0';
    return 1;
}
/* A non-negative integer below 2^53 (sizes and offsets). */
static int mb__js_uint(mb__json *j, uint64_t *v) {
    uint64_t x = 0;
    const char *s;
    mb__js_ws(j);
    s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        x = x * 10 + (uint64_t)(*j->p++ - '0');
        if (x > ((uint64_t)1 << 53)) return 0;
    }
    if (j->p == s || (j->p - s > 1 && *s == '0')) return 0;
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return 0;
    *v = x;
    return 1;
}
/* A number, true/false (1/0) or null (NaN): config.json's scalars. */
static int mb__js_scalar(mb__json *j, double *v) {
    char buf[64];
    size_t n = 0;
    mb__js_ws(j);
    if (j->end - j->p >= 4 && !memcmp(j->p, "true", 4)) { j->p += 4; *v = 1; return 1; }
    if (j->end - j->p >= 5 && !memcmp(j->p, "false", 5)) { j->p += 5; *v = 0; return 1; }
    if (j->end - j->p >= 4 && !memcmp(j->p, "null", 4)) { j->p += 4; *v = NAN; return 1; }
    while (j->p < j->end && n + 1 < sizeof buf && strchr("+-.0123456789eE", *j->p)) buf[n++] = *j->p++;
    buf[n] = '\0';
    if (n == 0) return 0;
    {
        char *e;
        *v = strtod(buf, &e);
        return *e == '\0';
    }
}
/* Skips one value of any kind (depth-limited). */
static int mb__js_skip(mb__json *j) {
    double d;
    mb__js_ws(j);
    if (j->p >= j->end) return 0;
    if (*j->p == '"') return mb__js_string(j, NULL, 0);
    if (*j->p == '{' || *j->p == '[') {
        const char close = *j->p == '{' ? '}' : ']';
        const int obj = close == '}';
        int ok = 1;
        if (++j->depth > MB__ST_MAX_DEPTH) return 0;
        j->p++;
        if (!mb__js_eat(j, close)) {
            do {
                if (obj && (!mb__js_string(j, NULL, 0) || !mb__js_eat(j, ':'))) { ok = 0; break; }
                if (!mb__js_skip(j)) { ok = 0; break; }
            } while (mb__js_eat(j, ','));
            ok = ok && mb__js_eat(j, close);
        }
        j->depth--;
        return ok;
    }
    return mb__js_scalar(j, &d);
}

/* One tensor's record: {"dtype": .., "shape": [..], "data_offsets": [b, e]}
   in any order, other keys skipped.  Returns NULL or what is wrong. */
static const char *mb__st_record(mb__json *j, mb__st_tensor *t) {
    char key[32], dtype[16];
    int have = 0;
    if (!mb__js_eat(j, '{')) return "a tensor entry is not an object";
    if (mb__js_eat(j, '}')) return "a tensor entry is empty";
    do {
        if (!mb__js_string(j, key, sizeof key) || !mb__js_eat(j, ':')) {
            if (!mb__js_skip(j)) return "malformed key in a tensor entry";
            continue;
        }
        if (!strcmp(key, "dtype")) {
            if (!mb__js_string(j, dtype, sizeof dtype)) return "dtype is not a short string";
            t->dtype = !strcmp(dtype, "F32") ? 0 : !strcmp(dtype, "BF16") ? 1 : !strcmp(dtype, "F16") ? 2 : -1;
            snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dtype);
            have |= 1;
        } else if (!strcmp(key, "shape")) {
            uint64_t d;
            if (!mb__js_eat(j, '[')) return "shape is not a list";
            t->ndim = 0;
            if (!mb__js_eat(j, ']')) {
                do {
                    if (t->ndim >= 8 || !mb__js_uint(j, &d) || d > ((uint64_t)1 << 40)) return "shape has more than 8 dims or a bad dim";
                    t->shape[t->ndim++] = (int64_t)d;
                } while (mb__js_eat(j, ','));
                if (!mb__js_eat(j, ']')) return "shape list not closed";
            }
            have |= 2;
        } else if (!strcmp(key, "data_offsets")) {
            if (!mb__js_eat(j, '[') || !mb__js_uint(j, &t->begin) || !mb__js_eat(j, ',') || !mb__js_uint(j, &t->end) ||
                !mb__js_eat(j, ']'))
                return "data_offsets is not [begin, end]";
            have |= 4;
        } else if (!mb__js_skip(j)) {
            return "malformed value in a tensor entry";
        }
    } while (mb__js_eat(j, ','));
    if (!mb__js_eat(j, '}')) return "a tensor entry is not closed";
    if (have != 7) return "a tensor entry lacks dtype, shape or data_offsets";
    return NULL;
}

/* Our tensor-table index of a (prefix-stripped) name, or -1. */
static int mb__st_lookup(const mb_config *c, const char *name) {
    static const char *const layer_names[] = {
#define MB__LNAME(ID, field, nm, ndim, d0, d1, d2, decay) nm,
        MB_LAYER_TENSORS(MB__LNAME)
#undef MB__LNAME
    };
    static const char *const global_names[] = {
#define MB__GNAME(ID, field, nm, ndim, d0, d1, d2, decay) nm,
        MB_TENSORS_BEFORE_LAYERS(MB__GNAME) MB_TENSORS_AFTER_LAYERS(MB__GNAME)
#undef MB__GNAME
    };
    int i;
    if (!strncmp(name, "layers.", 7)) {
        const char *p = name + 7;
        long l = 0;
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
        while (*p >= '0' && *p <= '9' && l < 100000) l = l * 10 + (*p++ - '0');
        if (*p++ != '.' || l >= c->n_layer) return -1;
        for (i = 0; i < (int)MB_NUM_LAYER_TENSORS; i++)
            if (!strcmp(p, layer_names[i])) return mb_tensor_index(c, (int)l, i);
        return -1;
    }
    for (i = 0; i < (int)MB_NUM_GLOBAL_TENSORS; i++)
        if (!strcmp(name, global_names[i])) return mb_tensor_index(c, -1, i);
    return -1;
}

static const mb__st_tensor *mb__st_find(const mb__st_tensor *t, int n, const char *name) {
    int i;
    for (i = 0; i < n; i++)
        if (!strcmp(t[i].name, name)) return &t[i];
    return NULL;
}

static float mb__half_to_float(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float s = (h & 0x8000) ? -1.0f : 1.0f;
    if (e == 0) return s * ldexpf((float)m, -24);
    if (e == 31) return m ? NAN : s * INFINITY;
    return s * ldexpf((float)(m | 1024), e - 25);
}
/* n values of dtype at src (little-endian, any alignment) as float32. */
static void mb__st_convert(float *dst, const uint8_t *src, int dtype, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++) {
        if (dtype == 0) {
            memcpy(&dst[i], src + 4 * i, 4);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            if (dtype == 1) {
                uint32_t b = (uint32_t)h << 16;
                memcpy(&dst[i], &b, 4);
            } else {
                dst[i] = mb__half_to_float(h);
            }
        }
    }
}

/* config.json's fields we check against the shapes (NaN: not given). */
typedef struct { double d_model, n_layer, vocab_size, rms_norm, tie, d_state, d_conv, expand, dt_rank; } mb__st_json_cfg;
static int mb__st_config_object(mb__json *j, mb__st_json_cfg *o, int nested) {
    char key[64];
    if (!mb__js_eat(j, '{')) return 0;
    if (mb__js_eat(j, '}')) return 1;
    do {
        double *slot = NULL, v;
        if (!mb__js_string(j, key, sizeof key)) { if (!mb__js_skip(j) || !mb__js_eat(j, ':') || !mb__js_skip(j)) return 0; continue; }
        if (!mb__js_eat(j, ':')) return 0;
        mb__js_ws(j);
        if (!nested && !strcmp(key, "ssm_cfg") && j->p < j->end && *j->p == '{') {
            if (++j->depth > MB__ST_MAX_DEPTH || !mb__st_config_object(j, o, 1)) return 0;
            j->depth--;
            continue;
        }
        if (!nested && !strcmp(key, "d_model")) slot = &o->d_model;
        else if (!nested && !strcmp(key, "n_layer")) slot = &o->n_layer;
        else if (!nested && !strcmp(key, "vocab_size")) slot = &o->vocab_size;
        else if (!nested && !strcmp(key, "rms_norm")) slot = &o->rms_norm;
        else if (!nested && !strcmp(key, "tie_embeddings")) slot = &o->tie;
        else if (nested && !strcmp(key, "d_state")) slot = &o->d_state;
        else if (nested && !strcmp(key, "d_conv")) slot = &o->d_conv;
        else if (nested && !strcmp(key, "expand")) slot = &o->expand;
        else if (nested && !strcmp(key, "dt_rank")) slot = &o->dt_rank; /* a number; "auto" is skipped */
        if (slot && j->p < j->end && *j->p != '"' && *j->p != '{' && *j->p != '[') {
            if (!mb__js_scalar(j, &v)) return 0;
            *slot = v;
        } else if (!mb__js_skip(j)) {
            return 0;
        }
    } while (mb__js_eat(j, ','));
    return mb__js_eat(j, '}');
}

static mb_status mb__st_check_config_json(const mb_config *c, int had_lm_head, const char *json, int64_t len, const char *what) {
    mb__json j;
    mb__st_json_cfg o;
    const double nan = NAN;
    struct { const char *name; double *given; double have; } f[9];
    int i;
    o.d_model = o.n_layer = o.vocab_size = o.rms_norm = o.tie = o.d_state = o.d_conv = o.expand = o.dt_rank = nan;
    j.p = json; j.end = json + len; j.depth = 0;
    if (!mb__st_config_object(&j, &o, 0)) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: config.json is not a JSON object this reader can parse (near byte %lld)", what, (long long)(j.p - json));
    f[0].name = "d_model"; f[0].given = &o.d_model; f[0].have = c->d_model;
    f[1].name = "n_layer"; f[1].given = &o.n_layer; f[1].have = c->n_layer;
    f[2].name = "vocab_size"; f[2].given = &o.vocab_size; f[2].have = c->vocab_size;
    f[3].name = "rms_norm"; f[3].given = &o.rms_norm; f[3].have = c->norm == MB_NORM_RMSNORM;
    /* tie_embeddings true with a separate lm_head that differs: not what config.json says */
    f[4].name = "tie_embeddings"; f[4].given = &o.tie; f[4].have = !c->untied_head;
    f[5].name = "ssm_cfg.d_state"; f[5].given = &o.d_state; f[5].have = c->d_state;
    f[6].name = "ssm_cfg.d_conv"; f[6].given = &o.d_conv; f[6].have = c->d_conv;
    f[7].name = "ssm_cfg.expand"; f[7].given = &o.expand; f[7].have = c->expand;
    f[8].name = "ssm_cfg.dt_rank"; f[8].given = &o.dt_rank; f[8].have = c->dt_rank;
    for (i = 0; i < 9; i++) {
        if (isnan(*f[i].given)) continue;
        if (i == 4 && *f[i].given == 0 && !c->untied_head && had_lm_head) continue; /* an untied head that equals the embedding */
        if (*f[i].given != f[i].have)
            return mb__fail(MB_STATUS_BAD_FORMAT, "%s: config.json has %s = %g but the tensors give %g", what, f[i].name, *f[i].given, f[i].have);
    }
    return MB_STATUS_OK;
}

/* Parses the header into a tensor list (MB_MALLOC'd into *out, count *n). */
static mb_status mb__st_parse_header(const uint8_t *data, int64_t size, const char *what, mb__st_tensor **out, int *n,
                                     int64_t *data_start) {
    uint64_t hlen = 0;
    mb__json j;
    mb__st_tensor *t;
    int cap, k;
    *out = NULL;
    *n = 0;
    if (size < 8) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: truncated: %lld bytes, a safetensors file starts with an 8-byte header length", what, (long long)size);
    for (k = 7; k >= 0; k--) hlen = (hlen << 8) | data[k];
    if (hlen < 2 || hlen > MB__ST_MAX_HEADER || (int64_t)hlen > size - 8)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header length %llu does not fit the file (%lld bytes; at most %d)", what,
                        (unsigned long long)hlen, (long long)size, MB__ST_MAX_HEADER);
    *data_start = 8 + (int64_t)hlen;
    cap = (int)(hlen / 40 + 1 < MB__ST_MAX_TENSORS ? hlen / 40 + 1 : MB__ST_MAX_TENSORS);
    t = (mb__st_tensor *)MB_MALLOC(sizeof(mb__st_tensor) * (size_t)cap);
    if (!t) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "%s: tensor list", what);
    j.p = (const char *)data + 8; j.end = j.p + hlen; j.depth = 0;
    if (!mb__js_eat(&j, '{')) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header is not a JSON object", what); }
    if (!mb__js_eat(&j, '}')) {
        do {
            char name[MB__ST_NAME];
            const char *err;
            const int64_t at = (int64_t)(j.p - (const char *)data);
            if (!mb__js_string(&j, name, sizeof name) || !mb__js_eat(&j, ':')) {
                MB_FREE(t);
                return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header: bad or over-long (> %d bytes) tensor name near byte %lld", what, MB__ST_NAME - 1, (long long)at);
            }
            if (!strcmp(name, "__metadata__")) {
                if (!mb__js_skip(&j)) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header: malformed __metadata__", what); }
                continue;
            }
            if (*n >= cap) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header lists more than %d tensors", what, cap); }
            memset(&t[*n], 0, sizeof t[*n]);
            memcpy(t[*n].name, strncmp(name, "backbone.", 9) ? name : name + 9, strlen(name) + 1 - (strncmp(name, "backbone.", 9) ? 0 : 9));
            err = mb__st_record(&j, &t[*n]);
            if (err) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header, tensor %s: %s", what, name, err); }
            if (t[*n].dtype < 0) {
                mb_status st = mb__fail(MB_STATUS_UNSUPPORTED, "%s: tensor %s has dtype %s; supported: F32, BF16, F16", what, name, t[*n].dtype_name);
                MB_FREE(t);
                return st;
            }
            (*n)++;
        } while (mb__js_eat(&j, ','));
        if (!mb__js_eat(&j, '}')) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header: JSON object not closed near byte %lld", what, (long long)(j.p - (const char *)data)); }
    }
    mb__js_ws(&j);
    if (j.p != j.end) { MB_FREE(t); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: safetensors header: trailing bytes after the JSON object", what); }
    *out = t;
    return MB_STATUS_OK;
}

/* A tensor's shape must be exactly `want` (ndim and every dim). */
static int mb__st_shape_is(const mb__st_tensor *s, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    const int64_t want[3] = {d0, d1, d2};
    int i;
    if (s->ndim != ndim) return 0;
    for (i = 0; i < ndim; i++)
        if (s->shape[i] != want[i]) return 0;
    return 1;
}
static void mb__st_shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
    int i;
    size_t n = (size_t)snprintf(buf, cap, "(");
    for (i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, ")");
}

/* The config the shapes say: d_model and the vocabulary from the embedding,
   n_layer from the in_proj names, expand, d_state, d_conv, dt_rank from
   layer 0, the norm from layer 0's bias, the head from lm_head.weight. */
static mb_status mb__st_infer_config(const mb__st_tensor *t, int n, const char *what, mb_config *c) {
    const mb__st_tensor *emb = mb__st_find(t, n, "embedding.weight"), *in, *A, *cw, *dt;
    int i;
    memset(c, 0, sizeof *c);
    if (!emb) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: missing tensor embedding.weight (or backbone.embedding.weight)", what);
    if (emb->ndim != 2 || emb->shape[0] != 256 || emb->shape[1] < 1 || emb->shape[1] > 65536)
        return mb__fail(MB_STATUS_UNSUPPORTED, "%s: embedding.weight must be (256, d_model) for a byte model, has %d dims (%lld, ...)", what,
                        emb->ndim, (long long)emb->shape[0]);
    c->vocab_size = 256;
    c->d_model = (int32_t)emb->shape[1];
    for (i = 0; i < n; i++) {
        const char *p = t[i].name;
        long l = 0;
        if (strncmp(p, "layers.", 7)) continue;
        for (p += 7; *p >= '0' && *p <= '9' && l <= 1024; p++) l = l * 10 + (*p - '0');
        if (!strcmp(p, ".mixer.in_proj.weight") && l + 1 > c->n_layer) c->n_layer = (int32_t)(l + 1);
    }
    if (c->n_layer < 1 || c->n_layer > 1024) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: no layers (missing layers.0.mixer.in_proj.weight) or more than 1024", what);
    in = mb__st_find(t, n, "layers.0.mixer.in_proj.weight");
    A = mb__st_find(t, n, "layers.0.mixer.A_log");
    cw = mb__st_find(t, n, "layers.0.mixer.conv1d.weight");
    dt = mb__st_find(t, n, "layers.0.mixer.dt_proj.weight");
    if (!in || !A || !cw || !dt)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: missing tensor layers.0.mixer.%s", what,
                        !in ? "in_proj.weight" : !A ? "A_log" : !cw ? "conv1d.weight" : "dt_proj.weight");
    if (in->ndim != 2 || in->shape[1] != c->d_model || in->shape[0] % (2 * c->d_model) != 0 || in->shape[0] == 0 || in->shape[0] > 32 * (int64_t)c->d_model)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: layers.0.mixer.in_proj.weight is not (2 * expand * d_model, d_model) with d_model %d", what, c->d_model);
    c->expand = (int32_t)(in->shape[0] / (2 * c->d_model));
    if (A->ndim != 2 || A->shape[0] != in->shape[0] / 2 || A->shape[1] < 1 || A->shape[1] > 1 << 20)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: layers.0.mixer.A_log is not (d_inner, d_state)", what);
    c->d_state = (int32_t)A->shape[1];
    if (cw->ndim != 3 || cw->shape[0] != A->shape[0] || cw->shape[1] != 1 || cw->shape[2] < 1 || cw->shape[2] > 1 << 20)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: layers.0.mixer.conv1d.weight is not (d_inner, 1, d_conv)", what);
    c->d_conv = (int32_t)cw->shape[2];
    if (dt->ndim != 2 || dt->shape[0] != A->shape[0] || dt->shape[1] < 1 || dt->shape[1] > 1 << 20)
        return mb__fail(MB_STATUS_BAD_FORMAT, "%s: layers.0.mixer.dt_proj.weight is not (d_inner, dt_rank)", what);
    c->dt_rank = (int32_t)dt->shape[1];
    c->norm = mb__st_find(t, n, "layers.0.norm.bias") ? MB_NORM_LAYERNORM : MB_NORM_RMSNORM;
    c->untied_head = mb__st_find(t, n, "lm_head.weight") != NULL; /* tied again below when it equals the embedding */
    if (mb_config_validate(c) != MB_STATUS_OK) return mb__fail(MB_STATUS_BAD_FORMAT, "%s: the tensor shapes give a config out of range: %s", what, mb_last_error());
    return MB_STATUS_OK;
}

MBDEF mb_status mb_model_from_safetensors(mb_model **out, const uint8_t *data, int64_t size, const char *config_json,
                                          int64_t config_len, const char *what) {
    mb__st_tensor *t = NULL;
    int n = 0, i, nt;
    int64_t data_start = 0, k;
    mb_config c;
    mb_model *m = NULL;
    unsigned char *hit = NULL;
    const mb__st_tensor *lm = NULL;
    mb_status s;
    *out = NULL;
    s = mb__st_parse_header(data, size, what, &t, &n, &data_start);
    if (s == MB_STATUS_OK) s = mb__st_infer_config(t, n, what, &c);
    if (s == MB_STATUS_OK) s = mb__model_alloc(&m, &c);
    if (s != MB_STATUS_OK) { MB_FREE(t); return s; }
    nt = m->ntensors;
    hit = (unsigned char *)MB_MALLOC((size_t)nt);
    if (!hit) { s = mb__fail(MB_STATUS_OUT_OF_MEMORY, "%s: tensor table", what); goto done; }
    memset(hit, 0, (size_t)nt);
    for (i = 0; i < n; i++) {
        const int idx = mb__st_lookup(&c, t[i].name);
        const int64_t es = t[i].dtype == 0 ? 4 : 2;
        const mb_tensor_info *ti;
        int64_t numel = 1;
        char got[96], want[96];
        int d;
        for (d = 0; d < t[i].ndim; d++) /* saturates at 2^40: no overflow, and no file holds that many */
            numel = numel == 0 || t[i].shape[d] <= ((int64_t)1 << 40) / numel ? numel * t[i].shape[d] : ((int64_t)1 << 40) + 1;
        if (t[i].end < t[i].begin || t[i].end > (uint64_t)(size - data_start) || (int64_t)(t[i].end - t[i].begin) != numel * es) {
            s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu] do not hold %lld values of %lld bytes inside the %lld data bytes",
                         what, t[i].name, (unsigned long long)t[i].begin, (unsigned long long)t[i].end, (long long)numel, (long long)es,
                         (long long)(size - data_start));
            goto done;
        }
        if (idx < 0) {
            s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: unexpected tensor %s (not a MambaLMHeadModel tensor of this config: d_model %d, %d layers, %s)",
                         what, t[i].name, c.d_model, c.n_layer, c.norm ? "RMSNorm" : "LayerNorm");
            goto done;
        }
        ti = &m->tensors[idx];
        if (!mb__st_shape_is(&t[i], ti->ndim, ti->shape[0], ti->shape[1], ti->shape[2])) {
            mb__st_shape_str(got, sizeof got, t[i].shape, t[i].ndim);
            mb__st_shape_str(want, sizeof want, ti->shape, ti->ndim);
            s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: tensor %s has shape %s, the config needs %s", what, t[i].name, got, want);
            goto done;
        }
        if (hit[idx]++) { s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: tensor %s listed twice", what, t[i].name); goto done; }
        mb__st_convert(m->params + ti->offset, data + data_start + t[i].begin, t[i].dtype, numel);
        if (!strcmp(t[i].name, "lm_head.weight")) lm = &t[i];
    }
    for (i = 0; i < nt; i++)
        if (!hit[i]) { s = mb__fail(MB_STATUS_BAD_FORMAT, "%s: missing tensor %s", what, m->tensors[i].name); goto done; }
    for (k = 0; k < m->num_params; k++)
        if (!isfinite(m->params[k])) {
            int ti = 0;
            while (ti + 1 < nt && m->tensors[ti + 1].offset <= k) ti++;
            s = mb__fail(MB_STATUS_NON_FINITE, "%s: parameter %s[%lld] is not finite", what, m->tensors[ti].name, (long long)(k - m->tensors[ti].offset));
            goto done;
        }
    if (lm) { /* a head equal to the embedding bit for bit is tied: the smaller layout */
        const int li = mb_tensor_index(&c, -1, MB_TENSOR_LM_HEAD);
        if (li >= 0 && !memcmp(m->params + m->tensors[li].offset, m->w.wte, sizeof(float) * (size_t)(256 * c.d_model))) {
            /* in place, not into a second model (that would hold the weights
               twice): lm_head is the last tensor, so the tied layout is the
               block's prefix; the V x d_model floats after it stay unused */
            c.untied_head = 0;
            m->cfg = c;
            m->ntensors = mb_config_tensors(&c, m->tensors);
            m->num_params = m->tensors[m->ntensors - 1].offset + m->tensors[m->ntensors - 1].numel;
            mb_weights_point(&m->w, m->params, &c, m->tensors);
            mb_weights_point(&m->g, m->grads, &c, m->tensors);
        }
    }
    if (config_json) s = mb__st_check_config_json(&m->cfg, lm != NULL, config_json, config_len, what);
done:
    MB_FREE(hit);
    MB_FREE(t);
    if (s != MB_STATUS_OK) { mb_model_free(m); return s; }
    *out = m;
    return MB_STATUS_OK;
}

MBDEF mb_status mb_model_load_safetensors(mb_model **out, const char *path) {
    mb_mapped_file f, cj;
    char cpath[4096];
    const char *slash = strrchr(path, '/');
    mb_status s;
    int have_cfg = 0;
    *out = NULL;
    s = mb_map_file(&f, path);
    if (s != MB_STATUS_OK) return s;
    if (strlen(path) + 16 < sizeof cpath) { /* config.json beside it, when there */
        struct stat st;
        if (slash) snprintf(cpath, sizeof cpath, "%.*s/config.json", (int)(slash - path), path);
        else snprintf(cpath, sizeof cpath, "config.json");
        if (stat(cpath, &st) == 0 && S_ISREG(st.st_mode)) {
            if (st.st_size > (1 << 20)) { mb_unmap_file(&f); return mb__fail(MB_STATUS_BAD_FORMAT, "%s: larger than 1 MB", cpath); }
            s = mb_map_file(&cj, cpath);
            if (s != MB_STATUS_OK) { mb_unmap_file(&f); return s; }
            have_cfg = 1;
        }
    }
    s = mb_model_from_safetensors(out, f.data, f.size, have_cfg ? (const char *)cj.data : NULL, have_cfg ? cj.size : 0, path);
    if (have_cfg) mb_unmap_file(&cj);
    mb_unmap_file(&f);
    return s;
}

/* The header names mamba_ssm's MambaLMHeadModel (load_state_dict strict):
   "backbone." before every backbone tensor, and lm_head.weight always (a
   copy of the embedding when tied, as its state_dict lists it); the header
   padded with spaces to 8 bytes, as the reference writer does. */
MBDEF mb_status mb_model_save_config_json(const mb_model *m, const char *path) {
    const mb_config *c = &m->cfg;
    char buf[512];
    const void *parts[1];
    int64_t sizes[1];
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"d_model\": %d,\n  \"n_layer\": %d,\n  \"vocab_size\": %d,\n  \"ssm_cfg\": {\"d_state\": %d, \"d_conv\": %d, "
                     "\"expand\": %d, \"dt_rank\": %d},\n  \"rms_norm\": %s,\n  \"residual_in_fp32\": true,\n  \"fused_add_norm\": true,\n"
                     "  \"pad_vocab_size_multiple\": 8,\n  \"tie_embeddings\": %s\n}\n",
                     c->d_model, c->n_layer, c->vocab_size, c->d_state, c->d_conv, c->expand, c->dt_rank,
                     c->norm == MB_NORM_RMSNORM ? "true" : "false", c->untied_head ? "false" : "true");
    parts[0] = buf;
    sizes[0] = n;
    return mb__write_file_atomic(path, 1, parts, sizes);
}

MBDEF mb_status mb_model_save_safetensors(const mb_model *m, const char *path) {
    const mb_config *c = &m->cfg;
    const int tied = !c->untied_head;
    size_t cap = (size_t)(m->ntensors + 2) * 200 + 64, len = 0;
    char *h = (char *)MB_MALLOC(cap);
    uint8_t lenbuf[8];
    const void *parts[4];
    int64_t sizes[4], end = 4 * m->num_params;
    uint64_t hl;
    int i, k;
    mb_status s;
    if (!h) return mb__fail(MB_STATUS_OUT_OF_MEMORY, "safetensors header");
    if (!mb__little_endian()) { MB_FREE(h); return mb__fail(MB_STATUS_UNSUPPORTED, "safetensors is little-endian; this host is not"); }
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (i = 0; i < m->ntensors + tied; i++) {
        const mb_tensor_info *t = &m->tensors[i < m->ntensors ? i : 0]; /* the last: the tied head's copy */
        const char *name = i < m->ntensors ? t->name : "lm_head.weight";
        const int64_t b = i < m->ntensors ? 4 * t->offset : end;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s%s\":{\"dtype\":\"F32\",\"shape\":[", strncmp(name, "lm_head", 7) ? "backbone." : "", name);
        for (k = 0; k < t->ndim; k++) len += (size_t)snprintf(h + len, cap - len, k ? ",%lld" : "%lld", (long long)t->shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%lld,%lld]}", (long long)b, (long long)(b + 4 * t->numel));
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    hl = (uint64_t)len;
    for (k = 0; k < 8; k++) lenbuf[k] = (uint8_t)(hl >> (8 * k));
    parts[0] = lenbuf; sizes[0] = 8;
    parts[1] = h; sizes[1] = (int64_t)len;
    parts[2] = m->params; sizes[2] = end;
    parts[3] = m->w.wte; sizes[3] = 4 * 256 * (int64_t)c->d_model;
    s = mb__write_file_atomic(path, tied ? 4 : 3, parts, sizes);
    MB_FREE(h);
    return s;
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

MBDEF int mb_dataset_split_path(char *out, size_t n, const char *path, const char *split) {
    struct stat st;
    int folder = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    if (folder) snprintf(out, n, "%s/wiki.%s.raw", path, split);
    else snprintf(out, n, "%s", path);
    return folder;
}

MBDEF mb_status mb_dataset_open(mb_dataset *d, const char *path, const char *eval_path) {
    int folder;
    mb_status s;
    memset(d, 0, sizeof *d);
    folder = mb_dataset_split_path(d->train_path, sizeof d->train_path, path, "train");
    if ((s = mb_map_file(&d->train_file, d->train_path)) != MB_STATUS_OK) return s;
    d->train = d->train_file.data;
    d->train_size = d->train_file.size;
    if (!eval_path && !folder) { /* the held-out tail, from a character boundary */
        d->eval_is_tail = 1;
        d->eval_size = d->train_size / 20;
        d->train_size -= d->eval_size;
        for (d->eval = d->train ? d->train + d->train_size : NULL; d->eval_size > 0 && (*d->eval & 0xC0) == 0x80; d->eval++)
            d->eval_size--;
        snprintf(d->eval_path, sizeof d->eval_path, "%s", d->train_path);
        return MB_STATUS_OK;
    }
    if (eval_path) snprintf(d->eval_path, sizeof d->eval_path, "%s", eval_path);
    else mb_dataset_split_path(d->eval_path, sizeof d->eval_path, path, "valid");
    if ((s = mb_map_file(&d->eval_file, d->eval_path)) != MB_STATUS_OK) {
        mb_dataset_close(d);
        return mb__fail(s, "evaluation data: %s", mb_last_error());
    }
    d->eval = d->eval_file.data;
    d->eval_size = d->eval_file.size;
    return MB_STATUS_OK;
}

MBDEF int mb_dataset_describe(char *buf, size_t n, const mb_dataset *d) {
    if (d->eval_is_tail)
        return snprintf(buf, n, "data: training on %s (first 95%%, %lld bytes); evaluating on its last 5%% (%lld bytes)", d->train_path,
                        (long long)d->train_size, (long long)d->eval_size);
    return snprintf(buf, n, "data: training on %s (%lld bytes); evaluating on %s", d->train_path, (long long)d->train_size, d->eval_path);
}

MBDEF void mb_dataset_close(mb_dataset *d) {
    mb_unmap_file(&d->train_file);
    mb_unmap_file(&d->eval_file);
    d->train = d->eval = NULL;
    d->train_size = d->eval_size = 0;
}

MBDEF void mb_batcher_init(mb_batcher *s, const uint8_t *data, int64_t size, uint64_t seed, int sequential) {
    s->data = data;
    s->size = size;
    s->rng = seed ^ 0xD1B54A32D192ED03ull; /* not the model-init stream */
    s->pos = 0;
    s->sequential = sequential;
}

MBDEF mb_status mb_batcher_next(mb_batcher *s, uint8_t *inputs, int32_t *targets, int B, int T) {
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
        if (!inputs) continue; /* mb_batcher_skip */
        w = s->data + start;
        for (t = 0; t < T; t++) {
            inputs[(int64_t)b * T + t] = w[t];
            targets[(int64_t)b * T + t] = w[t + 1];
        }
    }
    return MB_STATUS_OK;
}

MBDEF mb_status mb_batcher_skip(mb_batcher *b, int B, int T) { return mb_batcher_next(b, NULL, NULL, B, T); }

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

/* The evaluated prefix of text: the first max_chars characters (all when
   max_chars < 0), *end bytes and *nchars characters; invalid UTF-8 in it is
   MB_STATUS_BAD_FORMAT naming the offset. */
static mb_status mb__eval_prefix(const uint8_t *text, int64_t len, int64_t max_chars, int64_t *end, int64_t *nchars) {
    *end = *nchars = 0;
    while (*end < len && (max_chars < 0 || *nchars < max_chars)) {
        int k = mb_utf8_char_len(text + *end, len - *end);
        if (k == 0) return mb__fail(MB_STATUS_BAD_FORMAT, "invalid UTF-8 at byte offset %lld (byte 0x%02x)", (long long)*end, text[*end]);
        *end += k;
        (*nchars)++;
    }
    return MB_STATUS_OK;
}

/* The reference: the protocol as written, one mb_stream_step per byte
   (mb_eval_text below is the fast path; the tests and `mambabyte bench`
   compare the two). */
#if defined(__GNUC__)
__attribute__((unused))
#endif
static mb_status mb__eval_text_ref(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                                   mb_eval_result *r, mb_progress_fn progress, void *user) {
    mb_stream *s;
    const float *logits;
    int64_t end = 0, nchars = 0, pos = 0, c;
    mb_status st;
    memset(r, 0, sizeof *r);
    /* validate the whole evaluated prefix first: fail before any work */
    if ((st = mb__eval_prefix(text, len, max_chars, &end, &nchars)) != MB_STATUS_OK) return st;
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

/* The protocol only ever conditions on the true text, so the logits before
   byte i (after 0x00, text[0..i)) all come from parallel passes:
   mb_stream_feed over the inputs 0x00, text[0], ..., text[end-2] in pieces
   of MB__FEED_CHUNK.  Those logits are bit-identical to the stepwise ones
   and are consumed in the same order, so every field of the result
   (nll_bits too: the same double sum in the same order) is equal.
   Here: mb_eval_stream on a validated prefix of end bytes, nchars characters (r zeroed). */
static mb_status mb__eval_stream(mb_stream *s, const uint8_t *text, int64_t end, int64_t nchars, mb_eval_result *r,
                                 mb_progress_fn progress, void *user) {
    uint8_t *in;
    float *lg;
    double *logp; /* per row of a pass: log p(true byte), and the two argmaxes */
    int *am;
    int64_t pos = 0, cend = 0, i0, i;
    mb_status st = MB_STATUS_OK;
    mb_stream_reset(s);
    in = (uint8_t *)MB_MALLOC(MB__FEED_CHUNK);
    lg = (float *)MB_MALLOC((size_t)MB__FEED_CHUNK * 256 * sizeof(float));
    logp = (double *)MB_MALLOC((size_t)MB__FEED_CHUNK * sizeof(double));
    am = (int *)MB_MALLOC((size_t)MB__FEED_CHUNK * 2 * sizeof(int));
    if (!in || !lg || !logp || !am) st = mb__fail(MB_STATUS_OUT_OF_MEMORY, "eval logits");
    for (i0 = 0; st == MB_STATUS_OK && i0 < end; i0 += MB__FEED_CHUNK) {
        int64_t T = end - i0 < MB__FEED_CHUNK ? end - i0 : MB__FEED_CHUNK;
        for (i = 0; i < T; i++) in[i] = i0 + i == 0 ? 0x00 : text[i0 + i - 1];
        st = mb_stream_feed(s, in, T, lg);
        if (st != MB_STATUS_OK) break;
        /* each row's statistics on its own (in parallel); summed below in byte order */
        MB__OMP(parallel for schedule(static))
        for (i = 0; i < T; i++) {
            const float *logits = lg + i * 256;
            mb__row row = mb__row_stats(logits, 256);
            logp[i] = mb__row_logp(&row, logits[text[i0 + i]], 256);
            am[2 * i] = mb__argmax(logits, 128);
            am[2 * i + 1] = mb__argmax(logits, 256);
        }
        for (i = i0; i < i0 + T; i++) {
            uint8_t b = text[i];
            if (i == pos) { /* a character starts: its first byte is the prediction */
                int k = mb_utf8_char_len(text + pos, end - pos);
                r->chars_correct += k == 1 && am[2 * (i - i0)] == b;
                cend = pos + k;
            }
            r->nll_bits -= logp[i - i0] / 0.69314718055994530942;
            r->bytes_correct += am[2 * (i - i0) + 1] == b;
            r->bytes++;
            if (i + 1 == cend) {
                pos = cend;
                r->chars++;
                if (progress && (r->chars % 1024 == 0 || r->chars == nchars)) progress(user, r->chars, nchars);
            }
        }
    }
    MB_FREE(in);
    MB_FREE(lg);
    MB_FREE(logp);
    MB_FREE(am);
    if (st != MB_STATUS_OK) memset(r, 0, sizeof *r); /* out of memory: no partial result */
    return st;
}

MBDEF mb_status mb_eval_text(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                             mb_eval_result *r, mb_progress_fn progress, void *user) {
    return mb_eval_text_ex(m, MB_PRECISION_FP32, text, len, max_chars, r, progress, user);
}
MBDEF mb_status mb_eval_text_ex(const mb_model *m, int precision, const uint8_t *text, int64_t len, int64_t max_chars,
                                mb_eval_result *r, mb_progress_fn progress, void *user) {
    mb_stream *s;
    int64_t end, nchars;
    mb_status st = mb__eval_prefix(text, len, max_chars, &end, &nchars); /* fail before any work */
    memset(r, 0, sizeof *r);
    if (st != MB_STATUS_OK || (st = mb_stream_create_ex(&s, m, precision)) != MB_STATUS_OK) return st;
    st = mb__eval_stream(s, text, end, nchars, r, progress, user);
    mb_stream_free(s);
    return st;
}
MBDEF mb_status mb_eval_stream(mb_stream *s, const uint8_t *text, int64_t len, int64_t max_chars, mb_eval_result *r,
                               mb_progress_fn progress, void *user) {
    int64_t end, nchars;
    mb_status st = mb__eval_prefix(text, len, max_chars, &end, &nchars); /* fail before any work */
    memset(r, 0, sizeof *r);
    return st != MB_STATUS_OK ? st : mb__eval_stream(s, text, end, nchars, r, progress, user);
}

/* Exact greedy characters: a best-first search over UTF-8 prefixes.  A node
   is a proper prefix (a lead byte, or a lead and continuation bytes) with
   its score; `order` packs its bytes big-endian, zero-padded, so comparing
   orders compares byte strings (no two compared ones are prefixes of each
   other), and any multi-byte order is above every ASCII rank (0..127).
   Each expansion is one mb_stream_step from the state after the node's
   prefix minus its last byte, kept in a slot (slot 0: the caller's state).
   Slots needed at most: the caller's, each 3- and 4-byte lead (21) and each
   valid 4-byte lead + second byte (256). */
#define MB__CHAR_SLOTS 278
#define MB__MAX_TOP_CHARS 65536
typedef struct {
    double logp;
    uint32_t order;
    uint8_t b[4];
    int16_t len, need, slot;
} mb__char_node;

static int mb__char_node_better(const mb__char_node *a, const mb__char_node *b) {
    return a->logp > b->logp || (a->logp == b->logp && a->order < b->order);
}
/* a multi-byte candidate (or prefix) against a listed character: equal
   scores go to the smaller code point (an ASCII one always). */
static int mb__char_beats(double logp, uint32_t order, const mb_char_score *e) {
    uint32_t eo;
    if (logp != e->logp) return logp > e->logp;
    if (e->len == 1) return 0;
    eo = ((uint32_t)e->bytes[0] << 24) | ((uint32_t)e->bytes[1] << 16) | ((uint32_t)(e->len > 2 ? e->bytes[2] : 0) << 8) |
         (uint32_t)(e->len > 3 ? e->bytes[3] : 0);
    return order < eo;
}
static float mb__char_key(float x) { return x != x ? -INFINITY : x; } /* NaN ranks last */
static double mb__char_logp(const mb__row *r, float x) {
    double lp = mb__row_logp(r, x, 256);
    return lp != lp ? -INFINITY : lp; /* NaN row */
}
static void mb__char_heap_push(mb__char_node *h, int *n, const mb__char_node *x) {
    int i = (*n)++;
    while (i > 0 && mb__char_node_better(x, &h[(i - 1) / 2])) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = *x;
}
static mb__char_node mb__char_heap_pop(mb__char_node *h, int *n) {
    mb__char_node top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && mb__char_node_better(&h[c + 1], &h[c])) c++;
        if (!mb__char_node_better(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}
/* Inserts a complete multi-byte character into the sorted list out[0..*n) of at most k. */
static void mb__char_list_insert(mb_char_score *out, int *n, int k, const mb__char_node *x) {
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && mb__char_beats(x->logp, x->order, &out[i - 1])) { out[i] = out[i - 1]; i--; }
    memcpy(out[i].bytes, x->b, 4);
    out[i].len = x->len;
    out[i].logp = x->logp;
}

/* The search; *steps (may be NULL) gets the number of stream steps taken. */
static mb_status mb__top_chars(mb_stream *s, const float *logits, int k, mb_char_score *out, int64_t *steps) {
    float root[256], saved_logits[256];
    float *slots[MB__CHAR_SLOTS];
    mb__char_node *heap = NULL;
    int nslots = 0, nheap = 0, cap = 0, nout = 0, i, j, b;
    int64_t nsteps = 0;
    size_t state_bytes = (size_t)s->state_floats * sizeof(float);
    mb_status st = MB_STATUS_OK;
    mb__row row;
    unsigned char ascii[128];
    if (steps) *steps = 0;
    if (k < 1 || k > MB__MAX_TOP_CHARS) return mb__fail(MB_STATUS_INVALID_ARGUMENT, "k %d out of range [1, %d]", k, MB__MAX_TOP_CHARS);
    memcpy(root, logits, sizeof root); /* logits may be s's own buffer */
    row = mb__row_stats(root, 256);
    /* the ASCII characters in logit order (the first of equal maxima first, NaN last) */
    for (i = 0; i < 128; i++) {
        int ka = k < 128 ? k : 128;
        float x = root[i] != root[i] ? -INFINITY : root[i];
        if (nout == ka && !(x > mb__char_key(root[ascii[ka - 1]]))) continue;
        for (j = nout < ka ? nout++ : ka - 1; j > 0 && x > mb__char_key(root[ascii[j - 1]]); j--) ascii[j] = ascii[j - 1];
        ascii[j] = (unsigned char)i;
    }
    for (i = 0; i < nout; i++) {
        out[i].bytes[0] = ascii[i];
        out[i].bytes[1] = out[i].bytes[2] = out[i].bytes[3] = 0;
        out[i].len = 1;
        out[i].logp = mb__char_logp(&row, root[ascii[i]]);
    }
    /* the lead bytes that can beat the list */
    for (b = 0xC2; b <= 0xF4; b++) {
        mb__char_node x;
        memset(&x, 0, sizeof x);
        x.logp = mb__char_logp(&row, root[b]);
        x.b[0] = (uint8_t)b;
        x.order = (uint32_t)b << 24;
        x.len = 1;
        x.need = (int16_t)(b <= 0xDF ? 2 : b <= 0xEF ? 3 : 4);
        x.slot = 0;
        if (nout == k && !mb__char_beats(x.logp, x.order, &out[k - 1])) continue;
        if (nheap == cap) {
            mb__char_node *grown = (mb__char_node *)MB_MALLOC(sizeof(mb__char_node) * (size_t)(cap = cap ? 2 * cap : 64));
            if (!grown) { st = mb__fail(MB_STATUS_OUT_OF_MEMORY, "character search"); goto done; }
            if (heap) memcpy(grown, heap, sizeof(mb__char_node) * (size_t)nheap);
            MB_FREE(heap);
            heap = grown;
        }
        mb__char_heap_push(heap, &nheap, &x);
    }
    while (nheap > 0) {
        mb__char_node p = mb__char_heap_pop(heap, &nheap);
        const float *lg;
        int lo = 0x80, hi = 0xBF, c, child_slot = -1;
        if (nout == k && !mb__char_beats(p.logp, p.order, &out[k - 1])) break; /* nothing left can */
        if (nslots == 0) { /* the first expansion: keep the caller's state and logits */
            if (!(slots[0] = (float *)MB_MALLOC(state_bytes))) { st = mb__fail(MB_STATUS_OUT_OF_MEMORY, "character search"); goto done; }
            memcpy(slots[0], s->conv_state, state_bytes);
            memcpy(saved_logits, s->logits, sizeof saved_logits);
            nslots = 1;
        } else {
            memcpy(s->conv_state, slots[p.slot], state_bytes);
        }
        lg = mb_stream_step(s, p.b[p.len - 1]);
        nsteps++;
        row = mb__row_stats(lg, 256);
        if (p.len == 1) {
            if (p.b[0] == 0xE0) lo = 0xA0;
            if (p.b[0] == 0xED) hi = 0x9F;
            if (p.b[0] == 0xF0) lo = 0x90;
            if (p.b[0] == 0xF4) hi = 0x8F;
        }
        for (c = lo; c <= hi; c++) {
            mb__char_node x = p;
            x.logp = p.logp + mb__char_logp(&row, lg[c]);
            x.b[p.len] = (uint8_t)c;
            x.order = p.order | ((uint32_t)c << (8 * (3 - p.len)));
            x.len = (int16_t)(p.len + 1);
            if (nout == k && !mb__char_beats(x.logp, x.order, &out[k - 1])) continue;
            if (x.len == x.need) { mb__char_list_insert(out, &nout, k, &x); continue; }
            if (child_slot < 0) { /* the state after this prefix, for its children */
                if (nslots >= MB__CHAR_SLOTS || !(slots[nslots] = (float *)MB_MALLOC(state_bytes))) {
                    st = mb__fail(MB_STATUS_OUT_OF_MEMORY, "character search");
                    goto done;
                }
                memcpy(slots[nslots], s->conv_state, state_bytes);
                child_slot = nslots++;
            }
            x.slot = (int16_t)child_slot;
            if (nheap == cap) {
                mb__char_node *grown = (mb__char_node *)MB_MALLOC(sizeof(mb__char_node) * (size_t)(cap = 2 * cap));
                if (!grown) { st = mb__fail(MB_STATUS_OUT_OF_MEMORY, "character search"); goto done; }
                memcpy(grown, heap, sizeof(mb__char_node) * (size_t)nheap);
                MB_FREE(heap);
                heap = grown;
            }
            mb__char_heap_push(heap, &nheap, &x);
        }
    }
done:
    if (nslots > 0) { /* put the stream back */
        memcpy(s->conv_state, slots[0], state_bytes);
        memcpy(s->logits, saved_logits, sizeof saved_logits);
    }
    for (i = 0; i < nslots; i++) MB_FREE(slots[i]);
    MB_FREE(heap);
    if (steps) *steps = nsteps;
    return st;
}

MBDEF mb_status mb_stream_top_chars(mb_stream *s, const float *logits, int k, mb_char_score *out) {
    return mb__top_chars(s, logits, k, out, NULL);
}

MBDEF mb_status mb_stream_predict_char(mb_stream *s, const float *logits, mb_char_score *out) {
    return mb__top_chars(s, logits, 1, out, NULL);
}

MBDEF mb_status mb_eval_text_exact(const mb_model *m, const uint8_t *text, int64_t len, int64_t max_chars,
                                   mb_eval_exact_result *r, mb_progress_fn progress, void *user) {
    return mb_eval_text_exact_ex(m, MB_PRECISION_FP32, text, len, max_chars, r, progress, user);
}
MBDEF mb_status mb_eval_text_exact_ex(const mb_model *m, int precision, const uint8_t *text, int64_t len, int64_t max_chars,
                                      mb_eval_exact_result *r, mb_progress_fn progress, void *user) {
    mb_stream *s;
    const float *logits;
    int64_t end = 0, nchars = 0, pos = 0, c;
    mb_status st;
    memset(r, 0, sizeof *r);
    if ((st = mb__eval_prefix(text, len, max_chars, &end, &nchars)) != MB_STATUS_OK) return st; /* validate first */
    if ((st = mb_stream_create_ex(&s, m, precision)) != MB_STATUS_OK) return st;
    logits = mb_stream_step(s, 0x00);
    for (c = 0; c < nchars; c++) {
        int k = mb_utf8_char_len(text + pos, end - pos), j, hit;
        mb_char_score guess;
        int64_t steps;
        if ((st = mb__top_chars(s, logits, 1, &guess, &steps)) != MB_STATUS_OK) { mb_stream_free(s); return st; }
        r->search_steps += steps;
        hit = guess.len == k && memcmp(guess.bytes, text + pos, (size_t)k) == 0;
        r->exact_correct += hit;
        r->exact_multibyte += guess.len > 1;
        r->exact_multibyte_correct += guess.len > 1 && hit;
        r->base.chars_correct += k == 1 && mb__argmax(logits, 128) == text[pos];
        for (j = 0; j < k; j++) {
            uint8_t b = text[pos + j];
            mb__row row = mb__row_stats(logits, 256);
            r->base.nll_bits -= mb__row_logp(&row, logits[b], 256) / 0.69314718055994530942;
            r->base.bytes_correct += mb__argmax(logits, 256) == b;
            r->base.bytes++;
            logits = mb_stream_step(s, b);
        }
        pos += k;
        r->base.chars++;
        if (progress && (r->base.chars % 1024 == 0 || r->base.chars == nchars)) progress(user, r->base.chars, nchars);
    }
    mb_stream_free(s);
    return MB_STATUS_OK;
}

MBDEF int mb_eval_describe(char *buf, size_t n, const char *label, const mb_eval_exact_result *r, int exact, double seconds) {
    const mb_eval_result *b = &r->base;
    double chars = b->chars ? (double)b->chars : 1.0, bytes = b->bytes ? (double)b->bytes : 1.0;
    double rate = seconds > 0 ? (double)b->chars / seconds : 0.0;
    if (exact)
        return snprintf(buf, n, "eval on %s: %lld chars, %lld bytes\n"
                        "  char accuracy (ASCII rule)  %.4f   argmax over bytes 0..127, the benchmark protocol\n"
                        "  char accuracy (exact rule)  %.4f   argmax over all characters: %lld multi-byte predictions, %lld right\n"
                        "  bits per byte               %.4f\n  byte accuracy               %.4f\n"
                        "  %.0f chars/s (%.1f s), %lld extra steps for the exact rule", label, (long long)b->chars,
                        (long long)b->bytes, (double)b->chars_correct / chars, (double)r->exact_correct / chars,
                        (long long)r->exact_multibyte, (long long)r->exact_multibyte_correct, b->nll_bits / bytes,
                        (double)b->bytes_correct / bytes, rate, seconds, (long long)r->search_steps);
    return snprintf(buf, n, "eval on %s: %lld chars, %lld bytes\n  char accuracy  %.4f\n  bits per byte  %.4f\n"
                    "  byte accuracy  %.4f\n  %.0f chars/s (%.1f s)", label, (long long)b->chars, (long long)b->bytes,
                    (double)b->chars_correct / chars, b->nll_bits / bytes, (double)b->bytes_correct / bytes, rate, seconds);
}

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
        MB__OMP(parallel for schedule(static) if (ti->numel > MB__OMP_MIN_WORK))
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

/* ============================================================== trainer */
/* carry_state's rows of all ranks (each updates its own), from zero. */
static mb_status mb__carry_zero(mb_trainer *t, int ranks) {
    MB_FREE(t->st.carry);
    t->st.carry = (float *)MB_CALLOC((size_t)mb_carry_floats(&t->model->cfg, t->st.settings.batch * t->st.settings.grad_accum * ranks) * 4);
    return t->st.carry ? MB_STATUS_OK : mb__fail(MB_STATUS_OUT_OF_MEMORY, "carried state");
}

MBDEF mb_status mb_trainer_init(mb_trainer *t, mb_model *m, const mb_train_settings *settings, const uint8_t *data,
                                int64_t size, mb_train_state *resume) {
    const mb_train_settings *s = settings;
    int64_t n = m->num_params, tokens;
    memset(t, 0, sizeof *t);
    t->inject_nonfinite_step = t->inject_nonfinite_from = -1;
    t->backend.name = "cpu";
    if (s->batch < 1 || s->ctx < 1 || s->grad_accum < 1 || s->batch > (1 << 20) || s->ctx > (1 << 24))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "batch %lld, ctx %lld, grad_accum %lld must be >= 1", (long long)s->batch,
                        (long long)s->ctx, (long long)s->grad_accum);
    if (size < s->ctx + 1)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "the training data has %lld bytes; ctx %lld needs at least %lld",
                        (long long)size, (long long)s->ctx, (long long)s->ctx + 1);
    t->model = m;
    t->st.settings = *s;
    if (s->warmup == MB_WARMUP_AUTO) t->st.settings.warmup = (int64_t)floor(MB_WARMUP_SHARE * (double)s->steps + 0.5);
    tokens = s->batch * s->ctx;
    t->inputs = (uint8_t *)MB_MALLOC((size_t)tokens);
    t->targets = (int32_t *)MB_MALLOC((size_t)tokens * sizeof(int32_t));
    if (!t->inputs || !t->targets) { mb_trainer_free(t); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "batch buffers"); }
    mb_batcher_init(&t->batcher, data, size, (uint64_t)s->seed, s->sequential != 0);
    t->st.ranks = 1;
    if (s->grad_accum > 1 && !(t->grad_acc = (float *)MB_MALLOC((size_t)n * sizeof(float)))) {
        mb_trainer_free(t);
        return mb__fail(MB_STATUS_OUT_OF_MEMORY, "gradient accumulator");
    }
    if (resume) {
        t->st.step = resume->step;
        t->st.ranks = resume->ranks > 1 ? resume->ranks : 1;
        t->st.elapsed_s = resume->elapsed_s;
        t->st.adam_m = resume->adam_m;
        t->st.adam_v = resume->adam_v;
        resume->adam_m = resume->adam_v = NULL;
        t->batcher.rng = resume->data_rng;
        t->batcher.pos = resume->data_pos;
        t->st.carry = s->carry_state ? resume->carry : NULL; /* none saved: the rows start from zero */
        if (t->st.carry) resume->carry = NULL;
    }
    if (s->carry_state && !t->st.carry && mb__carry_zero(t, t->st.ranks) != MB_STATUS_OK) { mb_trainer_free(t); return MB_STATUS_OUT_OF_MEMORY; }
    if (!resume) {
        t->st.adam_m = (float *)MB_MALLOC((size_t)n * sizeof(float));
        t->st.adam_v = (float *)MB_MALLOC((size_t)n * sizeof(float));
        if (t->st.adam_m) memset(t->st.adam_m, 0, (size_t)n * sizeof(float));
        if (t->st.adam_v) memset(t->st.adam_v, 0, (size_t)n * sizeof(float));
    }
    if (!t->st.adam_m || !t->st.adam_v) { mb_trainer_free(t); return mb__fail(MB_STATUS_OUT_OF_MEMORY, "optimizer state"); }
    return MB_STATUS_OK;
}

MBDEF int mb_trainer_poisoned(const mb_trainer *t) {
    return t->st.step == t->inject_nonfinite_step || (t->inject_nonfinite_from >= 0 && t->st.step >= t->inject_nonfinite_from);
}

/* The data-parallel processes training now (the step's rows are B x grad_accum x this). */
static int mb__ranks(const mb_trainer *t) { return t->comm ? t->comm->size : 1; }

/* A resumed run keeps its rank count: the batches and sums depend on it. */
static mb_status mb__check_ranks(const mb_trainer *t, int size) {
    if (t->st.step > 0 && t->st.ranks != size)
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "the checkpoint was trained on %d rank%s: resume it with %s%d", (int)t->st.ranks,
                        t->st.ranks == 1 ? "" : "s", t->st.ranks == 1 ? "one process, -np " : "mpirun -np ", (int)t->st.ranks);
    return MB_STATUS_OK;
}

MBDEF mb_status mb_trainer_set_comm(mb_trainer *t, const mb_train_comm *comm) {
    int size = comm ? comm->size : 1;
    if (t->backend.step) return mb__fail(MB_STATUS_UNSUPPORTED, "the communicator goes on before the backend (%s is attached)", t->backend.name);
    if (comm && (comm->size < 1 || comm->rank < 0 || comm->rank >= comm->size || !comm->sum_floats || !comm->sum_doubles ||
                 !comm->broadcast))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "communicator: rank %d of %d, or a function missing", comm->rank, comm->size);
    if (mb__check_ranks(t, size) != MB_STATUS_OK) return MB_STATUS_INVALID_ARGUMENT;
    if (t->st.settings.carry_state && size != t->st.ranks && mb__carry_zero(t, size) != MB_STATUS_OK) return MB_STATUS_OUT_OF_MEMORY;
    t->comm = comm;
    t->st.ranks = size;
    return MB_STATUS_OK;
}

static mb_status mb__comm_fail(const mb_trainer *t, mb_status s) {
    return s == MB_STATUS_OK ? s : mb__fail(s, "data-parallel: %s", t->comm->last_error ? t->comm->last_error() : "communication failed");
}

/* carry_state's windows: row r of the step's R (over all ranks, as one process orders them) owns a
   cursor from r (size - T) / R, one window of T further each step; past the end it starts again
   from 0 with its state reset. */
static void mb__carry_draw(mb_trainer *t, int64_t k) {
    const mb_train_settings *s = &t->st.settings;
    const mb_config *c = &t->model->cfg;
    const int64_t B = s->batch, T = s->ctx, n = t->batcher.size, R = B * s->grad_accum * mb__ranks(t);
    const int64_t Di = (int64_t)c->d_model * c->expand, S = c->d_state, K = c->d_conv, i = t->st.step;
    int64_t b, l, t0;
    t->carry_mb = t->st.carry + k * mb_carry_floats(c, B);
    for (b = 0; b < B; b++) {
        int64_t start = (k * B + b) * (n - T) / R, first = (n - T - 1 - start) / T + 1, pass = (n - T - 1) / T + 1;
        int64_t pos = i < first ? start + i * T : (i - first) % pass * T;
        for (l = 0; l < c->n_layer && i >= first && pos == 0; l++) { /* a new pass: from zero */
            float *h = t->carry_mb + l * B * (S + K) * Di;
            memset(h + b * S * Di, 0, sizeof(float) * (size_t)(S * Di));
            memset(h + B * S * Di + b * K * Di, 0, sizeof(float) * (size_t)(K * Di));
        }
        for (t0 = 0; t0 < T; t0++) {
            t->inputs[b * T + t0] = t->batcher.data[pos + t0];
            t->targets[b * T + t0] = t->batcher.data[pos + t0 + 1];
        }
    }
}

/* Before a save: every rank's carried rows on every rank, so that rank 0 saves them all (the others'
   rows enter the sum as -0, which adds nothing, not even a zero's sign). */
static mb_status mb__carry_gather(mb_trainer *t) {
    const int64_t mine = mb_carry_floats(&t->model->cfg, t->st.settings.batch * t->st.settings.grad_accum);
    int64_t i;
    if (!t->comm || t->comm->size == 1 || !t->st.settings.carry_state) return MB_STATUS_OK;
    for (i = 0; i < mine * t->comm->size; i++) if (i / mine != t->comm->rank) t->st.carry[i] = -0.0f;
    return mb__comm_fail(t, t->comm->sum_floats(t->comm->impl, t->st.carry, mine * t->comm->size));
}

MBDEF mb_status mb_trainer_draw(mb_trainer *t, int64_t k, int *mine) {
    const mb_train_settings *s = &t->st.settings;
    *mine = k / s->grad_accum == (t->comm ? t->comm->rank : 0);
    if (s->carry_state) {
        if (*mine) mb__carry_draw(t, k);
        return MB_STATUS_OK;
    }
    return *mine ? mb_batcher_next(&t->batcher, t->inputs, t->targets, (int)s->batch, (int)s->ctx)
                 : mb_batcher_skip(&t->batcher, (int)s->batch, (int)s->ctx);
}

/* The CPU's kernels: each micro-batch from fresh gradients, summed in
   order (the running sum added to it: the same sum whether the
   micro-batches run here or on other ranks). */
static mb_status mb__cpu_micro_batch(mb_trainer *t, int first, double *loss_sum) {
    const mb_train_settings *s = &t->st.settings;
    mb_model *m = t->model;
    int64_t i, n = m->num_params;
    float loss;
    mb_status st;
    if (!first) memcpy(t->grad_acc, m->grads, (size_t)n * sizeof(float));
    mb_model_zero_grad(m);
    mb_model_set_carry(m, t->st.settings.carry_state ? t->carry_mb : NULL);
    st = mb_model_forward(m, t->inputs, t->targets, (int)s->batch, (int)s->ctx, &loss);
    if (st == MB_STATUS_OK) st = mb_model_backward(m);
    mb_model_set_carry(m, NULL);
    if (st != MB_STATUS_OK) return st;
    if (!first)
        for (i = 0; i < n; i++) m->grads[i] += t->grad_acc[i];
    *loss_sum = first ? loss : *loss_sum + loss;
    return MB_STATUS_OK;
}
static mb_status mb__cpu_sum_ranks(mb_trainer *t, double *loss_sum) {
    double c0 = mb_clock_seconds();
    mb_status st = mb__comm_fail(t, t->comm->sum_floats(t->comm->impl, t->model->grads, t->model->num_params));
    if (st == MB_STATUS_OK) st = mb__comm_fail(t, t->comm->sum_doubles(t->comm->impl, loss_sum, 1));
    t->comm_s += mb_clock_seconds() - c0;
    return st;
}
static mb_status mb__cpu_update(mb_trainer *t, double lr, float scale, int poison, double *loss_sum, double *grad_norm) {
    const mb_train_settings *s = &t->st.settings;
    mb_model *m = t->model;
    int64_t n = m->num_params, i;
    if (scale != 1.0f) /* the mean over micro-batches, not their sum */
        for (i = 0; i < n; i++) m->grads[i] *= scale;
    if (poison) m->grads[0] = NAN;
    *grad_norm = mb_grad_norm(m->grads, n);
    if (isfinite((float)(*loss_sum * scale)) && isfinite(*grad_norm)) { /* the guard */
        float coef = mb_clip_coef(*grad_norm, s->clip);
        if (coef < 1.0f)
            for (i = 0; i < n; i++) m->grads[i] *= coef;
        mb_adamw_update(m, t->st.adam_m, t->st.adam_v, t->st.step + 1, lr, s->beta1, s->beta2, s->eps, s->weight_decay);
    }
    return MB_STATUS_OK;
}
static const mb_step_kernels mb__cpu_kernels = {mb__cpu_micro_batch, mb__cpu_sum_ranks, mb__cpu_update};

/* A backend's failure with its own detail, where it keeps one. */
static mb_status mb__backend_fail(const mb_trainer *t, mb_status s) {
    return s != MB_STATUS_OK && t->backend.last_error ? mb__fail(s, "%s", t->backend.last_error()) : s;
}

/* The update and the result: a non-finite step changes nothing but the step count. */
static mb_status mb__finish_step(mb_trainer *t, const mb_step_kernels *k, double lr, double loss_sum, mb_step_result *r) {
    const int64_t total = t->st.settings.grad_accum * mb__ranks(t);
    mb_status st;
    memset(r, 0, sizeof *r);
    r->lr = lr;
    st = k->update(t, lr, 1.0f / (float)total, mb_trainer_poisoned(t), &loss_sum, &r->grad_norm);
    if (st != MB_STATUS_OK) return mb__backend_fail(t, st);
    r->loss = (float)(loss_sum / (double)total);
    r->applied = isfinite(r->loss) && isfinite(r->grad_norm);
    t->st.step++;
    return MB_STATUS_OK;
}

MBDEF mb_status mb_trainer_step_on(mb_trainer *t, const mb_step_kernels *k, double lr, mb_step_result *r) {
    const int64_t total = t->st.settings.grad_accum * mb__ranks(t);
    int64_t i, mine = 0;
    double loss_sum = 0.0;
    int own;
    mb_status st;
    for (i = 0; i < total; i++) { /* this rank's micro-batches of the one seeded stream */
        if ((st = mb_trainer_draw(t, i, &own)) != MB_STATUS_OK) return st;
        if (own && (st = k->micro_batch(t, mine++ == 0, &loss_sum)) != MB_STATUS_OK) return mb__backend_fail(t, st);
    }
    if (t->comm && (st = k->sum_ranks(t, &loss_sum)) != MB_STATUS_OK) return mb__backend_fail(t, st);
    return mb__finish_step(t, k, lr, loss_sum, r);
}

MBDEF mb_status mb_trainer_step(mb_trainer *t, double lr, mb_step_result *r) {
    return t->backend.step ? mb__backend_fail(t, t->backend.step(t, lr, r)) : mb_trainer_step_on(t, &mb__cpu_kernels, lr, r);
}

MBDEF mb_status mb_trainer_apply(mb_trainer *t, double lr, float loss, mb_step_result *r) {
    return mb__finish_step(t, &mb__cpu_kernels, lr, (double)loss * (double)(t->st.settings.grad_accum * mb__ranks(t)), r);
}

MBDEF mb_status mb_trainer_sync(mb_trainer *t) {
    mb_status s;
    if (!t->backend.sync) return MB_STATUS_OK;
    s = t->backend.sync(t);
    return mb__backend_fail(t, s);
}

MBDEF mb_status mb_trainer_save(mb_trainer *t, const char *path) {
    mb_train_state st;
    mb_status s = mb_trainer_sync(t);
    if (s != MB_STATUS_OK) return s;
    st = t->st;
    st.data_rng = t->batcher.rng;
    st.data_pos = t->batcher.pos;
    return mb_checkpoint_save(path, t->model, &st);
}

MBDEF void mb_trainer_free(mb_trainer *t) {
    if (t->backend.release) t->backend.release(t);
    memset(&t->backend, 0, sizeof t->backend);
    MB_FREE(t->grad_acc);
    t->grad_acc = NULL;
    MB_FREE(t->inputs);
    MB_FREE(t->targets);
    mb_train_state_free(&t->st);
    t->inputs = NULL;
    t->targets = NULL;
}

/* ============================================================ train loop */
MBDEF mb_train_settings mb_train_settings_default(void) {
    mb_train_settings s;
    memset(&s, 0, sizeof s); /* padding too, so settings compare with memcmp */
#define MB__SETTING_DEFAULT(ID, field, kind, flag, lo, hi, dflt, ...) s.field = (MB__CTYPE_##kind)(dflt);
    MB_TRAIN_SETTINGS(MB__SETTING_DEFAULT)
#undef MB__SETTING_DEFAULT
    return s;
}

MBDEF int mb_train_settings_for_budget(mb_train_settings *s, uint32_t given, char *why, size_t n) {
    /* the best of six at 60 s on English text, confirmed against the
       defaults at 300 s (docs/RESULTS.md); it serves every budget until
       other budgets are measured */
    const int64_t batch = 4, ctx = 256, steps = 1000000;
    const double lr = 2e-3;
    char set[160] = "";
    int changed = 0;
    size_t k = 0;
    if (why && n) why[0] = 0;
    if (!(s->time_budget > 0)) return 0;
    if (!(given & MB_GIVEN(MB_FIELD_SCHEDULE)) && !s->schedule) {
        s->schedule = 1; changed++; mb__appendf(set, sizeof set, &k, " --schedule time");
    }
    if (!(given & MB_GIVEN(MB_FIELD_LR)) && s->lr != lr) {
        s->lr = lr; changed++; mb__appendf(set, sizeof set, &k, " --lr %g", lr);
    }
    if (!(given & MB_GIVEN(MB_FIELD_BATCH)) && s->batch != batch) {
        s->batch = batch; changed++; mb__appendf(set, sizeof set, &k, " --batch %lld", (long long)batch);
    }
    if (!(given & MB_GIVEN(MB_FIELD_CTX)) && s->ctx != ctx) {
        s->ctx = ctx; changed++; mb__appendf(set, sizeof set, &k, " --ctx %lld", (long long)ctx);
    }
    if (!(given & MB_GIVEN(MB_FIELD_STEPS)) && s->schedule && s->steps < steps) { /* the budget, not the steps, ends it */
        s->steps = steps; changed++; mb__appendf(set, sizeof set, &k, " --steps %lld", (long long)steps);
    }
    if (changed && why)
        snprintf(why, n, "time budget %g s, so%s: the short-budget recipe measured on a 2-core CPU (docs/RESULTS.md); "
                 "the flags you gave are kept", s->time_budget, set);
    return changed;
}

#define MB__FIELD_INFO(ID, field, kind, flag, lo, hi, dflt, role, help) \
    {flag, #field, MB_KIND_##kind, lo, hi, help, (int64_t)offsetof(mb_train_settings, field)},
#define MB__MODEL_INFO(ID, field, kind, flag, lo, hi, dflt, role, help) {flag, #field, MB_KIND_##kind, lo, hi, help, -1},
static const mb_train_field_info mb__fields[MB_FIELD_COUNT] = {MB_TRAIN_SETTINGS(MB__FIELD_INFO) MB_TRAIN_MODEL_FIELDS(MB__MODEL_INFO)};
/* The resume roles (see MB_TRAIN_SETTINGS) by field. */
enum { MB__ROLE_TRAJ, MB__ROLE_STOP, MB__ROLE_BUDGET, MB__ROLE_MODEL };
#define MB__FIELD_ROLE(ID, field, kind, flag, lo, hi, dflt, role, help) MB__ROLE_##role,
static const unsigned char mb__roles[MB_FIELD_COUNT] = {MB_TRAIN_SETTINGS(MB__FIELD_ROLE) MB_TRAIN_MODEL_FIELDS(MB__FIELD_ROLE)};

MBDEF int mb_train_field_count(void) { return MB_FIELD_COUNT; }
MBDEF const mb_train_field_info *mb_train_field_desc(int f) { return f >= 0 && f < MB_FIELD_COUNT ? &mb__fields[f] : NULL; }
MBDEF const char *mb_train_field_flag(int f) { return f >= 0 && f < MB_FIELD_COUNT ? mb__fields[f].flag : NULL; }

/* Exact for every stored integer (< 2^53). */
MBDEF double mb_train_field_get(const mb_train_settings *s, const mb_config *cfg, int f) {
#define MB__GET(ID, field, ...) case MB_FIELD_##ID: return (double)s->field;
#define MB__GET_MODEL(ID, field, ...) case MB_FIELD_##ID: return (double)cfg->field;
    switch (f) { MB_TRAIN_SETTINGS(MB__GET) MB_TRAIN_MODEL_FIELDS(MB__GET_MODEL) }
    return NAN; /* out of range */
}

MBDEF mb_status mb_train_field_set(mb_train_settings *s, mb_config *cfg, int f, double v) {
#define MB__SET(ID, field, kind, ...) case MB_FIELD_##ID: s->field = (MB__CTYPE_##kind)v; return MB_STATUS_OK;
#define MB__SET_MODEL(ID, field, ...) case MB_FIELD_##ID: cfg->field = (int32_t)v; return MB_STATUS_OK;
    if (f == MB_FIELD_D_MODEL) cfg->dt_rank = 0; /* derived from the new width */
    switch (f) { MB_TRAIN_SETTINGS(MB__SET) MB_TRAIN_MODEL_FIELDS(MB__SET_MODEL) }
    return mb__fail(MB_STATUS_INVALID_ARGUMENT, "no settings field %d", f);
}

MBDEF mb_status mb_train_settings_resume(mb_train_settings *s, mb_config *cfg, uint32_t given,
                                         const mb_train_settings *ck, const mb_config *ck_cfg) {
    mb_train_settings out = *ck;
    int pass, f;
    for (pass = 0; pass < 2; pass++) /* the model's sizes first */
        for (f = 0; f < MB_FIELD_COUNT; f++) {
            int role = mb__roles[f];
            double mine = mb_train_field_get(s, cfg, f), theirs = mb_train_field_get(ck, ck_cfg, f);
            if (!(given & MB_GIVEN(f)) || (role == MB__ROLE_MODEL) != (pass == 0)) continue;
            /* a time budget is a stop condition, except when the lr follows it */
            if (role == MB__ROLE_STOP || (role == MB__ROLE_BUDGET && ck->schedule == 0)) mb_train_field_set(&out, NULL, f, mine);
            else if (role == MB__ROLE_MODEL && mine != theirs)
                return mb__fail(MB_STATUS_INVALID_ARGUMENT, "%s %.0f differs from the checkpoint's %.0f: resume with the checkpoint's config",
                                mb__fields[f].flag, mine, theirs);
            else if (mine != theirs)
                return mb__fail(MB_STATUS_INVALID_ARGUMENT,
                                "%s is %.17g in the checkpoint but %.17g here: a resumed run keeps what defines its trajectory",
                                mb__fields[f].flag, theirs, mine);
        }
    *s = out;
    *cfg = *ck_cfg;
    return MB_STATUS_OK;
}

MBDEF double mb_clock_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

MBDEF void mb_format_duration(char *buf, size_t n, double seconds) {
    long t = seconds < 0 || !isfinite(seconds) ? 0 : (long)(seconds + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

MBDEF int mb_train_progress_line(char *buf, size_t n, const mb_train_progress *p) {
    char where[96], el[32], eta[32];
    if (!p->applied)
        return snprintf(buf, n, "step %lld: non-finite %s (loss %g, grad norm %g): update skipped (%d in a row)", (long long)p->step,
                        isfinite(p->loss) ? "gradient" : "loss", p->loss, p->grad_norm, p->nonfinite_run);
    mb_format_duration(el, sizeof el, p->elapsed_s);
    mb_format_duration(eta, sizeof eta, p->eta_s);
    if (p->by_time) snprintf(where, sizeof where, "step %lld (%.0f%% of the time budget)", (long long)p->step, 100.0 * p->progress);
    else snprintf(where, sizeof where, "step %lld/%lld", (long long)p->step, (long long)p->steps);
    return snprintf(buf, n, "%s | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %s elapsed | ETA %s", where, p->loss, p->lr,
                    p->grad_norm, p->tokens_per_s, el, eta);
}

/* The share of the time budget that the time schedule warms up over. */
static double mb__warmup_share(const mb_train_settings *s) {
    return s->steps > 0 ? (double)s->warmup / (double)s->steps : MB_WARMUP_SHARE;
}

MBDEF int mb_trainer_describe(char *buf, size_t n, const mb_trainer *t, const char *resumed_from) {
    const mb_config *c = mb_model_config(t->model);
    const mb_train_settings *s = &t->st.settings;
    char steps[96], warm[96];
    size_t k = 0;
    if (n) buf[0] = 0;
    if (s->schedule) { /* the budget's clock, not the step count, shapes the lr and ends the run */
        snprintf(steps, sizeof steps, "until the time budget ends (at most %lld steps)", (long long)s->steps);
        snprintf(warm, sizeof warm, "warm-up over the first %.3g%% of the time budget, cosine to 0 at its end",
                 100.0 * mb__warmup_share(s));
    } else {
        snprintf(steps, sizeof steps, "%lld steps", (long long)s->steps);
        snprintf(warm, sizeof warm, "warm-up %lld steps, cosine to 0", (long long)s->warmup);
    }
    mb__appendf(buf, n, &k, "model: d_model %d, %d layers, d_state %d, d_conv %d, expand %d, dt_rank %d: %lld parameters\n"
                "train: batch %lld x ctx %lld x accum %lld, %s%s, lr %g (%s, %s schedule), "
                "wd %g, clip %g, seed %lld, %s windows, device %s, %d threads", c->d_model, c->n_layer, c->d_state,
                c->d_conv, c->expand, c->dt_rank, (long long)mb_model_num_params(t->model), (long long)s->batch,
                (long long)s->ctx, (long long)s->grad_accum, steps, resumed_from ? " (resumed)" : "", s->lr, warm,
                s->schedule ? "time" : "step", s->weight_decay, s->clip, (long long)s->seed,
                s->sequential ? "sequential" : "random", t->backend.name, mb__max_threads());
    if (s->time_budget > 0) mb__appendf(buf, n, &k, ", time budget %.1f s", s->time_budget);
    if (resumed_from) mb__appendf(buf, n, &k, "\nresumed from %s at step %lld", resumed_from, (long long)t->st.step);
    return (int)k;
}

MBDEF int mb_train_report_describe(char *buf, size_t n, const mb_trainer *t, const mb_train_report *r) {
    size_t k = 0;
    if (n) buf[0] = 0;
    if (r->outcome == MB_TRAIN_TIME_BUDGET)
        mb__appendf(buf, n, &k, "time budget: stopping at step %lld after %.1f s (budget %.1f s)\n", (long long)t->st.step,
                    r->elapsed_s, t->st.settings.time_budget);
    mb__appendf(buf, n, &k, "done: %lld steps, %.0f tokens, final loss %.4f, %.1f s, %.0f tokens/s", (long long)t->st.step,
                r->tokens, r->last_loss, r->elapsed_s, r->tokens_per_s);
    if (t->comm && t->comm->size > 1)
        mb__appendf(buf, n, &k, "\ndata-parallel: %d ranks, %.2f s of %.1f s summing gradients (%.1f%%)", t->comm->size,
                    r->comm_s, r->elapsed_s, 100.0 * r->comm_s / (r->elapsed_s > 0 ? r->elapsed_s : 1));
    return (int)k;
}

/* Seconds counted against the time budget: under the time schedule the
   whole training time (the lr follows its fraction), under the step
   schedule this call's time (a stop condition: "another 5 minutes"). */
static double mb__budget_used(const mb_train_settings *s, double elapsed, double this_run) {
    return s->schedule ? elapsed : this_run;
}

/* The lr of the coming step: by step, or by the elapsed fraction of the budget. */
static double mb__scheduled_lr(const mb_trainer *t, double elapsed) {
    const mb_train_settings *s = &t->st.settings;
    if (s->schedule) return mb_lr_at_fraction(s->lr, elapsed / s->time_budget, mb__warmup_share(s));
    return mb_lr_at_step(s->lr, t->st.step, s->warmup, s->steps);
}

/* Data-parallel runs agree on what rank 0 decided: x (n doubles) <- rank 0's. */
static mb_status mb__agree(const mb_trainer *t, double *x, int n) {
    return t->comm ? mb__comm_fail(t, t->comm->broadcast(t->comm->impl, x, n)) : MB_STATUS_OK;
}

MBDEF mb_status mb_train_run(mb_trainer *t, const mb_train_options *opt, mb_train_report *rep) {
    static const mb_train_options none = {NULL, 0, NULL, NULL};
    const mb_train_settings *s = &t->st.settings;
    const int lead = !t->comm || t->comm->rank == 0; /* the rank that saves and reports */
    const int64_t start = t->st.step, tokens_per_step = s->batch * s->ctx * s->grad_accum * mb__ranks(t);
    const double t0 = mb_clock_seconds(), before = t->st.elapsed_s, budget = s->time_budget, comm0 = t->comm_s;
    double step_est = 0.0;
    int64_t stop_at, last_saved = -1;
    int nonfinite_run = 0;
    mb_status st = MB_STATUS_OK;
    mb_train_report r;
    if (!opt) opt = &none;
    stop_at = opt->stop_at > 0 && opt->stop_at < s->steps ? opt->stop_at : s->steps;
    memset(&r, 0, sizeof r);
    r.outcome = t->st.step >= s->steps ? MB_TRAIN_FINISHED : MB_TRAIN_STOP_AT;
    r.last_loss = NAN;
    if (s->schedule && !(budget > 0))
        return mb__fail(MB_STATUS_INVALID_ARGUMENT, "the time schedule needs a time budget (settings.time_budget > 0)");
    if ((st = mb__check_ranks(t, mb__ranks(t))) != MB_STATUS_OK) return st;
    while (t->st.step < stop_at) {
        mb_train_progress p;
        mb_step_result sr;
        double ts = mb_clock_seconds(), now, run_s, eta_steps, used;
        /* rank 0's clock decides: [0] stop for the budget, [1] the elapsed time the lr follows */
        double before_step[2] = {0.0, before + (ts - t0)}, after_step[2] = {0.0, 0.0};
        before_step[0] = budget > 0 && mb__budget_used(s, before_step[1], ts - t0) + 1.5 * step_est + 0.5 > budget;
        if ((st = mb__agree(t, before_step, 2)) != MB_STATUS_OK) { r.outcome = MB_TRAIN_FAILED; break; }
        if (before_step[0] != 0.0) { r.outcome = MB_TRAIN_TIME_BUDGET; break; }
        st = mb_trainer_step(t, mb__scheduled_lr(t, before_step[1]), &sr);
        if (st != MB_STATUS_OK) { r.outcome = MB_TRAIN_FAILED; break; }
        now = mb_clock_seconds();
        step_est = now - ts;
        run_s = now - t0;
        memset(&p, 0, sizeof p);
        p.step = t->st.step;
        p.steps = s->steps;
        p.loss = sr.loss;
        p.lr = sr.lr;
        p.grad_norm = sr.grad_norm;
        p.applied = sr.applied;
        p.elapsed_s = before + run_s;
        p.tokens_per_s = run_s > 0 ? (double)((t->st.step - start) * tokens_per_step) / run_s : 0.0;
        eta_steps = (double)(s->steps - t->st.step) * run_s / (double)(t->st.step - start);
        used = mb__budget_used(s, p.elapsed_s, run_s);
        p.by_time = budget > 0 && budget - used < eta_steps;
        p.eta_s = p.by_time ? budget - used : eta_steps;
        p.progress = p.by_time ? used / budget : (double)t->st.step / (double)s->steps;
        nonfinite_run = sr.applied ? 0 : nonfinite_run + 1;
        p.nonfinite_run = nonfinite_run;
        if (sr.applied) r.last_loss = sr.loss;
        p.saves = sr.applied && opt->out && s->save_every > 0 && t->st.step % s->save_every == 0 && t->st.step < s->steps;
        if (p.saves && (st = mb__carry_gather(t)) != MB_STATUS_OK) { r.outcome = MB_TRAIN_FAILED; break; }
        if (lead) { /* [0] the callback asks to stop, [1] the save failed */
            after_step[0] = opt->callback && opt->callback(opt->user, &p);
            if (p.saves) {
                t->st.elapsed_s = before + (mb_clock_seconds() - t0);
                st = mb_trainer_save(t, opt->out);
                after_step[1] = st != MB_STATUS_OK;
            }
        }
        if (mb__agree(t, after_step, 2) != MB_STATUS_OK || after_step[1] != 0.0) {
            if (st == MB_STATUS_OK) st = mb__fail(MB_STATUS_IO_ERROR, "rank 0 could not save its checkpoint, or lost contact");
            r.outcome = MB_TRAIN_FAILED;
            break;
        }
        if (p.saves) last_saved = t->st.step;
        if (after_step[0] != 0.0) {
            r.outcome = MB_TRAIN_INTERRUPTED;
            if (nonfinite_run < MB_MAX_NON_FINITE_STEPS) break;
        }
        if (nonfinite_run >= MB_MAX_NON_FINITE_STEPS) {
            r.outcome = MB_TRAIN_NON_FINITE;
            st = mb__fail(MB_STATUS_NON_FINITE, "%d non-finite steps in a row (the last at step %lld): stopped; the last good "
                          "checkpoint is kept", MB_MAX_NON_FINITE_STEPS, (long long)t->st.step);
            break;
        }
        r.outcome = t->st.step >= s->steps ? MB_TRAIN_FINISHED : MB_TRAIN_STOP_AT;
    }
    t->st.elapsed_s = before + (mb_clock_seconds() - t0);
    r.steps_run = t->st.step - start;
    r.elapsed_s = t->st.elapsed_s;
    r.comm_s = t->comm_s - comm0;
    r.tokens = (double)(r.steps_run * tokens_per_step);
    r.tokens_per_s = r.tokens / (mb_clock_seconds() - t0 > 0 ? mb_clock_seconds() - t0 : 1.0);
    if (r.outcome != MB_TRAIN_FAILED) { /* the host holds the final state; a run that ends well is saved (by rank 0) */
        int save = opt->out && r.outcome != MB_TRAIN_NON_FINITE, due = save && last_saved != t->st.step;
        mb_status fin = due ? mb__carry_gather(t) : MB_STATUS_OK;
        if (fin == MB_STATUS_OK) fin = lead && due ? mb_trainer_save(t, opt->out) : mb_trainer_sync(t);
        double failed = fin != MB_STATUS_OK;
        if (mb__agree(t, &failed, 1) != MB_STATUS_OK || failed != 0.0) {
            st = fin != MB_STATUS_OK ? fin : mb__fail(MB_STATUS_IO_ERROR, "rank 0 could not save its checkpoint, or lost contact");
            r.outcome = MB_TRAIN_FAILED;
        } else {
            r.saved = save;
        }
    }
    if (rep) *rep = r;
    return st;
}

#ifdef __cplusplus
}
#endif

#ifdef MB__PUSHED_TARGET
#pragma GCC pop_options
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
