/* fuzz_utf8_eval.c - libFuzzer harness for the data side: the UTF-8
   decoder (mb_utf8_char_len), the evaluation reader (mb_eval_text on a
   tiny model) and the window sampler (mb_sampler_*), on arbitrary bytes.

   Input layout: byte 0 picks max_chars and the sampler's mode, byte 1 its
   ctx, bytes 2..9 its seed / start position; the rest is the text.  Every
   buffer is an exact-size heap copy so ASan sees any read past its end.
   Besides crashes it checks the decoder's contract: a length in 0..4 that
   never runs past n, and agreement with a straightforward reference
   decoder.

   Build (tests/fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
           -g -O1 -I. tests/fuzz/fuzz_utf8_eval.c -o build/fuzz/fuzz_utf8_eval -lm */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <stdlib.h>
#include <string.h>

/* Reference: decode the code point and reject what RFC 3629 rejects. */
static int ref_utf8_len(const uint8_t *s, int64_t n) {
    uint32_t cp;
    int len, i;
    if (n < 1) return 0;
    if (s[0] < 0x80) return 1;
    if ((s[0] & 0xE0) == 0xC0) { len = 2; cp = s[0] & 0x1Fu; }
    else if ((s[0] & 0xF0) == 0xE0) { len = 3; cp = s[0] & 0x0Fu; }
    else if ((s[0] & 0xF8) == 0xF0) { len = 4; cp = s[0] & 0x07u; }
    else return 0;
    if (n < len) return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0; /* overlong */
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0; /* surrogate */
    if (cp > 0x10FFFF) return 0;
    return len;
}

static mb_model *tiny_model(void) {
    static mb_model *m;
    if (!m) {
        mb_config c = mb_config_default();
        c.d_model = 4; c.n_layer = 1; c.d_state = 2; c.d_conv = 2; c.expand = 1; c.dt_rank = 1;
        if (mb_model_create(&m, &c, 7) != MB_STATUS_OK) __builtin_trap();
    }
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *text;
    int64_t len, i, max_chars;
    uint64_t seed = 0;
    int ctx, sequential;
    if (size < 10 || size > 4096 + 10) return 0;
    max_chars = data[0] & 0x7F ? (int64_t)(data[0] & 0x7F) * 8 : -1; /* 0: all */
    sequential = data[0] >> 7;
    ctx = 1 + data[1] % 64;
    for (i = 0; i < 8; i++) seed = seed << 8 | data[2 + i];
    len = (int64_t)size - 10;
    text = (uint8_t *)malloc(len ? (size_t)len : 1);
    if (len) memcpy(text, data + 10, (size_t)len);

    /* 1. the decoder, at every offset, with every prefix length up to 5 */
    for (i = 0; i <= len; i++) {
        int64_t n;
        for (n = 0; n <= 5 && i + n <= len; n++) {
            int k = mb_utf8_char_len(text + i, n);
            if (k < 0 || k > 4 || k > n) __builtin_trap();
            if (k != ref_utf8_len(text + i, n)) __builtin_trap();
        }
    }

    /* 2. the eval reader: either BAD_FORMAT before any work, or counts that
          add up */
    {
        mb_eval_result r;
        mb_status s = mb_eval_text(tiny_model(), text, len, max_chars, &r, NULL, NULL);
        if (s == MB_STATUS_OK) {
            if (r.bytes > len || r.chars > r.bytes || r.chars_correct > r.chars || r.bytes_correct > r.bytes) __builtin_trap();
            if (max_chars >= 0 && r.chars > max_chars) __builtin_trap();
            if (!(r.nll_bits >= 0.0)) __builtin_trap();
        } else if (s != MB_STATUS_BAD_FORMAT) {
            __builtin_trap();
        }
    }

    /* 3. the sampler over the same bytes: random windows, or sequential ones
          from a start anywhere in [0, 2*len] (a resume on a shorter file) */
    {
        mb_batcher sp;
        uint8_t *in = (uint8_t *)malloc((size_t)2 * (size_t)ctx);
        int32_t *tg = (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)ctx);
        int rep;
        mb_batcher_init(&sp, len ? text : NULL, len, seed, sequential);
        if (sequential) sp.pos = (int64_t)(seed % (uint64_t)(2 * len + 1));
        for (rep = 0; rep < 3; rep++) {
            mb_status s = mb_batcher_next(&sp, in, tg, 2, ctx);
            if ((s == MB_STATUS_OK) != (len >= ctx + 1)) __builtin_trap();
            if (s != MB_STATUS_OK) break;
            for (i = 0; i < 2 * (int64_t)ctx; i++)
                if (tg[i] < 0 || tg[i] > 255) __builtin_trap();
            for (i = 0; i + 1 < ctx; i++) /* targets are the inputs shifted by one */
                if (tg[i] != in[i + 1] || tg[ctx + i] != in[ctx + i + 1]) __builtin_trap();
        }
        free(in);
        free(tg);
    }
    free(text);
    return 0;
}
