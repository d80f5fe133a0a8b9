/* fuzz_cli_args.c - libFuzzer harness for the command line: main()'s
   command dispatch and every command's flag parser (parse_flags and its
   range checks, the numerics parser), on argv lines split from the input.

   main.c is compiled into this file with main renamed.  No input may start
   real work, so the input's argv is always followed by arguments that make
   the command fail fast once parsing is done:
     mode 0 (any command): two unknown flags, "--zz-fuzz-end --zz-fuzz-end":
       whichever of them is read as a flag is unknown -> exit status 2
       (the first may be swallowed as the value of a preceding flag, the
       second never is);
     mode 1 (train/eval/sample): the required paths pointing into a folder
       that does not exist, so the command also runs its post-parse checks
       (--schedule, --device, --split, ...) and fails opening the file.
   "--help" and "-h" are dropped (they print and exit(0)), and "bench" is
   never the command (it runs a benchmark).  stdout and stderr are closed
   by run.sh (-close_fd_mask=3).

   Input: byte 0 picks the mode and command; the rest is split into
   arguments at NUL and newline bytes (at most 64).

   Build (tests/fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
           -g -O1 -I. tests/fuzz/fuzz_cli_args.c -o build/fuzz/fuzz_cli_args -lm -ldl */
#define main mambabyte_main
#include "main.c"
#undef main

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *commands[] = {"train", "eval", "sample", "numerics", "plot", "frobnicate", "--version", "help", ""};
    static const char *nodata[] = {"--data", "/nonexistent-mb-fuzz/train.txt"};
    static const char *noeval[] = {"--model", "/nonexistent-mb-fuzz/m.bin", "--data", "/nonexistent-mb-fuzz/t.txt"};
    static const char *nomodel[] = {"--model", "/nonexistent-mb-fuzz/m.bin"};
    char *buf, *argv[MAX_ARGS + 8];
    int argc = 0, mode, cmd, i, n_tail = 0;
    const char *const *tail = NULL;
    size_t k, start;
    if (size < 1 || size > 4096) return 0;
    mode = data[0] & 1;
    cmd = (data[0] >> 1) % (int)(sizeof commands / sizeof commands[0]);
    buf = (char *)malloc(size); /* bytes 1.. plus a terminating NUL */
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    argv[argc++] = (char *)"mambabyte";
    if (commands[cmd][0]) argv[argc++] = (char *)commands[cmd];
    for (start = 0, k = 0; k < size && argc < MAX_ARGS; k++) {
        if (k == size - 1 || buf[k] == '\0' || buf[k] == '\n') {
            buf[k] = '\0';
            if (strcmp(buf + start, "--help") != 0 && strcmp(buf + start, "-h") != 0) argv[argc++] = buf + start;
            start = k + 1;
        }
    }
    if (mode == 1 && cmd == 0) { tail = nodata; n_tail = 2; }
    else if (mode == 1 && cmd == 1) { tail = noeval; n_tail = 4; }
    else if (mode == 1 && cmd == 2) { tail = nomodel; n_tail = 2; }
    if (tail) {
        /* the tail's flags come last, so they win; when a value-taking flag
           right before the tail swallows its first word, the path after it
           is an unknown flag: exit status 2, also fast */
        for (i = 0; i < n_tail; i++) argv[argc++] = (char *)tail[i];
    } else {
        argv[argc++] = (char *)"--zz-fuzz-end";
        argv[argc++] = (char *)"--zz-fuzz-end";
    }
    argv[argc] = NULL;
    mambabyte_main(argc, argv);
    free(buf);
    return 0;
}
