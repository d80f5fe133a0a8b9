/* Compiles the header as C++ (and, with -x c, as C) with warnings as errors:
   once with the implementation, once for declarations only. */
#include "../mambabyte.h"
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"

int mb_cxx_compile_probe(void);
int mb_cxx_compile_probe(void) {
    float x[3] = {1.0f, 2.0f, 3.0f}, out[3];
    mb_softmax(out, x, 1, 3);
    return mb_status_string(MB_STATUS_OK)[0] == 'o' && out[2] > out[1];
}
