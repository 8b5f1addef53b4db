#!/usr/bin/env bash
# Reproduce the default model shipped in mmgen/assets/default (CPU is enough).
#
#   scripts/build_default_model.sh                  # everything; stops and resumes safely (run it again)
#   TOKENIZER=DIR scripts/build_default_model.sh    # another exported tokenizer folder
#
# Steps: (1) the tokenizer: by default the shipped one (mmgen/assets/default/tokenizer), else
# TOKENIZER=DIR, or TOKENIZER=train: TOKENIZER_BASE (default the shipped one) trained on for
# TOKENIZER_STEPS (default 3000) steps with configs/tokenizer/moving_shapes_shapes.yaml in
# $RUN/tokenizer_fit (its round-trip shape ceiling in $RUN/tokenizer_fit/ceiling.txt); copied to
# $RUN/tokenizer. The shipped tokenizer is the previous one (scripts/build_default_model_v1.sh's)
# trained on this way, so the shipped model is rebuilt by the defaults, and from scratch by
# TOKENIZER=train TOKENIZER_BASE=<the v1 build's tokenizer export>;
# (2) latent cache of the full MovingShapes grammar with paraphrased captions, held-out (colour,
# shape) pairs and templates excluded (mmgen.data.captions); (3) curriculum: stage I on the first
# 2 latent frames (configs/generator/moving_shapes_default_stage1.yaml), stage II on whole clips
# starting from stage I (..._stage2.yaml, laid over stage I's), stage III whole clips again from
# stage II at half its learning rate (..._stage3.yaml, laid over both), stage IV 500 steps from stage
# III on a second cache whose clips are half inside the frame, half on a torus (edges "mixed",
# $RUN/latents_mixed: objects that leave one side enter at the other, so long samples keep moving;
# ..._stage4.yaml); a finished stage has $RUN/stageN/export and is skipped,
# an interrupted one resumes from its last checkpoint; wall times go to $RUN/stage_times.txt;
# (4) pipeline folder with the default sampling settings (configs/sample/default.yaml) -> $OUT;
# (5) the MovingShapes benchmark of the README (bench/shapes_eval.py, 2 seeds, 64 prompts per set) -> $RUN/eval.
# Stage lengths: STEPS1 / STEPS2 / STEPS3 / STEPS4 override the configs' max_steps (the cosine schedule follows).
# A stage is done only when its checkpoint reached its max_steps: a run stopped early (killed,
# or MAX_TIME, a Lightning duration such as 00:00:45:00 per invocation of a stage; default no
# cap) exits with a message and the next invocation resumes it. The first invocation records
# TOKENIZER, TOKENIZER_STEPS, TOKENIZER_BASE, NUM_SAMPLES, STEPS1, STEPS2, STEPS3 and STEPS4 in $RUN/build.env and later ones reuse them (an
# explicit different value is refused: it would change the cache or the schedule mid-run), so
# `RUN=R OUT=O bash scripts/build_default_model.sh` resumes a build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

RUN=${RUN:-runs/default_model}
mkdir -p "$RUN"
if [ -f "$RUN/build.env" ]; then
  while IFS='=' read -r key value; do
    current=${!key:-}
    if [ -n "$current" ] && [ "$current" != "$value" ]; then
      echo "build_default_model.sh: error: $key=$current differs from $key=$value recorded in $RUN/build.env (start a new RUN, or unset $key to resume)" >&2
      exit 2
    fi
    printf -v "$key" '%s' "$value"
  done < "$RUN/build.env"
fi
TOKENIZER=${TOKENIZER:-}
TOKENIZER_STEPS=${TOKENIZER_STEPS:-3000}
TOKENIZER_BASE=${TOKENIZER_BASE:-mmgen/assets/default/tokenizer}
NUM_SAMPLES=${NUM_SAMPLES:-8192}
STEPS1=${STEPS1:-}
STEPS2=${STEPS2:-}
STEPS3=${STEPS3:-}
STEPS4=${STEPS4:-}
MAX_TIME=${MAX_TIME:-null}
OUT=${OUT:-mmgen/assets/default}
EVAL=${EVAL:-1}

if [ ! -f "$RUN/build.env" ]; then
  printf 'TOKENIZER=%s\nTOKENIZER_STEPS=%s\nTOKENIZER_BASE=%s\nNUM_SAMPLES=%s\nSTEPS1=%s\nSTEPS2=%s\nSTEPS3=%s\nSTEPS4=%s\n' \
      "${TOKENIZER:-mmgen/assets/default/tokenizer}" "$TOKENIZER_STEPS" "$TOKENIZER_BASE" "$NUM_SAMPLES" "$STEPS1" "$STEPS2" "$STEPS3" "$STEPS4" \
      > "$RUN/build.env.tmp"
  mv "$RUN/build.env.tmp" "$RUN/build.env"
fi
stamp() { echo "$1 $(date -u +%FT%TZ) $SECONDS" >> "$RUN/stage_times.txt"; }
ckpt_step() { python -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['global_step'])" "$1"; }

if [ "$TOKENIZER" = train ] && [ ! -d "$RUN/tokenizer" ]; then
  # configs/tokenizer/moving_shapes_shapes.yaml for TOKENIZER_STEPS steps (a step-bounded cosine
  # schedule instead of the config's clock, so a shared or interrupted run trains the same amount);
  # an interrupted fit resumes from its last checkpoint.
  fit=$RUN/tokenizer_fit
  if [ $((TOKENIZER_STEPS % 100)) -ne 0 ]; then  # the config's checkpoint interval
    echo "build_default_model.sh: error: TOKENIZER_STEPS=$TOKENIZER_STEPS must be a multiple of 100" >&2; exit 2
  fi
  resume=()
  [ -f "$fit/checkpoints/last.ckpt" ] && resume=(--ckpt_path "$fit/checkpoints/last.ckpt")
  echo "== (1) tokenizer, $TOKENIZER_STEPS steps -> $fit ${resume[*]:+(resuming)}"; stamp tokenizer-start
  mmgen tokenizer fit --config configs/tokenizer/moving_shapes_shapes.yaml --model.schedule steps --model.init_from "$TOKENIZER_BASE" \
      --trainer.max_steps "$TOKENIZER_STEPS" --trainer.max_time null --trainer.default_root_dir "$fit" \
      --trainer.logger.init_args.save_dir "$fit" --trainer.callbacks.init_args.dirpath "$fit/checkpoints" "${resume[@]}"
  reached=$(ckpt_step "$fit/checkpoints/last.ckpt")
  if [ "$reached" -lt "$TOKENIZER_STEPS" ]; then
    echo "== (1) tokenizer stopped at step $reached of $TOKENIZER_STEPS; run the script again to resume it"; exit 3
  fi
  mmgen tokenizer export "$fit/checkpoints/last.ckpt" "$fit/export" --overwrite
  for background in plain textured; do
    python bench/tokenizer_bench.py --part ceiling --model "$fit/export" --clips 16 --background $background \
        --json "$fit/ceiling_$background.json"
  done > "$fit/ceiling.txt"
  stamp tokenizer-end
  TOKENIZER=$fit/export
fi
# The run works from its own copy of the tokenizer (the shipped one by default), so the cache,
# the stages and the assembled folder all use the same weights whatever happens to the source.
copy_tokenizer "${TOKENIZER:-mmgen/assets/default/tokenizer}" "$RUN"
TOKENIZER=$RUN/tokenizer

# (2) the latent caches: CACHE EDGES (MovingShapes edges "inside": every clip in the frame; "mixed": half on a torus)
make_cache() {
  [ -f "$1/meta.json" ] && return
  echo "== (2) latent cache $1 ($NUM_SAMPLES clips, edges $2)"; stamp "cache-$2-start"
  local holdout; holdout=$(python -c "import json; from mmgen.data.captions import HELDOUT_PAIRS; print(json.dumps(HELDOUT_PAIRS))")
  mmgen ar tokenize --tokenizer "$TOKENIZER" --out "$1" --dataset mmgen.data.MovingShapes \
      --dataset-args "{\"num_samples\": $NUM_SAMPLES, \"seed\": 0, \"captions\": \"train\", \"background\": \"mixed\", \"holdout\": $holdout, \"split\": \"train\", \"edges\": \"$2\"}" \
      --batch-size 16 --device cpu
  stamp "cache-$2-end"
}
make_cache "$RUN/latents" inside

# The value of a dotted key (list items by index) in the last of the configs that sets it, as the
# fit reads them (later files win).
config_value() {  # config_value KEY CONFIG...
  python - "$@" <<'PY'
import sys, yaml
value = None
for path in sys.argv[2:]:
    node = yaml.safe_load(open(path))
    for key in sys.argv[1].split("."):
        node = node[int(key)] if isinstance(node, list) and key.isdigit() else (node or {}).get(key)
    value = value if node is None else node
print(value)
PY
}

run_stage() {  # run_stage N STEPS CACHE [extra fit arguments...]: stage N's config lays over stages 1..N-1's
  local n=$1 dir=$RUN/stage$1 steps=$2 cache=$3; shift 3
  local configs=() k
  for k in $(seq 1 "$n"); do configs+=("configs/generator/moving_shapes_default_stage$k.yaml"); done
  if [ -f "$dir/export/transformer/config.json" ]; then echo "== (3) stage $n: done ($dir/export)"; return; fi
  [ -n "$steps" ] || steps=$(config_value trainer.max_steps "${configs[@]}")
  # The last step must land on a checkpoint, or the stage would never count as done.
  local every; every=$(config_value trainer.callbacks.0.init_args.every_n_train_steps "${configs[@]}")
  if [ $((steps % every)) -ne 0 ]; then
    echo "build_default_model.sh: error: stage $n steps $steps must be a multiple of the checkpoint interval $every" >&2
    exit 2
  fi
  local resume=()
  [ -f "$dir/checkpoints/last.ckpt" ] && resume=(--ckpt_path "$dir/checkpoints/last.ckpt")
  echo "== (3) stage $n to step $steps ${resume[*]:+(resuming)}"; stamp "stage$n-start"
  mmgen ar fit "${configs[@]/#/--config=}" \
      --model.tokenizer "$TOKENIZER" --data.train.init_args.path "$cache" \
      --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" \
      --trainer.callbacks.init_args.dirpath "$dir/checkpoints" \
      --trainer.max_steps "$steps" --trainer.max_time "$MAX_TIME" "$@" "${resume[@]}"
  local reached; reached=$(ckpt_step "$dir/checkpoints/last.ckpt")
  if [ "$reached" -lt "$steps" ]; then
    stamp "stage$n-stopped-at-$reached"
    echo "== (3) stage $n stopped at step $reached of $steps; run the script again to resume it"
    exit 3
  fi
  mmgen ar export "$dir/checkpoints/last.ckpt" "$dir/export.tmp" --overwrite
  mv "$dir/export.tmp" "$dir/export"
  stamp "stage$n-end"
}
run_stage 1 "$STEPS1" "$RUN/latents"
run_stage 2 "$STEPS2" "$RUN/latents" --model.init_from "$RUN/stage1/export/transformer"
run_stage 3 "$STEPS3" "$RUN/latents" --model.init_from "$RUN/stage2/export/transformer"
make_cache "$RUN/latents_mixed" mixed
run_stage 4 "$STEPS4" "$RUN/latents_mixed" --model.init_from "$RUN/stage3/export/transformer"

echo "== (4) pipeline folder -> $OUT"
python -m mmgen.pipelines.assemble --tokenizer "$TOKENIZER" --generator "$RUN/stage4/export/transformer" \
    --sampling configs/sample/default.yaml --out "$OUT" --overwrite

if [ "$EVAL" = 1 ]; then
  echo "== (5) MovingShapes benchmark -> $RUN/eval"
  python bench/shapes_eval.py --model "$OUT" --out "$RUN/eval" --per-set 64
fi
