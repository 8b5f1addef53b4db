#!/usr/bin/env bash
# Reproduce the unified model shipped in mmgen/assets/unified (CPU: 50-70 min of one core for 4800 steps).
#
#   scripts/build_unified_model.sh          # everything; stops and resumes safely (run it again)
#
# (1) latent cache: 2048 MovingShapes clips (seed 0; 1-2 objects, every colour/shape/size/motion,
#     plain background, canonical captions, 9 frames -> 3 latent frames) encoded with TOKENIZER
#     (default: the shipped unified model's own, mmgen/assets/unified/tokenizer, which is the first
#     default model's; no tokenizer training), copied to $RUN/tokenizer first so that exporting
#     over $OUT never reads a folder it is replacing; fit refuses a cache of another tokenizer;
# (2) `mmgen ar fit-unified --config configs/generator/unified_latent.yaml`: one row in three generates
#     video from the caption, two caption the clip or answer a question about it, reading the
#     clip's continuous latent (understand_input: latent), text loss weighed 0.1 against the visual
#     loss (text_weight); an interrupted run resumes from its last
#     checkpoint;
# (3) export -> $OUT (pipeline folder: `mmgen caption --model $OUT` and `mmgen sample --model $OUT`).
# The held-out benchmark (bench/unified_bench.py) renders clips of other seeds, never in the cache.
# The build whose understanding rows read the bit codes (measured at text weight 1.0: at 3200 steps
# it captioned colour better and generated worse than the latent reader did then; README "Unified model"):
#   RUN=runs/unified_codes CONFIG=configs/generator/unified.yaml OUT=runs/unified_codes/export \
#       scripts/build_unified_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RUN=${RUN:-runs/unified_latent}
NUM_SAMPLES=${NUM_SAMPLES:-2048}
CONFIG=${CONFIG:-configs/generator/unified_latent.yaml}
OUT=${OUT:-mmgen/assets/unified}
mkdir -p "$RUN"
copy_tokenizer "${TOKENIZER:-mmgen/assets/unified/tokenizer}" "$RUN"
TOKENIZER=$RUN/tokenizer

if [ ! -f "$RUN/latents/meta.json" ]; then
  echo "== (1) latent cache ($NUM_SAMPLES clips)"
  mmgen ar tokenize --tokenizer "$TOKENIZER" --out "$RUN/latents" --dataset mmgen.data.MovingShapes \
      --dataset-args "{\"num_samples\": $NUM_SAMPLES, \"seed\": 0, \"num_frames\": 9, \"captions\": \"canonical\", \"background\": \"plain\", \"max_objects\": 2}" \
      --batch-size 16 --device cpu
fi

last=$(ls -t "$RUN"/model/lightning_logs/version_*/checkpoints/last.ckpt 2> /dev/null | head -1 || true)
resume=()
[ -n "$last" ] && resume=(--ckpt_path "$last")
echo "== (2) training ${resume[*]:+(resuming $last)}"
mmgen ar fit-unified --config "$CONFIG" --model.tokenizer "$TOKENIZER" --data.train.init_args.path "$RUN/latents" \
    --trainer.default_root_dir "$RUN/model" --trainer.logger.init_args.save_dir "$RUN/model" "${resume[@]}"

echo "== (3) pipeline folder -> $OUT"
mmgen ar export "$(ls -t "$RUN"/model/lightning_logs/version_*/checkpoints/last.ckpt | head -1)" "$OUT" \
    --sampling configs/sample/unified.yaml --overwrite
echo "caption: mmgen caption --video CLIP.mp4 --model $OUT    generate: mmgen sample --model $OUT --num-frames 9 --prompt ..."
