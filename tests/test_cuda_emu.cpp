/* test_cuda_emu.cpp - runs the CUDA kernels of mambabyte_cuda.cuh on the CPU
   through the launch emulator in tests/cuda_emu.h and compares each with the
   CPU specification in mambabyte.h.  (Being written: see issue 5.) */
#include "mbtest.h"
extern "C" void mbt_cuda_emu_tests(void);
extern "C" void mbt_cuda_emu_tests(void) {}
