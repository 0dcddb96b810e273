#!/usr/bin/env bash
# Optimum as a peer: export a Hugging Face folder with `optimum-cli export onnx` from its
# own virtualenv, so its pins (optimum-onnx 0.1.0 needs transformers < 4.58) never touch
# vlmedge's environment. benchmarks/run_suite.py calls this for ViT-B/16 and benchmarks the
# ONNX file it writes in the same table as a "peer" row.
#
#   benchmarks/optimum_peer.sh MODEL_FOLDER OUT_FOLDER [TASK]
#
# Exits non-zero (and the suite skips the peer row, printing why) when the install or the
# export fails. The virtualenv is reused across runs: benchmarks/.optimum-venv.
set -euo pipefail

model=${1:?usage: optimum_peer.sh MODEL_FOLDER OUT_FOLDER [TASK]}
out=${2:?usage: optimum_peer.sh MODEL_FOLDER OUT_FOLDER [TASK]}
task=${3:-image-classification}
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.optimum-venv"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/optimum-cli" ]; then
  echo "optimum_peer: creating $venv (optimum-onnx 0.1.0, transformers<4.58, CPU torch)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  # torch 2.13.0 is pinned so pip takes the CPU build that the machine's wheel folder or index provides.
  "$venv/bin/pip" install --quiet "torch==2.13.0" >&2
  "$venv/bin/pip" install --quiet "optimum-onnx[onnxruntime]==0.1.0" "transformers>=4.36,<4.58" pillow >&2
fi

mkdir -p "$out"
# Offline: the model is a local folder; optimum must not reach a hub.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/optimum-cli" export onnx \
  --model "$model" --task "$task" --device cpu "$out" >&2
test -f "$out/model.onnx"
"$venv/bin/python" - "$venv" <<'EOF'
import importlib.metadata as m
print("optimum-onnx", m.version("optimum-onnx"), "transformers", m.version("transformers"), "torch", m.version("torch"))
EOF
echo "$out/model.onnx"
