#!/bin/sh
# Issue 28's accuracy per stream precision: `eval` of the target that
# bench/spec.sh trains, over the 60,000 held-out characters it splits off;
# one table, against fp32 and the issue's bounds.   bench/accuracy.sh [DIR]
set -e
D=${1:-build/spec}
[ -f "$D/target.bin" ] || { echo "$D/target.bin: run bench/spec.sh first" >&2; exit 1; }
for p in fp32 bf16 int8; do
    ./mambabyte eval --model "$D/target.bin" --data "$D/held.txt" --chars 60000 --precision $p --json "$D/acc.$p.json" > /dev/null
done
python3 - "$D" <<'PY'
import json, sys
r = {p: json.load(open(f"{sys.argv[1]}/acc.{p}.json")) for p in ("fp32", "bf16", "int8")}
f = r["fp32"]
print(f"{r['fp32']['chars']:.0f} held-out chars; bounds: bf16 0.002 acc, 0.5% bpb; int8 0.005, 1.5%")
print(f"{'precision':10} {'char acc':>9} {'bits/byte':>10} {'d acc':>8} {'d bpb':>8} {'chars/s':>8}")
for p, x in r.items():
    print(f"{p:10} {x['val_char_accuracy']:9.4f} {x['bits_per_byte']:10.4f} {x['val_char_accuracy'] - f['val_char_accuracy']:+8.4f} "
          f"{100 * (x['bits_per_byte'] / f['bits_per_byte'] - 1):+7.2f}% {x['chars_per_s']:8.0f}")
PY
