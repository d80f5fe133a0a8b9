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
#include "eval.c"
#include "export.c"

/* -------------------------------------------------------------- sample */
static const char *SAMPLE_USAGE =
    "mambabyte sample --model FILE [--prompt TEXT] [--bytes N] [--temperature T] [--top-k K] [--seed S]\n"
    "                 [--precision fp32|bf16|int8] [--prompts FILE] [--draft FILE|lookup|self:int8|self:bf16 [--draft-len K]]";

static int put_byte(void *user, int b) {
    (void)user;
    putchar(b);
    return fflush(stdout) != 0; /* a closed pipe ends the generation */
}

/* --prompts: one stream per line of f, all stepped together (mb_streams);
   each line's output is what --prompt LINE gives at the same seed and
   precision (its own RNG, seeded alike).  Prints prompt + bytes per line. */
static int sample_prompts(const mb_model *m, const mb_mapped_file *f, int precision, int64_t n, double temp, int top_k, uint64_t seed) {
    int k = 0, i, *idx;
    int64_t p, j, *start, *len;
    uint8_t *last, *out, *buf;
    uint64_t *rng;
    mb_streams *b = NULL;
    mb_status st = MB_STATUS_OK;
    for (p = 0; p < (int64_t)f->size; p++) k += f->data[p] == '\n' || p + 1 == (int64_t)f->size;
    start = (int64_t *)calloc((size_t)k + 1, 2 * sizeof(int64_t)), len = start + k + 1;
    idx = (int *)calloc((size_t)k + 1, sizeof(int));
    rng = (uint64_t *)calloc((size_t)k + 1, sizeof(uint64_t));
    last = (uint8_t *)calloc((size_t)k + 1, 1 + (size_t)n);
    buf = (uint8_t *)malloc((size_t)f->size + 1);
    out = last + k + 1;
    if (!start || !idx || !rng || !last || !buf || (st = mb_streams_create(&b, m, k > 0 ? k : 1, precision)) != MB_STATUS_OK) k = -1;
    for (i = 0, p = 0; i < k; i++) { /* line i: its 0x00 and all but its last byte fed, the last stepped with the others */
        for (j = p; j < (int64_t)f->size && f->data[j] != '\n'; j++) {}
        start[i] = p, len[i] = j - p, idx[i] = i, rng[i] = seed;
        buf[0] = 0x00;
        memcpy(buf + 1, f->data + p, (size_t)len[i]);
        last[i] = buf[len[i]];
        if ((st = mb_streams_feed(b, i, buf, len[i], NULL)) != MB_STATUS_OK) k = -1;
        p = j + 1;
    }
    for (j = 0; j < n && k > 0; j++) {
        const float *lg = mb_streams_step(b, idx, last, k);
        for (i = 0; i < k; i++) out[(int64_t)i * n + j] = last[i] = (uint8_t)mb_sample_byte(lg + i * 256, temp, top_k, &rng[i]);
    }
    for (i = 0; i < k; i++) {
        fwrite(f->data + start[i], 1, (size_t)len[i], stdout);
        fwrite(out + (int64_t)i * n, 1, (size_t)n, stdout);
        putchar('\n');
    }
    if (k < 0) fprintf(stderr, "mambabyte sample: %s\n", st != MB_STATUS_OK ? mb_last_error() : "out of memory");
    mb_streams_free(b);
    free(start), free(idx), free(rng), free(last), free(buf);
    return k < 0;
}

static int cmd_sample(int argc, char **argv) {
    flag flags[] = {
        {"model", F_STR, 0, 0, "checkpoint (required)", 0, 0, 0},
        {"prompt", F_STR, 0, 0, "text to continue (default empty)", 0, 0, 0},
        {"bytes", F_INT, 0, 1e12, "bytes to generate (default 200)", 0, 0, 0},
        {"temperature", F_NUM, 0, 100, "0 = greedy (default 0.8)", 0, 0, 0},
        {"top-k", F_INT, 0, 256, "sample among the K most likely bytes (0 = all, default 0)", 0, 0, 0},
        {"seed", F_INT, 0, 9007199254740992.0, "random seed (default 1)", 0, 0, 0},
        {"precision", F_STR, 0, 0, STREAM_PRECISION_HELP, 0, 0, 0},
        {"prompts", F_STR, 0, 0, "a file of prompts, one a line: each continued (streams stepped together), one output line each", 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        {"draft", F_STR, 0, 0, "speculative: a smaller model's FILE, lookup (prompt lookup) or self:int8|self:bf16 (this model's weights in fewer bytes); same output", 0, 0, 0},
        {"draft-len", F_INT, 1, MB_SPEC_MAX_DRAFT, "most bytes drafted per round (default 8, adapted to the acceptance)", 0, 0, 0},
        FLAG_END};
    mb_model *m;
    mb_stream *s, *ds = NULL;
    mb_spec_options so;
    const char *prompt, *draft;
    uint64_t rng;
    int64_t made = 0;
    double t0;
    mb_status st;
    if (parse_flags("sample", flags, argc - 1, argv + 1, SAMPLE_USAGE)) return 2;
    if (!flag_given(flags, "model")) { fprintf(stderr, "mambabyte sample: --model is required\nusage: %s\n", SAMPLE_USAGE); return 2; }
    if (!flag_choice("sample", flags, "precision", stream_precisions, SAMPLE_USAGE)) return 2;
    cli_threads_flag(flags);
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: %s\n", mb_last_error()); return 1; }
    if (flag_given(flags, "prompts")) {
        mb_mapped_file f;
        int rc = 1;
        if (mb_map_file(&f, flag_str(flags, "prompts", "")) != MB_STATUS_OK) fprintf(stderr, "mambabyte sample: %s\n", mb_last_error());
        else {
            rc = sample_prompts(m, &f, stream_precision(flags), (int64_t)flag_num(flags, "bytes", 200), flag_num(flags, "temperature", 0.8),
                                (int)flag_num(flags, "top-k", 0), (uint64_t)flag_num(flags, "seed", 1));
            mb_unmap_file(&f);
        }
        mb_model_free(m);
        return rc;
    }
    draft = flag_str(flags, "draft", NULL);
    if (draft && !strncmp(draft, "self:", 5) && strcmp(draft + 5, "int8") && strcmp(draft + 5, "bf16")) {
        fprintf(stderr, "mambabyte sample: --draft %s: self-speculation is self:int8 or self:bf16\nusage: %s\n", draft, SAMPLE_USAGE);
        mb_model_free(m);
        return 2;
    }
    st = mb_stream_create_ex(&s, m, stream_precision(flags));
    /* self-speculation: the draft is the target's own weights, stored in fewer bytes */
    if (st == MB_STATUS_OK && draft && !strncmp(draft, "self:", 5))
        if ((st = mb_stream_create_ex(&ds, m, !strcmp(draft + 5, "int8") ? MB_PRECISION_INT8 : MB_PRECISION_BF16)) != MB_STATUS_OK)
            mb_stream_free(s);
    mb_model_free(m); /* the streams hold their own copies of the weights */
    if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: %s\n", mb_last_error()); return 1; }
    memset(&so, 0, sizeof so);
    so.draft_len = (int)flag_num(flags, "draft-len", 0);
    if (draft && strcmp(draft, "lookup") != 0 && !ds) {
        if ((st = mb_model_load(&m, draft)) == MB_STATUS_OK) st = mb_stream_create(&ds, m), mb_model_free(m);
        if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte sample: --draft %s: %s\n", draft, mb_last_error()); mb_stream_free(s); return 1; }
    }
    so.draft = ds;
    prompt = flag_str(flags, "prompt", "");
    rng = (uint64_t)flag_num(flags, "seed", 1);
    fputs(prompt, stdout);
    t0 = mb_clock_seconds();
    if (draft)
        st = mb_stream_generate_spec(s, (const uint8_t *)prompt, (int64_t)strlen(prompt), (int64_t)flag_num(flags, "bytes", 200),
                                     flag_num(flags, "temperature", 0.8), (int)flag_num(flags, "top-k", 0), &rng, NULL, put_byte, NULL, &made, &so);
    else
        st = mb_stream_generate(s, (const uint8_t *)prompt, (int64_t)strlen(prompt), (int64_t)flag_num(flags, "bytes", 200),
                                flag_num(flags, "temperature", 0.8), (int)flag_num(flags, "top-k", 0), &rng, NULL, put_byte, NULL, &made);
    t0 = mb_clock_seconds() - t0;
    putchar('\n');
    if (st != MB_STATUS_OK) fprintf(stderr, "mambabyte sample: %s\n", mb_last_error());
    else { /* bench/spec.sh reads this line */
        fprintf(stderr, "%lld bytes in %.2f s: %.1f bytes/s", (long long)made, t0, (double)made / t0);
        if (draft) fprintf(stderr, "; %lld rounds, %.2f of %.2f drafted bytes accepted per round", (long long)so.rounds,
                           (double)so.accepted / (double)(so.rounds ? so.rounds : 1), (double)so.drafted / (double)(so.rounds ? so.rounds : 1));
        fputc('\n', stderr);
    }
    mb_stream_free(ds);
    mb_stream_free(s);
    return st == MB_STATUS_OK ? 0 : 1;
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
    {"precision", F_STR, 0, 0, "fp32 (default), bf16 (GPU, or CPU with AVX512-BF16/AMX) or tf32 (CUDA only): the matrix products", 0, 0, 0},
    {"eval-chars", F_INT, 0, 1e15, "characters to evaluate after training (default 60000; 0 = skip)", 0, 0, 0},
    {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
    {"deterministic", F_BOOL, 0, 0, "mpirun: sum gradients in rank order (bit-identical to one process with --grad-accum N)", 0, 0, 0},
    FLAG_END};
#define TRAIN_NFLAGS (MB_FIELD_COUNT + sizeof CLI_TRAIN_FLAGS / sizeof CLI_TRAIN_FLAGS[0])

/* The bundled data folder: ./data when it holds the sample text, else the
   one beside the binary, so the demo runs from any folder. */
static const char *bundled_data_dir(char *buf, size_t n) {
    ssize_t k = cli_is_file("data/sample.txt") ? -1 : readlink("/proc/self/exe", buf, n - 16);
    char *slash = k > 0 ? (buf[k] = '\0', strrchr(buf, '/')) : NULL;
    if (!slash) return "data";
    memcpy(slash, "/data", 6);
    return buf;
}

/* --data (default: WikiText-103 if fetched, else the demo text) through mb_dataset_open. */
static int open_train_data(mb_dataset *d, flag *flags, int *demo) {
    char dir[4096], wiki[4200], sample[4200], probe[4300];
    const char *data = flag_str(flags, "data", NULL), *bundled = bundled_data_dir(dir, sizeof dir);
    memset(d, 0, sizeof *d);
    snprintf(wiki, sizeof wiki, "%s/wikitext-103", bundled);
    snprintf(sample, sizeof sample, "%s/sample.txt", bundled);
    snprintf(probe, sizeof probe, "%s/wiki.train.raw", wiki);
    if (!data && cli_is_file(probe)) data = wiki;
    if ((*demo = !data)) {
        printf("WikiText-103 is not in %s/ (fetch it with: bash data/fetch_wikitext103.sh).\n"
               "Running a short demo on the bundled sample text instead: %s\n\n", wiki, sample);
        data = sample;
    }
    if (mb_dataset_open(d, data, flag_str(flags, "eval-data", NULL)) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte train: %s%s\n", mb_last_error(), *demo && !cli_is_file(sample) ? " (no --data given: run from the repository or give --data FILE)" : "");
        return 1;
    }
    if (d->train_file.size == 0) {
        fprintf(stderr, "mambabyte train: %s is empty: there is no text to train on\n", d->train_path);
        return 1;
    }
    {
        char line[9000];
        mb_dataset_describe(line, sizeof line, d);
        printf("%s\n", line);
    }
    return 0;
}

/* Seed 000's settings, the demo's or smoke mode's, then the flags; *given
   gets the MB_GIVEN bits of the flags that were given. */
static void settings_from_flags(mb_train_settings *s, mb_config *c, uint32_t *given, flag *flags, const mb_dataset *d, int demo) {
    char why[512];
    const char *env = getenv("MB_SMOKE");
    int smoke_env = env && !strcmp(env, "1"), smoke = smoke_env || (d->train_size < 10000 && !(env && !strcmp(env, "0")));
    *s = mb_train_settings_default();
    *c = mb_config_default();
    if (demo) { /* finishes in well under a minute on two cores */
        c->d_model = 64; c->n_layer = 2; c->dt_rank = 4;
        s->batch = 8; s->ctx = 128; s->steps = 300; s->lr = 3e-3;
    }
    if (smoke) { /* a check that everything runs, in a second: the flags given still win */
        c->d_model = 32; c->n_layer = 2; c->d_state = 8; c->dt_rank = 2;
        s->ctx = d->train_size < 65 ? d->train_size - 1 : 64; s->batch = 2; s->steps = 2;
    }
    *given = cli_train_fields_apply(flags, s, c); /* the fields come first in flags */
    if (smoke && !flag_given(flags, "resume")) /* what will run, after the flags */
        printf("smoke mode (%s): d_model %d, %d layers, d_state %d, ctx %lld, batch %lld, %lld steps (flags given win); %s turns it off\n",
               smoke_env ? "MB_SMOKE=1" : "training data under 10,000 bytes", c->d_model, c->n_layer, c->d_state, (long long)s->ctx,
               (long long)s->batch, (long long)s->steps, smoke_env ? "unsetting MB_SMOKE" : "MB_SMOKE=0");
    if (!demo && !smoke && !flag_given(flags, "resume") && mb_train_settings_for_budget(s, *given, why, sizeof why))
        printf("%s\n", why);
}

/* 1, after saying why and what to do, when a resume is already at or past
   --stop-at (it would only rewrite the checkpoint). */
static int resume_past_stop(const mb_train_state *ck, const mb_train_settings *s, int64_t stop_at, const char *path) {
    if (!(stop_at > 0 && stop_at < s->steps && ck->step >= stop_at)) return 0;
    fprintf(stderr, "mambabyte train: --resume %s is at step %lld, already at or past --stop-at %lld: nothing to train, "
            "nothing written. Give a --stop-at above %lld, or leave it out to train to step %lld\n", path,
            (long long)ck->step, (long long)stop_at, (long long)ck->step, (long long)s->steps);
    return 1;
}

/* Before any work: an output's folder is writable and the path is no
   folder.  Returns 0, or 1 after saying why. */
static int check_writable(const char *flag_name, const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "mambabyte train: --%s %s is a folder: give a file path\n", flag_name, path);
        return 1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "mambabyte train: --%s %s: cannot create a file in %s: %s\n", flag_name, path, dir, strerror(errno));
        return 1;
    }
    return 0;
}

/* Every input and output of a run, checked before the model is built: the
   evaluation text (what the evaluation after training will read) and the
   paths written during and after the run.  Returns 0 or 1. */
static int check_run_inputs(flag *flags, const mb_dataset *d, int64_t eval_chars, const char *eval_label) {
    static const char *const outputs[] = {"out", "log", "plot", "json"};
    size_t i;
    if (IS_RANK0 && eval_chars > 0 && (d->eval_size > 0 || !d->eval_is_tail) &&
        eval_text_check("train", eval_label, d->eval, d->eval_size, eval_chars))
        return 1;
    for (i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        const char *path = flag_str(flags, outputs[i], i == 0 ? "model.bin" : NULL);
        if (IS_RANK0 && path && check_writable(outputs[i], path)) return 1;
    }
    return 0;
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
    mb_train_progress_line(line, sizeof line, p);
    if (!p->applied) {
        fprintf(stderr, "%s\n", line);
        return g_interrupts != 0;
    }
    if (v->csv) fprintf(v->csv, "%lld,%.6f,%.6e,%.6f,%.3f,\n", (long long)p->step, p->loss, p->lr, p->grad_norm, p->elapsed_s);
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

/* Reports how the run ended; returns the exit code (130 when interrupted). */
static int report_run(const mb_trainer *tr, const mb_train_report *r, mb_status st, const train_view *v, flag *flags, nvml_energy *nv,
                      unsigned long long e0) {
    char text[512];
    unsigned long long e1 = 0;
    int energy_ok = nv->lib && nvml_read_mj(nv, &e1), rc = 0;
    if (r->outcome == MB_TRAIN_NON_FINITE) { fprintf(stderr, "mambabyte train: %s (%s)\n", mb_last_error(), v->out); return 1; }
    if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte train: step %lld: %s\n", (long long)tr->st.step, mb_last_error()); return 1; }
    mb_train_report_describe(text, sizeof text, tr, r);
    printf("%s%s; saved %s\n", v->tty ? "\n" : "", text, v->out);
    if (energy_ok) printf("GPU energy of the training loop: %.1f J\n", (double)(e1 - e0) / 1000.0);
    else if (tr->backend.step) printf("GPU energy: not measured\n"); /* a CPU run has none to measure */
    if (flag_given(flags, "json") && IS_RANK0) {
        const json_field j[] = {{"steps", (double)tr->st.step, 0}, {"tokens", r->tokens, 0},
                                {"final_loss", r->last_loss, 6}, {"training_duration_s", r->elapsed_s, 3},
                                {"tokens_per_s", r->tokens_per_s, 1}, {"training_energy_J", energy_ok ? (double)(e1 - e0) / 1000.0 : NAN, 1}};
        rc = cli_write_json("train", flag_str(flags, "json", ""), j, 6);
    }
    if (r->outcome == MB_TRAIN_INTERRUPTED) {
        char how[64] = "./mambabyte";
        if (tr->st.ranks > 1) snprintf(how, sizeof how, "mpirun -np %d ./" MPI_BINARY, (int)tr->st.ranks);
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
    char eval_label[4200];
    double acc = 0;
    cli_train_field_flags(flags);
    memcpy(flags + MB_FIELD_COUNT, CLI_TRAIN_FLAGS, sizeof CLI_TRAIN_FLAGS);
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
    if (!strcmp(device, "cuda") || !strcmp(precision, "tf32")) {
        fprintf(stderr, "mambabyte train: %s needs the CUDA build: build with nvcc on PATH (make) and run ./mambabyte_cuda\n",
                !strcmp(device, "cuda") ? "--device cuda" : "--precision tf32");
        return 2;
    }
#endif
    if (!strcmp(device, "cpu") && !strcmp(precision, "tf32")) /* (without the CUDA build, refused above) */
        TRAIN_FAIL(2, "--precision tf32 is CUDA only; on the CPU use fp32 or bf16\n");
    cli_threads_flag(flags);
    if (getenv("MB_TEST_FAIL_RANK") && atoi(getenv("MB_TEST_FAIL_RANK")) == MY_RANK) /* testing hook: this rank's data fails */
        TRAIN_FAIL(1, "%s: cannot read (MB_TEST_FAIL_RANK)\n", flag_str(flags, "data", "data"));
    if (open_train_data(&d, flags, &demo)) { rc = 1; goto done; }
    eval_chars = (int64_t)flag_num(flags, "eval-chars", demo ? 4000 : 60000);
    dataset_eval_label(eval_label, sizeof eval_label, &d, "valid", flag_given(flags, "eval-data"));
    if (check_run_inputs(flags, &d, eval_chars, eval_label)) { rc = 1; goto done; }
    settings_from_flags(&set, &cfg, &given, flags, &d, demo);
    if ((resume = flag_str(flags, "resume", NULL))) { /* the whole training state, and the run's own settings */
        if (mb_checkpoint_load(resume, &m, &ck, &has_state) != MB_STATUS_OK) TRAIN_FAIL(1, "--resume: %s\n", mb_last_error());
        if (!has_state) TRAIN_FAIL(1, "--resume %s: the checkpoint has no training state (it was saved for inference)\n", resume);
        if (mb_train_settings_resume(&set, &cfg, given, &ck.settings, mb_model_config(m)) != MB_STATUS_OK) TRAIN_FAIL(2, "resume: %s\n", mb_last_error());
        if (resume_past_stop(&ck, &set, (int64_t)flag_num(flags, "stop-at", 0), resume)) { rc = 2; goto done; }
    } else if (mb_model_create(&m, &cfg, (uint64_t)set.seed) != MB_STATUS_OK) {
        TRAIN_FAIL(2, "%s\n", mb_last_error());
    }
    if (d.train_size < set.ctx + 1)
        TRAIN_FAIL(1, "%lld training bytes, fewer than ctx+1 = %lld\n", (long long)d.train_size, (long long)set.ctx + 1);
    if (mb_trainer_init(&tr, m, &set, d.train, d.train_size, has_state ? &ck : NULL) != MB_STATUS_OK) TRAIN_FAIL(1, "%s\n", mb_last_error());
#ifdef MB_WITH_MPI
    g_mpi.comm.deterministic = flag_given(flags, "deterministic");
#endif
    if (mb_trainer_set_comm(&tr, COMM) != MB_STATUS_OK) TRAIN_FAIL(2, "%s\n", mb_last_error());
    if (getenv("MB_TEST_INJECT_NAN_STEP")) tr.inject_nonfinite_step = atoll(getenv("MB_TEST_INJECT_NAN_STEP"));
    if (getenv("MB_TEST_INJECT_NAN_FROM")) tr.inject_nonfinite_from = atoll(getenv("MB_TEST_INJECT_NAN_FROM"));
#ifdef MB_WITH_CUDA
    if (strcmp(device, "cpu") != 0 &&
        mb_cuda_trainer_attach(&tr, !strcmp(precision, "bf16")   ? MB_PRECISION_BF16
                                    : !strcmp(precision, "tf32") ? MB_PRECISION_TF32
                                                                 : MB_PRECISION_FP32) != MB_STATUS_OK) {
        if (!strcmp(device, "cuda")) TRAIN_FAIL(1, "--device cuda: %s\n", mb_last_error());
        printf("note: training on the CPU (%s): %s\n", !strcmp(precision, "bf16") ? "bf16" : "fp32", mb_last_error());
    }
#endif
    if (!tr.backend.step && !strcmp(precision, "bf16") && mb_model_set_precision(m, MB_PRECISION_BF16) == MB_STATUS_OK)
        printf("precision: %s\n", mb_model_precision_describe(m)); /* the CPU's bf16 products: which kernel, or why none */
    {
        char text[1024];
        mb_trainer_describe(text, sizeof text, &tr, has_state ? resume : NULL);
        printf("%s\n", text);
    }
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
    /* every rank says what it holds, so a divergence would show (the tests compare these) */
    fprintf(stderr, "rank %d: parameters fnv1a %016llx\n", MY_RANK, (unsigned long long)mb_model_hash(m));
#endif
    signal(SIGINT, SIG_DFL); /* the state is saved: a Ctrl-C from here on (the evaluation) just ends the process */
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    /* a finished run is evaluated; one paused by --stop-at or interrupted is not */
    if (rc == 0 && IS_RANK0 && eval_chars > 0 && d.eval_size > 0 && (rep.outcome == MB_TRAIN_FINISHED || rep.outcome == MB_TRAIN_TIME_BUDGET)) {
        rc = run_eval(m, NULL, d.eval, d.eval_size, eval_chars, eval_label, 0, NULL, &acc, MB_PRECISION_FP32, NULL);
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
    {"eval", mb_cli_eval, "greedy char accuracy of a checkpoint (the WikiText char-level protocol)"},
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
