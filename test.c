/* test.c - every test of mambabyte, run by `make test` from the repo root.
   Prints "N passed, M failed, K skipped" last and exits non-zero on any failure.
   Each area lives in tests/test_<area>.c and is included here so the whole
   suite is one translation unit with one implementation of the header. */
#define MAMBABYTE_IMPLEMENTATION
#include "mambabyte.h"
#include <ctype.h>
#include <signal.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include "tests/mbtest.h"
#include "tests/mbfx.h"

int mbt_passed = 0, mbt_failed = 0, mbt_skipped = 0;
void mbt_cuda_emu_tests(void); /* tests/test_cuda_emu.cpp: the CUDA kernels on the CPU */

#include "tests/test_numerics.c"
#include "tests/test_model.c"
#include "tests/test_interop.c"
#include "tests/test_numerics_report.c"
#include "tests/test_train.c"
#include "tests/test_reliability.c"
#include "tests/test_loop.c"
#include "tests/test_mpi.c"
#include "tests/test_kernels.c"
#include "tests/test_plot.c"
#include "tests/test_predict.c"
#include "tests/test_bf16.c"
#include "tests/test_carry.c"
#include "tests/test_decode.c"
#include "tests/test_spec.c"

typedef struct { const char *name; void (*fn)(void); } mbt_suite;

int main(int argc, char **argv) {
    static const mbt_suite suites[] = {
        {"numerics", test_numerics},
        {"model", test_model},
        {"interop", test_interop},
        {"numerics_report", test_numerics_report},
        {"train", test_train},
        {"loop", test_loop},
        {"mpi", test_mpi},
        {"reliability", test_reliability},
        {"kernels", test_kernels},
        {"cuda_emu", mbt_cuda_emu_tests},
        {"plot", test_plot},
        {"predict", test_predict},
        {"bf16", test_bf16},
        {"carry", test_carry},
        {"decode", test_decode},
        {"spec", test_spec},
    };
    size_t i;
    for (i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        int before_fail = mbt_failed, before_pass = mbt_passed, before_skip = mbt_skipped;
        if (argc > 1 && strcmp(argv[1], suites[i].name) != 0) continue;
        suites[i].fn();
        printf("%-12s %d passed, %d failed, %d skipped\n", suites[i].name, mbt_passed - before_pass, mbt_failed - before_fail,
               mbt_skipped - before_skip);
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", mbt_passed, mbt_failed, mbt_skipped);
    return mbt_failed == 0 && mbt_passed > 0 ? 0 : 1;
}
