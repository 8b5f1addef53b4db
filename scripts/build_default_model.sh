#!/usr/bin/env bash
# Reproduce the default model shipped in mmgen/assets/default (CPU is enough).
#
#   scripts/build_default_model.sh                  # everything; stops and resumes safely (run it again)
#   TOKENIZER=DIR scripts/build_default_model.sh    # another exported tokenizer folder
#
# Steps: (1) the tokenizer: by default the shipped one (mmgen/assets/default/tokenizer, copied to
# $RUN/tokenizer); TOKENIZER=train fits a new tiny one (configs/tokenizer/moving_shapes_tiny.yaml);
# (2) latent cache of the full MovingShapes grammar with paraphrased captions, held-out (colour,
# shape) pairs and templates excluded (mmgen.data.captions); (3) curriculum: stage I on the first
# 2 latent frames (configs/generator/moving_shapes_default_stage1.yaml), stage II on whole clips
# starting from stage I (..._stage2.yaml); a finished stage has $RUN/stageN/export and is skipped,
# an interrupted one resumes from its last checkpoint; wall times go to $RUN/stage_times.txt;
# (4) pipeline folder with the default sampling settings (configs/sample/default.yaml) -> $OUT;
# (5) the MovingShapes benchmark of the README (bench/shapes_eval.py, 2 seeds) -> $RUN/eval.
# Stage lengths: STEPS1 / STEPS2 override the configs' max_steps (the cosine schedule follows).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RUN=${RUN:-runs/default_model}
TOKENIZER=${TOKENIZER:-}
NUM_SAMPLES=${NUM_SAMPLES:-4096}
OUT=${OUT:-mmgen/assets/default}
EVAL=${EVAL:-1}
mkdir -p "$RUN"

stamp() { echo "$1 $(date -u +%FT%TZ) $SECONDS" >> "$RUN/stage_times.txt"; }

if [ "$TOKENIZER" = train ]; then
  echo "== (1) tokenizer (run folder runs/tokenizer_tiny, as configured)"
  mmgen tokenizer fit --config configs/tokenizer/moving_shapes_tiny.yaml
  mmgen tokenizer export runs/tokenizer_tiny/checkpoints/last.ckpt runs/tokenizer_tiny/export --overwrite
  TOKENIZER=runs/tokenizer_tiny/export
elif [ -z "$TOKENIZER" ]; then
  [ -d "$RUN/tokenizer" ] || { cp -r mmgen/assets/default/tokenizer "$RUN/tokenizer.tmp" && mv "$RUN/tokenizer.tmp" "$RUN/tokenizer"; }
  TOKENIZER=$RUN/tokenizer
fi

if [ ! -f "$RUN/latents/meta.json" ]; then
  echo "== (2) latent cache ($NUM_SAMPLES clips)"; stamp cache-start
  HOLDOUT=$(python -c "import json; from mmgen.data.captions import HELDOUT_PAIRS; print(json.dumps(HELDOUT_PAIRS))")
  mmgen ar tokenize --tokenizer "$TOKENIZER" --out "$RUN/latents" --dataset mmgen.data.MovingShapes \
      --dataset-args "{\"num_samples\": $NUM_SAMPLES, \"seed\": 0, \"captions\": \"train\", \"background\": \"mixed\", \"holdout\": $HOLDOUT, \"split\": \"train\"}" \
      --batch-size 16 --device cpu
  stamp cache-end
fi

run_stage() {  # run_stage N [extra fit arguments...]
  local n=$1 dir=$RUN/stage$1; shift
  if [ -f "$dir/export/transformer/config.json" ]; then echo "== (3) stage $n: done ($dir/export)"; return; fi
  local resume=()
  [ -f "$dir/checkpoints/last.ckpt" ] && resume=(--ckpt_path "$dir/checkpoints/last.ckpt")
  echo "== (3) stage $n ${resume[*]:+(resuming)}"; stamp "stage$n-start"
  mmgen ar fit --config "configs/generator/moving_shapes_default_stage$n.yaml" \
      --model.tokenizer "$TOKENIZER" --data.train.init_args.path "$RUN/latents" \
      --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" \
      --trainer.callbacks.init_args.dirpath "$dir/checkpoints" "$@" "${resume[@]}"
  mmgen ar export "$dir/checkpoints/last.ckpt" "$dir/export.tmp" --overwrite
  mv "$dir/export.tmp" "$dir/export"
  stamp "stage$n-end"
}
run_stage 1 ${STEPS1:+--trainer.max_steps "$STEPS1"}
run_stage 2 --model.init_from "$RUN/stage1/export/transformer" ${STEPS2:+--trainer.max_steps "$STEPS2"}

echo "== (4) pipeline folder -> $OUT"
python -m mmgen.pipelines.assemble --tokenizer "$TOKENIZER" --generator "$RUN/stage2/export/transformer" \
    --sampling configs/sample/default.yaml --out "$OUT" --overwrite

if [ "$EVAL" = 1 ]; then
  echo "== (5) MovingShapes benchmark -> $RUN/eval"
  python bench/shapes_eval.py --model "$OUT" --out "$RUN/eval"
fi
