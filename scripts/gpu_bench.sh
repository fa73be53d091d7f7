#!/usr/bin/env bash
# Set up and run `hyfunc bench all --device cuda` (bf16) on a bare CUDA machine from a copy
# of this repository. Usage: scripts/gpu_bench.sh [OUT_DIR] [extra `hyfunc bench` flags...]
# Needs: python3 (>=3.10) with venv, an NVIDIA driver. The service benchmark also needs
# PostgreSQL and Redis on 127.0.0.1 (HYFUNC_BENCH_PG / HYFUNC_BENCH_REDIS); without them it is
# reported as skipped and the other benchmarks still run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/bench/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
shift || true
VENV="${HYFUNC_GPU_VENV:-$ROOT/.venv-gpu}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"

cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# torch first, from the CUDA index, pinned: the project's own dependency range would otherwise
# let pip pick any build.
"$VENV/bin/pip" install -q "torch==2.13.0" --index-url "$TORCH_INDEX"
"$VENV/bin/pip" install -q -e ".[bfcl]"

"$VENV/bin/python" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PY

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
"$VENV/bin/hyfunc" bench all --device cuda --dtype bfloat16 --out "$OUT" "$@"
echo "bench all took $(( $(date +%s) - start )) s (target: under 8 minutes); report in $OUT/bench.md"
