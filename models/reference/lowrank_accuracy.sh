#!/usr/bin/env bash
# Low-rank decomposition's accuracy and training throughput after the same fine-tuning
# (issue 17): MobileNetV2 (ImageNet weights, new 10-way head), the last LAYERS layers at
# 8x3x224x224, SGD lr LR (0.01) momentum 0.9, EPOCHS epochs on the bundled Fashion-MNIST subset
# (1600 train / 400 held-out), SEEDS seeds, one variant after the other within each seed:
#
#   original       the model as it is
#   lrd            `decompose --layers LAYERS --ratio RATIO` (truncated SVD of the 1x1 convs'
#                  weights; the classifier, the model's head, stays whole); its factors
#                  train at `--factor-lr auto`
#   lrd_same_lr    the same with `--factor-lr 1`: the factors at the original's rate
#   lrd_data       the same ranks factored on data, `--calibration CAL` (the layers' outputs
#                  on 256 images of CAL kept rather than their weights); CAL is the bundled
#                  t10k images, which no training or validation split of DATA holds
#   lrd_data_optimized  lrd_data with `--optimize-ranks` (ranks by measured step time)
#   lrd_data_optimized_frozen  lrd_data_optimized with `--freeze-schedule sequential`
#   lrd_data_frozen     lrd_data with `--freeze-schedule sequential` (turns per epoch)
#   lrd_data_frozen_1   lrd_data with `--freeze-schedule sequential:1` (turns every step)
#   whole_data     every layer but the head decomposed on data (`--layers WHOLE_LAYERS`, all
#                  by default: the frozen prefix too, so inference gains), trained in its
#                  last LAYERS layers
#   whole_distilled     whole_data with `--distill DISTILL` (10) on all CAL samples: every
#                  layer trained to reproduce the original's maps first (DISTILL_MAPS,
#                  `--distill-maps`: auto by default, each resolution's stage output)
#   whole_distilled_frozen  whole_distilled with `--freeze-schedule sequential`
#
# Epoch 1 runs the frozen prefix for every sample; later epochs read it from the prefix
# cache and run the trainable part alone: their mean time is the training throughput.
#
# Usage: bash models/reference/lowrank_accuracy.sh [ACTC binary] (default target/release/actc);
# VARIANTS="original lrd" runs a subset; KEEP=DIR keeps the logs.
set -euo pipefail
ACTC=${1:-target/release/actc}
LAYERS=${LAYERS:-4}
RATIO=${RATIO:-0.5}
EPOCHS=${EPOCHS:-5}
LR=${LR:-0.01}
SEEDS=${SEEDS:-"0 1 2"}
DATA=models/data/fashion-mnist
SHAPE=8x3x224x224
# KEEP=DIR keeps the plans and every run's log there (to recheck a table); else a temp dir.
if [ -n "${KEEP:-}" ]; then
  OUT=$KEEP
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
M=models/mobilenetv2.onnx

CAL=models/data/fashion-mnist/t10k-images-idx3-ubyte.gz
DISTILL=${DISTILL:-10}
DISTILL_LR=${DISTILL_LR:-0.0003}
WHOLE_LAYERS=${WHOLE_LAYERS:-all}
VARIANTS=${VARIANTS:-"original lrd lrd_same_lr lrd_data lrd_data_optimized lrd_data_frozen lrd_data_frozen_1"}
decompose() {
  [ -f "$OUT/$1.onnx" ] ||
    "$ACTC" decompose $M -o "$OUT/$1.onnx" --ratio "$RATIO" --input-shape $SHAPE "${@:2}" >"$OUT/$1.txt" 2>"$OUT/$1.err" || { echo "decompose $1 failed: $(tail -1 "$OUT/$1.err")" >&2; return 1; }
}
compile() { "$ACTC" compile "$1" --layers "$LAYERS" --input-shape $SHAPE --lr "$LR" --momentum 0.9 -o "$OUT/$2.actc" "${@:3}" 2>/dev/null; }
# Each variant's model and plan, made only when the variant runs.
for v in $VARIANTS; do
  case $v in
    original) compile $M original ;;
    lrd) decompose lrd --layers "$LAYERS" && compile "$OUT/lrd.onnx" lrd ;;
    lrd_same_lr) decompose lrd --layers "$LAYERS" && compile "$OUT/lrd.onnx" lrd_same_lr --factor-lr 1 ;;
    lrd_data) decompose data --layers "$LAYERS" --calibration $CAL && compile "$OUT/data.onnx" lrd_data ;;
    lrd_data_optimized)
      decompose data_opt --layers "$LAYERS" --calibration $CAL --optimize-ranks &&
        compile "$OUT/data_opt.onnx" lrd_data_optimized ;;
    lrd_data_optimized_frozen)
      decompose data_opt --layers "$LAYERS" --calibration $CAL --optimize-ranks &&
        compile "$OUT/data_opt.onnx" lrd_data_optimized_frozen --freeze-schedule sequential ;;
    lrd_data_frozen)
      decompose data --layers "$LAYERS" --calibration $CAL &&
        compile "$OUT/data.onnx" lrd_data_frozen --freeze-schedule sequential ;;
    lrd_data_frozen_1)
      decompose data --layers "$LAYERS" --calibration $CAL &&
        compile "$OUT/data.onnx" lrd_data_frozen_1 --freeze-schedule sequential:1 ;;
    whole_data) decompose whole --layers "$WHOLE_LAYERS" --calibration $CAL && compile "$OUT/whole.onnx" whole_data ;;
    whole_distilled)
      decompose whole_distilled --layers "$WHOLE_LAYERS" --calibration $CAL --calibration-samples 500 --distill "$DISTILL" \
        --distill-lr "$DISTILL_LR" ${DISTILL_MAPS:+--distill-maps "$DISTILL_MAPS"} &&
        compile "$OUT/whole_distilled.onnx" whole_distilled ;;
    whole_distilled_frozen)
      decompose whole_distilled --layers "$WHOLE_LAYERS" --calibration $CAL --calibration-samples 500 --distill "$DISTILL" \
        --distill-lr "$DISTILL_LR" ${DISTILL_MAPS:+--distill-maps "$DISTILL_MAPS"} &&
        compile "$OUT/whole_distilled.onnx" whole_distilled_frozen --freeze-schedule sequential ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
done

# A run that fails (a diverging loss stops `train`) is reported, and left out of the table.
for seed in $SEEDS; do
  for v in $VARIANTS; do
    "$ACTC" train "$OUT/$v.actc" --data $DATA --epochs "$EPOCHS" --seed "$seed" -q \
      --log "$OUT/$v.$seed.jsonl" --save "$OUT/$v.$seed" 2>"$OUT/$v.$seed.err" ||
      { echo "FAILED $v seed $seed: $(tail -1 "$OUT/$v.$seed.err")"; rm -f "$OUT/$v.$seed.jsonl"; }
  done
done

stats() { awk '{s+=$1; q+=$1*$1; n++} END {m=s/n; v=q/n-m*m; if (v<0) v=0; printf "%.4f ± %.4f", m, sqrt(v)}'; }
echo "MobileNetV2 $SHAPE --layers $LAYERS, decomposed at --ratio $RATIO (whole_*: --layers $WHOLE_LAYERS, --distill $DISTILL); SGD lr $LR momentum 0.9, $EPOCHS epochs, seeds: $SEEDS; $(nproc) cores"
if [ -f "$OUT/data_opt.txt" ]; then grep -E "svd|ms by" "$OUT/data_opt.txt" | sed 's/^/  optimized: /'; fi
if [ -f "$OUT/whole_distilled.txt" ]; then grep -E "^distilled|^output" "$OUT/whole_distilled.txt" | sed 's/^/  whole_distilled: /'; fi
printf '| %-18s | %-17s | %-17s | %-22s | %-22s |\n' variant "final val acc" "best val acc" "epoch 2+ seconds" "final − original"
printf '|%s|%s|%s|%s|%s|\n' -------------------- ------------------- ------------------- ------------------------ ------------------------
runs() { for s in $SEEDS; do if [ -f "$OUT/$1.$s.jsonl" ]; then echo "$s"; fi; done; }
for v in $VARIANTS; do
  ok=$(runs $v)
  [ -n "$ok" ] || { printf '| %-18s | no run finished |\n' "$v"; continue; }
  last() { jq -r 'select(.event=="epoch") | .val.accuracy' "$OUT/$1.$2.jsonl" | tail -1; }
  # Paired over the seeds both finished: mean difference ± its standard error.
  paired=$(for s in $ok; do if [ -f "$OUT/original.$s.jsonl" ]; then echo "$(last $v $s) $(last original $s)"; fi; done |
    awk '{d=$1-$2; s+=d; q+=d*d; n++} END {if (n<2) {print "-"; exit} m=s/n; v=(q-n*m*m)/(n-1); if (v<0) v=0; printf "%+.4f ± %.4f (%d)", m, sqrt(v/n), n}')
  final=$(for s in $ok; do jq -r 'select(.event=="epoch") | .val.accuracy' "$OUT/$v.$s.jsonl" | tail -1; done | stats)
  best=$(for s in $ok; do jq -r 'select(.event=="epoch") | .val.accuracy' "$OUT/$v.$s.jsonl" | sort -g | tail -1; done | stats)
  secs=$(for s in $ok; do jq -r 'select(.event=="epoch" and .epoch>1) | .seconds' "$OUT/$v.$s.jsonl"; done | stats)
  printf '| %-18s | %-17s | %-17s | %-22s | %-22s |\n' "$v" "$final" "$best" "$secs" "$paired"
done
