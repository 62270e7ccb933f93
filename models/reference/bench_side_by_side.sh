#!/usr/bin/env bash
# actc beside PyTorch eager and ONNX Runtime training, in one session, interleaved: MobileNetV2
# (ImageNet weights, new 10-way head), last 4 convs + classifier, frozen (folded) BN, 2 threads,
# at 64x3x32x32 and 8x3x224x224; actc without compression, with HOSVD's default rank rule, with
# the paper's (eps 0.8) and with HOSVD under --budget 256K (ranks fixed by calibration on the
# first Fashion-MNIST batch); and vanilla and the default HOSVD with the frozen prefix in int8
# (--prefix-precision int8). actc and
# PyTorch use SGD lr 0.01 momentum 0.9; ORT's training SGD has no momentum (lr 0.01), so actc
# also runs that optimizer ("actc (SGD, no momentum)": no momentum buffers) to compare like
# with like.
# 1. ORT's equality check with PyTorch (first loss, gradients, plain-SGD updates; aborts if
#    they differ).
# 2. ROUNDS rounds of STEPS timed steps per system on synthetic batches: median ms per step,
#    spread, peak RSS of the whole process.
# 3. EPOCHS epochs over models/data/fashion-mnist (2000 images, full batches only) per system
#    and shape in EPOCH_SHAPES: seconds of each epoch (actc: `actc train --log`, its prefix
#    cache on, as by default), peak RSS.
# 4. A busy core: BUSY_ROUNDS rounds with a spin loop running beside (one of the two cores
#    taken, as by a device's other work): actc vanilla and default HOSVD on 2 threads and on 1,
#    PyTorch on 2.
# Prints the tables (with each actc system's step ÷ PyTorch channels_last's within each round)
# and writes the raw results to bench-results.json.
# Needs the venv of models/README.md (.venv) and a deployment build of actc (README; built here, or
# ACTC=path to use a given binary without building); ONNX Runtime needs .venv-ort
# (models/reference/README.md) and is skipped with a message without it.
# Environment: ROUNDS (3), STEPS (20), EPOCHS (2; 0 skips part 3), EPOCH_SHAPES
# ("64x32 8x224"), BUSY_ROUNDS (2; 0 skips part 4), ACTC.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-20}
EPOCHS=${EPOCHS:-2}
EPOCH_SHAPES=${EPOCH_SHAPES:-64x32 8x224}
BUSY_ROUNDS=${BUSY_ROUNDS:-2}
if [ -z "${ACTC:-}" ]; then
  # The deployment build (README): whole-program optimised, non-PIE, without tract (every
  # plan here runs its prefix on actc's kernels).
  host=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="-C relocation-model=static" cargo build --profile dist -q -p actc --no-default-features --target "$host"
  ACTC=target/$host/dist/actc
fi
bash models/reference/check_inlined.sh "$ACTC"
# The CPU decides the ratios (PyTorch's oneDNN uses AVX-512 where there is one): say which.
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)" >&2
PY=.venv/bin/python
PY_ORT=.venv-ort/bin/python
tmp=$(mktemp -d)
# Runs a command with its output in a log file, shown only when it fails.
logged() {
  local log=$1; shift
  "$@" > "$log" 2>&1 || { echo "failed: $*" >&2; cat "$log" >&2; exit 1; }
}
if [ -x "$PY_ORT" ] && "$PY_ORT" -c "import onnxruntime.capi._pybind_state as C; assert hasattr(C, 'Module')" 2>/dev/null; then
  ORT=1
  "$PY_ORT" models/reference/bench_ort.py --check-only --shapes 64x32 8x224 --json "$tmp/ort-check.json"
else
  ORT=0
  echo "no .venv-ort with onnxruntime-training: skipping ONNX Runtime (see models/reference/README.md)" >&2
fi
for shape in 64x3x32x32 8x3x224x224; do
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 -o "$tmp/$shape.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --compress hosvd -o "$tmp/$shape-auto.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --compress hosvd --rank-rule eps --eps 0.8 -o "$tmp/$shape-hosvd.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0 \
    -o "$tmp/$shape-sgd.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --compress hosvd --budget 256K --calibration models/data/fashion-mnist \
    -o "$tmp/$shape-budget.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --prefix-precision int8 -o "$tmp/$shape-int8.actc" 2>/dev/null
  "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$shape" --momentum 0.9 \
    --compress hosvd --prefix-precision int8 -o "$tmp/$shape-auto-int8.actc" 2>/dev/null
done
: > "$tmp/actc.jsonl"
for round in $(seq "$ROUNDS"); do
  for shape in 64x3x32x32 8x3x224x224; do
    for plan in "$shape" "$shape-auto" "$shape-hosvd" "$shape-budget" "$shape-sgd" "$shape-int8" "$shape-auto-int8"; do
      "$ACTC" bench "$tmp/$plan.actc" --steps "$STEPS" --threads 2 --json >> "$tmp/actc.jsonl"
    done
  done
  logged "$tmp/torch-$round.log" "$PY" models/reference/bench_torch.py --steps "$STEPS" --bn folded --tries 2 --json "$tmp/torch-$round.json"
  if [ "$ORT" = 1 ]; then
    logged "$tmp/ort-$round.log" "$PY_ORT" models/reference/bench_ort.py --no-check --steps "$STEPS" --tries 2 --json "$tmp/ort-$round.json"
  fi
done
# Peak RSS of a child process (the whole actc process, as getrusage reports it for the others).
peak_rss() {
  "$PY" -c 'import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=True)
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "$@"
}
if [ "$EPOCHS" -gt 0 ]; then
  for s in $EPOCH_SHAPES; do
    b=${s%x*}; hw=${s#*x}; full="${b}x3x${hw}x${hw}"
    if [ ! -f "$tmp/$full.actc" ]; then
      "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$full" --momentum 0.9 -o "$tmp/$full.actc" 2>/dev/null
    fi
    echo "epochs at $full: actc, PyTorch, ORT" >&2
    logged "$tmp/actc-epochs-$s.log" peak_rss "$tmp/actc-epochs-$s.rss" "$ACTC" train "$tmp/$full.actc" \
      --data models/data/fashion-mnist --val-fraction 0 --epochs "$EPOCHS" --threads 2 --quiet \
      --log "$tmp/actc-epochs-$s.jsonl" --save "$tmp/trained-$full"
    "$ACTC" compile models/mobilenetv2.onnx --layers 4 --input-shape "$full" --momentum 0.9 \
      --prefix-precision int8 -o "$tmp/$full-int8.actc" 2>/dev/null
    logged "$tmp/actc-int8-epochs-$s.log" peak_rss "$tmp/actc-int8-epochs-$s.rss" "$ACTC" train "$tmp/$full-int8.actc" \
      --data models/data/fashion-mnist --val-fraction 0 --epochs "$EPOCHS" --threads 2 --quiet \
      --log "$tmp/actc-int8-epochs-$s.jsonl" --save "$tmp/trained-$full-int8"
    logged "$tmp/torch-epochs-$s.log" "$PY" models/reference/bench_torch.py --bn folded --shapes "$s" \
      --epochs "$EPOCHS" --tries 1 --json "$tmp/torch-epochs-$s.json"
    if [ "$ORT" = 1 ]; then
      logged "$tmp/ort-epochs-$s.log" "$PY_ORT" models/reference/bench_ort.py --no-check --shapes "$s" \
        --epochs "$EPOCHS" --tries 1 --json "$tmp/ort-epochs-$s.json"
    fi
  done
fi
: > "$tmp/busy.jsonl"
for round in $(seq "$BUSY_ROUNDS"); do
  # A spin loop beside, killed when the round ends (or the script does).
  bash -c 'while :; do :; done' &
  spinner=$!
  trap 'kill $spinner 2>/dev/null' EXIT
  for shape in 64x3x32x32 8x3x224x224; do
    for plan in "$shape" "$shape-auto"; do
      for threads in 2 1; do
        # A warm-up past the pacer's 8 trial steps: the timed steps run its choice.
        "$ACTC" bench "$tmp/$plan.actc" --steps "$STEPS" --warmup 10 --threads "$threads" --json \
          | "$PY" -c 'import json, sys; r = json.load(sys.stdin); r["threads"] = int(sys.argv[1]); print(json.dumps(r))' "$threads" >> "$tmp/busy.jsonl"
      done
    done
  done
  logged "$tmp/torch-busy-$round.log" "$PY" models/reference/bench_torch.py --steps "$STEPS" --bn folded --tries 1 --json "$tmp/torch-busy-$round.json"
  kill $spinner
  trap - EXIT
done
"$PY" - "$tmp" <<'PY'
import json, sys, glob, statistics, pathlib
tmp = pathlib.Path(sys.argv[1])
rows = {}
for line in open(tmp / "actc.jsonl"):
    r = json.loads(line)
    shape = "64x32" if "64x3x32x32" in r["plan"] else "8x224"
    kinds = {"-auto-int8": "actc hosvd (default) int8", "-int8": "actc int8 prefix", "-auto": "actc hosvd (default)", "-hosvd": "actc hosvd eps=0.8", "-budget": "actc hosvd --budget 256K", "-sgd": "actc (SGD, no momentum)"}
    system = next((v for k, v in kinds.items() if k in r["plan"]), "actc")
    rows.setdefault((system, shape), []).append((r["step_ms"]["median"], r["step_ms"]["p10"], r["step_ms"]["p90"], r["peak_rss_bytes"] / 1e6, r["suffix_ms"]["median"]))
round_of = lambda f: int(f.rsplit("-", 1)[1].split(".")[0])
for pattern, name in (("torch-[0-9]*.json", lambda r: f"pytorch {r['layout']}"),
                      ("ort-[0-9]*.json", lambda r: "ort (SGD, no momentum)")):
    for f in sorted(glob.glob(str(tmp / pattern)), key=round_of):
        for r in json.load(open(f))["best"]:
            key = (name(r), f"{r['batch']}x{r['size']}")
            rows.setdefault(key, []).append((r["median_ms"], r["p10_ms"], r["p90_ms"], r["peak_rss_mb"], None))
print(f"{'system':<24} {'shape':<7} {'median ms':>10} {'p10':>8} {'p90':>8} {'peak RSS MB':>12}  (medians over rounds)")
for (system, shape), vals in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    med = lambda i: statistics.median(v[i] for v in vals)
    extra = f"  suffix {med(4):.1f} ms" if vals[0][4] is not None else ""
    print(f"{system:<24} {shape:<7} {med(0):>10.1f} {med(1):>8.1f} {med(2):>8.1f} {med(3):>12.1f}{extra}")
out = {f"{k[0]} {k[1]}": v for k, v in rows.items()}
# Each actc system ÷ PyTorch channels_last within the same round: this host's speed moves
# between modes from one bench to the next, and a median of each system's rounds can land in
# different modes for different systems; a ratio within a round mostly does not.
ratios = {}
for (system, shape), vals in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    base = [v[0] for v in rows.get(("pytorch channels_last", shape), [])]
    if system.startswith("actc") and len(base) == len(vals):
        ratios[f"{system} {shape}"] = [v[0] / b for v, b in zip(vals, base)]
if ratios:
    print()
    print(f"{'÷ PyTorch channels_last in the same round':<42} {'median':>7} {'min':>6} {'max':>6}")
    for k, r in ratios.items():
        print(f"{k:<42} {statistics.median(r):>6.2f}× {min(r):>5.2f}× {max(r):>5.2f}×")
    out["ratios vs pytorch channels_last, per round"] = ratios
check = tmp / "ort-check.json"
if check.exists():
    c = json.load(open(check))["check"]
    out["ort check"] = c
    print("ORT vs PyTorch, same batch: " + "; ".join(
        f"{k} first loss {v['torch_losses'][0]:.8f} vs {v['ort_losses'][0]:.8f} (rel {v['rel_diff'][0]:.1e})"
        for k, v in c.items()))
epochs = []
for f in sorted(glob.glob(str(tmp / "actc-*epochs-*.jsonl"))):
    name = pathlib.Path(f).name
    int8 = name.startswith("actc-int8-")
    shape = name[len("actc-int8-epochs-" if int8 else "actc-epochs-"):-len(".jsonl")]
    events = [json.loads(line) for line in open(f)]
    secs = [e["seconds"] for e in events if e["event"] == "epoch"]
    steps = sum(1 for e in events if e["event"] == "step" and e["epoch"] == 1)
    rss = float(open(f[:-len(".jsonl")] + ".rss").read())
    epochs.append({"system": "actc int8 prefix" if int8 else "actc", "shape": shape, "steps_per_epoch": steps, "epoch_seconds": secs, "peak_rss_mb": rss, "note": "prefix cache on"})
for pattern, name in (("torch-epochs-*.json", lambda r: f"pytorch {r['layout']}"),
                      ("ort-epochs-*.json", lambda r: "ort (SGD, no momentum)")):
    for f in sorted(glob.glob(str(tmp / pattern))):
        for r in json.load(open(f))["best"]:
            note = "" if r["clean"] else f"disturbed: foreign CPU {r['foreign']:.0%}"
            epochs.append({"system": name(r), "shape": f"{r['batch']}x{r['size']}", "steps_per_epoch": r["steps_per_epoch"], "epoch_seconds": r["epoch_seconds"], "peak_rss_mb": r["peak_rss_mb"], "note": note})
if epochs:
    n = max(len(e["epoch_seconds"]) for e in epochs)
    print()
    print(f"{'system':<24} {'shape':<7} {'steps/epoch':>11} " + " ".join(f"{f'epoch {i + 1} s':>10}" for i in range(n)) + f" {'peak RSS MB':>12}")
    for e in sorted(epochs, key=lambda e: (e["shape"], e["system"])):
        print(f"{e['system']:<24} {e['shape']:<7} {e['steps_per_epoch']:>11} " + " ".join(f"{v:>10.2f}" for v in e["epoch_seconds"]) + f" {e['peak_rss_mb']:>12.1f}" + (f"  ({e['note']})" if e["note"] else ""))
    out["epochs"] = epochs
busy = {}
for line in open(tmp / "busy.jsonl"):
    r = json.loads(line)
    shape = "64x32" if "64x3x32x32" in r["plan"] else "8x224"
    system = ("actc hosvd (default)" if "-auto" in r["plan"] else "actc") + f", {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
    busy.setdefault((system, shape), []).append(r["step_ms"]["median"])
for f in sorted(glob.glob(str(tmp / "torch-busy-*.json"))):
    for r in json.load(open(f))["best"]:
        busy.setdefault((f"pytorch {r['layout']}, 2 threads", f"{r['batch']}x{r['size']}"), []).append(r["median_ms"])
if busy:
    print()
    print(f"one core busy with a spin loop: {'system':<34} {'shape':<7} {'median ms':>10}  (median over rounds)")
    for (system, shape), v in sorted(busy.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{'':<31} {system:<34} {shape:<7} {statistics.median(v):>10.1f}")
    out["busy"] = {f"{k[0]} {k[1]}": v for k, v in busy.items()}
json.dump(out, open("bench-results.json", "w"), indent=1)
PY
