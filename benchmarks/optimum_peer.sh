#!/usr/bin/env bash
# Optimum as a peer: export a Hugging Face folder with `optimum-cli export onnx` from its
# own virtualenv, so its pins (optimum-onnx 0.1.0 needs transformers < 4.58) never touch
# vlmedge's environment; then the two steps Optimum documents for a faster CPU model, each
# on the export: `optimum-cli onnxruntime optimize -O2` (ONNX Runtime's transformer
# optimizer) and `optimum-cli onnxruntime quantize --<ISA>` (dynamic int8 for this CPU's
# instruction set). benchmarks/run_suite.py calls this for ViT-B/16 and benchmarks each file
# it writes in the same table, as "peer" rows.
#
#   benchmarks/optimum_peer.sh MODEL_FOLDER OUT_FOLDER [TASK]
#
# Prints Optimum's versions, then a line NAME[:PRECISION]=FILE.onnx per file written (what
# `vlmedge bench --peer` takes). Exits non-zero (and the suite skips the peer rows, printing
# why) when the install or the export fails; an optimize or quantize step that fails is
# skipped with a line "optimum_peer: skipped NAME: ..." on stderr. The virtualenv is reused
# across runs: benchmarks/.optimum-venv.
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
echo "optimum=$out/model.onnx"

# Optimum's quantization configs are per instruction set: this CPU's best one.
flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)
isa=""
if grep -qw avx512_vnni <<<"$flags"; then isa=avx512_vnni
elif grep -qw avx512f <<<"$flags"; then isa=avx512
elif grep -qw avx2 <<<"$flags"; then isa=avx2
elif [ "$(uname -m)" = aarch64 ]; then isa=arm64
fi

optimized="$out-O2" quantized="$out-int8"
rm -rf "$optimized" "$quantized"
if "$venv/bin/optimum-cli" onnxruntime optimize -O2 --onnx_model "$out" -o "$optimized" >&2 \
    && test -f "$optimized/model_optimized.onnx"; then
  echo "optimum O2=$optimized/model_optimized.onnx"
else
  echo "optimum_peer: skipped optimum O2: optimum-cli onnxruntime optimize -O2 failed (above)" >&2
fi
if [ -z "$isa" ]; then
  echo "optimum_peer: skipped optimum int8: Optimum has no quantization config for this CPU" >&2
elif "$venv/bin/optimum-cli" onnxruntime quantize "--$isa" --onnx_model "$out" -o "$quantized" >&2 \
    && test -f "$quantized/model_quantized.onnx"; then
  echo "optimum int8 $isa:int8=$quantized/model_quantized.onnx"
else
  echo "optimum_peer: skipped optimum int8: optimum-cli onnxruntime quantize --$isa failed (above)" >&2
fi
