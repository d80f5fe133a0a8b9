/* main.c - the mambabyte command line: flags, printing, CSV/JSON and NVML
   over mambabyte.h, which does the work (mb_train_run, mb_eval_text, ...).
     mambabyte train | eval | sample | plot | numerics | bench   (--help on each) */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MB_WITH_MPI /* ./mambabyte_mpi: the same CLI, one rank of `mpirun -np N` */
#define MAMBABYTE_MPI_IMPLEMENTATION
#include "mambabyte_mpi.h"
static mb_mpi_comm g_mpi;
#define MY_RANK (g_mpi.comm.rank)
#define COMM (&g_mpi.comm)
#define MPI_BUILD 1
#define ALL_RANKS_OK(ok) mb_mpi_all_ok(&g_mpi, ok)
#else
#define MY_RANK 0
#define COMM NULL
#define MPI_BUILD 0
#define ALL_RANKS_OK(ok) (ok)
#endif
#define IS_RANK0 (MY_RANK == 0)

#include "cli.h"
#include "numerics_report.c"
#include "bench.c"
#include "plot.c"
#include "export.c"

static void set_threads(flag *flags) {
    if (flag_given(flags, "threads")) cli_set_threads((int)flag_num(flags, "threads", 1));
}

/* ---------------------------------------------------------------- eval */
typedef struct { double t0; int tty; } eval_progress_state;
static void eval_progress(void *user, int64_t done, int64_t total) {
    eval_progress_state *p = (eval_progress_state *)user;
    double el = mb_clock_seconds() - p->t0, eta = done > 0 ? el * (double)(total - done) / (double)done : 0;
    char a[32], b[32];
    mb_format_duration(a, sizeof a, el);
    mb_format_duration(b, sizeof b, eta);
    if (p->tty) fprintf(stderr, "\reval %lld/%lld chars (%.0f%%) | %s elapsed | ETA %s   %s", (long long)done,
                        (long long)total, 100.0 * (double)done / (double)total, a, b, done == total ? "\n" : "");
    else if (done == total || done % (16 * 1024) == 0)
        fprintf(stderr, "eval %lld/%lld chars | %s elapsed | ETA %s\n", (long long)done, (long long)total, a, b);
}

static const char *EVAL_USAGE =
    "mambabyte eval --model FILE --data PATH [--split valid|test|train] [--chars N] [--predict ascii|exact] [--json FILE]";

/* Evaluates m on text, prints (and writes to json_path) the results; exact
   adds the exact greedy character beside the protocol's ASCII rule; *acc
   gets the protocol's char accuracy.  Returns an exit code. */
static int run_eval(const mb_model *m, const uint8_t *text, int64_t len, int64_t chars, const char *label, int exact,
                    const char *json_path, double *acc) {
    mb_eval_exact_result r;
    eval_progress_state ps = {mb_clock_seconds(), isatty(2)};
    mb_status st;
    double dt, n, ca, bpb, ba;
    memset(&r, 0, sizeof r);
    st = exact ? mb_eval_text_exact(m, text, len, chars, &r, eval_progress, &ps) : mb_eval_text(m, text, len, chars, &r.base, eval_progress, &ps);
    if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s: %s\n", label, mb_last_error()); return 1; }
    dt = mb_clock_seconds() - ps.t0;
    n = r.base.chars ? (double)r.base.chars : 1.0;
    ca = (double)r.base.chars_correct / n;
    bpb = r.base.bytes ? r.base.nll_bits / (double)r.base.bytes : 0.0;
    ba = r.base.bytes ? (double)r.base.bytes_correct / (double)r.base.bytes : 0.0;
    if (acc) *acc = ca;
    printf("eval on %s: %lld chars, %lld bytes\n", label, (long long)r.base.chars, (long long)r.base.bytes);
    if (exact)
        printf("  char accuracy (ASCII rule)  %.4f   argmax over bytes 0..127, the benchmark protocol\n"
               "  char accuracy (exact rule)  %.4f   argmax over all characters: %lld multi-byte predictions, %lld right\n"
               "  bits per byte               %.4f\n  byte accuracy               %.4f\n"
               "  %.0f chars/s (%.1f s), %lld extra steps for the exact rule\n", ca, (double)r.exact_correct / n,
               (long long)r.exact_multibyte, (long long)r.exact_multibyte_correct, bpb, ba, dt > 0 ? (double)r.base.chars / dt : 0.0, dt,
               (long long)r.search_steps);
    else
        printf("  char accuracy  %.4f\n  bits per byte  %.4f\n  byte accuracy  %.4f\n  %.0f chars/s (%.1f s)\n", ca, bpb, ba,
               dt > 0 ? (double)r.base.chars / dt : 0.0, dt);
    {
        const json_field j[] = {{"val_char_accuracy", ca, 6}, {"chars", (double)r.base.chars, 0}, {"bits_per_byte", bpb, 6},
                                {"byte_accuracy", ba, 6}, {"duration_s", dt, 3}, {"chars_per_s", dt > 0 ? (double)r.base.chars / dt : 0.0, 1},
                                {"exact_char_accuracy", (double)r.exact_correct / n, 6},
                                {"exact_multibyte_predictions", (double)r.exact_multibyte, 0},
                                {"exact_multibyte_correct", (double)r.exact_multibyte_correct, 0}};
        return json_path ? cli_write_json("eval", json_path, j, exact ? 9 : 6) : 0;
    }
}

static int cmd_eval(int argc, char **argv) {
    static const char *const splits[] = {"valid", "test", "train", NULL}, *const rules[] = {"ascii", "exact", NULL};
    flag flags[] = {
        {"model", F_STR, 0, 0, "checkpoint to evaluate (required)", 0, 0, 0},
        {"data", F_STR, 0, 0, "WikiText folder or a text file (required)", 0, 0, 0},
        {"split", F_STR, 0, 0, "split of a folder: valid (default), test or train", 0, 0, 0},
        {"chars", F_INT, 1, 1e15, "first N characters (default 60000)", 0, 0, 0},
        {"predict", F_STR, 0, 0, "ascii (default: the protocol's argmax over bytes 0..127) or exact (also the exact greedy character)", 0, 0, 0},
        {"json", F_STR, 0, 0, "also write the results as JSON", 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        FLAG_END};
    const char *data;
    mb_model *m;
    mb_mapped_file f;
    char path[4096];
    int rc;
    if (parse_flags("eval", flags, argc - 1, argv + 1, EVAL_USAGE)) return 2;
    if (!flag_given(flags, "model") || !flag_given(flags, "data")) {
        fprintf(stderr, "mambabyte eval: --model and --data are required\nusage: %s\n", EVAL_USAGE);
        return 2;
    }
    if (!flag_choice("eval", flags, "split", splits, EVAL_USAGE) || !flag_choice("eval", flags, "predict", rules, EVAL_USAGE)) return 2;
    set_threads(flags);
    data = flag_str(flags, "data", "");
    if (cli_is_dir(data)) snprintf(path, sizeof path, "%s/wiki.%s.raw", data, flag_str(flags, "split", "valid"));
    else snprintf(path, sizeof path, "%s", data);
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s\n", mb_last_error()); return 1; }
    if (mb_map_file(&f, path) != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s\n", mb_last_error()); mb_model_free(m); return 1; }
    rc = run_eval(m, f.data, f.size, (int64_t)flag_num(flags, "chars", 60000), path, !strcmp(flag_str(flags, "predict", "ascii"), "exact"),
                  flag_str(flags, "json", NULL), NULL);
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
        FLAG_END};
    mb_model *m;
    mb_stream *s;
    const char *prompt;
    const float *logits;
    int64_t n, i, plen;
    uint64_t rng;
    if (parse_flags("sample", flags, argc - 1, argv + 1, SAMPLE_USAGE)) return 2;
    if (!flag_given(flags, "model")) { fprintf(stderr, "mambabyte sample: --model is required\nusage: %s\n", SAMPLE_USAGE); return 2; }
    set_threads(flags);
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: %s\n", mb_last_error()); return 1; }
    if (mb_stream_create(&s, m) != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: %s\n", mb_last_error()); mb_model_free(m); return 1; }
    mb_model_free(m); /* the stream holds its own copy of the weights */
    prompt = flag_str(flags, "prompt", "");
    plen = (int64_t)strlen(prompt);
    rng = (uint64_t)flag_num(flags, "seed", 1);
    logits = mb_stream_step(s, 0x00); /* the same start as eval; the prompt in one parallel pass */
    if (plen > 1 && mb_stream_feed(s, (const uint8_t *)prompt, plen - 1, NULL) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte sample: %s\n", mb_last_error());
        mb_stream_free(s);
        return 1;
    }
    if (plen > 0) logits = mb_stream_step(s, (uint8_t)prompt[plen - 1]);
    fputs(prompt, stdout);
    for (i = 0, n = (int64_t)flag_num(flags, "bytes", 200); i < n; i++) {
        int b = mb_sample_byte(logits, flag_num(flags, "temperature", 0.8), (int)flag_num(flags, "top-k", 0), &rng);
        putchar(b);
        fflush(stdout);
        logits = mb_stream_step(s, (uint8_t)b);
    }
    putchar('\n');
    mb_stream_free(s);
    return 0;
}

/* --------------------------------------------------------------- train */
static const char *TRAIN_USAGE = "mambabyte train [--data PATH] [--steps N] [--out FILE] [flags]  (--help lists them)";

/* train's flags: every mb_train_field (from the library's table, so the
   names, ranges and defaults are written once), then the CLI's own. */
static const flag CLI_TRAIN_FLAGS[] = {
    {"data", F_STR, 0, 0, "WikiText folder (wiki.{train,valid,test}.raw) or one text file", 0, 0, 0},
    {"eval-data", F_STR, 0, 0, "evaluation text (default: the folder's valid split, or a file's last 5%)", 0, 0, 0},
    {"stop-at", F_INT, 1, 1e12, "stop (and save) after this step, schedule unchanged", 0, 0, 0},
    {"out", F_STR, 0, 0, "checkpoint path (default model.bin)", 0, 0, 0},
    {"resume", F_STR, 0, 0, "continue bit-identically from a checkpoint with training state", 0, 0, 0},
    {"log-every", F_INT, 1, 1e12, "print a line every N steps (default 10)", 0, 0, 0},
    {"log", F_STR, 0, 0, "CSV log: step,loss,lr,grad_norm,seconds,val_char_accuracy", 0, 0, 0},
    {"plot", F_STR, 0, 0, "SVG of the loss curve, rewritten at each save (needs --log, or logs to FILE.csv)", 0, 0, 0},
    {"json", F_STR, 0, 0, "summary JSON", 0, 0, 0},
    {"device", F_STR, 0, 0, "auto (default), cpu or cuda", 0, 0, 0},
    {"precision", F_STR, 0, 0, "fp32 (default), tf32 or bf16: the GPU's matrix products (CUDA only)", 0, 0, 0},
    {"eval-chars", F_INT, 0, 1e15, "characters to evaluate after training (default 60000; 0 = skip)", 0, 0, 0},
    {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
    {"deterministic", F_BOOL, 0, 0, "mpirun: sum gradients in rank order (bit-identical to one process with --grad-accum N)", 0, 0, 0},
    FLAG_END};
#define TRAIN_NFLAGS (MB_FIELD_COUNT + sizeof CLI_TRAIN_FLAGS / sizeof CLI_TRAIN_FLAGS[0])

static void train_flags(flag *out) {
    static const flag_kind kinds[] = {F_INT, F_NUM, F_BOOL, F_STR};
    static char help[MB_FIELD_COUNT][160];
    mb_train_settings s = mb_train_settings_default();
    mb_config c = mb_config_default();
    int f;
    for (f = 0; f < MB_FIELD_COUNT; f++) {
        const mb_train_field_info *i = mb_train_field_desc(f);
        double v = mb_train_field_get(&s, &c, f);
        if (i->kind == MB_KIND_SCHEDULE) snprintf(help[f], sizeof help[f], "%s (default %s)", i->help, v ? "time" : "step");
        else if (i->kind == MB_KIND_SWITCH || f == MB_FIELD_WARMUP) snprintf(help[f], sizeof help[f], "%s", i->help);
        else snprintf(help[f], sizeof help[f], "%s (default %g)", i->help, v);
        out[f].name = i->flag + 2;
        out[f].kind = kinds[i->kind];
        out[f].lo = i->lo;
        out[f].hi = i->hi;
        out[f].help = help[f];
        out[f].given = 0;
    }
    memcpy(out + MB_FIELD_COUNT, CLI_TRAIN_FLAGS, sizeof CLI_TRAIN_FLAGS);
}

/* --data (default: WikiText-103 if fetched, else the demo text) through mb_dataset_open. */
static int open_train_data(mb_dataset *d, flag *flags, int *demo) {
    const char *data = flag_str(flags, "data", NULL);
    memset(d, 0, sizeof *d);
    if (!data && cli_is_file("data/wikitext-103/wiki.train.raw")) data = "data/wikitext-103";
    if ((*demo = !data)) {
        printf("WikiText-103 is not in data/wikitext-103/ (fetch it with: bash data/fetch_wikitext103.sh).\n"
               "Running a short demo on the bundled sample text instead: data/sample.txt\n\n");
        data = "data/sample.txt";
    }
    if (mb_dataset_open(d, data, flag_str(flags, "eval-data", NULL)) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte train: %s\n", mb_last_error());
        return 1;
    }
    if (d->eval_is_tail)
        printf("data: training on %s (first 95%%, %lld bytes); evaluating on its last 5%% (%lld bytes)\n", d->train_path,
               (long long)d->train_size, (long long)d->eval_size);
    else printf("data: training on %s (%lld bytes); evaluating on %s\n", d->train_path, (long long)d->train_size, d->eval_path);
    return 0;
}

/* Seed 000's settings, the demo's or smoke mode's, then the flags; *given
   gets the MB_GIVEN bits of the flags that were given. */
static void settings_from_flags(mb_train_settings *s, mb_config *c, uint32_t *given, flag *flags, const mb_dataset *d, int demo) {
    int f, smoke = d->train_size < 10000 || (getenv("MB_SMOKE") && !strcmp(getenv("MB_SMOKE"), "1"));
    *s = mb_train_settings_default();
    *c = mb_config_default();
    *given = 0;
    if (demo) { /* finishes in well under a minute on two cores */
        c->d_model = 64; c->n_layer = 2; c->dt_rank = 4;
        s->batch = 8; s->ctx = 128; s->steps = 300; s->lr = 3e-3;
    }
    if (smoke) {
        printf("smoke mode (%s): d_model 32, 2 layers, d_state 8, ctx 64, batch 2, 2 steps\n",
               d->train_size < 10000 ? "training data under 10,000 bytes" : "MB_SMOKE=1");
        c->d_model = 32; c->n_layer = 2; c->d_state = 8; c->dt_rank = 2;
        s->ctx = d->train_size < 65 ? d->train_size - 1 : 64; s->batch = 2; s->steps = 2;
    }
    for (f = 0; f < MB_FIELD_COUNT; f++) {
        flag *fl = &flags[f]; /* train_flags put the fields first */
        if (!fl->given) continue;
        *given |= MB_GIVEN(f);
        mb_train_field_set(s, c, f, f == MB_FIELD_SCHEDULE ? !strcmp(fl->str, "time") : fl->num);
    }
    if (!(*given & MB_GIVEN(MB_FIELD_WARMUP))) s->warmup = (int64_t)floor(0.05 * (double)s->steps + 0.5);
}

/* What the step callback prints and writes. */
typedef struct {
    FILE *csv;
    const char *csv_path, *plot, *out;
    int64_t log_every;
    int tty;
} train_view;

static volatile sig_atomic_t g_interrupts;
static void on_interrupt(int sig) {
    (void)sig;
    /* the second one: at once.  Under mpirun, whose Ctrl-C sends each rank a
       SIGINT and then a SIGTERM (and a second Ctrl-C SIGKILLs), every signal
       just asks to stop. */
    if (g_interrupts++ && !MPI_BUILD) _exit(130);
}

static void replot(const train_view *v) {
    char err[256];
    if (v->plot && v->csv && fflush(v->csv) == 0 && mb_plot_write_svg(v->csv_path, v->plot, err, sizeof err) != 0)
        fprintf(stderr, "mambabyte train: --plot: %s\n", err);
}

static int on_step(void *user, const mb_train_progress *p) {
    train_view *v = (train_view *)user;
    char line[256];
    int k;
    if (!p->applied) {
        fprintf(stderr, "step %lld: non-finite %s (loss %g, grad norm %g): update skipped (%d in a row)\n", (long long)p->step,
                isfinite(p->loss) ? "gradient" : "loss", p->loss, p->grad_norm, p->nonfinite_run);
        return g_interrupts != 0;
    }
    if (v->csv) fprintf(v->csv, "%lld,%.6f,%.6e,%.6f,%.3f,\n", (long long)p->step, p->loss, p->lr, p->grad_norm, p->elapsed_s);
    mb_train_progress_line(line, sizeof line, p);
    if (p->step % v->log_every == 0 || p->step == p->steps) printf("%s%s\n", v->tty ? "\r\033[K" : "", line);
    else if (v->tty) { /* between log lines, a bar on the same line */
        printf("\r[");
        for (k = 0; k < 30; k++) putchar(k < (int)(30 * p->progress) ? '#' : '.');
        printf("] %s", line);
    }
    fflush(stdout);
    if (v->csv && (p->saves || p->step % v->log_every == 0)) fflush(v->csv); /* the log reaches the disk before its checkpoint */
    if (p->saves) replot(v);
    return g_interrupts != 0;
}

/* The CSV log (--log, or FILE.csv beside --plot): appended to on a resume. */
static int open_log(train_view *v, flag *flags, int resumed) {
    static char beside_plot[4200];
    v->plot = flag_str(flags, "plot", NULL);
    snprintf(beside_plot, sizeof beside_plot, "%s.csv", v->plot ? v->plot : "");
    if (!(v->csv_path = flag_str(flags, "log", v->plot ? beside_plot : NULL))) return 0;
    resumed = resumed && cli_is_file(v->csv_path);
    if (!(v->csv = fopen(v->csv_path, resumed ? "a" : "w"))) {
        fprintf(stderr, "mambabyte train: cannot write %s: %s\n", v->csv_path, strerror(errno));
        return 1;
    }
    if (!resumed) fprintf(v->csv, "step,loss,lr,grad_norm,seconds,val_char_accuracy\n");
    return 0;
}

static void print_run(const mb_trainer *tr, const char *resumed_from) {
    const mb_config *c = mb_model_config(tr->model);
    const mb_train_settings *s = &tr->st.settings;
    printf("model: d_model %d, %d layers, d_state %d, d_conv %d, expand %d, dt_rank %d: %lld parameters\n", c->d_model, c->n_layer,
           c->d_state, c->d_conv, c->expand, c->dt_rank, (long long)mb_model_num_params(tr->model));
    printf("train: batch %lld x ctx %lld x accum %lld, %lld steps%s, lr %g (warm-up %lld steps%s, cosine to 0, %s schedule), wd %g, "
           "clip %g, seed %lld, %s windows, device %s, %d threads\n", (long long)s->batch, (long long)s->ctx, (long long)s->grad_accum,
           (long long)s->steps, resumed_from ? " (resumed)" : "", s->lr, (long long)s->warmup,
           s->schedule ? " = the same share of the time budget" : "", s->schedule ? "time" : "step", s->weight_decay, s->clip,
           (long long)s->seed, s->sequential ? "sequential" : "random", tr->backend.name, cli_threads());
    if (resumed_from) printf("resumed from %s at step %lld\n", resumed_from, (long long)tr->st.step);
}

/* Reports how the run ended; returns the exit code (130 when interrupted). */
static int report_run(const mb_trainer *tr, const mb_train_report *r, mb_status st, const train_view *v, flag *flags, nvml_energy *nv,
                      unsigned long long e0) {
    const mb_train_settings *s = &tr->st.settings;
    unsigned long long e1 = 0;
    int energy_ok = nv->lib && nvml_read_mj(nv, &e1), rc = 0;
    if (r->outcome == MB_TRAIN_NON_FINITE) { fprintf(stderr, "mambabyte train: %s (%s)\n", mb_last_error(), v->out); return 1; }
    if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: step %lld: %s\n", (long long)tr->st.step, mb_last_error()); return 1; }
    if (r->outcome == MB_TRAIN_TIME_BUDGET)
        printf("time budget: stopping at step %lld after %.1f s (budget %.1f s)\n", (long long)tr->st.step, r->elapsed_s, s->time_budget);
    printf("%sdone: %lld steps, %.0f tokens, final loss %.4f, %.1f s, %.0f tokens/s; saved %s\n", v->tty ? "\n" : "",
           (long long)tr->st.step, (double)(r->steps_run * s->batch * s->ctx * s->grad_accum * tr->st.ranks), r->last_loss, r->elapsed_s,
           r->tokens_per_s, v->out);
    if (tr->comm && tr->comm->size > 1)
        printf("data-parallel: %d ranks, %.2f s of %.1f s summing gradients (%.1f%%)\n", tr->comm->size, r->comm_s, r->elapsed_s,
               100.0 * r->comm_s / (r->elapsed_s > 0 ? r->elapsed_s : 1));
    if (energy_ok) printf("GPU energy of the training loop: %.1f J\n", (double)(e1 - e0) / 1000.0);
    else printf("GPU energy: not measured\n");
    if (flag_given(flags, "json") && IS_RANK0) {
        const json_field j[] = {{"steps", (double)tr->st.step, 0}, {"tokens", (double)(r->steps_run * s->batch * s->ctx * s->grad_accum * tr->st.ranks), 0},
                                {"final_loss", r->last_loss, 6}, {"training_duration_s", r->elapsed_s, 3},
                                {"tokens_per_s", r->tokens_per_s, 1}, {"training_energy_J", energy_ok ? (double)(e1 - e0) / 1000.0 : NAN, 1}};
        rc = cli_write_json("train", flag_str(flags, "json", ""), j, 6);
    }
    if (r->outcome == MB_TRAIN_INTERRUPTED) {
        char how[64] = "./mambabyte";
        if (tr->st.ranks > 1) snprintf(how, sizeof how, "mpirun -np %d ./mambabyte_mpi", (int)tr->st.ranks);
        printf("interrupted: step %lld is saved in %s; to continue: %s train --resume %s --out %s%s%s\n", (long long)tr->st.step,
               v->out, how, v->out, v->out, flag_given(flags, "data") ? " --data " : "", flag_str(flags, "data", ""));
        rc = 130;
    }
    fflush(stdout);
    return rc;
}

/* In cmd_train: say why (after "mambabyte train: "), exit with code. */
#define TRAIN_FAIL(code, ...) do { fprintf(stderr, "mambabyte train: " __VA_ARGS__); rc = (code); goto done; } while (0)

static int cmd_train(int argc, char **argv) {
    static const char *const schedules[] = {"step", "time", NULL}, *const devices[] = {"auto", "cpu", "cuda", NULL},
                             *const precisions[] = {"fp32", "tf32", "bf16", NULL};
    flag flags[TRAIN_NFLAGS];
    mb_dataset d;
    mb_train_settings set;
    mb_config cfg;
    mb_train_state ck;
    mb_trainer tr;
    mb_train_options opt;
    mb_train_report rep;
    train_view v = {NULL, NULL, NULL, NULL, 10, 0};
    nvml_energy nv;
    unsigned long long e0 = 0;
    uint32_t given;
    int has_state = 0, rc = 0, demo = 0, all_started = 0;
    int64_t eval_chars;
    mb_model *m = NULL;
    const char *resume, *device, *precision;
    double acc = 0;
    train_flags(flags);
    memset(&tr, 0, sizeof tr);
    memset(&ck, 0, sizeof ck);
    memset(&d, 0, sizeof d);
    if (parse_flags("train", flags, argc - 1, argv + 1, TRAIN_USAGE)) return 2;
    if (!flag_choice("train", flags, "schedule", schedules, TRAIN_USAGE) || !flag_choice("train", flags, "device", devices, TRAIN_USAGE) ||
        !flag_choice("train", flags, "precision", precisions, TRAIN_USAGE)) return 2;
    device = flag_str(flags, "device", "auto");
    precision = flag_str(flags, "precision", "fp32");
    if (!strcmp(flag_str(flags, "schedule", "step"), "time") && !(flag_num(flags, "time-budget", 0) > 0)) {
        fprintf(stderr, "mambabyte train: --schedule time needs --time-budget SECONDS\nusage: %s\n", TRAIN_USAGE);
        return 2;
    }
#ifndef MB_WITH_CUDA
    if (!strcmp(device, "cuda") || strcmp(precision, "fp32") != 0) {
        fprintf(stderr, "mambabyte train: %s needs the CUDA build: build with nvcc on PATH (make) and run ./mambabyte_cuda\n",
                !strcmp(device, "cuda") ? "--device cuda" : "--precision tf32/bf16");
        return 2;
    }
#endif
    set_threads(flags);
    if (getenv("MB_TEST_FAIL_RANK") && atoi(getenv("MB_TEST_FAIL_RANK")) == MY_RANK) /* testing hook: this rank's data fails */
        TRAIN_FAIL(1, "%s: cannot read (MB_TEST_FAIL_RANK)\n", flag_str(flags, "data", "data"));
    if (open_train_data(&d, flags, &demo)) { rc = 1; goto done; }
    settings_from_flags(&set, &cfg, &given, flags, &d, demo);
    if ((resume = flag_str(flags, "resume", NULL))) { /* the whole training state, and the run's own settings */
        if (mb_checkpoint_load(resume, &m, &ck, &has_state) != MB_STATUS_OK) TRAIN_FAIL(1, "--resume: %s\n", mb_last_error());
        if (!has_state) TRAIN_FAIL(1, "--resume %s: the checkpoint has no training state (it was saved for inference)\n", resume);
        if (mb_train_settings_resume(&set, &cfg, given, &ck.settings, mb_model_config(m)) != MB_STATUS_OK) TRAIN_FAIL(2, "resume: %s\n", mb_last_error());
    } else if (mb_model_create(&m, &cfg, (uint64_t)set.seed) != MB_STATUS_OK) {
        TRAIN_FAIL(2, "%s\n", mb_last_error());
    }
    if (d.train_size < set.ctx + 1)
        TRAIN_FAIL(1, "%lld training bytes, fewer than ctx+1 = %lld\n", (long long)d.train_size, (long long)set.ctx + 1);
    if (mb_trainer_init(&tr, m, &set, d.train, d.train_size, has_state ? &ck : NULL) != MB_STATUS_OK) TRAIN_FAIL(1, "%s\n", mb_last_error());
#ifdef MB_WITH_MPI
    g_mpi.deterministic = flag_given(flags, "deterministic");
#endif
    if (mb_trainer_set_comm(&tr, COMM) != MB_STATUS_OK) TRAIN_FAIL(2, "%s\n", mb_last_error());
    if (getenv("MB_TEST_INJECT_NAN_STEP")) tr.inject_nonfinite_step = atoll(getenv("MB_TEST_INJECT_NAN_STEP"));
    if (getenv("MB_TEST_INJECT_NAN_FROM")) tr.inject_nonfinite_from = atoll(getenv("MB_TEST_INJECT_NAN_FROM"));
#ifdef MB_WITH_CUDA
    if (strcmp(device, "cpu") != 0 && mb_cuda_trainer_attach(&tr, !strcmp(precision, "bf16") ? 1 : !strcmp(precision, "tf32") ? 2 : 0) != MB_STATUS_OK) {
        if (!strcmp(device, "cuda")) TRAIN_FAIL(1, "--device cuda: %s\n", mb_cuda_last_error());
        printf("note: training on the CPU (fp32): %s\n", mb_cuda_last_error());
    }
#endif
    print_run(&tr, has_state ? resume : NULL);
    if (IS_RANK0 && open_log(&v, flags, has_state)) { rc = 1; goto done; }
    all_started = 1; /* every rank got here, or none trains */
    if (!ALL_RANKS_OK(1)) TRAIN_FAIL(1, "another rank failed to start (see its message): stopping\n");
    v.out = opt.out = flag_str(flags, "out", "model.bin");
    v.log_every = (int64_t)flag_num(flags, "log-every", 10);
    v.tty = isatty(1);
    opt.stop_at = (int64_t)flag_num(flags, "stop-at", 0);
    opt.callback = on_step;
    opt.user = &v;
    g_interrupts = 0;
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    signal(SIGUSR1, on_interrupt); /* mpirun forwards SIGUSR1 to every rank (its own Ctrl-C kills them) */
    if (nvml_open(&nv) && !nvml_read_mj(&nv, &e0)) nv.lib = NULL;
    rc = report_run(&tr, &rep, mb_train_run(&tr, &opt, &rep), &v, flags, &nv, e0);
#ifdef MB_WITH_MPI
    {   /* every rank says what it holds, so a divergence would show (the tests compare these) */
        uint64_t hash = 1469598103934665603ull;
        const unsigned char *p = (const unsigned char *)mb_model_params(m);
        size_t k, nb = (size_t)mb_model_num_params(m) * sizeof(float);
        for (k = 0; k < nb; k++) hash = (hash ^ p[k]) * 1099511628211ull;
        fprintf(stderr, "rank %d: parameters fnv1a %016llx\n", MY_RANK, (unsigned long long)hash);
    }
#endif
    signal(SIGINT, SIG_DFL); /* the state is saved: a Ctrl-C from here on (the evaluation) just ends the process */
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    /* a finished run is evaluated; one paused by --stop-at or interrupted is not */
    eval_chars = (int64_t)flag_num(flags, "eval-chars", demo ? 4000 : 60000);
    if (rc == 0 && IS_RANK0 && eval_chars > 0 && d.eval_size > 0 && (rep.outcome == MB_TRAIN_FINISHED || rep.outcome == MB_TRAIN_TIME_BUDGET)) {
        rc = run_eval(m, d.eval, d.eval_size, eval_chars, d.eval_is_tail ? "held-out 5%" : d.eval_path, 0, NULL, &acc);
        if (rc == 0 && v.csv) fprintf(v.csv, "%lld,,,,%.3f,%.6f\n", (long long)tr.st.step, rep.elapsed_s, acc);
    }
    if (rc != 1) replot(&v);
done:
    if (!all_started) (void)ALL_RANKS_OK(0); /* the other ranks wait for this rank's word */
    if (v.csv && fclose(v.csv) != 0) { fprintf(stderr, "mambabyte train: writing the CSV log failed\n"); rc = 1; }
    mb_trainer_free(&tr);
    mb_train_state_free(&ck);
    mb_model_free(m);
    mb_dataset_close(&d);
    return rc;
}

/* ---------------------------------------------------------------- main */
/* Each command gets argv from its own name on (argv[0] = "train", ...). */
static const struct { const char *name; int (*run)(int, char **); const char *help; } COMMANDS[] = {
    {"train", cmd_train, "train a model (no flags: WikiText-103 if fetched, else a demo on data/sample.txt)"},
    {"eval", cmd_eval, "greedy char accuracy of a checkpoint (the WikiText char-level protocol)"},
    {"sample", cmd_sample, "generate text from a checkpoint"},
    {"plot", mb_cli_plot, "draw a training CSV log as an SVG (plot LOG.csv -o FILE.svg)"},
    {"numerics", mb_cli_numerics, "naive vs stable softmax report (--json FILE, --svg FILE)"},
    {"bench", mb_cli_bench, "CPU benchmark of the default config (--json FILE)"},
    {"export", mb_cli_export, "write a model as safetensors (mamba_ssm names) or as a checkpoint"}};
#define NCOMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    size_t i;
    fprintf(f, "mambabyte " MB_VERSION_STRING " - byte-level Mamba in C\n"
               "usage: mambabyte <command> [flags]     (mambabyte <command> --help for its flags)\ncommands:\n");
    for (i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].help);
}

int main(int argc, char **argv) {
    size_t i;
    /* a full disk or `ulimit -f` must fail the write (EFBIG), not kill us
       before the half-written temporary file is removed */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version")) { printf("mambabyte %s\n", MB_VERSION_STRING); return 0; }
#ifdef MB_WITH_MPI
    if (mb_mpi_init(&g_mpi, &argc, &argv, 0) != MB_STATUS_OK) { fprintf(stderr, "mambabyte: %s\n", g_mpi.comm.last_error()); return 1; }
    if (!IS_RANK0 && !freopen("/dev/null", "w", stdout)) mb_mpi_abort(&g_mpi, "cannot silence stdout"); /* rank 0 alone prints */
    if (getenv("MB_TEST_KILL_RANK") && atoi(getenv("MB_TEST_KILL_RANK")) == g_mpi.comm.rank) alarm(2); /* testing hook: a crash */
#endif
    for (i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) {
            int rc = COMMANDS[i].run(argc - 1, argv + 1);
#ifdef MB_WITH_MPI
            mb_mpi_finalize(&g_mpi);
#endif
            return rc;
        }
    fprintf(stderr, "mambabyte: unknown command '%s'\n", argv[1]);
    usage(stderr);
#ifdef MB_WITH_MPI
    mb_mpi_finalize(&g_mpi);
#endif
    return 2;
}
