/* bench.c - `mambabyte bench` (being written: issue 6). */
static int mb_cli_bench(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "mambabyte bench: not built yet\n");
    return 1;
}
