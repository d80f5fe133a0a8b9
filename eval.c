/* eval.c - `mambabyte eval`: the WikiText char-level protocol over a
   checkpoint (mb_eval_text, or mb_eval_text_exact with --predict exact),
   printed and optionally written as JSON.  main.c includes this file after
   the implementation of mambabyte.h and cli.h; `train` calls run_eval on
   its held-out text after training.  Entry points:

     static int run_eval(const mb_model *m, mb_stream *s, const uint8_t *text, int64_t len, int64_t chars,
                         const char *label, int exact, const char *json_path, double *acc, int precision, mb_eval_result *total);
     static int mb_cli_eval(int argc, char **argv);   (argv[0] == "eval") */

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

/* --precision of eval and sample: the stream's stored weights (mb_stream_create_ex). */
#define STREAM_PRECISION_HELP "the stream's weights: fp32 (default), bf16 or int8 (a float32 scale per 64 weights)"
static const char *const stream_precisions[] = {"fp32", "bf16", "int8", NULL};
static int stream_precision(flag *flags) {
    const char *p = flag_str(flags, "precision", "fp32");
    return !strcmp(p, "bf16") ? MB_PRECISION_BF16 : !strcmp(p, "int8") ? MB_PRECISION_INT8 : MB_PRECISION_FP32;
}

static const char *EVAL_USAGE =
    "mambabyte eval --model FILE --data PATH [--split valid|test|train|tail] [--chars N] [--predict ascii|exact] [--precision fp32|bf16|int8] [--json FILE]";

/* Before any work: the text the evaluation will read (its first `chars`
   characters) is there and is UTF-8, as the protocol needs.  Returns 0, or
   1 after saying why (cmd: "train" or "eval"). */
static int eval_text_check(const char *cmd, const char *label, const uint8_t *text, int64_t len, int64_t chars) {
    int64_t pos = 0, k;
    if (len <= 0) {
        fprintf(stderr, "mambabyte %s: %s is empty: there is no text to evaluate\n", cmd, label);
        return 1;
    }
    for (; pos < len && chars > 0; pos += k, chars--)
        if ((k = mb_utf8_char_len(text + pos, len - pos)) == 0) {
            fprintf(stderr, "mambabyte %s: %s: invalid UTF-8 at byte offset %lld (byte 0x%02x); the evaluation reads UTF-8 text%s\n", cmd,
                    label, (long long)pos, text[pos], !strcmp(cmd, "train") ? " (--eval-chars 0 skips it)" : "");
            return 1;
        }
    return 0;
}

/* Where the evaluated text of d comes from, for "eval on LABEL: ...": a
   named split, a file's held-out 5%, or an evaluation file (eval_data). */
static void dataset_eval_label(char *buf, size_t n, const mb_dataset *d, const char *split, int eval_data) {
    if (d->eval_is_tail) snprintf(buf, n, "%s's held-out 5%%", d->train_path);
    else if (eval_data) snprintf(buf, n, "%s (--eval-data)", d->eval_path);
    else snprintf(buf, n, "the %s split (%s)", split, d->eval_path);
}

/* Evaluates m on text, prints (and writes to json_path) the results; exact
   adds the exact greedy character beside the protocol's ASCII rule; *acc
   gets the protocol's char accuracy.  s (or NULL): the stream the ASCII
   protocol runs on, m unused then.  Returns an exit code. */
static int run_eval(const mb_model *m, mb_stream *s, const uint8_t *text, int64_t len, int64_t chars, const char *label, int exact,
                    const char *json_path, double *acc, int precision, mb_eval_result *total) {
    mb_eval_exact_result r;
    eval_progress_state ps = {mb_clock_seconds(), isatty(2)};
    mb_status st;
    double dt, n, ca, bpb, ba;
    memset(&r, 0, sizeof r);
    st = exact ? mb_eval_text_exact_ex(m, precision, text, len, chars, &r, eval_progress, &ps)
               : s ? mb_eval_stream(s, text, len, chars, &r.base, eval_progress, &ps)
               : mb_eval_text_ex(m, precision, text, len, chars, &r.base, eval_progress, &ps);
    if (st != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s: %s\n", label, mb_last_error()); return 1; }
    dt = mb_clock_seconds() - ps.t0;
    n = r.base.chars ? (double)r.base.chars : 1.0;
    ca = (double)r.base.chars_correct / n;
    bpb = r.base.bytes ? r.base.nll_bits / (double)r.base.bytes : 0.0;
    ba = r.base.bytes ? (double)r.base.bytes_correct / (double)r.base.bytes : 0.0;
    if (acc) *acc = ca;
    if (total) { /* sums over several files */
        total->chars += r.base.chars, total->chars_correct += r.base.chars_correct, total->bytes += r.base.bytes;
        total->bytes_correct += r.base.bytes_correct, total->nll_bits += r.base.nll_bits;
    }
    {
        char text[1024];
        mb_eval_describe(text, sizeof text, label, &r, exact, dt);
        printf("%s\n", text);
    }
    {
        const json_field j[] = {{"val_char_accuracy", ca, 6}, {"chars", (double)r.base.chars, 0}, {"bits_per_byte", bpb, 6},
                                {"byte_accuracy", ba, 6}, {"duration_s", dt, 3}, {"chars_per_s", dt > 0 ? (double)r.base.chars / dt : 0.0, 1},
                                {"exact_char_accuracy", (double)r.exact_correct / n, 6},
                                {"exact_multibyte_predictions", (double)r.exact_multibyte, 0},
                                {"exact_multibyte_correct", (double)r.exact_multibyte_correct, 0}};
        return json_path ? cli_write_json("eval", json_path, j, exact ? 9 : 6) : 0;
    }
}

/* A stream of *m at precision, and *m freed (the stream owns its weights:
   a bf16/int8 eval then holds only them); NULL, *m kept, if it fails. */
static mb_stream *eval_stream(mb_model **m, int precision) {
    mb_stream *s = NULL;
    if (mb_stream_create_ex(&s, *m, precision) == MB_STATUS_OK) mb_model_free(*m), *m = NULL;
    return s;
}

/* --data A,B,...: each file scored from its start (one stream each; the
   parallel prefill already reads each weight once per chunk of bytes),
   a line per file, then the total over all their characters. */
static int eval_files(flag *flags) {
    char paths[8192], *path, *save = NULL;
    mb_eval_result tot;
    mb_model *m;
    mb_stream *s;
    int rc = 0, nfiles = 0;
    memset(&tot, 0, sizeof tot);
    snprintf(paths, sizeof paths, "%s", flag_str(flags, "data", ""));
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s\n", mb_last_error()); return 1; }
    s = eval_stream(&m, stream_precision(flags));
    for (path = strtok_r(paths, ",", &save); path && rc == 0; path = strtok_r(NULL, ",", &save), nfiles++) {
        mb_mapped_file f;
        int64_t chars = (int64_t)flag_num(flags, "chars", 60000);
        if (mb_map_file(&f, path) != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s\n", mb_last_error()); rc = 1; break; }
        rc = eval_text_check("eval", path, f.data, f.size, chars) ||
             run_eval(m, s, f.data, f.size, chars, path, 0, NULL, NULL, stream_precision(flags), &tot);
        mb_unmap_file(&f);
    }
    if (rc == 0)
        printf("total over %d files: %lld chars, char accuracy %.4f, bits per byte %.4f, byte accuracy %.4f\n", nfiles, (long long)tot.chars,
               (double)tot.chars_correct / (double)(tot.chars ? tot.chars : 1), tot.nll_bits / (double)(tot.bytes ? tot.bytes : 1),
               (double)tot.bytes_correct / (double)(tot.bytes ? tot.bytes : 1));
    mb_stream_free(s);
    mb_model_free(m);
    return rc;
}

static int mb_cli_eval(int argc, char **argv) {
    static const char *const splits[] = {"valid", "test", "train", "tail", NULL}, *const rules[] = {"ascii", "exact", NULL};
    flag flags[] = {
        {"model", F_STR, 0, 0, "checkpoint to evaluate (required)", 0, 0, 0},
        {"data", F_STR, 0, 0, "WikiText folder or a text file (required); A,B,...: several files, each from its start, and the total", 0, 0, 0},
        {"split", F_STR, 0, 0, "a folder's split: valid (default), test or train; or tail: a file's last 5% (as train holds out). Without it a file is scored from its start", 0, 0, 0},
        {"chars", F_INT, 1, 1e15, "first N characters (default 60000)", 0, 0, 0},
        {"predict", F_STR, 0, 0, "ascii (default: the protocol's argmax over bytes 0..127) or exact (also the exact greedy character)", 0, 0, 0},
        {"json", F_STR, 0, 0, "also write the results as JSON", 0, 0, 0},
        {"precision", F_STR, 0, 0, STREAM_PRECISION_HELP, 0, 0, 0},
        {"threads", F_INT, 1, 1024, "OpenMP threads", 0, 0, 0},
        FLAG_END};
    mb_model *m;
    mb_dataset d;
    mb_mapped_file f;
    const char *data, *split;
    char path[4096], label[4200];
    int64_t chars;
    int rc, folder, tail;
    if (parse_flags("eval", flags, argc - 1, argv + 1, EVAL_USAGE)) return 2;
    if (!flag_given(flags, "model") || !flag_given(flags, "data")) {
        fprintf(stderr, "mambabyte eval: --model and --data are required\nusage: %s\n", EVAL_USAGE);
        return 2;
    }
    if (strchr(flag_str(flags, "data", ""), ',')) return eval_files(flags);
    if (!flag_choice("eval", flags, "split", splits, EVAL_USAGE) || !flag_choice("eval", flags, "predict", rules, EVAL_USAGE) ||
        !flag_choice("eval", flags, "precision", stream_precisions, EVAL_USAGE)) return 2;
    cli_threads_flag(flags);
    data = flag_str(flags, "data", "");
    split = flag_str(flags, "split", NULL);
    chars = (int64_t)flag_num(flags, "chars", 60000);
    folder = mb_dataset_split_path(path, sizeof path, data, split ? split : "valid");
    tail = split && !strcmp(split, "tail");
    if (split && folder == tail && (folder || cli_is_file(data))) { /* a folder's split of a file, or a file's tail of a folder */
        if (folder) fprintf(stderr, "mambabyte eval: --split tail is a single file's held-out 5%%; %s is a folder: use --split valid or test\n", data);
        else fprintf(stderr, "mambabyte eval: --split %s needs a WikiText folder, and %s is a file: give the folder, --split tail for the "
                             "file's last 5%% (what train holds out), or no --split to score the file from its start (not held out)\n", split, data);
        return 2;
    }
    memset(&d, 0, sizeof d);
    memset(&f, 0, sizeof f);
    if (tail) { /* the same 5% that train holds out */
        if (mb_dataset_open(&d, data, NULL) != MB_STATUS_OK) { fprintf(stderr, "mambabyte eval: %s\n", mb_last_error()); return 1; }
        f.data = d.eval;
        f.size = d.eval_size;
    } else if (mb_map_file(&f, path) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte eval: %s\n", mb_last_error());
        return 1;
    }
    snprintf(d.eval_path, sizeof d.eval_path, "%s", path);
    if (folder || tail) dataset_eval_label(label, sizeof label, &d, split ? split : "valid", 0);
    else snprintf(label, sizeof label, "the start of %s (not held out)", path);
    rc = eval_text_check("eval", label, f.data, f.size, chars);
    if (rc == 0 && mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) {
        fprintf(stderr, "mambabyte eval: %s\n", mb_last_error());
        rc = 1;
    }
    if (rc == 0) {
        int exact = !strcmp(flag_str(flags, "predict", "ascii"), "exact");
        mb_stream *s = exact ? NULL : eval_stream(&m, stream_precision(flags)); /* exact search needs the model */
        rc = run_eval(m, s, f.data, f.size, chars, label, exact, flag_str(flags, "json", NULL), NULL, stream_precision(flags), NULL);
        mb_stream_free(s);
        mb_model_free(m);
    }
    if (tail) mb_dataset_close(&d);
    else mb_unmap_file(&f);
    return rc;
}
