# mambabyte - build, test, bench.  `make` builds ./mambabyte (plain C, CPU,
# OpenMP when available) first, then what the toolchain allows: with mpicc
# ./mambabyte_mpi, with nvcc ./mambabyte_cuda and the GPU test programs.
# `make mambabyte` builds only the CLI.
CC      ?= gcc
CXX     ?= g++
# PORTABLE=1: for any x86-64 CPU (the Python wheel's build): the baseline ISA,
# the scan's AVX-512 pieces and the bf16 kernels picked at run time (CPUID);
# `make lib PORTABLE=1` writes build/portable/libmambabyte*.so and the same for
# each of PORTABLE_LEVELS in build/portable/LEVEL/ (the package loads the
# highest one the CPU has: its float32 products use AVX2/AVX-512 and FMA).
PORTABLE_ARCH = -march=x86-64 -mtune=generic
PORTABLE_LEVELS = x86-64-v3 x86-64-v4
ifeq ($(PORTABLE),1)
ARCH    := $(PORTABLE_ARCH)
LIBDIR  := build/portable/
endif
ARCH    ?= -march=native
CFLAGS  ?= -O3 $(ARCH)
WARN     = -Wall -Wextra -Werror
CONV     = -Wconversion -Wsign-conversion   # the header's index arithmetic is checked with these
STD      = -std=c99
LDLIBS   = -lm

# OpenMP when the compiler has it (as llm.c does).
OMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)

# CUDA when nvcc is on PATH or in the default toolkit folder.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
# sm_80 and sm_90 machine code, and compute_90 PTX that the driver JIT-compiles for other (newer) GPUs
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

# MPI when mpicc is on PATH (Debian: libopenmpi-dev openmpi-bin): ./mambabyte_mpi,
# a sibling binary, so ./mambabyte itself never links or starts MPI.
MPICC ?= $(shell command -v mpicc 2>/dev/null)

TARGETS = mambabyte
ifneq ($(MPICC),)
TARGETS += mambabyte_mpi
endif
ifneq ($(NVCC),)
TARGETS += mambabyte_cuda build/cuda_gpu_test build/cuda_bench
endif
# Both, and NCCL in the toolkit folder: ./mambabyte_cuda_mpi, the CUDA trainer
# with its gradients summed over the ranks' GPUs by NCCL (MPI bootstraps it).
NCCL_H = $(if $(NVCC),$(wildcard $(CUDA_HOME)/include/nccl.h))
ifneq ($(MPICC),)
ifneq ($(NCCL_H),)
TARGETS += mambabyte_cuda_mpi
endif
endif

.PHONY: all test test-readme test-mpi test-cxx test-asan bench bench-cuda test-cuda fuzz check clean lib test-python test-portable
# ./mambabyte first (even under -j), then the rest, announced in one line.
MORE = $(filter-out mambabyte,$(TARGETS))
all: mambabyte
ifneq ($(MORE),)
	@echo "make: ./mambabyte is ready; now building $(MORE) (\`make mambabyte\` skips them)"
	@$(MAKE) --no-print-directory $(MORE)
endif

HEADERS = mambabyte.h
mambabyte: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c $(HEADERS)
	$(CC) $(STD) $(CFLAGS) $(WARN) $(OMP) main.c -o $@ $(LDLIBS)

mambabyte_mpi: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c mambabyte_mpi.h $(HEADERS)
	$(MPICC) $(STD) $(CFLAGS) $(WARN) $(OMP) -DMB_WITH_MPI main.c -o $@ $(LDLIBS)

build:
	mkdir -p build

# The CUDA variant: the .cuh in its own nvcc translation unit, main.c stays C.
build/mambabyte_cuda.o: mambabyte_cuda.cuh $(HEADERS) | build
	$(NVCC) -O3 $(CUDA_ARCH) -DMAMBABYTE_CUDA_IMPLEMENTATION -x cu -c mambabyte_cuda.cuh -o $@
mambabyte_cuda: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c $(HEADERS) build/mambabyte_cuda.o
	$(CC) $(STD) $(CFLAGS) $(WARN) $(OMP) -DMB_WITH_CUDA main.c build/mambabyte_cuda.o -o $@ \
	  -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ $(LDLIBS) -Wl,-rpath,$(CUDA_HOME)/lib64

build/mambabyte_cuda_nccl.o: mambabyte_cuda.cuh $(HEADERS) | build
	$(NVCC) -O3 $(CUDA_ARCH) -DMAMBABYTE_CUDA_IMPLEMENTATION -DMB_WITH_NCCL -x cu -c mambabyte_cuda.cuh -o $@
mambabyte_cuda_mpi: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c mambabyte_mpi.h $(HEADERS) build/mambabyte_cuda_nccl.o
	$(MPICC) $(STD) $(CFLAGS) $(WARN) $(OMP) -DMB_WITH_MPI -DMB_WITH_CUDA main.c build/mambabyte_cuda_nccl.o -o $@ \
	  -L$(CUDA_HOME)/lib64 -lnccl -lcublas -lcudart -lstdc++ $(LDLIBS) -Wl,-rpath,$(CUDA_HOME)/lib64

# Tests: the header must compile warning-free as C99 and as C++.
TEST_SRC = test.c $(HEADERS) cli.h plot.c numerics_report.c $(wildcard tests/*.c tests/*.h)
test_mambabyte: $(TEST_SRC) build/test_cuda_emu.o
	$(CC) $(STD) -O2 -g $(ARCH) $(WARN) $(OMP) test.c build/test_cuda_emu.o -o $@ -lstdc++ $(LDLIBS) -lpthread

build/test_cuda_emu.o: tests/test_cuda_emu.cpp $(HEADERS) $(wildcard mambabyte_cuda.cuh tests/cuda_emu*.h) | build
	$(CXX) -std=c++17 -O1 -g $(WARN) -c tests/test_cuda_emu.cpp -o $@

test-cxx: | build
	$(CXX) -std=c++11 $(WARN) $(CONV) -O1 -c tests/cxx_compile.cpp -o build/cxx_compile.o
	$(CXX) -std=c++11 $(WARN) $(CONV) -O1 -DMAMBABYTE_STATIC -c tests/cxx_compile.cpp -o build/cxx_compile_static.o
	$(CC) $(STD) $(WARN) $(CONV) -O1 -DMAMBABYTE_STATIC -x c -c tests/cxx_compile.cpp -o build/c_compile_static.o

test: all test-cxx test_mambabyte test-readme
	./test_mambabyte

# The README's C example, built in build/readme/ by the README's own cc line
# (comment dropped) and run for 3 steps, so neither can drift from the library.
test-readme: | build
	mkdir -p build/readme && cp mambabyte.h build/readme/ && rm -f build/readme/example build/readme/weights.bin
	awk '/^<!-- example.c/ {f = 1; next} f && /^```c/ {next} f && /^```/ {exit} f' README.md > build/readme/example.c
	cd build/readme && $$(awk '/^<!-- example.sh/ {f = 1} f && /^cc / {sub(/ *#.*/, ""); print; exit}' ../../README.md)
	cd build/readme && ./example ../../data/sample.txt 3 > example.out && grep -q '^step 3/3 ' example.out && \
	  grep -q '^held-out char accuracy' example.out && grep -q '^The harbour' example.out && test -s weights.bin

# The whole suite (CUDA kernels through the emulator too) under ASan + UBSan,
# with a sanitized ./mambabyte for the CLI tests (run in build/asan/, a copy
# of the repo layout).  Sanitizer reports exit 86/87, which no test expects.
SAN     = -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow \
          -fno-omit-frame-pointer -g -O1
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:exitcode=86 \
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87
build/asan/mambabyte: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c $(HEADERS) | build
	mkdir -p build/asan/build
	$(CC) $(STD) $(SAN) $(WARN) $(OMP) main.c -o $@ $(LDLIBS)
build/asan/test_cuda_emu.o: tests/test_cuda_emu.cpp $(HEADERS) $(wildcard mambabyte_cuda.cuh tests/cuda_emu*.h) | build
	mkdir -p build/asan
	$(CXX) -std=c++17 $(SAN) $(WARN) -c tests/test_cuda_emu.cpp -o $@
test_mambabyte_asan: $(TEST_SRC) build/asan/test_cuda_emu.o
	$(CC) $(STD) $(SAN) $(WARN) $(OMP) test.c build/asan/test_cuda_emu.o -o $@ -lstdc++ $(LDLIBS) -lpthread
test-asan: test_mambabyte_asan build/asan/mambabyte
	ln -sfn ../../tests build/asan/tests
	ln -sfn ../../data build/asan/data
	cd build/asan && $(SAN_ENV) ../../test_mambabyte_asan

# libFuzzer harnesses (clang): replay the corpus and regressions, then fuzz.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
fuzz: | build
	FUZZ_CC=$(FUZZ_CC) sh tests/fuzz/run.sh $(FUZZ_SECONDS)

# The portable builds on this machine (tests/portable.sh): build/portable/LEVEL/
# for x86-64 (the baseline ISA, the scan's AVX-512 pieces picked at run time,
# and switched off with MB_TEST_SCAN_AVX512=0 as on an older CPU) and x86-64-v3
# (AVX2 and FMA, no AVX-512: a mix no other build compiles), each running the
# kernel suite and a short training run whose losses match the native build's.
PORTABLE_TESTED = $(foreach v,x86-64 x86-64-v3,build/portable/$(v)/test_mambabyte build/portable/$(v)/mambabyte)
build/portable/%/test_mambabyte: $(TEST_SRC) build/test_cuda_emu.o
	mkdir -p $(@D)
	$(CC) $(STD) -O2 -g -march=$* -mtune=generic $(WARN) $(OMP) test.c build/test_cuda_emu.o -o $@ -lstdc++ $(LDLIBS) -lpthread
build/portable/%/mambabyte: main.c cli.h plot.c eval.c export.c numerics_report.c bench.c $(HEADERS)
	mkdir -p $(@D)
	$(CC) $(STD) -O3 -march=$* -mtune=generic $(WARN) $(OMP) main.c -o $@ $(LDLIBS)
test-portable: mambabyte $(PORTABLE_TESTED)
	sh tests/portable.sh ./mambabyte build/portable/x86-64 build/portable/x86-64-v3

# What CI runs: fuzzing, the sanitized suite, the Python tests, the portable
# build, then the suite (its summary last).
check: fuzz test-asan test-python test-portable test

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

# Data-parallel training under mpirun (skipped, and counted, without MPI).
test-mpi: test_mambabyte mambabyte $(if $(MPICC),mambabyte_mpi) $(filter mambabyte_cuda_mpi,$(TARGETS))
	./test_mambabyte mpi

bench: mambabyte
	./mambabyte bench

# The shared library for other languages (the Python package in python/):
# the header's implementation, every mb_ function with C linkage; with nvcc
# also libmambabyte_cuda.so, the same plus the CUDA trainer.
LIBS = libmambabyte.so
ifneq ($(NVCC),)
LIBS += libmambabyte_cuda.so
endif
LIB_CFLAGS = $(STD) $(CFLAGS) $(WARN) $(OMP) -fPIC -shared -DMAMBABYTE_IMPLEMENTATION
lib: $(addprefix $(LIBDIR),$(LIBS))
$(LIBDIR)libmambabyte.so: $(HEADERS)
	mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -x c mambabyte.h -o $@ $(LDLIBS)
ifeq ($(PORTABLE),1)
lib: $(foreach v,$(PORTABLE_LEVELS),$(addprefix build/portable/$(v)/,$(LIBS)))
build/portable/%/libmambabyte.so: $(HEADERS)
	mkdir -p $(@D)
	$(CC) $(subst -march=x86-64 ,-march=$* ,$(LIB_CFLAGS)) -x c mambabyte.h -o $@ $(LDLIBS)
build/portable/%/libmambabyte_cuda.so: $(HEADERS) build/mambabyte_cuda_pic.o
	mkdir -p $(@D)
	$(CC) $(subst -march=x86-64 ,-march=$* ,$(LIB_CFLAGS)) -x c mambabyte.h -x none build/mambabyte_cuda_pic.o -o $@ \
	  -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ $(LDLIBS) -Wl,-rpath,$(CUDA_HOME)/lib64
endif
build/mambabyte_cuda_pic.o: mambabyte_cuda.cuh $(HEADERS) | build
	$(NVCC) -O3 $(CUDA_ARCH) -Xcompiler -fPIC -DMAMBABYTE_CUDA_IMPLEMENTATION -x cu -c mambabyte_cuda.cuh -o $@
$(LIBDIR)libmambabyte_cuda.so: $(HEADERS) build/mambabyte_cuda_pic.o
	mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -x c mambabyte.h -x none build/mambabyte_cuda_pic.o -o $@ \
	  -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ $(LDLIBS) -Wl,-rpath,$(CUDA_HOME)/lib64

# The Python package's tests (Debian's python3 with python3-numpy and
# python3-pytest; the PyTorch ones run when python3-torch is there).
# build/abi_sizes prints the C layout of every struct the bindings mirror.
PYTHON ?= /usr/bin/python3
build/abi_sizes: python/tests/abi_sizes.c $(HEADERS) | build
	$(CC) $(STD) $(WARN) python/tests/abi_sizes.c -o $@
test-python: lib build/abi_sizes mambabyte
	PYTHONPATH=python MB_ABI_SIZES=build/abi_sizes $(PYTHON) -m pytest -q -p no:cacheprovider python/tests

clean:
	rm -rf build mambabyte mambabyte_cuda mambabyte_mpi mambabyte_cuda_mpi test_mambabyte test_mambabyte_asan bench_mambabyte libmambabyte.so libmambabyte_cuda.so
