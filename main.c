/* main.c - the mambabyte command line: a thin layer over mambabyte.h.
     mambabyte train | eval | sample | numerics | bench   (--help on each) */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "numerics_report.c"
#include "bench.c"

/* ------------------------------------------------------------- helpers */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_hms(char *buf, size_t n, double s) {
    long t = s < 0 ? 0 : (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A flag table: each command lists its flags; values are parsed and range
   checked here, so every command rejects bad input the same way (exit 2). */
typedef enum { F_INT, F_NUM, F_STR, F_BOOL } flag_kind;
typedef struct {
    const char *name;
    flag_kind kind;
    double lo, hi;      /* range for F_INT / F_NUM */
    const char *help;
    int given;
    double num;
    const char *str;
} flag;

static flag *find_flag(flag *f, const char *name) {
    for (; f->name; f++)
        if (!strcmp(f->name, name)) return f;
    return NULL;
}

static void print_flags(FILE *out, const flag *f) {
    for (; f->name; f++) fprintf(out, "  --%-14s %s\n", f->name, f->help);
}

/* Returns 0 on success, 2 on a bad flag (after printing why and the usage). */
static int parse_flags(const char *cmd, flag *flags, int argc, char **argv, const char *usage_line) {
    int i;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        flag *f;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: %s\n", usage_line);
            print_flags(stdout, flags);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0 || !(f = find_flag(flags, a + 2))) {
            fprintf(stderr, "mambabyte %s: unknown flag '%s'\nusage: %s\n", cmd, a, usage_line);
            print_flags(stderr, flags);
            return 2;
        }
        f->given = 1;
        if (f->kind == F_BOOL) { f->num = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "mambabyte %s: flag '%s' needs a value\nusage: %s\n", cmd, a, usage_line);
            return 2;
        }
        a = argv[++i];
        if (f->kind == F_STR) { f->str = a; continue; }
        errno = 0;
        f->num = strtod(a, &end);
        if (errno || end == a || *end || !isfinite(f->num) || f->num < f->lo || f->num > f->hi ||
            (f->kind == F_INT && f->num != floor(f->num))) {
            fprintf(stderr, "mambabyte %s: bad value '%s' for --%s (%s in [%g, %g])\nusage: %s\n", cmd, a, f->name,
                    f->kind == F_INT ? "an integer" : "a number", f->lo, f->hi, usage_line);
            return 2;
        }
    }
    return 0;
}

static double flag_num(flag *flags, const char *name, double dflt) {
    flag *f = find_flag(flags, name);
    return f && f->given ? f->num : dflt;
}
static const char *flag_str(flag *flags, const char *name, const char *dflt) {
    flag *f = find_flag(flags, name);
    return f && f->given ? f->str : dflt;
}
static int flag_given(flag *flags, const char *name) {
    flag *f = find_flag(flags, name);
    return f && f->given;
}

static void set_threads(flag *flags) {
#ifdef _OPENMP
    if (flag_given(flags, "threads")) omp_set_num_threads((int)flag_num(flags, "threads", 1));
#else
    (void)flags;
#endif
}

/* Resolves --data (a WikiText-style folder or one file) to the files to
   train on and evaluate.  held_out: bytes at the end of the training file
   reserved for evaluation (0 when an evaluation file exists). */
typedef struct {
    char train[4096], eval[4096];
    int eval_is_tail;  /* the last 5% of the training file */
} data_paths;

static int resolve_data(const char *data, const char *eval_data, const char *split, data_paths *p) {
    memset(p, 0, sizeof *p);
    if (is_dir(data)) {
        snprintf(p->train, sizeof p->train, "%s/wiki.train.raw", data);
        snprintf(p->eval, sizeof p->eval, "%s/wiki.%s.raw", data, split);
    } else {
        snprintf(p->train, sizeof p->train, "%s", data);
        if (eval_data) snprintf(p->eval, sizeof p->eval, "%s", eval_data);
        else p->eval_is_tail = 1;
    }
    if (eval_data && is_dir(data)) snprintf(p->eval, sizeof p->eval, "%s", eval_data);
    return 0;
}

/* ---------------------------------------------------------------- NVML */
/* GPU energy from NVML, loaded at run time so no build depends on it. */
typedef struct {
    void *lib;
    void *dev;
    int (*energy)(void *dev, unsigned long long *mj);
} nvml_energy;

static int nvml_open(nvml_energy *e) {
    int (*init)(void);
    int (*handle)(unsigned int, void **);
    memset(e, 0, sizeof *e);
    e->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!e->lib) return 0;
    *(void **)&init = dlsym(e->lib, "nvmlInit_v2");
    *(void **)&handle = dlsym(e->lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&e->energy = dlsym(e->lib, "nvmlDeviceGetTotalEnergyConsumption");
    if (!init || !handle || !e->energy || init() != 0 || handle(0, &e->dev) != 0) {
        dlclose(e->lib);
        memset(e, 0, sizeof *e);
        return 0;
    }
    return 1;
}

static int nvml_read_mj(nvml_energy *e, unsigned long long *mj) { return e->lib && e->energy(e->dev, mj) == 0; }

/* ---------------------------------------------------------------- eval */
typedef struct { double t0; int tty; } progress_state;

static void eval_progress(void *user, int64_t done, int64_t total) {
    progress_state *p = (progress_state *)user;
    double el = now_s() - p->t0, eta = done > 0 ? el * (double)(total - done) / (double)done : 0;
    char a[32], b[32];
    fmt_hms(a, sizeof a, el);
    fmt_hms(b, sizeof b, eta);
    if (p->tty) fprintf(stderr, "\reval %lld/%lld chars (%.0f%%) | %s elapsed | ETA %s   ", (long long)done, (long long)total,
                        100.0 * (double)done / (double)total, a, b);
    else if (done == total || done % (16 * 1024) == 0)
        fprintf(stderr, "eval %lld/%lld chars | %s elapsed | ETA %s\n", (long long)done, (long long)total, a, b);
    if (p->tty && done == total) fprintf(stderr, "\n");
}

/* Evaluates m on text and prints/writes the results; returns an exit code. */
static int run_eval(const mb_model *m, const uint8_t *text, int64_t len, int64_t chars, const char *label,
                    const char *json_path) {
    mb_eval_result r;
    progress_state ps;
    double t0 = now_s(), dt;
    mb_status s;
    ps.t0 = t0;
    ps.tty = isatty(2);
    s = mb_eval_text(m, text, len, chars, &r, eval_progress, &ps);
    if (s != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte eval: %s: %s\n", label, mb_last_error());
        return 1;
    }
    dt = now_s() - t0;
    printf("eval on %s: %lld chars, %lld bytes\n", label, (long long)r.chars, (long long)r.bytes);
    printf("  char accuracy  %.4f\n  bits per byte  %.4f\n  byte accuracy  %.4f\n  %.0f chars/s (%.1f s)\n",
           r.chars ? (double)r.chars_correct / (double)r.chars : 0.0, r.bytes ? r.nll_bits / (double)r.bytes : 0.0,
           r.bytes ? (double)r.bytes_correct / (double)r.bytes : 0.0, dt > 0 ? (double)r.chars / dt : 0.0, dt);
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) { fprintf(stderr, "mambabyte eval: cannot write %s: %s\n", json_path, strerror(errno)); return 1; }
        fprintf(f, "{\n  \"val_char_accuracy\": %.6f,\n  \"chars\": %lld,\n  \"bits_per_byte\": %.6f,\n  \"byte_accuracy\": %.6f,\n"
                   "  \"duration_s\": %.3f,\n  \"chars_per_s\": %.1f\n}\n",
                r.chars ? (double)r.chars_correct / (double)r.chars : 0.0, (long long)r.chars,
                r.bytes ? r.nll_bits / (double)r.bytes : 0.0, r.bytes ? (double)r.bytes_correct / (double)r.bytes : 0.0, dt,
                dt > 0 ? (double)r.chars / dt : 0.0);
        if (fclose(f) != 0) { fprintf(stderr, "mambabyte eval: cannot write %s\n", json_path); return 1; }
    }
    return 0;
}

static const char *EVAL_USAGE = "mambabyte eval --model FILE --data PATH [--split valid|test|train] [--chars N] [--json FILE]";

static int cmd_eval(int argc, char **argv) {
    flag flags[] = {
        {"model", F_STR, 0, 0, "checkpoint to evaluate (required)", 0, 0, 0},
        {"data", F_STR, 0, 0, "WikiText folder or a text file (required)", 0, 0, 0},
        {"split", F_STR, 0, 0, "split of a folder: valid (default), test or train", 0, 0, 0},
        {"chars", F_INT, 1, 1e15, "first N characters (default 60000)", 0, 0, 0},
        {"json", F_STR, 0, 0, "also write the results as JSON", 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        {0, F_INT, 0, 0, 0, 0, 0, 0}};
    mb_model *m;
    mb_mapped_file f;
    const char *split;
    char path[4096];
    int rc;
    if (parse_flags("eval", flags, argc, argv, EVAL_USAGE)) return 2;
    if (!flag_given(flags, "model") || !flag_given(flags, "data")) {
        fprintf(stderr, "mambabyte eval: --model and --data are required\nusage: %s\n", EVAL_USAGE);
        return 2;
    }
    split = flag_str(flags, "split", "valid");
    if (strcmp(split, "valid") && strcmp(split, "test") && strcmp(split, "train")) {
        fprintf(stderr, "mambabyte eval: --split must be valid, test or train\nusage: %s\n", EVAL_USAGE);
        return 2;
    }
    set_threads(flags);
    if (is_dir(flag_str(flags, "data", ""))) snprintf(path, sizeof path, "%s/wiki.%s.raw", flag_str(flags, "data", ""), split);
    else snprintf(path, sizeof path, "%s", flag_str(flags, "data", ""));
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte eval: %s\n", mb_last_error());
        return 1;
    }
    if (mb_map_file(&f, path) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte eval: %s\n", mb_last_error());
        mb_model_free(m);
        return 1;
    }
    rc = run_eval(m, f.data, f.size, (int64_t)flag_num(flags, "chars", 60000), path, flag_str(flags, "json", NULL));
    mb_unmap_file(&f);
    mb_model_free(m);
    return rc;
}

/* -------------------------------------------------------------- sample */
static const char *SAMPLE_USAGE =
    "mambabyte sample --model FILE [--prompt TEXT] [--bytes N] [--temperature T] [--top-k K] [--seed S]";

static int cmd_sample(int argc, char **argv) {
    flag flags[] = {
        {"model", F_STR, 0, 0, "checkpoint (required)", 0, 0, 0},
        {"prompt", F_STR, 0, 0, "text to continue (default empty)", 0, 0, 0},
        {"bytes", F_INT, 0, 1e12, "bytes to generate (default 200)", 0, 0, 0},
        {"temperature", F_NUM, 0, 100, "0 = greedy (default 0.8)", 0, 0, 0},
        {"top-k", F_INT, 0, 256, "sample among the K most likely bytes (0 = all, default 0)", 0, 0, 0},
        {"seed", F_INT, 0, 9007199254740992.0, "random seed (default 1)", 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        {0, F_INT, 0, 0, 0, 0, 0, 0}};
    mb_model *m;
    mb_stream *s;
    const char *prompt;
    const float *logits;
    double temp;
    int64_t n, i;
    int top_k;
    uint64_t rng;
    if (parse_flags("sample", flags, argc, argv, SAMPLE_USAGE)) return 2;
    if (!flag_given(flags, "model")) { fprintf(stderr, "mambabyte sample: --model is required\nusage: %s\n", SAMPLE_USAGE); return 2; }
    set_threads(flags);
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte sample: %s\n", mb_last_error());
        return 1;
    }
    prompt = flag_str(flags, "prompt", "");
    n = (int64_t)flag_num(flags, "bytes", 200);
    temp = flag_num(flags, "temperature", 0.8);
    top_k = (int)flag_num(flags, "top-k", 0);
    rng = (uint64_t)flag_num(flags, "seed", 1);
    if (mb_stream_create(&s, m) != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: %s\n", mb_last_error()); mb_model_free(m); return 1; }
    logits = mb_stream_step(s, 0x00); /* the same start as eval */
    for (i = 0; prompt[i]; i++) logits = mb_stream_step(s, (uint8_t)prompt[i]);
    fputs(prompt, stdout);
    for (i = 0; i < n; i++) {
        int b;
        if (temp <= 0.0) {
            b = mb__argmax(logits, 256);
        } else {
            float p[256], scaled[256], cut = -INFINITY;
            double u, acc = 0.0;
            int v;
            for (v = 0; v < 256; v++) scaled[v] = (float)(logits[v] / temp);
            if (top_k > 0 && top_k < 256) { /* the k-th largest logit is the cut */
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
            u = mb__rng_uniform(&rng);
            for (b = 0; b < 255; b++) { acc += p[b]; if (u < acc) break; }
        }
        putchar(b);
        fflush(stdout);
        logits = mb_stream_step(s, (uint8_t)b);
    }
    putchar('\n');
    mb_stream_free(s);
    mb_model_free(m);
    return 0;
}

/* --------------------------------------------------------------- train */
static const char *TRAIN_USAGE = "mambabyte train [--data PATH] [--steps N] [--out FILE] [flags]  (--help lists them)";

/* The settings that must match for a bit-identical resume. */
static int settings_differ(const mb_train_settings *a, const mb_train_settings *b, char *why, size_t n) {
#define MB_CMP(field)                                                                                  \
    if (a->field != b->field) {                                                                        \
        snprintf(why, n, "--" #field " is %.17g in the checkpoint but %.17g here", (double)b->field, (double)a->field); \
        return 1;                                                                                      \
    }
    MB_CMP(batch) MB_CMP(ctx) MB_CMP(steps) MB_CMP(warmup) MB_CMP(grad_accum) MB_CMP(seed) MB_CMP(schedule)
    MB_CMP(lr) MB_CMP(weight_decay) MB_CMP(clip) MB_CMP(beta1) MB_CMP(beta2) MB_CMP(eps) MB_CMP(time_budget) MB_CMP(sequential)
#undef MB_CMP
    return 0;
}

/* The training step on the chosen device.  On CUDA the CPU trainer still
   owns the sampler, the step count and (between saves) the moments; the
   GPU holds the live parameters, gradients and moments. */
typedef struct {
    mb_trainer *tr;
#ifdef MB_WITH_CUDA
    mb_cuda_trainer *gpu;
#endif
} backend;

static mb_status backend_step(backend *be, double lr, mb_step_result *r) {
#ifdef MB_WITH_CUDA
    if (be->gpu) {
        mb_trainer *t = be->tr;
        const mb_train_settings *s = &t->st.settings;
        double loss_sum = 0.0, norm = 0.0;
        int64_t k;
        int applied = 0;
        mb_status st;
        memset(r, 0, sizeof *r);
        r->lr = lr;
        for (k = 0; k < s->grad_accum; k++) {
            float loss;
            st = mb_sampler_next(&t->sampler, t->inputs, t->targets, (int)s->batch, (int)s->ctx);
            if (st == MB_STATUS_OK) st = mb_cuda_trainer_forward_backward(be->gpu, t->inputs, t->targets, &loss);
            if (st != MB_STATUS_OK) return mb__fail(st, "%s", mb_cuda_last_error());
            loss_sum += loss;
        }
        r->loss = (float)(loss_sum / (double)s->grad_accum);
        if (!isfinite(r->loss)) { /* the guard: skip the update, drop the gradients */
            st = mb_cuda_trainer_zero_grad(be->gpu);
            r->grad_norm = NAN;
        } else {
            st = mb_cuda_trainer_update(be->gpu, 1.0f / (float)s->grad_accum, lr, s->beta1, s->beta2, s->eps, s->weight_decay,
                                        s->clip, t->st.step + 1, &norm, &applied);
            r->grad_norm = norm;
            r->applied = applied;
        }
        if (st != MB_STATUS_OK) return mb__fail(st, "%s", mb_cuda_last_error());
        t->st.step++;
        return MB_STATUS_OK;
    }
#endif
    return mb_trainer_step(be->tr, lr, r);
}

/* Brings the live parameters and moments to the host (before a save or eval). */
static mb_status backend_sync(backend *be) {
#ifdef MB_WITH_CUDA
    if (be->gpu && mb_cuda_trainer_download(be->gpu, mb_model_params(be->tr->model), be->tr->st.adam_m, be->tr->st.adam_v) != MB_STATUS_OK)
        return mb__fail(MB_STATUS_CUDA_ERROR, "%s", mb_cuda_last_error());
#else
    (void)be;
#endif
    return MB_STATUS_OK;
}

static mb_status backend_save(backend *be, const char *path) {
    mb_status s = backend_sync(be);
    return s == MB_STATUS_OK ? mb_trainer_save(be->tr, path) : s;
}

static int cmd_train(int argc, char **argv) {
    flag flags[] = {
        {"data", F_STR, 0, 0, "WikiText folder (wiki.{train,valid,test}.raw) or one text file", 0, 0, 0},
        {"eval-data", F_STR, 0, 0, "evaluation text (default: the folder's valid split, or a file's last 5%)", 0, 0, 0},
        {"batch", F_INT, 1, 1 << 20, "sequences per micro-batch (default 16)", 0, 0, 0},
        {"ctx", F_INT, 1, 1 << 24, "bytes per sequence (default 1024)", 0, 0, 0},
        {"steps", F_INT, 1, 1e12, "optimizer steps (default 4000)", 0, 0, 0},
        {"stop-at", F_INT, 1, 1e12, "stop (and save) after this step, schedule unchanged", 0, 0, 0},
        {"lr", F_NUM, 0, 10, "peak learning rate (default 3e-4)", 0, 0, 0},
        {"weight-decay", F_NUM, 0, 10, "AdamW weight decay on >=2-dim weights except A_log (default 0.1)", 0, 0, 0},
        {"warmup", F_INT, 0, 1e12, "linear warm-up steps (default 5% of --steps)", 0, 0, 0},
        {"clip", F_NUM, 0, 1e9, "global grad-norm clip (default 1.0)", 0, 0, 0},
        {"grad-accum", F_INT, 1, 1 << 20, "micro-batches averaged per step (default 1)", 0, 0, 0},
        {"seed", F_INT, 0, 9007199254740992.0, "seed for init and batches (default 1337)", 0, 0, 0},
        {"time-budget", F_NUM, 0, 1e9, "seconds: stop cleanly and save before this (0 = none)", 0, 0, 0},
        {"schedule", F_STR, 0, 0, "step (default) or time: the lr follows the budget's elapsed fraction", 0, 0, 0},
        {"out", F_STR, 0, 0, "checkpoint path (default model.bin)", 0, 0, 0},
        {"resume", F_STR, 0, 0, "continue bit-identically from a checkpoint with training state", 0, 0, 0},
        {"sequential", F_BOOL, 0, 0, "consecutive windows (passes over the data) instead of random ones", 0, 0, 0},
        {"save-every", F_INT, 0, 1e12, "also save every N steps (default 0 = only at the end)", 0, 0, 0},
        {"log-every", F_INT, 1, 1e12, "print a line every N steps (default 10)", 0, 0, 0},
        {"log", F_STR, 0, 0, "CSV log: step,loss,lr,grad_norm,seconds", 0, 0, 0},
        {"json", F_STR, 0, 0, "summary JSON", 0, 0, 0},
        {"device", F_STR, 0, 0, "auto (default), cpu or cuda", 0, 0, 0},
        {"precision", F_STR, 0, 0, "fp32 (default) or bf16 (CUDA only)", 0, 0, 0},
        {"eval-chars", F_INT, 0, 1e15, "characters to evaluate after training (default 60000; 0 = skip)", 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        {"d-model", F_INT, 1, 65536, "model width (default 192)", 0, 0, 0},
        {"n-layer", F_INT, 1, 1024, "layers (default 4)", 0, 0, 0},
        {"d-state", F_INT, 1, 256, "SSM state size (default 16)", 0, 0, 0},
        {"d-conv", F_INT, 1, 64, "conv width (default 4)", 0, 0, 0},
        {"expand", F_INT, 1, 16, "d_inner = expand * d_model (default 2)", 0, 0, 0},
        {0, F_INT, 0, 0, 0, 0, 0, 0}};
    mb_config cfg = mb_config_default();
    mb_train_settings set;
    mb_train_state resume_state;
    int has_state = 0, demo = 0, smoke = 0, rc = 0, nonfinite_run = 0, tty = isatty(1), energy_ok = 0;
    const char *data, *out, *device, *precision, *schedule;
    data_paths paths;
    mb_mapped_file train_file, eval_file;
    const uint8_t *train_data, *eval_text;
    int64_t train_size, eval_size, log_every, save_every, stop_at, eval_chars, t_start_step;
    mb_model *m = NULL;
    mb_trainer tr;
    backend be;
    FILE *csv = NULL;
    nvml_energy nv;
    unsigned long long e0 = 0, e1 = 0;
    double t0, elapsed_before, elapsed = 0, step_time_est = 0, budget, warmup_frac, last_loss = NAN;
    char warmup_text[64];
    int budget_reached = 0;
    long long inject_from = -1;
    mb_status s;

    if (parse_flags("train", flags, argc, argv, TRAIN_USAGE)) return 2;
    schedule = flag_str(flags, "schedule", "step");
    device = flag_str(flags, "device", "auto");
    precision = flag_str(flags, "precision", "fp32");
    if (strcmp(schedule, "step") && strcmp(schedule, "time")) { fprintf(stderr, "mambabyte train: --schedule must be step or time\nusage: %s\n", TRAIN_USAGE); return 2; }
    if (strcmp(device, "auto") && strcmp(device, "cpu") && strcmp(device, "cuda")) { fprintf(stderr, "mambabyte train: --device must be auto, cpu or cuda\nusage: %s\n", TRAIN_USAGE); return 2; }
    if (strcmp(precision, "fp32") && strcmp(precision, "bf16")) { fprintf(stderr, "mambabyte train: --precision must be fp32 or bf16\nusage: %s\n", TRAIN_USAGE); return 2; }
    if (!strcmp(schedule, "time") && !(flag_num(flags, "time-budget", 0) > 0)) { fprintf(stderr, "mambabyte train: --schedule time needs --time-budget SECONDS\nusage: %s\n", TRAIN_USAGE); return 2; }
#ifndef MB_WITH_CUDA
    if (!strcmp(device, "cuda")) {
        fprintf(stderr, "mambabyte train: this binary was built without CUDA; build with nvcc on PATH (make) and run ./mambabyte_cuda\n");
        return 2;
    }
    if (!strcmp(precision, "bf16")) { fprintf(stderr, "mambabyte train: --precision bf16 needs the CUDA build (./mambabyte_cuda)\n"); return 2; }
#endif
    set_threads(flags);

    /* ---- data */
    data = flag_str(flags, "data", NULL);
    if (!data) {
        if (is_file("data/wikitext-103/wiki.train.raw")) {
            data = "data/wikitext-103";
        } else {
            printf("WikiText-103 is not in data/wikitext-103/ (fetch it with: bash data/fetch_wikitext103.sh).\n"
                   "Running a short demo on the bundled sample text instead: data/sample.txt\n\n");
            data = "data/sample.txt";
            demo = 1;
        }
    }
    resolve_data(data, flag_str(flags, "eval-data", NULL), "valid", &paths);
    if (mb_map_file(&train_file, paths.train) != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: %s\n", mb_last_error()); return 1; }
    train_data = train_file.data;
    train_size = train_file.size;
    memset(&eval_file, 0, sizeof eval_file);
    if (paths.eval_is_tail) {
        eval_size = train_size / 20;
        train_size -= eval_size;
        eval_text = train_data + train_size;
        /* start the held-out part at a character boundary */
        while (eval_size > 0 && (*eval_text & 0xC0) == 0x80) { eval_text++; eval_size--; }
        printf("data: training on %s (first 95%%, %lld bytes); evaluating on its last 5%% (%lld bytes)\n", paths.train,
               (long long)train_size, (long long)eval_size);
    } else {
        if (mb_map_file(&eval_file, paths.eval) != MB_STATUS_OK) {
            fprintf(stderr, "mambabyte train: evaluation data: %s\n", mb_last_error());
            mb_unmap_file(&train_file);
            return 1;
        }
        eval_text = eval_file.data;
        eval_size = eval_file.size;
        printf("data: training on %s (%lld bytes); evaluating on %s\n", paths.train, (long long)train_size, paths.eval);
    }

    /* ---- settings: seed 000's defaults, then flags */
    memset(&set, 0, sizeof set);
    set.batch = 16; set.ctx = 1024; set.steps = 4000; set.grad_accum = 1; set.seed = 1337;
    set.lr = 3e-4; set.weight_decay = 0.1; set.clip = 1.0; set.beta1 = 0.9; set.beta2 = 0.95; set.eps = 1e-8;
    if (demo) { /* finishes in well under a minute on two cores */
        cfg.d_model = 64; cfg.n_layer = 2; cfg.dt_rank = 4;
        set.batch = 8; set.ctx = 128; set.steps = 300; set.lr = 3e-3;
    }
    smoke = train_size < 10000 || (getenv("MB_SMOKE") && !strcmp(getenv("MB_SMOKE"), "1"));
    if (smoke) {
        printf("smoke mode (%s): d_model 32, 2 layers, d_state 8, ctx 64, batch 2, 2 steps\n",
               train_size < 10000 ? "training data under 10,000 bytes" : "MB_SMOKE=1");
        cfg.d_model = 32; cfg.n_layer = 2; cfg.d_state = 8; cfg.dt_rank = 2;
        set.ctx = 64; set.batch = 2; set.steps = 2;
    }
    if (flag_given(flags, "d-model")) { cfg.d_model = (int)flag_num(flags, "d-model", 0); cfg.dt_rank = 0; }
    cfg.n_layer = (int)flag_num(flags, "n-layer", cfg.n_layer);
    cfg.d_state = (int)flag_num(flags, "d-state", cfg.d_state);
    cfg.d_conv = (int)flag_num(flags, "d-conv", cfg.d_conv);
    cfg.expand = (int)flag_num(flags, "expand", cfg.expand);
    set.batch = (int64_t)flag_num(flags, "batch", (double)set.batch);
    set.ctx = (int64_t)flag_num(flags, "ctx", (double)set.ctx);
    set.steps = (int64_t)flag_num(flags, "steps", (double)set.steps);
    set.lr = flag_num(flags, "lr", set.lr);
    set.weight_decay = flag_num(flags, "weight-decay", set.weight_decay);
    set.clip = flag_num(flags, "clip", set.clip);
    set.grad_accum = (int64_t)flag_num(flags, "grad-accum", (double)set.grad_accum);
    set.seed = (int64_t)flag_num(flags, "seed", (double)set.seed);
    set.time_budget = flag_num(flags, "time-budget", 0);
    set.schedule = !strcmp(schedule, "time");
    set.sequential = flag_given(flags, "sequential");
    set.warmup = (int64_t)flag_num(flags, "warmup", floor(0.05 * (double)set.steps + 0.5));
    set.save_every = (int64_t)flag_num(flags, "save-every", 0);
    if (smoke && train_size < set.ctx + 1) set.ctx = train_size - 1; /* shrink to what there is */
    if (train_size < set.ctx + 1) {
        fprintf(stderr, "mambabyte train: %s has %lld training bytes, fewer than ctx+1 = %lld\n", paths.train,
                (long long)train_size, (long long)set.ctx + 1);
        rc = 1;
        goto done;
    }
    out = flag_str(flags, "out", "model.bin");
    log_every = (int64_t)flag_num(flags, "log-every", 10);
    stop_at = (int64_t)flag_num(flags, "stop-at", (double)set.steps);
    eval_chars = (int64_t)flag_num(flags, "eval-chars", demo ? 4000 : 60000);

    /* ---- model: new, or resumed with its whole training state */
    if (flag_given(flags, "resume")) {
        char why[256];
        const char *model_flags[] = {"d-model", "n-layer", "d-state", "d-conv", "expand"};
        size_t k;
        s = mb_checkpoint_load(flag_str(flags, "resume", ""), &m, &resume_state, &has_state);
        if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: --resume: %s\n", mb_last_error()); rc = 1; goto done; }
        if (!has_state) {
            fprintf(stderr, "mambabyte train: --resume %s: the checkpoint has no training state (it was saved for inference)\n", flag_str(flags, "resume", ""));
            rc = 1;
            goto done;
        }
        for (k = 0; k < sizeof model_flags / sizeof model_flags[0]; k++)
            if (flag_given(flags, model_flags[k])) {
                const mb_config *c = mb_model_config(m);
                int v = (int)flag_num(flags, model_flags[k], 0);
                int have[] = {c->d_model, c->n_layer, c->d_state, c->d_conv, c->expand};
                if (v != have[k]) {
                    fprintf(stderr, "mambabyte train: --%s %d differs from the checkpoint's %d: resume with the checkpoint's config\n",
                            model_flags[k], v, have[k]);
                    rc = 2;
                    goto done;
                }
            }
        /* flags not given take the checkpoint's values; given ones must match */
        {
            mb_train_settings ck = resume_state.settings;
            if (!flag_given(flags, "batch")) set.batch = ck.batch;
            if (!flag_given(flags, "ctx")) set.ctx = ck.ctx;
            if (!flag_given(flags, "steps")) set.steps = ck.steps;
            if (!flag_given(flags, "warmup")) set.warmup = ck.warmup;
            if (!flag_given(flags, "grad-accum")) set.grad_accum = ck.grad_accum;
            if (!flag_given(flags, "seed")) set.seed = ck.seed;
            if (!flag_given(flags, "schedule")) set.schedule = ck.schedule;
            if (!flag_given(flags, "lr")) set.lr = ck.lr;
            if (!flag_given(flags, "weight-decay")) set.weight_decay = ck.weight_decay;
            if (!flag_given(flags, "clip")) set.clip = ck.clip;
            if (!flag_given(flags, "time-budget")) set.time_budget = ck.time_budget;
            if (!flag_given(flags, "save-every")) set.save_every = ck.save_every;
            if (!flag_given(flags, "sequential")) set.sequential = ck.sequential;
            set.beta1 = ck.beta1; set.beta2 = ck.beta2; set.eps = ck.eps;
            if (!flag_given(flags, "stop-at")) stop_at = set.steps;
            ck.save_every = set.save_every; /* not part of the trajectory */
            if (settings_differ(&set, &ck, why, sizeof why)) {
                fprintf(stderr, "mambabyte train: resume: %s\n", why);
                rc = 2;
                goto done;
            }
        }
        cfg = *mb_model_config(m);
    } else {
        s = mb_model_create(&m, &cfg, (uint64_t)set.seed);
        if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: %s\n", mb_last_error()); rc = 2; goto done; }
    }
    s = mb_trainer_init(&tr, m, &set, train_data, train_size, has_state ? &resume_state : NULL);
    if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: %s\n", mb_last_error()); rc = 1; goto done; }
    /* testing hooks: poison the gradient at step k, or at every step from k */
    if (getenv("MB_TEST_INJECT_NAN_STEP")) tr.inject_nonfinite_step = atoll(getenv("MB_TEST_INJECT_NAN_STEP"));
    if (getenv("MB_TEST_INJECT_NAN_FROM")) inject_from = atoll(getenv("MB_TEST_INJECT_NAN_FROM"));
    save_every = set.save_every;
    budget = set.time_budget;
    warmup_frac = set.steps > 0 ? (double)set.warmup / (double)set.steps : 0.05;
    be.tr = &tr;
#ifdef MB_WITH_CUDA
    be.gpu = NULL;
    if (strcmp(device, "cpu") != 0) {
        if (mb_cuda_device_count() == 0) {
            if (!strcmp(device, "cuda")) { fprintf(stderr, "mambabyte train: --device cuda: no CUDA device found\n"); rc = 1; goto done_trainer; }
            printf("note: no CUDA device found; training on the CPU\n");
        } else if (mb_cuda_trainer_create(&be.gpu, mb_model_config(m), (int)set.batch, (int)set.ctx, !strcmp(precision, "bf16")) != MB_STATUS_OK ||
                   mb_cuda_trainer_upload(be.gpu, mb_model_params(m), tr.st.adam_m, tr.st.adam_v) != MB_STATUS_OK) {
            fprintf(stderr, "mambabyte train: CUDA: %s\n", mb_cuda_last_error());
            rc = 1;
            goto done_trainer;
        } else {
            printf("device: CUDA (%s)\n", precision);
        }
    }
#endif
    cfg = *mb_model_config(m);
    printf("model: d_model %d, %d layers, d_state %d, d_conv %d, expand %d, dt_rank %d: %lld parameters\n", cfg.d_model,
           cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank, (long long)mb_model_num_params(m));
    /* the time schedule warms up over the same fraction of the budget */
    if (set.schedule) snprintf(warmup_text, sizeof warmup_text, "%.3g%% of the time budget", 100.0 * warmup_frac);
    else snprintf(warmup_text, sizeof warmup_text, "%lld steps", (long long)set.warmup);
    printf("train: batch %lld x ctx %lld x accum %lld, %lld steps%s, lr %g (warm-up %s, cosine to 0, %s schedule), "
           "wd %g, clip %g, seed %lld, %s windows, %d threads\n",
           (long long)set.batch, (long long)set.ctx, (long long)set.grad_accum, (long long)set.steps,
           has_state ? " (resumed)" : "", set.lr, warmup_text, set.schedule ? "time" : "step", set.weight_decay,
           set.clip, (long long)set.seed, set.sequential ? "sequential" : "random",
#ifdef _OPENMP
           omp_get_max_threads()
#else
           1
#endif
    );
    if (has_state) printf("resumed from %s at step %lld\n", flag_str(flags, "resume", ""), (long long)tr.st.step);
    if (flag_given(flags, "log")) {
        int append = has_state && is_file(flag_str(flags, "log", ""));
        csv = fopen(flag_str(flags, "log", ""), append ? "a" : "w");
        if (!csv) { fprintf(stderr, "mambabyte train: cannot write %s: %s\n", flag_str(flags, "log", ""), strerror(errno)); rc = 1; goto done_trainer; }
        if (!append) fprintf(csv, "step,loss,lr,grad_norm,seconds\n");
    }

    /* ---- the loop */
    energy_ok = nvml_open(&nv) && nvml_read_mj(&nv, &e0);
    t0 = now_s(); /* this invocation's clock: tokens/s, the ETA and, on top of a resumed run's time, elapsed */
    elapsed_before = tr.st.elapsed_s;
    t_start_step = tr.st.step;
    while (tr.st.step < set.steps && tr.st.step < stop_at) {
        mb_step_result r;
        double lr, ts = now_s(), tokens_per_s;
        elapsed = elapsed_before + (ts - t0);
        if (budget > 0 && elapsed + 1.5 * step_time_est + 0.5 > budget) {
            printf("time budget: stopping at step %lld after %.1f s (budget %.1f s)\n", (long long)tr.st.step, elapsed, budget);
            budget_reached = 1;
            break;
        }
        lr = set.schedule ? mb_lr_at_fraction(set.lr, elapsed / budget, warmup_frac)
                          : mb_lr_at_step(set.lr, tr.st.step, set.warmup, set.steps);
        if (inject_from >= 0 && tr.st.step >= inject_from) tr.inject_nonfinite_step = tr.st.step;
        s = backend_step(&be, lr, &r);
        if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: step %lld: %s\n", (long long)tr.st.step, mb_last_error()); rc = 1; break; }
        step_time_est = now_s() - ts;
        if (!r.applied) {
            nonfinite_run++;
            fprintf(stderr, "step %lld: non-finite %s (loss %g, grad norm %g): update skipped (%d in a row)\n",
                    (long long)tr.st.step, isfinite(r.loss) ? "gradient" : "loss", r.loss, r.grad_norm, nonfinite_run);
            if (nonfinite_run >= 10) {
                fprintf(stderr, "mambabyte train: 10 non-finite steps in a row: stopping; the last good checkpoint is kept (%s)\n", out);
                rc = 1;
                goto done_trainer;
            }
            continue;
        }
        nonfinite_run = 0;
        last_loss = r.loss;
        elapsed = elapsed_before + (now_s() - t0);
        if (csv) fprintf(csv, "%lld,%.6f,%.6e,%.6f,%.3f\n", (long long)tr.st.step, r.loss, r.lr, r.grad_norm, elapsed);
        tokens_per_s = (double)((tr.st.step - t_start_step) * set.batch * set.ctx * set.grad_accum) / (now_s() - t0);
        if (tr.st.step % log_every == 0 || tr.st.step == set.steps || tty) {
            char a[32], b[32];
            double left = set.schedule || budget > 0 ? budget - elapsed : 0;
            double eta = (double)(set.steps - tr.st.step) * (now_s() - t0) / (double)(tr.st.step - t_start_step);
            if (budget > 0 && left < eta) eta = left;
            fmt_hms(a, sizeof a, elapsed);
            fmt_hms(b, sizeof b, eta);
            if (tty && tr.st.step % log_every != 0 && tr.st.step != set.steps) {
                int w = 30, filled = (int)(w * (double)tr.st.step / (double)set.steps), k;
                printf("\r[");
                for (k = 0; k < w; k++) putchar(k < filled ? '#' : '.');
                printf("] %lld/%lld loss %.4f %.0f tok/s ETA %s ", (long long)tr.st.step, (long long)set.steps, r.loss, tokens_per_s, b);
            } else {
                printf("%sstep %lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %s elapsed | ETA %s\n", tty ? "\r" : "",
                       (long long)tr.st.step, (long long)set.steps, r.loss, r.lr, r.grad_norm, tokens_per_s, a, b);
            }
            fflush(stdout);
            if (csv) fflush(csv);
        }
        if (save_every > 0 && tr.st.step % save_every == 0 && tr.st.step < set.steps) {
            tr.st.elapsed_s = elapsed_before + (now_s() - t0);
            if (backend_save(&be, out) != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: save: %s\n", mb_last_error()); rc = 1; goto done_trainer; }
        }
    }
    tr.st.elapsed_s = elapsed_before + (now_s() - t0);
    if (energy_ok && !nvml_read_mj(&nv, &e1)) energy_ok = 0;
    if (rc == 0) {
        s = backend_save(&be, out);
        if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: save: %s\n", mb_last_error()); rc = 1; goto done_trainer; }
    }
    {
        int64_t steps_run = tr.st.step - t_start_step, tokens = steps_run * set.batch * set.ctx * set.grad_accum;
        double dur = tr.st.elapsed_s;
        printf("done: %lld steps, %lld tokens, final loss %.4f, %.1f s, %.0f tokens/s; saved %s\n", (long long)tr.st.step,
               (long long)tokens, last_loss, dur, (double)tokens / (dur > 0 ? dur : 1), out);
        if (energy_ok) printf("GPU energy of the training loop: %.1f J\n", (double)(e1 - e0) / 1000.0);
        else printf("GPU energy: not measured\n");
        if (flag_given(flags, "json")) {
            FILE *f = fopen(flag_str(flags, "json", ""), "w");
            if (!f) { fprintf(stderr, "mambabyte train: cannot write %s: %s\n", flag_str(flags, "json", ""), strerror(errno)); rc = 1; goto done_trainer; }
            fprintf(f, "{\n  \"steps\": %lld,\n  \"tokens\": %lld,\n  \"final_loss\": ", (long long)tr.st.step, (long long)tokens);
            if (isfinite(last_loss)) fprintf(f, "%.6f", last_loss); else fprintf(f, "null");
            fprintf(f, ",\n  \"training_duration_s\": %.3f,\n  \"tokens_per_s\": %.1f,\n  \"training_energy_J\": ", dur,
                    (double)tokens / (dur > 0 ? dur : 1));
            if (energy_ok) fprintf(f, "%.1f", (double)(e1 - e0) / 1000.0); else fprintf(f, "null");
            fprintf(f, "\n}\n");
            if (fclose(f) != 0) { fprintf(stderr, "mambabyte train: cannot write %s\n", flag_str(flags, "json", "")); rc = 1; }
        }
    }
    fflush(stdout);
    if (rc == 0 && backend_sync(&be) != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: %s\n", mb_last_error()); rc = 1; }
    /* a finished run is evaluated; one paused by --stop-at is not */
    if (rc == 0 && eval_chars > 0 && eval_size > 0 && (tr.st.step >= set.steps || budget_reached))
        rc = run_eval(m, eval_text, eval_size, eval_chars, paths.eval_is_tail ? "held-out 5%" : paths.eval, NULL);
done_trainer:
#ifdef MB_WITH_CUDA
    mb_cuda_trainer_free(be.gpu);
#endif
    if (csv && fclose(csv) != 0) { fprintf(stderr, "mambabyte train: writing the CSV log failed\n"); rc = 1; }
    mb_trainer_free(&tr);
done:
    if (has_state) mb_train_state_free(&resume_state);
    mb_model_free(m);
    mb_unmap_file(&train_file);
    mb_unmap_file(&eval_file);
    return rc;
}

/* ---------------------------------------------------------------- main */
static void usage(FILE *f) {
    fprintf(f,
            "mambabyte " MB_VERSION_STRING " - byte-level Mamba in C\n"
            "usage: mambabyte <command> [flags]     (mambabyte <command> --help for its flags)\n"
            "commands:\n"
            "  train      train a model (no flags: WikiText-103 if fetched, else a demo on data/sample.txt)\n"
            "  eval       greedy char accuracy of a checkpoint (the WikiText char-level protocol)\n"
            "  sample     generate text from a checkpoint\n"
            "  numerics   naive vs stable softmax report (--json FILE, --svg FILE)\n"
            "  bench      CPU benchmark of the default config (--json FILE)\n");
}

int main(int argc, char **argv) {
    /* a full disk or `ulimit -f` must fail the write (EFBIG), not kill us
       before the half-written temporary file is removed */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version")) { printf("mambabyte %s\n", MB_VERSION_STRING); return 0; }
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 2, argv + 2);
    if (!strcmp(argv[1], "numerics")) return mb_cli_numerics(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench")) return mb_cli_bench(argc - 1, argv + 1);
    fprintf(stderr, "mambabyte: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
