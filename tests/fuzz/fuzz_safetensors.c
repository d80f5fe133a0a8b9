/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
   Each input is parsed twice from memory with mb_model_from_safetensors:
   as a safetensors file (no config.json), and as a config.json beside a
   fixed valid tiny model.  Every input must be rejected with a status or
   accepted; an accepted model streams a few bytes and is written back with
   mb_model_save_safetensors to a per-process temporary file, which must
   load again with the same parameters.  Crash-only otherwise:
   ASan/UBSan/LeakSanitizer findings are the failures.

   Build (tests/fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
           -g -O1 -I. tests/fuzz/fuzz_safetensors.c -o build/fuzz/fuzz_safetensors -lm */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_path[512];
static uint8_t *valid;
static int64_t valid_size;

static void remove_tmp(void) {
    if (tmp_path[0]) unlink(tmp_path);
}

/* A tiny model's safetensors bytes, for the config.json half. */
static int setup(void) {
    const char *dir = getenv("TMPDIR");
    mb_config c = mb_config_default();
    mb_model *m = NULL;
    mb_mapped_file f;
    if (!dir || !*dir) dir = "/tmp";
    snprintf(tmp_path, sizeof tmp_path, "%s/mb_fuzz_st.%ld.safetensors", dir, (long)getpid());
    atexit(remove_tmp);
    c.d_model = 4; c.n_layer = 1; c.d_state = 2; c.d_conv = 2; c.expand = 1; c.dt_rank = 1;
    if (mb_model_create(&m, &c, 1) != MB_STATUS_OK || mb_model_save_safetensors(m, tmp_path) != MB_STATUS_OK) abort();
    mb_model_free(m);
    if (mb_map_file(&f, tmp_path) != MB_STATUS_OK) abort();
    valid = (uint8_t *)malloc((size_t)f.size);
    memcpy(valid, f.data, (size_t)f.size);
    valid_size = f.size;
    mb_unmap_file(&f);
    return 1;
}

static void use(mb_model *m) {
    mb_stream *s = NULL;
    mb_model *m2 = NULL;
    if (mb_stream_create(&s, m) == MB_STATUS_OK) {
        mb_stream_step(s, 'a');
        mb_stream_step(s, 0xC3);
        mb_stream_free(s);
    }
    if (mb_model_save_safetensors(m, tmp_path) != MB_STATUS_OK) return;
    if (mb_model_load(&m2, tmp_path) != MB_STATUS_OK) abort(); /* what we write we must read */
    if (mb_model_num_params(m2) != mb_model_num_params(m) ||
        memcmp(mb_model_params(m2), mb_model_params(m), (size_t)mb_model_num_params(m) * 4) != 0)
        abort();
    mb_model_free(m2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    mb_model *m = NULL;
    if (!ready) ready = setup();
    if (mb_model_from_safetensors(&m, data, (int64_t)size, NULL, 0, "fuzz input") == MB_STATUS_OK) {
        if (!m) abort();
        use(m);
        mb_model_free(m);
    } else if (m) {
        abort();
    }
    m = NULL;
    if (mb_model_from_safetensors(&m, valid, valid_size, (const char *)data, (int64_t)size, "fuzz config") == MB_STATUS_OK)
        mb_model_free(m);
    return 0;
}
