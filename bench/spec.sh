#!/bin/sh
# Speculative generation on issue 29's protocol, one command, one table:
#   bench/spec.sh [DIR]          (from the repo root, after `make mambabyte`)
# Trains (once, kept in DIR, default build/spec) a target of the default config
# for 5 minutes and a draft (d_model 64, 2 layers) for 1 minute (the time-budget
# recipe; TARGET_TRAIN / DRAFT_TRAIN replace those flags, e.g. "--steps 300") on
# TEXT less its last 60,000 characters; takes 20 prompts of 64 characters from
# those 60,000; generates BYTES greedy bytes from each, plain and with each
# drafter, the modes alternating prompt by prompt; checks every output equals
# plain's. bytes/s: generation only (sample's stderr line), summed over prompts.
set -e
D=${1:-build/spec}
TEXT=${TEXT:-../shared/data/english/sotu.txt}
TARGET_TRAIN=${TARGET_TRAIN:---time-budget 300} DRAFT_TRAIN=${DRAFT_TRAIN:---time-budget 60} BYTES=${BYTES:-2000} THREADS=${THREADS:-1}
mkdir -p "$D"
python3 - "$TEXT" "$D" <<'EOF'
import sys
t = open(sys.argv[1], encoding="utf-8").read()
open(sys.argv[2] + "/train.txt", "w", encoding="utf-8").write(t[:-60000])
open(sys.argv[2] + "/held.txt", "w", encoding="utf-8").write(t[-60000:])
held = t[-60000:].replace("\n", " ")
with open(sys.argv[2] + "/prompts.txt", "w", encoding="utf-8") as f:
    for i in range(20): f.write(held[i * 2900:i * 2900 + 64] + "\n")
EOF
train() { # out [flags]: the last 60,000 characters only as the (skipped) eval text
    [ -f "$D/$1" ] && return
    out=$1; shift
    /usr/bin/time -f "$out: %e s" ./mambabyte train --data "$D/train.txt" --eval-data "$D/held.txt" --eval-chars 0 \
        --threads "$THREADS" --log-every 100 --out "$D/$out" "$@" | tail -2
}
train target.bin $TARGET_TRAIN
train draft.bin $DRAFT_TRAIN --d-model 64 --n-layer 2
[ -n "$TRAIN_ONLY" ] && exit 0   # train now, time the generation later on an idle machine
MODES="plain draft.bin self:int8 self:bf16 lookup"
: > "$D/results.txt"
i=0
while IFS= read -r P; do
    i=$((i + 1))
    for M in $MODES; do
        case $M in plain) F= ;; *.bin) F="--draft $D/$M" ;; *) F="--draft $M" ;; esac
        ./mambabyte sample --model "$D/target.bin" --prompt "$P" --bytes "$BYTES" --temperature 0 --threads "$THREADS" $F \
            > "$D/out.$M.$i" 2> "$D/err"
        cmp -s "$D/out.plain.$i" "$D/out.$M.$i" && same=1 || same=0
        # "N bytes in T s: X bytes/s[; R rounds, A of K drafted bytes accepted per round]"
        awk -v m="$M" -v s="$same" '/bytes in/ { print m, $1, $1 / $6, $8 + 0, $10 + 0, $12 + 0, s }' \
            "$D/err" >> "$D/results.txt"
    done
done < "$D/prompts.txt"
echo "target: $TARGET_TRAIN, draft: $DRAFT_TRAIN; 20 prompts x $BYTES greedy bytes, --threads $THREADS"
awk -v modes="$MODES" '
{ n[$1]++; b[$1] += $2; t[$1] += $3; r[$1] += $4; a[$1] += $5 * $4; k[$1] += $6 * $4; same[$1] += $7 }
END {
    printf "%-10s %10s %8s %22s %10s\n", "mode", "bytes/s", "x plain", "accepted/drafted/round", "identical"
    split(modes, ms, " ")
    for (j = 1; j in ms; j++) { m = ms[j]
        printf "%-10s %10.0f %8.2f %22s %7d/%d\n", m, b[m] / t[m], (b[m] / t[m]) / (b["plain"] / t["plain"]),
               r[m] ? sprintf("%.2f / %.2f", a[m] / r[m], k[m] / r[m]) : "", same[m], n[m] }
}' "$D/results.txt"
