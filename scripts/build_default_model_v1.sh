#!/usr/bin/env bash
# Reproduce the SHIPPED default model (byte-level text, 32 captions) in mmgen/assets/default (CPU; ~40 minutes on 2 idle cores).
# The full-grammar MiniLM build (not shipped yet) is scripts/build_default_model.sh.
#
#   scripts/build_default_model.sh            # everything, from scratch
#   TOKENIZER=DIR scripts/build_default_model.sh   # reuse an exported tokenizer folder
#
# Steps: (1) tiny VideoTokenizer on MovingShapes (configs/tokenizer/moving_shapes_tiny.yaml);
# (2) latent cache of the default caption slice (mmgen.data.default_model: one large
# circle, 8 colours, moving left/right/up/down); (3) text-conditional tiny VideoAR
# (configs/generator/moving_shapes_default.yaml); (4) pipeline folder with the default sampling settings
# (configs/sample/default.yaml) -> mmgen/assets/default; (5) samples of every training caption and the
# analytic MovingShapes benchmark (colour / motion adherence) in $RUN/eval.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RUN=${RUN:-runs/default_model}
TOKENIZER=${TOKENIZER:-}
NUM_SAMPLES=${NUM_SAMPLES:-2048}
OUT=${OUT:-mmgen/assets/default}
mkdir -p "$RUN"

if [ -z "$TOKENIZER" ]; then
  echo "== (1) tokenizer (run folder runs/tokenizer_tiny, as configured)"
  mmgen tokenizer fit --config configs/tokenizer/moving_shapes_tiny.yaml
  mmgen tokenizer export runs/tokenizer_tiny/checkpoints/last.ckpt runs/tokenizer_tiny/export --overwrite
  TOKENIZER=runs/tokenizer_tiny/export
fi

echo "== (2) latent cache ($NUM_SAMPLES clips)"
mmgen ar tokenize --tokenizer "$TOKENIZER" --out "$RUN/latents" \
    --dataset mmgen.data.default_model.DefaultModelShapes \
    --dataset-args "{\"num_samples\": $NUM_SAMPLES, \"seed\": 0}" --batch-size 16 --device cpu

echo "== (3) generator"
rm -rf "$RUN/generator"
mmgen ar fit --config configs/generator/moving_shapes_default.yaml \
    --model.tokenizer "$TOKENIZER" \
    --data.train.init_args.path "$RUN/latents" \
    --trainer.default_root_dir "$RUN/generator" --trainer.logger.init_args.save_dir "$RUN/generator"
CKPT=$(find "$RUN/generator" -name last.ckpt -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
mmgen ar export "$CKPT" "$RUN/export" --overwrite

echo "== (4) pipeline folder -> $OUT"
python -m mmgen.pipelines.assemble --tokenizer "$RUN/export/tokenizer" --generator "$RUN/export/transformer" \
    --sampling configs/sample/default.yaml --out "$OUT" --overwrite
# record the training captions, so `mmgen sample` can name the nearest one (mmgen.pipelines.prompts)
python - "$OUT/transformer/config.json" <<'PY'
import json, sys
from mmgen.data.default_model import DEFAULT_PROMPTS
config = json.load(open(sys.argv[1]))
config["train_captions"] = DEFAULT_PROMPTS
json.dump(config, open(sys.argv[1], "w"), indent=2, sort_keys=True)
PY

echo "== (5) samples + MovingShapes benchmark"
rm -rf "$RUN/eval"
mmgen sample --model "$OUT" --prompts-file configs/sample/default_prompts.txt --num-per-prompt 2 \
    --out "$RUN/eval" --grid --seed 0 --no-progress
mmgen eval shapes --videos "$RUN/eval"
