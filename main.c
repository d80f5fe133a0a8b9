/* main.c - the mambabyte command line: a thin layer over mambabyte.h. */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "mambabyte " MB_VERSION_STRING " - byte-level Mamba in C\n"
            "usage: mambabyte <command> [flags]\n"
            "commands:\n"
            "  train      train a model (see mambabyte train --help)\n"
            "  eval       greedy char accuracy of a checkpoint on a text\n"
            "  sample     generate text from a checkpoint\n"
            "  numerics   naive vs stable softmax report\n"
            "  bench      CPU benchmark of the default config\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    fprintf(stderr, "mambabyte: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
