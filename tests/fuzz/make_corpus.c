/* make_corpus.c - writes the seed corpus of tests/fuzz/.  From the repo root:
     cc -std=c99 -I. tests/fuzz/make_corpus.c -o build/make_corpus -lm && build/make_corpus
     corpus/checkpoint/  tiny checkpoints of a d_model 4 model, valid
                         (with and without training state) and broken
     corpus/safetensors/ tiny safetensors files (LayerNorm tied, RMSNorm
                         untied) and broken ones: dtype, shape, name, offsets
     corpus/utf8_eval/   UTF-8 text, valid and invalid, with the 10-byte
                         prefix fuzz_utf8_eval.c expects
     corpus/cli_args/    argv lines, one argument per line, after a mode and
                         command byte (see fuzz_cli_args.c)
   Deterministic: the same files every run. */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIR "tests/fuzz/corpus/"

static int put(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "make_corpus: cannot write %s\n", path);
        exit(1);
    }
    return 0;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long len;
    if (!f) { fprintf(stderr, "make_corpus: cannot read %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)len);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) exit(1);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* A variant of buf with 4 bytes at off replaced by v. */
static void put_patched(const char *path, const unsigned char *buf, size_t n, size_t off, const void *v) {
    unsigned char *b = (unsigned char *)malloc(n);
    memcpy(b, buf, n);
    memcpy(b + off, v, 4);
    put(path, b, n);
    free(b);
}

static void checkpoints(void) {
    static const char text[] = "the quick brown fox jumps over the lazy dog; caf\xC3\xA9 \xE2\x82\xAC 0123456789\n";
    mb_config c = mb_config_default();
    mb_model *m;
    mb_trainer tr;
    mb_train_settings s;
    mb_step_result r;
    unsigned char *model, *state;
    size_t nm, ns;
    int32_t v;
    float f;
    int k;
    c.d_model = 4; c.n_layer = 1; c.d_state = 2; c.d_conv = 2; c.expand = 1; c.dt_rank = 1;
    if (mb_model_create(&m, &c, 1) != MB_STATUS_OK) exit(1);
    if (mb_model_save(m, DIR "checkpoint/model_only.bin") != MB_STATUS_OK) exit(1);
    memset(&s, 0, sizeof s);
    s.batch = 2; s.ctx = 8; s.steps = 4; s.warmup = 1; s.grad_accum = 1; s.seed = 5; s.save_every = 2;
    s.lr = 1e-2; s.weight_decay = 0.1; s.clip = 1.0; s.beta1 = 0.9; s.beta2 = 0.95; s.eps = 1e-8; s.sequential = 1;
    if (mb_trainer_init(&tr, m, &s, (const uint8_t *)text, (int64_t)sizeof text - 1, NULL) != MB_STATUS_OK) exit(1);
    for (k = 0; k < 2; k++) mb_trainer_step(&tr, 1e-2, &r);
    if (mb_trainer_save(&tr, DIR "checkpoint/with_state.bin") != MB_STATUS_OK) exit(1);
    mb_trainer_free(&tr);
    mb_model_free(m);

    model = slurp(DIR "checkpoint/model_only.bin", &nm);
    state = slurp(DIR "checkpoint/with_state.bin", &ns);
    put(DIR "checkpoint/empty.bin", "", 0);
    put(DIR "checkpoint/header_only.bin", model, 1024);
    put(DIR "checkpoint/truncated.bin", state, ns - 7);
    v = 0x12345678; put_patched(DIR "checkpoint/bad_magic.bin", model, nm, 0, &v);
    v = 2;          put_patched(DIR "checkpoint/bad_version.bin", model, nm, 4, &v);
    v = 8;          put_patched(DIR "checkpoint/d_model_8.bin", model, nm, 12, &v);
    v = 1;          put_patched(DIR "checkpoint/state_flag_no_state.bin", model, nm, 48, &v);
    f = INFINITY;   put_patched(DIR "checkpoint/inf_param.bin", model, nm, 1024 + 40, &f);
    v = 0x0BADF00D; put_patched(DIR "checkpoint/bad_state_magic.bin", state, ns, nm, &v);
    free(model);
    free(state);
}

/* A copy of buf (n bytes) with the first occurrence of `from` replaced by
   `to` (same length), written to path. */
static void put_replaced(const char *path, const unsigned char *buf, size_t n, const char *from, const char *to) {
    unsigned char *b = (unsigned char *)malloc(n);
    size_t i, k = strlen(from);
    memcpy(b, buf, n);
    for (i = 0; i + k <= n; i++)
        if (!memcmp(b + i, from, k)) { memcpy(b + i, to, k); break; }
    put(path, b, n);
    free(b);
}

static void safetensors(void) {
    mb_config c = mb_config_default();
    mb_model *m;
    unsigned char *st, *rt;
    size_t n, nr;
    c.d_model = 4; c.n_layer = 1; c.d_state = 2; c.d_conv = 2; c.expand = 1; c.dt_rank = 1;
    if (mb_model_create(&m, &c, 1) != MB_STATUS_OK) exit(1);
    if (mb_model_save_safetensors(m, DIR "safetensors/layernorm_tied.safetensors") != MB_STATUS_OK) exit(1);
    mb_model_free(m);
    c.norm = MB_NORM_RMSNORM; c.untied_head = 1; c.n_layer = 2;
    if (mb_model_create(&m, &c, 2) != MB_STATUS_OK) exit(1);
    if (mb_model_save_safetensors(m, DIR "safetensors/rmsnorm_untied.safetensors") != MB_STATUS_OK) exit(1);
    mb_model_free(m);
    st = slurp(DIR "safetensors/layernorm_tied.safetensors", &n);
    rt = slurp(DIR "safetensors/rmsnorm_untied.safetensors", &nr);
    put(DIR "safetensors/empty", "", 0);
    put(DIR "safetensors/header_only", st, 8 + (size_t)st[0] + 256 * (size_t)st[1]);
    put(DIR "safetensors/truncated", st, n - 5);
    put_replaced(DIR "safetensors/dtype_f64", st, n, "\"F32\"", "\"F64\"");
    put_replaced(DIR "safetensors/dtype_i32", st, n, "\"F32\"", "\"I32\"");
    put_replaced(DIR "safetensors/bad_shape", rt, nr, "lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[256,4]",
                 "lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[128,8]");
    put_replaced(DIR "safetensors/renamed", rt, nr, "mixer.A_log", "mixer.B_log");
    put_replaced(DIR "safetensors/bad_offsets", st, n, "[0,4096]", "[0,9999]");
    put_replaced(DIR "safetensors/nested_metadata", st, n, "{\"format\":\"pt\"}", "[[[[[[[0]]]]]]]");
    free(st);
    free(rt);
}

static void utf8(void) {
#define T(name, s) {name, s, sizeof s - 1}
    static const struct { const char *name; const char *s; size_t n; } t[] = {
        T("ascii", "\x00\x05" "01234567" "hello, world\n"),
        T("mixed", "\x10\x20" "abcdefgh" "caf\xC3\xA9 na\xC3\xAFve \xE2\x82\xAC \xF0\x9F\x98\x80 \xEF\xBF\xBF \xF4\x8F\xBF\xBF"),
        T("overlong", "\x00\x03" "ABCDEFGH" "ok\xC0\x80\xE0\x80\xAF"),
        T("surrogate", "\x81\x07" "12345678" "x\xED\xA0\x80y"),
        T("truncated", "\x02\x02" "\xff\xff\xff\xff\xff\xff\xff\xff" "abc\xE2\x82"),
        T("too_big", "\x00\x01" "\x00\x00\x00\x00\x00\x00\x00\x01" "\xF4\x90\x80\x80\xF5\x80"),
        T("stray", "\x83\x3f" "\x00\x00\x00\x00\x00\x00\x01\x00" "\x80\xBF\xC3\x28"),
        T("nul_bytes", "\x01\x00" "\x00\x00\x00\x00\x00\x00\x00\x00" "\x00\x00\x00" "a\x00"),
    };
#undef T
    char path[256];
    size_t i;
    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        snprintf(path, sizeof path, DIR "utf8_eval/%s", t[i].name);
        put(path, t[i].s, t[i].n);
    }
}

static void cli(void) {
    /* byte 0: bit 0 mode (1: fail on missing files after the checks), bits 1..: command
       0 train, 1 eval, 2 sample, 3 numerics, 4 unknown, 5 --version, 6 help, 7 none */
    static const struct { const char *name; int mode, cmd; const char *args; } t[] = {
        {"train_flags", 0, 0, "--steps\n10\n--lr\n3e-4\n--batch\n2\n--ctx\n64\n--sequential\n--save-every\n5"},
        {"train_checks", 1, 0, "--schedule\ntime\n--time-budget\n1.5\n--device\ncpu\n--precision\nfp32"},
        {"train_bad_value", 0, 0, "--steps\n-5\n--lr\nnan\n--ctx\n1e400"},
        {"train_model_flags", 1, 0, "--d-model\n16\n--n-layer\n2\n--d-state\n4\n--d-conv\n3\n--expand\n2\n--resume\nx.bin"},
        {"train_needs_value", 0, 0, "--out"},
        {"eval_split", 1, 1, "--split\ntest\n--chars\n300\n--json\nout.json"},
        {"eval_bad_split", 1, 1, "--split\nsometimes"},
        {"sample_flags", 1, 2, "--prompt\nthe \n--bytes\n40\n--temperature\n0.8\n--top-k\n5\n--seed\n3"},
        {"numerics_json", 0, 3, "--json\nx.json\n--svg"},
        {"unknown_cmd", 0, 4, "--steps\n1"},
        {"version", 0, 5, ""},
        {"no_command", 0, 7, ""},
    };
    char path[256], buf[512];
    size_t i, n;
    for (i = 0; i < sizeof t / sizeof t[0]; i++) {
        buf[0] = (char)(t[i].mode | t[i].cmd << 1);
        n = strlen(t[i].args);
        memcpy(buf + 1, t[i].args, n);
        snprintf(path, sizeof path, DIR "cli_args/%s", t[i].name);
        put(path, buf, n + 1);
    }
}

int main(void) {
    checkpoints();
    safetensors();
    utf8();
    cli();
    return 0;
}
