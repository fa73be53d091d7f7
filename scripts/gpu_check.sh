#!/usr/bin/env bash
# The vLLM backends on a CUDA machine: `hyfunc bench backends` with the `vllm` extra — the
# same-calls check (vLLM LMS backend vs our transformers decoder on the 400 demo held-out jobs)
# and the side-by-side benchmark (transformers decoder, vLLM backend, plain vLLM structured
# output; batch 1 and 32), bf16, written as JSON + Markdown. Sized to finish within 8 minutes
# (the bench itself is bounded by HYFUNC_GPU_CHECK_TIMEOUT, default 480 s).
# Usage: scripts/gpu_check.sh [OUT_DIR] [extra `hyfunc bench backends` flags...]
# Needs: python3 (>=3.10) with venv, an NVIDIA driver, the package index (vllm brings its own
# CUDA torch; install time is not counted in the 8 minutes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/bench/gpu-backends-$(date -u +%Y%m%dT%H%M%SZ)}"
shift || true
VENV="${HYFUNC_VLLM_VENV:-$ROOT/.venv-vllm-gpu}"

cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# vllm pins the torch (CUDA build) and the transformers range it was built against; ours fits.
"$VENV/bin/pip" install -q -e ".[vllm]"

"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| vllm", vllm.__version__,
      "| transformers", transformers.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

start=$(date +%s)
# Both LMS copies (ours and vLLM's engine, 0.3 of the GPU memory) share the GPU.
timeout "${HYFUNC_GPU_CHECK_TIMEOUT:-480}" "$VENV/bin/hyfunc" bench backends --device cuda --dtype bfloat16 \
  --demo-models "${HYFUNC_MODELS:-models/demo}" --throughput-jobs 64 --same-n 400 --out "$OUT" "$@"
echo "bench backends took $(( $(date +%s) - start )) s (target: under 8 minutes); report in $OUT/backends.md"
