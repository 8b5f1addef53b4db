#!/usr/bin/env bash
# Rebuild the packaged default VQA model (assets/vqa) and its TokenSR (assets/tokensr) on CPU,
# exactly as they were made: a seeded 2000-step run of `mmgen vqa fit` (answer loss + dense
# patch colour/shape loss + grounding loss, zoom-view augmentation; absolute visual position
# embedding), a second fresh 3000-step schedule from there, then TokenSR with the MLLM frozen
# (400 steps, zoom hidden-state MSE only; regions: the asked-about object's tile or, half of the
# time and for questions without one, the tile Blink's saliency picks).  The wall-clock caps (--max-minutes) only bind
# on a busy machine, and then the result differs from the packaged one by how far training got
# (see the training logs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-/tmp/mmgen-vqa-build}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mmgen vqa fit --out "$WORK/stage1" --seed 0 --steps 2000 --max-minutes 40 --val-every 500
mmgen vqa fit --out "$WORK/vqa" --init "$WORK/stage1" --seed 0 --steps 3000 --max-minutes 40 --val-every 750
mmgen vqa fit-tokensr --model "$WORK/vqa" --out "$WORK/vqa/tokensr" --seed 0 --max-minutes 30
for part in vqa vqa/tokensr; do
  dest="$HERE/${part#vqa/}"
  mkdir -p "$dest"
  cp "$WORK/$part/config.json" "$WORK/$part/diffusion_pytorch_model.safetensors" "$dest/"
done
echo "packaged model and TokenSR updated in $HERE"
