#!/usr/bin/env bash
# actc beside PyTorch eager, in one session, interleaved: MobileNetV2 (ImageNet weights, new
# 10-way head), last 4 convs + classifier, frozen (folded) BN, SGD lr 0.01 momentum 0.9,
# 2 threads, at 64x3x32x32 and 8x3x224x224; actc without compression and with HOSVD (eps 0.8).
# Prints one table (median ms per step, spread, peak RSS of the whole process) and writes the
# raw results to bench-results.json.
# Needs the venv of models/README.md (.venv) and a release build of actc.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-20}
cargo build --release -q -p actc
ACTC=target/release/actc
PY=.venv/bin/python
tmp=$(mktemp -d)
for shape in 64x3x32x32 8x3x224x224; do
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 -o "$tmp/$shape.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --compress hosvd --eps 0.8 -o "$tmp/$shape-hosvd.actc" 2>/dev/null
done
: > "$tmp/actc.jsonl"
for round in $(seq "$ROUNDS"); do
  for shape in 64x3x32x32 8x3x224x224; do
    for plan in "$shape" "$shape-hosvd"; do
      "$ACTC" bench "$tmp/$plan.actc" --steps "$STEPS" --threads 2 --json >> "$tmp/actc.jsonl"
    done
  done
  "$PY" models/reference/bench_torch.py --steps "$STEPS" --bn folded --tries 2 --json "$tmp/torch-$round.json" > /dev/null 2>&1
done
"$PY" - "$tmp" <<'PY'
import json, sys, glob, statistics, pathlib
tmp = pathlib.Path(sys.argv[1])
rows = {}
for line in open(tmp / "actc.jsonl"):
    r = json.loads(line)
    shape = "64x32" if "64x3x32x32" in r["plan"] else "8x224"
    system = "actc hosvd eps=0.8" if "hosvd" in r["plan"] else "actc"
    rows.setdefault((system, shape), []).append((r["step_ms"]["median"], r["step_ms"]["p10"], r["step_ms"]["p90"], r["peak_rss_bytes"] / 1e6, r["suffix_ms"]["median"]))
for f in sorted(glob.glob(str(tmp / "torch-*.json"))):
    for r in json.load(open(f))["best"]:
        key = (f"pytorch {r['layout']}", f"{r['batch']}x{r['size']}")
        rows.setdefault(key, []).append((r["median_ms"], r["p10_ms"], r["p90_ms"], r["peak_rss_mb"], None))
print(f"{'system':<24} {'shape':<7} {'median ms':>10} {'p10':>8} {'p90':>8} {'peak RSS MB':>12}  (medians over rounds)")
for (system, shape), vals in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    med = lambda i: statistics.median(v[i] for v in vals)
    extra = f"  suffix {med(4):.1f} ms" if vals[0][4] is not None else ""
    print(f"{system:<24} {shape:<7} {med(0):>10.1f} {med(1):>8.1f} {med(2):>8.1f} {med(3):>12.1f}{extra}")
json.dump({f"{k[0]} {k[1]}": v for k, v in rows.items()}, open("bench-results.json", "w"), indent=1)
PY
