#!/usr/bin/env bash
# Rebuild the packaged default VQA model (assets/vqa) and its TokenSR (assets/tokensr) on CPU,
# exactly as they were made: stage 1 = the first 1000 steps of a 2000-step schedule, stage 2 =
# a fresh 1800-step schedule from there, then TokenSR with the MLLM frozen.  All runs are
# seeded; the wall-clock caps (--max-minutes) only bind on a busy machine, and then the
# result differs from the packaged one by how far training got (see the training logs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-/tmp/mmgen-vqa-build}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mmgen vqa fit --out "$WORK/stage1" --seed 0 --steps 2000 --stop-after 1000 --max-minutes 60
mmgen vqa fit --out "$WORK/vqa" --init "$WORK/stage1" --seed 0 --steps 1800 --max-minutes 30
mmgen vqa fit-tokensr --model "$WORK/vqa" --out "$WORK/vqa/tokensr" --seed 0 --max-minutes 30
for part in vqa vqa/tokensr; do
  dest="$HERE/${part#vqa/}"
  mkdir -p "$dest"
  cp "$WORK/$part/config.json" "$WORK/$part/diffusion_pytorch_model.safetensors" "$dest/"
done
echo "packaged model and TokenSR updated in $HERE"
