#!/usr/bin/env bash
# actc's scaling curves for MobileNetV2 (momentum 0.9, 2 threads): the planned memory and the
# step time against the batch size (64x64 inputs, --layers 4), against --layers (8x3x64x64),
# and against HOSVD's eps (--layers 4, 8x3x224x224), each beside vanilla. Prints one table per
# sweep; the planned numbers come from the plan (exact), the times from `actc bench` (medians
# of STEPS steps, one run per point: a curve, not a benchmark).
# Needs a release build of actc (built here, or ACTC=path).
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-10}
if [ -z "${ACTC:-}" ]; then
  cargo build --release -q -p actc
  ACTC=target/release/actc
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One point: compile with the given flags, bench, print a row.
point() {
  local label=$1; shift
  "$ACTC" compile models/mobilenetv2.onnx --momentum 0.9 "$@" -o "$tmp/p.actc" 2>/dev/null
  "$ACTC" inspect "$tmp/p.actc" --json > "$tmp/i.json"
  "$ACTC" bench "$tmp/p.actc" --steps "$STEPS" --warmup 3 --threads 2 --json > "$tmp/b.json"
  python3 - "$label" "$tmp/i.json" "$tmp/b.json" <<'PY'
import json, sys
label, i, b = sys.argv[1], json.load(open(sys.argv[2]))["memory"], json.load(open(sys.argv[3]))
mb = lambda v: f"{v / 1e6:.2f}"
print(f"| {label} | {mb(i['training_arena_bytes'])} | {mb(i['prefix_arena_bytes'])} | {mb(i['arena_bytes'])} "
      f"| {mb(i['saved_bytes'])} | {mb(i['planned_peak_bytes'])} | {b['step_ms']['median']:.1f} | {b['suffix_ms']['median']:.1f} "
      f"| {b['peak_rss_bytes'] / 1e6:.0f} |")
PY
}
header() {
  echo
  echo "$1"
  echo
  echo "| $2 | training arena MB | prefix arena MB | arena MB | saved MB | planned peak MB | step ms | after prefix ms | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|---|---|"
}

header "Batch size (3x64x64 inputs, --layers 4)" "batch"
for b in 1 2 4 8 16 32 64 128; do
  point "$b" --layers 4 --input-shape "${b}x3x64x64"
  point "$b, HOSVD eps 0.8" --layers 4 --input-shape "${b}x3x64x64" --compress hosvd --rank-rule eps --eps 0.8
done

header "Trained layers (8x3x64x64)" "--layers"
for l in 1 2 4 8 16 32 all; do
  point "$l" --layers "$l" --input-shape 8x3x64x64
  point "$l, HOSVD eps 0.8" --layers "$l" --input-shape 8x3x64x64 --compress hosvd --rank-rule eps --eps 0.8
done

header "HOSVD eps (--layers 4, 8x3x224x224)" "eps"
point "vanilla" --layers 4 --input-shape 8x3x224x224
for e in 0.5 0.8 0.9 0.95 0.99 1; do
  point "$e" --layers 4 --input-shape 8x3x224x224 --compress hosvd --rank-rule eps --eps "$e"
done
