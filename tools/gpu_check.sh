#!/usr/bin/env bash
# tools/gpu_check.sh - the first run of the CUDA backend on a GPU, as one script.
#
#   tools/gpu_check.sh [OUT_DIR]        (default: build/gpu_check)
#
# Run from the repository root.  Everything it prints and writes goes under
# OUT_DIR (one log per step, summary.txt last).  Steps, each under a timeout:
#   host   1. the emulator's launch count and the scan's instructions per
#             element (PTX here; SASS too when cuobjdump is on PATH)
#          2. an sm_90-only build of ./mambabyte_cuda, build/cuda_gpu_test,
#             build/cuda_bench
#   GPU    3. nvidia-smi: which GPU (the script stops here, exit 2, when none)
#          4. make test-cuda: every kernel and the model against the CPU
#          5. compute-sanitizer memcheck, racecheck, synccheck over the GPU
#             tests at small shapes (build/cuda_gpu_test --small)
#          6. make bench-cuda: ms/step and tokens/s at B16 x T1024 (fp32, tf32, bf16),
#             the scan alone with GB/s, whether ctx 2048 x batch 64 fits
#          7. 120 s of training (--time-budget) on ../shared/data text, then eval
# On an H100/H200 the whole run takes about 8 minutes.  Without a GPU it does
# the host steps, says so and exits 2 within a minute or two (no step waits
# for a device).  Exit status: 0 all passed, 1 a step failed, 2 no GPU.
set -u
OUT=${1:-build/gpu_check}
mkdir -p "$OUT" || exit 1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
NVCC=${NVCC:-$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
failed=0

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
# step NAME SECONDS CMD...: run CMD with a timeout, log to OUT/NAME.log.
step() {
    local name=$1 secs=$2 t0 rc
    shift 2
    t0=$(date +%s)
    timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        say "ok     $name ($(( $(date +%s) - t0 )) s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "FAIL   $name: timed out after $secs s (log: $OUT/$name.log)"; failed=1
    else
        say "FAIL   $name: exit $rc (log: $OUT/$name.log)"; failed=1
    fi
    return $rc
}

say "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -z "$NVCC" ]; then
    say "FAIL   nvcc not found (PATH or /usr/local/cuda/bin): cannot build the CUDA backend"
    exit 1
fi

# ---- host steps ----------------------------------------------------------
step launches 900 sh -c 'make -s test_mambabyte && ./test_mambabyte cuda_emu' &&
    grep -h 'launches per training step' "$OUT/launches.log" | tee -a "$SUMMARY"
step ptx 300 sh -c "'$NVCC' -O3 -arch=compute_90 -ptx -DMAMBABYTE_CUDA_IMPLEMENTATION -x cu mambabyte_cuda.cuh -o '$OUT/mambabyte_cuda.ptx' && python3 tools/scan_isa_count.py '$OUT/mambabyte_cuda.ptx'" &&
    sed 1d "$OUT/ptx.log" | sed 's/^/  PTX /' >>"$SUMMARY"
step build 600 make -B -j"$JOBS" CUDA_ARCH="-gencode arch=compute_90,code=sm_90" mambabyte_cuda build/cuda_gpu_test build/cuda_bench
if command -v cuobjdump >/dev/null 2>&1 && [ -f build/mambabyte_cuda.o ]; then
    step sass 120 sh -c "cuobjdump -sass build/mambabyte_cuda.o >'$OUT/mambabyte_cuda.sass' && python3 tools/scan_isa_count.py '$OUT/mambabyte_cuda.sass'" &&
        sed 1d "$OUT/sass.log" | sed 's/^/  SASS /' >>"$SUMMARY"
else
    say "skip   sass: cuobjdump not on PATH"
fi

# ---- is there a GPU? -----------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "NO GPU: nvidia-smi not found; the host steps above ran, the GPU steps did not (exit 2)"
    exit 2
fi
if ! timeout 30 nvidia-smi -L >"$OUT/gpu.log" 2>&1 || ! grep -q '^GPU ' "$OUT/gpu.log"; then
    say "NO GPU: nvidia-smi -L: $(head -c 300 "$OUT/gpu.log" | tr '\n' ' ')(exit 2)"
    exit 2
fi
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/gpu.log" 2>&1
say "device: $(grep '^GPU 0' "$OUT/gpu.log")"

# ---- GPU steps -----------------------------------------------------------
step test-cuda 300 ./build/cuda_gpu_test && tail -1 "$OUT/test-cuda.log" | sed 's/^/  /' >>"$SUMMARY"
if command -v compute-sanitizer >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck synccheck; do
        step "sanitizer-$tool" 240 "$CS" --tool "$tool" --error-exitcode 9 ./build/cuda_gpu_test --small
    done
else
    say "skip   compute-sanitizer: not found"
fi
step bench-cuda 300 ./build/cuda_bench 20 && sed 's/^/  /' "$OUT/bench-cuda.log" >>"$SUMMARY"

DATA=""
for f in ../shared/data/english/sotu.txt ../shared/data/wikitext/wiki.test.raw; do
    [ -f "$f" ] && { DATA=$f; break; }
done
if [ -n "$DATA" ]; then
    step train 200 ./mambabyte_cuda train --device cuda --data "$DATA" --time-budget 120 --schedule time \
        --out "$OUT/model.bin" --log "$OUT/train.csv" --json "$OUT/train.json" --eval-chars 0 &&
        tail -3 "$OUT/train.log" | sed 's/^/  /' >>"$SUMMARY"
    EVAL=../shared/data/wikitext/wiki.test.raw
    [ -f "$EVAL" ] || EVAL=$DATA
    step eval 120 ./mambabyte_cuda eval --model "$OUT/model.bin" --data "$EVAL" --chars 60000 --json "$OUT/eval.json" &&
        tail -2 "$OUT/eval.log" | sed 's/^/  /' >>"$SUMMARY"
else
    say "skip   train/eval: no text under ../shared/data/"
fi

[ $failed -eq 0 ] && say "gpu_check: all steps passed" || say "gpu_check: some steps FAILED (see above)"
exit $failed
