#!/usr/bin/env bash
# Rebuild the packaged default VQA model (assets/vqa) and its TokenSR (assets/tokensr) on CPU,
# exactly as they were made: a seeded 5000-step run of `mmgen vqa fit` (configs/mllm/vqa.yaml: conv patch stem; answer
# loss + dense colour/shape loss on the ViT features + dense colour/shape/quadrant loss on the LM's
# visual hidden states + grounding loss; zoom-view augmentation, a quarter of it off-target;
# absolute visual position embedding; QA scenes with small and large objects only), then TokenSR
# with the MLLM frozen (1500 steps, zoom hidden-state MSE + answer distillation from the zoomed
# view, width 64, images of every object size; regions of one token, Blink's default: the asked-about
# object's tile or, half of the time and for questions without one, the tile Blink's saliency picks).
# About 11 + 12 minutes on 2 idle cores (the packaged TokenSR: 6 minutes on one thread).  The wall-clock
# caps (--trainer.max_time, --max-minutes) only bind on a busy machine, and then the result differs from the packaged
# one by how far training got (see the training logs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-/tmp/mmgen-vqa-build}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
REPO="$(cd "$HERE/../../.." && pwd)"
mmgen vqa fit --config "$REPO/configs/mllm/vqa.yaml" --out "$WORK/vqa" --trainer.max_time 00:00:40:00
mmgen vqa fit-tokensr --model "$WORK/vqa" --out "$WORK/vqa/tokensr" --run-dir "$WORK/tokensr-run" --seed 0 --steps 1500 \
  --hidden 64 --kd-weight 1 --region 1 --max-minutes 30
for part in vqa vqa/tokensr; do
  dest="$HERE/${part#vqa/}"
  mkdir -p "$dest"
  cp "$WORK/$part/config.json" "$WORK/$part/diffusion_pytorch_model.safetensors" "$dest/"
done
echo "packaged model and TokenSR updated in $HERE"
