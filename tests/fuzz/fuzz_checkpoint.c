/* fuzz_checkpoint.c - libFuzzer harness for the checkpoint loader.
   Each input is written to a per-process temporary file and loaded with
   mb_checkpoint_load.  Every input must be rejected with a status or
   accepted; an accepted checkpoint is then used the way the CLI uses one:
   a few bytes of streaming inference (eval/sample) and, when it holds a
   training state, a resumed trainer step on a small text (train --resume).
   Crash-only: ASan/UBSan/LeakSanitizer findings are the failures.

   Build (tests/fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
           -g -O1 -I. tests/fuzz/fuzz_checkpoint.c -o build/fuzz/fuzz_checkpoint -lm */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_path[512];

static void remove_tmp(void) {
    if (tmp_path[0]) unlink(tmp_path);
}

static int setup(void) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(tmp_path, sizeof tmp_path, "%s/mb_fuzz_ckpt.%ld.bin", dir, (long)getpid());
    atexit(remove_tmp);
    return 1;
}

/* The text a resumed run trains on: short, so a resumed sampler position
   from a longer file must be handled. */
static uint8_t *train_text(int64_t *len) {
    static uint8_t *text;
    static const char line[] = "the state space model reads bytes; caf\xC3\xA9 na\xC3\xAFve \xE2\x82\xAC.\n";
    if (!text) {
        int64_t i, n = 300;
        text = (uint8_t *)malloc((size_t)n);
        for (i = 0; i < n; i++) text[i] = (uint8_t)line[i % (int64_t)(sizeof line - 1)];
    }
    *len = 300;
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    mb_model *m = NULL;
    mb_train_state ts;
    int has_state = 0;
    FILE *f;
    mb_status s;
    if (!ready) ready = setup();
    f = fopen(tmp_path, "wb");
    if (!f) return 0;
    if (size && fwrite(data, 1, size, f) != size) { fclose(f); return 0; }
    if (fclose(f) != 0) return 0;

    memset(&ts, 0xA5, sizeof ts); /* the loader must not rely on the caller's garbage */
    s = mb_checkpoint_load(tmp_path, &m, &ts, &has_state);
    if (s != MB_STATUS_OK) {
        if (m != NULL) __builtin_trap();              /* a failed load must not hand out a model */
        if (mb_last_error()[0] == '\0') __builtin_trap(); /* and must say why */
        return 0;
    }
    if (!m) __builtin_trap();

    {   /* eval / sample: stream a few bytes */
        mb_stream *st = NULL;
        if (mb_stream_create(&st, m) == MB_STATUS_OK) {
            int i;
            const float *logits = mb_stream_step(st, 0);
            for (i = 0; i < 4 && logits; i++) logits = mb_stream_step(st, (uint8_t)("ab\xC3\xA9"[i]));
            mb_stream_free(st);
        }
    }
    if (has_state) {
        /* train --resume: the checkpoint's settings, step, sampler state and
           moments.  batch/ctx/grad_accum are capped so one step stays cheap
           (the trainer itself accepts up to 2^20 x 2^24). */
        mb_trainer tr;
        mb_train_settings set = ts.settings;
        int64_t len;
        const uint8_t *text = train_text(&len);
        if (set.batch < 1 || set.batch > 2) set.batch = 1;
        if (set.ctx < 1 || set.ctx > 16) set.ctx = 16;
        set.grad_accum = 1;
        if (mb_trainer_init(&tr, m, &set, text, len, &ts) == MB_STATUS_OK) {
            mb_step_result r;
            mb_trainer_step(&tr, 1e-3, &r);
            mb_trainer_free(&tr);
        }
        mb_train_state_free(&ts); /* whatever the trainer did not take */
    }
    mb_model_free(m);
    return 0;
}
