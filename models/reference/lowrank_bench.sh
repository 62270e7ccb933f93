#!/usr/bin/env bash
# Low-rank decomposition's speed on actc, side by side in one run (issue 17): MobileNetV2 at
# 8x3x224x224, the original against its decomposed forms, alternating over ROUNDS rounds.
#
#   training : --layers $LAYERS (momentum 0.9), `actc bench` step and suffix medians, for
#              the original, `decompose --ratio $RATIO` of those layers, the same with
#              `--optimize-ranks`, the decomposed model with `--freeze-schedule
#              sequential:1`, and the model decomposed whole (`--layers all`, its frozen
#              prefix in factors too; `decompose --distill` changes its weights, not its
#              shapes, so this is the distilled model's speed), also with
#              `--freeze-schedule sequential:1` (its turns alternating every step: their
#              mean speed, which `sequential`'s turns per epoch share);
#   inference: the whole model, every layer decomposed at `--ratio $WHOLE_RATIO` (`--layers all`),
#              on actc's own kernels: a plan training only the classifier (`--layers 1`)
#              runs everything before it as its frozen prefix, so step − suffix is the
#              forward pass of the rest of the model. Both at `--prefix-batch 1` (a sample
#              per thread at a time): left to the planner, the prefix's micro-batch and lanes
#              follow the training arena of each plan, and the decomposed prefix, whose
#              arena per lane is a little larger, ran one lane where the original ran two.
#
# Usage: bash models/reference/lowrank_bench.sh [ACTC binary] (default target/release/actc)
# Prints one table; weights are the bundled model's (ImageNet-pretrained; accuracy is
# not measured here).
set -euo pipefail
ACTC=${1:-target/release/actc}
ROUNDS=${ROUNDS:-10}
LAYERS=${LAYERS:-4}
RATIO=${RATIO:-0.5}
WHOLE_RATIO=${WHOLE_RATIO:-$RATIO}
STEPS=${STEPS:-20}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
M=models/mobilenetv2.onnx
SHAPE=8x3x224x224

"$ACTC" decompose $M -o "$OUT/lrd.onnx" --layers "$LAYERS" --ratio "$RATIO" --input-shape $SHAPE >"$OUT/lrd.txt" 2>/dev/null
"$ACTC" decompose $M -o "$OUT/opt.onnx" --layers "$LAYERS" --ratio "$RATIO" --input-shape $SHAPE --optimize-ranks >"$OUT/opt.txt" 2>/dev/null
"$ACTC" decompose $M -o "$OUT/all.onnx" --layers all --ratio "$WHOLE_RATIO" --input-shape $SHAPE >"$OUT/all.txt" 2>/dev/null
"$ACTC" decompose $M -o "$OUT/all_opt.onnx" --layers all --ratio "$WHOLE_RATIO" --input-shape $SHAPE --optimize-ranks infer >"$OUT/all_opt.txt" 2>/dev/null

compile() { "$ACTC" compile "$1" --layers "$2" --input-shape $SHAPE --momentum 0.9 -o "$OUT/$3.actc" "${@:4}" 2>/dev/null; }
compile $M "$LAYERS" original
compile "$OUT/lrd.onnx" "$LAYERS" lrd
compile "$OUT/opt.onnx" "$LAYERS" lrd_optimized
compile "$OUT/lrd.onnx" "$LAYERS" lrd_frozen --freeze-schedule sequential:1
compile "$OUT/all.onnx" "$LAYERS" whole
compile "$OUT/all.onnx" "$LAYERS" whole_frozen --freeze-schedule sequential:1
compile $M 1 infer_original --prefix-batch 1
compile "$OUT/all.onnx" 1 infer_lrd --prefix-batch 1
compile "$OUT/all_opt.onnx" 1 infer_lrd_optimized --prefix-batch 1

PLANS="original lrd lrd_optimized lrd_frozen whole whole_frozen infer_original infer_lrd infer_lrd_optimized"
for r in $(seq "$ROUNDS"); do
  for p in $PLANS; do
    "$ACTC" bench "$OUT/$p.actc" --steps "$STEPS" --json >>"$OUT/$p.jsonl"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { jq -r "$2" "$OUT/$1.jsonl" | median; }
echo "MobileNetV2 $SHAPE, $(nproc) cores, $ROUNDS rounds of $STEPS steps, medians of the per-round medians"
echo "decomposed (--layers $LAYERS --ratio $RATIO):"; grep -E "svd|tucker2|kept|ms by" "$OUT/lrd.txt" | sed 's/^/  /'
echo "optimized:"; grep -E "svd|tucker2|kept|ms by" "$OUT/opt.txt" | sed 's/^/  /'
echo "whole model: $(tail -2 "$OUT/all.txt" | head -1)"
echo "whole model, --optimize-ranks infer: $(tail -2 "$OUT/all_opt.txt" | head -1); $(grep -c 'measured faster' "$OUT/all_opt.txt") layers kept as they measured faster"
printf '%-16s %12s %12s %12s %12s\n' plan "step ms" "suffix ms" "step ×" "suffix ×"
base_step=$(field original '.step_ms.median'); base_suffix=$(field original '.suffix_ms.median')
for p in original lrd lrd_optimized lrd_frozen whole whole_frozen; do
  s=$(field $p '.step_ms.median'); x=$(field $p '.suffix_ms.median')
  printf '%-16s %12.2f %12.2f %12.2f %12.2f\n' $p "$s" "$x" "$(echo "$base_step / $s" | bc -l)" "$(echo "$base_suffix / $x" | bc -l)"
done
io=$(jq -r '.step_ms.median - .suffix_ms.median' "$OUT/infer_original.jsonl" | median)
for p in infer_lrd infer_lrd_optimized; do
  il=$(jq -r '.step_ms.median - .suffix_ms.median' "$OUT/$p.jsonl" | median)
  printf 'inference (prefix of a --layers 1 plan): original %.2f ms, %s %.2f ms: %.2f×\n' "$io" $p "$il" "$(echo "$io / $il" | bc -l)"
done
