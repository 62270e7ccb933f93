#!/usr/bin/env bash
# Seeds for the fuzz targets, from the bundled models and data: the first inputs each target
# mutates (the committed corpus grew from these). Usage: tests/fuzz/make_seeds.sh ACTC OUT
set -euo pipefail
actc=$1
out=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out/onnx" "$out/plan" "$out/data"
cp "$root"/models/tiny_*.onnx "$out/onnx/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
m=$root/models
"$actc" compile "$m/tiny_mlp.onnx" --layers all --batch 4 --optimizer adamw -o "$tmp/mlp.actc"
"$actc" compile "$m/tiny_matmul.onnx" --layers 2 --batch 4 -o "$tmp/matmul.actc"
"$actc" compile "$m/tiny_cnn.onnx" --layers 3 --input-shape 4x3x16x16 --compress hosvd -o "$tmp/cnn.actc"
"$actc" compile "$m/tiny_cnn.onnx" --layers 2 --input-shape 4x3x16x16 --compress gradfilter -o "$tmp/cnn_gf.actc"
"$actc" compile "$m/tiny_layernorm.onnx" --layers all --batch 4 -o "$tmp/ln.actc"
for p in "$tmp"/*.actc; do
  # The payload: what lies between the 20-byte header and the 4-byte CRC.
  size=$(stat -c %s "$p")
  tail -c +21 "$p" | head -c $((size - 24)) > "$out/plan/$(basename "$p" .actc)"
done
python3 - "$m" "$out/data" <<'PY'
import gzip, io, struct, sys, zipfile, zlib
models, out = sys.argv[1], sys.argv[2]
with gzip.open(f"{models}/data/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    head = f.read(16 + 3 * 784)
images = struct.pack(">IIII", 0x803, 3, 28, 28) + head[16:]
labels = struct.pack(">II", 0x801, 3) + bytes([1, 7, 3])
# pick 0: plain IDX, pick 1: gzipped; the second byte is the labels file's length.
open(f"{out}/idx", "wb").write(bytes([0, len(labels)]) + labels + images)
gl, gi = gzip.compress(labels, mtime=0), gzip.compress(images, mtime=0)
open(f"{out}/idx_gz", "wb").write(bytes([1, len(gl)]) + gl + gi)
def npy(descr, shape, data):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data
for name, method in [("npz", zipfile.ZIP_STORED), ("npz_deflated", zipfile.ZIP_DEFLATED)]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        z.writestr("x.npy", npy("|u1", (2, 4, 4, 1), bytes(range(32))))
        z.writestr("y.npy", npy("<i8", (2,), struct.pack("<qq", 0, 1)))
    open(f"{out}/{name}", "wb").write(bytes([2, 0]) + buf.getvalue())
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\x00" + bytes([(x * 40 + y * 7) % 256 for x in range(4) for _ in range(3)]) for y in range(4))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(f"{out}/png", "wb").write(bytes([3, 0]) + png)
PY
echo "seeds in $out: $(ls "$out"/onnx | wc -l) models, $(ls "$out"/plan | wc -l) plans, $(ls "$out"/data | wc -l) data files"
