#!/usr/bin/env bash
# Two builds of actc side by side, in one session, interleaved: is a change free?
#   bash models/reference/bench_two_builds.sh OLD_ACTC NEW_ACTC
# MobileNetV2 --layers 4, momentum 0.9, at 64x3x32x32 and 8x3x224x224: each binary compiles
# its own plans; the two `inspect --json` tables must agree (same steps, buffers, offsets,
# FLOPs); then ROUNDS rounds of `actc bench` (STEPS timed steps, 2 threads), old and new
# alternating, and ROUNDS compiles of the 224^2 plan each. Prints medians, spreads and ratios.
# Environment: ROUNDS (7), STEPS (20).
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=$1 NEW=$2
bash models/reference/check_inlined.sh "$OLD"
bash models/reference/check_inlined.sh "$NEW"
ROUNDS=${ROUNDS:-7}
STEPS=${STEPS:-20}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shapes="64x3x32x32 8x3x224x224"
for s in $shapes; do
  for v in old new; do
    bin=$([ $v = old ] && echo "$OLD" || echo "$NEW")
    "$bin" compile models/mobilenetv2.onnx --layers 4 --input-shape "$s" --momentum 0.9 \
      -o "$tmp/$v-$s.actc" 2>/dev/null
    "$NEW" inspect "$tmp/$v-$s.actc" --json > "$tmp/$v-$s.json"
  done
done
for r in $(seq "$ROUNDS"); do
  for s in $shapes; do
    for v in old new; do
      bin=$([ $v = old ] && echo "$OLD" || echo "$NEW")
      echo "{\"v\":\"$v\",\"shape\":\"$s\",\"bench\":$("$bin" bench "$tmp/$v-$s.actc" --json --threads 2 --steps "$STEPS" --warmup 5 2>/dev/null)}"
    done
  done
  for v in old new; do
    bin=$([ $v = old ] && echo "$OLD" || echo "$NEW")
    t0=$(date +%s%N)
    "$bin" compile models/mobilenetv2.onnx --layers 4 --input-shape 8x3x224x224 --momentum 0.9 \
      -o "$tmp/c.actc" >/dev/null 2>&1
    echo "{\"v\":\"$v\",\"compile_ms\":$(( ($(date +%s%N) - t0) / 1000000 ))}"
  done
done > "$tmp/runs.jsonl"
python3 - "$tmp" $shapes <<'PY'
import json, statistics as st, sys
tmp, shapes = sys.argv[1], sys.argv[2:]
def table(s):
    drop = lambda d: {k: v for k, v in d.items() if k not in ("plan", "source")}
    return drop(json.load(open(f"{tmp}/old-{s}.json"))) == drop(json.load(open(f"{tmp}/new-{s}.json")))
rows = [json.loads(l) for l in open(f"{tmp}/runs.jsonl")]
def col(v, s, f):
    return [f(r) for r in rows if r["v"] == v and r.get("shape") == s]
print("| shape | plans' inspect tables | what | old median (min–max) | new median (min–max) | new ÷ old |")
print("|---|---|---|---|---|---|")
for s in shapes:
    same = "identical" if table(s) else "DIFFER"
    for what, f in [("step ms", lambda r: r["bench"]["step_ms"]["median"]),
                    ("suffix ms", lambda r: r["bench"]["suffix_ms"]["median"]),
                    ("peak RSS MB", lambda r: r["bench"]["peak_rss_bytes"] / 1e6)]:
        o, n = col("old", s, f), col("new", s, f)
        print(f"| {s} | {same} | {what} | {st.median(o):.2f} ({min(o):.2f}–{max(o):.2f}) "
              f"| {st.median(n):.2f} ({min(n):.2f}–{max(n):.2f}) | {st.median(n) / st.median(o):.3f} |")
o = [r["compile_ms"] for r in rows if r["v"] == "old" and "compile_ms" in r]
n = [r["compile_ms"] for r in rows if r["v"] == "new" and "compile_ms" in r]
print(f"| 8x3x224x224 | | compile ms | {st.median(o)} ({min(o)}–{max(o)}) | {st.median(n)} ({min(n)}–{max(n)}) | {st.median(n) / st.median(o):.3f} |")
PY
