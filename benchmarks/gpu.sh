#!/usr/bin/env bash
# The README's GPU figures in one run: ViT-B/16 against timm (bf16 autocast and fp32) and batched
# beam search, then every shipped model scored with `visattn evaluate --device` against the CPU; each
# script's output goes to stdout and to $OUT (default outputs/gpu).
#
#   make gpu-bundle          # on a CPU machine with network: .gpu/ holds the wheels a bare GPU image
#                            # lacks (albumentations and its needs, pycocotools), pycocoevalcap's BLEU and
#                            # CIDEr scorers and the Fashion-MNIST test files
#   bash benchmarks/gpu.sh   # on the GPU machine, from the repository root, with .gpu/ beside it
#
# DEVICE=cpu SMOKE=1 runs the same commands at smoke sizes (how the tests check this script).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
smoke=${SMOKE:+--smoke}
out="${OUT:-outputs/gpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$device" != cpu ] && [ -d .gpu/wheels ]; then  # wheels for the GPU image's Python 3.12
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/visattn-deps .gpu/wheels/*.whl
    export PYTHONPATH="/tmp/visattn-deps${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$device" != cpu ] && [ -d .gpu/site ]; then export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu/fashion-mnist ]; then export VISATTN_DATA="$PWD/.gpu"; fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
fi
vit=(--device "$device" --infer-batch 256 --train-batch 64)
if [ -z "$smoke" ]; then vit+=(--models vit_base_patch16_224); fi  # smoke runs take vit_vs_timm's tiny default
"$python" benchmarks/vit_vs_timm.py "${vit[@]}" --precision bf16 --rounds 10 $smoke | tee "$out/vit_vs_timm_bf16.txt"
"$python" benchmarks/vit_vs_timm.py "${vit[@]}" --precision fp32 --rounds 5 $smoke | tee "$out/vit_vs_timm_fp32.txt"
"$python" benchmarks/beam_search.py --device "$device" --rounds 5 $smoke | tee "$out/beam_search.txt"
"$python" benchmarks/device_agreement.py --device "$device" $smoke | tee "$out/device_agreement.txt"
