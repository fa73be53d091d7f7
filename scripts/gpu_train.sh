#!/usr/bin/env bash
# The GPU training recipe and the same evaluations as the CPU one, on one CUDA device:
#   HYFUNC_SEAL_DIR=/path/to/Seal-Tools_Dataset bash scripts/gpu_train.sh [OUT_DIR]
# Needs: torch with CUDA, `pip install -e '.[bfcl]'`, the SmolLM2 base (`hyfunc models pull
# smollm2-135m-instruct`, pulled here if missing). Writes the models, the training report and the
# evaluation JSON under OUT_DIR (default runs/general_gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/general_gpu}"
: "${HYFUNC_SEAL_DIR:?set HYFUNC_SEAL_DIR to a Seal-Tools_Dataset directory (tool.jsonl, dev.jsonl, test splits)}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
hyfunc models pull smollm2-135m-instruct
start=$(date +%s)
hyfunc train all --config configs/train_general_gpu.yaml --work-dir "$OUT" --out "$OUT/models" --device cuda
echo "train wall time: $(( $(date +%s) - start )) s"
cat > "$OUT/serve.yaml" <<YAML
models: {dir: $OUT/models, device: cuda, dtype: bfloat16}
YAML
hyfunc eval demo --models "$OUT/models" --config "$OUT/serve.yaml" --json > "$OUT/eval_demo.json"
hyfunc eval bfcl --models "$OUT/models" --config "$OUT/serve.yaml" --categories simple_python multiple parallel parallel_multiple irrelevance --out "$OUT/bfcl" --json > "$OUT/eval_bfcl.json"
hyfunc eval seal --models "$OUT/models" --config "$OUT/serve.yaml" --data "$HYFUNC_SEAL_DIR" --split test_in_domain --json > "$OUT/eval_seal.json"
echo "done: $OUT/eval_demo.json $OUT/eval_bfcl.json $OUT/eval_seal.json"
