# mambabyte - build, test, bench.  `make` builds ./mambabyte (plain C, CPU,
# OpenMP when available) and, when nvcc is found, also ./mambabyte_cuda.
CC      ?= gcc
CXX     ?= g++
ARCH    ?= -march=native
CFLAGS  ?= -O3 $(ARCH)
WARN     = -Wall -Wextra -Werror
STD      = -std=c99
LDLIBS   = -lm

# OpenMP when the compiler has it (as llm.c does).
OMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)

# CUDA when nvcc is on PATH or in the default toolkit folder.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

TARGETS = mambabyte
ifneq ($(NVCC),)
TARGETS += mambabyte_cuda build/cuda_gpu_test build/cuda_bench
endif

.PHONY: all test test-cxx test-asan bench bench-cuda test-cuda fuzz clean
all: $(TARGETS)

HEADERS = mambabyte.h
mambabyte: main.c numerics_report.c bench.c $(HEADERS)
	$(CC) $(STD) $(CFLAGS) $(WARN) $(OMP) main.c -o $@ $(LDLIBS)

build:
	mkdir -p build

# The CUDA variant: the .cuh in its own nvcc translation unit, main.c stays C.
build/mambabyte_cuda.o: mambabyte_cuda.cuh $(HEADERS) | build
	$(NVCC) -O3 $(CUDA_ARCH) -DMAMBABYTE_CUDA_IMPLEMENTATION -x cu -c mambabyte_cuda.cuh -o $@
mambabyte_cuda: main.c numerics_report.c bench.c $(HEADERS) build/mambabyte_cuda.o
	$(CC) $(STD) $(CFLAGS) $(WARN) $(OMP) -DMB_WITH_CUDA main.c build/mambabyte_cuda.o -o $@ \
	  -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ $(LDLIBS) -Wl,-rpath,$(CUDA_HOME)/lib64

# Tests: the header must compile warning-free as C99 and as C++.
TEST_SRC = test.c $(HEADERS) $(wildcard tests/*.c tests/*.h)
test_mambabyte: $(TEST_SRC) build/test_cuda_emu.o
	$(CC) $(STD) -O2 -g $(ARCH) $(WARN) $(OMP) test.c build/test_cuda_emu.o -o $@ -lstdc++ $(LDLIBS) -lpthread

build/test_cuda_emu.o: tests/test_cuda_emu.cpp $(HEADERS) $(wildcard mambabyte_cuda.cuh tests/cuda_emu*.h) | build
	$(CXX) -std=c++17 -O1 -g $(WARN) -c tests/test_cuda_emu.cpp -o $@

test-cxx: | build
	$(CXX) -std=c++11 $(WARN) -O1 -c tests/cxx_compile.cpp -o build/cxx_compile.o
	$(CXX) -std=c++11 $(WARN) -O1 -DMAMBABYTE_STATIC -c tests/cxx_compile.cpp -o build/cxx_compile_static.o
	$(CC) $(STD) $(WARN) -O1 -DMAMBABYTE_STATIC -x c -c tests/cxx_compile.cpp -o build/c_compile_static.o

test: all test-cxx test_mambabyte
	./test_mambabyte

# The whole suite (CUDA kernels through the emulator too) under ASan + UBSan.
test_mambabyte_asan: $(TEST_SRC) tests/test_cuda_emu.cpp $(wildcard mambabyte_cuda.cuh tests/cuda_emu*.h) | build
	$(CXX) -std=c++17 -O1 -g $(WARN) -fsanitize=address,undefined -fno-omit-frame-pointer -c tests/test_cuda_emu.cpp -o build/test_cuda_emu_asan.o
	$(CC) $(STD) -O1 -g $(WARN) -fsanitize=address,undefined -fno-omit-frame-pointer test.c build/test_cuda_emu_asan.o -o $@ -lstdc++ $(LDLIBS) -lpthread
test-asan: mambabyte test_mambabyte_asan
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ./test_mambabyte_asan

# On a machine with an NVIDIA GPU: kernels and the full model against the CPU path.
NVCC_OMP = $(if $(OMP),-Xcompiler $(OMP))
build/cuda_gpu_test: tests/cuda_gpu_test.cu mambabyte_cuda.cuh $(HEADERS) tests/mbtest.h | build
	$(NVCC) -O2 $(CUDA_ARCH) $(NVCC_OMP) tests/cuda_gpu_test.cu -o $@ -lcublas
test-cuda: build/cuda_gpu_test
	./build/cuda_gpu_test
build/cuda_bench: tests/cuda_bench.cu mambabyte_cuda.cuh $(HEADERS) | build
	$(NVCC) -O3 $(CUDA_ARCH) $(NVCC_OMP) tests/cuda_bench.cu -o $@ -lcublas
bench-cuda: build/cuda_bench
	./build/cuda_bench

bench: mambabyte
	./mambabyte bench

clean:
	rm -rf build mambabyte mambabyte_cuda test_mambabyte test_mambabyte_asan bench_mambabyte
