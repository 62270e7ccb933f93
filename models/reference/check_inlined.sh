#!/usr/bin/env bash
# Whether a build of actc calls a SIMD intrinsic as a function. An intrinsic the compiler
# leaves out of line runs in code without its target features, one call per vector
# operation: in session 28 a fat-LTO build left the GEMM store's loops out of line and every
# clip became two calls (the 8x3x224x224 step 45 -> 80 ms), while the release build the
# tests use was fine. The benchmark scripts run this on the binaries they measure.
#   bash models/reference/check_inlined.sh BINARY
# Exit 1, with the callers, when such a call is found. `_xgetbv` (the CPU feature check) and
# tract's own kernels (in a build with tract) are not actc's and are let through.
set -euo pipefail
bin=$1
calls=$(objdump -d --no-show-raw-insn -C "$bin" \
  | awk '/^[0-9a-f]+ <.*>:$/ { fn = $0; sub(/^[0-9a-f]+ /, "", fn) }
         /call.*<core::core_arch::/ && !/_xgetbv/ && fn !~ /^<tract/ { print fn " -> " $NF }' \
  | sort | uniq -c)
if [ -n "$calls" ]; then
  echo "$bin calls SIMD intrinsics out of line (its timings would not be actc's):" >&2
  echo "$calls" | head -20 >&2
  exit 1
fi
