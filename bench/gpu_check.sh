#!/usr/bin/env bash
# One prepared GPU check for mmgen (issue 8): CUDA tests + benchmarks -> ONE table -> bench/RESULTS.md.
#
# On a lent H100/H200 (one device call, under 5 minutes; the image has every package the steps
# import: torch, lightning, safetensors, einops, transformers/tokenizers):
#   device call:  run(command="bash bench/gpu_check.sh", timeout_s=420)
#   afterwards:   copy the returned RESULTS.md over bench/RESULTS.md (the device edits only its copy)
# On a CPU machine, the same steps on tiny shapes (checks the script itself, not GPU speed):
#   bash bench/gpu_check.sh --dry-run [--hide "decord av jsonargparse"]
#
# Options:
#   --dry-run          CPU, tiny shapes; writes the "dry-run" section of RESULTS.md (never the GPU one)
#   --budget S         total seconds for the steps (default 285 on GPU, 600 dry-run); each step also
#                      has its own timeout, cut to what is left, so one stuck step cannot eat the lease
#   --hide "PKGS"      run python without these site-packages (mimics the GPU image: no decord/PyAV/
#                      jsonargparse); builds a filtered copy of site-packages and runs python -S
#   --results PATH     where to write the table (default bench/RESULTS.md)
# Environment: PYTHON (default python3), PEAK_TFLOPS (MFU denominator; default: datasheet bf16 peak
#   of the card), TRAIN_BATCHES (default 8,16,32), OUT (when set: RESULTS.md, all logs in one file
#   and a tarball of the raw step outputs are copied there).
# Steps, in priority order (a failed or timed-out step is marked FAILED in the table; the rest go on):
#   env, cuda_tests, attention_fwd, train, sampling, tokenizer_prepare, tokenizer_decode_full,
#   tokenizer_decode_fast (CUDA only), attention_fwdbwd (CUDA only; extra, runs only if time is left).
set -u -o pipefail

MODE=gpu
BUDGET=""
HIDE=""
RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry-run ;;
    --budget) BUDGET=$2; shift ;;
    --hide) HIDE=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$BUDGET" ] || { [ $MODE = gpu ] && BUDGET=285 || BUDGET=600; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
START=$SECONDS
RESERVE=15  # seconds kept back for the table
read -r -a PY <<<"${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_ROOT_USER_ACTION=ignore
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: mode=$MODE budget=${BUDGET}s work=$WORK python=${PY[*]}"

# --hide: a copy of site-packages (symlinks) without the named distributions; python -S skips the real one.
if [ -n "$HIDE" ]; then
  mkdir -p "$WORK/shadow"
  for site in $("${PY[@]}" -c "import site; print(' '.join(site.getsitepackages()))"); do
    [ -d "$site" ] || continue
    for entry in "$site"/*; do
      base=$(basename "$entry")
      norm=$(printf '%s' "$base" | sed -E 's/[-.].*//' | tr 'A-Z-' 'a-z_')
      case " $HIDE " in *" $norm "*) continue ;; esac
      [ -e "$WORK/shadow/$base" ] || ln -s "$(realpath "$entry")" "$WORK/shadow/$base"
    done
  done
  PY+=(-S)
  export PYTHONPATH="$PYTHONPATH:$WORK/shadow"
  echo "gpu_check: hiding $HIDE (python -S + filtered site-packages)"
fi

: >"$WORK/steps.tsv"
# run_step NAME TIMEOUT CMD...: stdout+stderr to WORK/NAME.log; records "name rc seconds limit" in steps.tsv.
# rc 124/137 = timed out, 125 = skipped (time budget spent).
run_step() {
  local name=$1 limit=$2 rc t0
  shift 2
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  if ((left < 5)); then
    printf '%s\t125\t0\t0\n' "$name" >>"$WORK/steps.tsv"
    printf '[%4ds] %-24s SKIPPED (time budget spent)\n' $((SECONDS - START)) "$name"
    return 125
  fi
  ((limit > left)) && limit=$left
  t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  printf '%s\t%d\t%d\t%d\n' "$name" "$rc" $((SECONDS - t0)) "$limit" >>"$WORK/steps.tsv"
  if ((rc == 0)); then
    printf '[%4ds] %-24s ok (%ds)\n' $((SECONDS - START)) "$name" $((SECONDS - t0))
  else
    printf '[%4ds] %-24s FAILED rc=%d (%ds, limit %ds); last lines of %s.log:\n' \
      $((SECONDS - START)) "$name" "$rc" $((SECONDS - t0)) "$limit" "$name"
    tail -n 15 "$WORK/$name.log" | sed 's/^/    /'
  fi
  return $rc
}

if [ $MODE = gpu ]; then
  ENV_ARGS=(--require-cuda)
  ATTN_ARGS=()
  TRAIN_ARGS=(--preset videoar-l --batch "${TRAIN_BATCHES:-8,16,32}" --steps 6 --warmup 2)
  SAMPLE_ARGS=(--large-batches 1,16 --repeats 2)
  TOK_CONFIG=configs/tokenizer/videoar_folder_256_d48.yaml TOK_SIZE=256 TOK_FRAMES=17 TOK_DEVICE=cuda
  T_ENV=45 T_TESTS=90 T_ATTN=50 T_TRAIN=100 T_SAMPLE=60 T_TOKPREP=40 T_TOK=40 T_ATTN_BWD=50
else
  ENV_ARGS=()
  ATTN_ARGS=(--frames 3 --scales 1,2,4 --heads 2 --head-dim 16 --iters 2 --warmup 1 --device cpu)
  TRAIN_ARGS=(--preset tiny --batch 1,2 --num-frames 2 --steps 2 --warmup 1 --device cpu)
  SAMPLE_ARGS=(--repeats 1 --device cpu)
  TOK_CONFIG=configs/tokenizer/moving_shapes_tiny.yaml TOK_SIZE=32 TOK_FRAMES=5 TOK_DEVICE=cpu
  T_ENV=60 T_TESTS=120 T_ATTN=60 T_TRAIN=120 T_SAMPLE=120 T_TOKPREP=60 T_TOK=60 T_ATTN_BWD=60
fi

run_step env $T_ENV "${PY[@]}" bench/gpu_summary.py env --json "$WORK/env.json" "${ENV_ARGS[@]}"
case $? in
  0) PEAK=$("${PY[@]}" -c "import json, sys; print(json.load(open(sys.argv[1]))['peak_tflops'])" "$WORK/env.json") ;;
  3) echo "gpu_check: no CUDA device here; use --dry-run on a CPU machine" >&2; rm -rf "$WORK"; exit 2 ;;
  *) PEAK="" ;;
esac

mapfile -t CUDA_TEST_FILES < <(grep -l "mark.cuda" tests/test_*.py)
run_step cuda_tests $T_TESTS "${PY[@]}" -m pytest -m cuda -q -rs -p no:cacheprovider --timeout 120 \
  --junitxml="$WORK/cuda_tests.xml" "${CUDA_TEST_FILES[@]}"

run_step attention_fwd $T_ATTN "${PY[@]}" bench/attention_bench.py "${ATTN_ARGS[@]}" --json "$WORK/attention_fwd.json"

run_step train $T_TRAIN "${PY[@]}" bench/train_bench.py "${TRAIN_ARGS[@]}" ${PEAK:+--peak-tflops "$PEAK"} \
  --json "$WORK/train.json"

run_step sampling $T_SAMPLE "${PY[@]}" bench/sample_bench.py "${SAMPLE_ARGS[@]}"

printf '{"config": "%s", "size": %d, "frames": %d}\n' "$TOK_CONFIG" $TOK_SIZE $TOK_FRAMES >"$WORK/tokenizer_meta.json"
if run_step tokenizer_prepare $T_TOKPREP "${PY[@]}" bench/gpu_summary.py tokenizer-dir --config "$TOK_CONFIG" --out "$WORK/tok"; then
  TOK_MODES=(full)
  [ $MODE = gpu ] && TOK_MODES+=(fast)
  for mode in "${TOK_MODES[@]}"; do
    # tokenizer_bench's single-measurement mode prints one JSON line {"ms", "peak_mb"} last.
    run_step tokenizer_decode_$mode $T_TOK "${PY[@]}" bench/tokenizer_bench.py --single --size $TOK_SIZE \
      --frames $TOK_FRAMES --mode $mode --op decode --repeats 3 --device $TOK_DEVICE --model "$WORK/tok" \
      && grep '^{' "$WORK/tokenizer_decode_$mode.log" | tail -n 1 >"$WORK/tokenizer_decode_$mode.json"
  done
fi
rm -rf "$WORK/tok"  # random weights (730 MB for the 256 px config): not worth keeping

# Flex has no backward on CPU, so the dry-run cannot exercise this (extra) step.
[ $MODE = gpu ] && run_step attention_fwdbwd $T_ATTN_BWD "${PY[@]}" bench/attention_bench.py --backward \
  --json "$WORK/attention_fwdbwd.json"

echo
RESERVE=0
run_step table 60 "${PY[@]}" bench/gpu_summary.py table --work "$WORK" --mode $MODE --results "$RESULTS" \
  --command "bash bench/gpu_check.sh $([ $MODE = dry-run ] && echo --dry-run)${HIDE:+ --hide \"$HIDE\"}"
TABLE_RC=$?
cat "$WORK/table.log"

if [ -n "${OUT:-}" ]; then
  # At most a few files come back from $OUT: the results, every log in one file, the raw outputs.
  mkdir -p "$OUT"
  [ -f "$RESULTS" ] && cp "$RESULTS" "$OUT/RESULTS.md"
  for f in "$WORK"/*.log; do printf '\n===== %s =====\n' "$(basename "$f")"; cat "$f"; done >"$OUT/gpu_check_logs.txt"
  tar -C "$WORK" --exclude=site --exclude=shadow --exclude=tok -czf "$OUT/gpu_check_raw.tar.gz" .
  echo "gpu_check: RESULTS.md, gpu_check_logs.txt, gpu_check_raw.tar.gz written to \$OUT"
fi
rm -rf "$WORK/site" "$WORK/shadow"
FAILED=$(awk -F'\t' '$2 != 0 {print $1}' "$WORK/steps.tsv" | tr '\n' ' ')
echo "gpu_check: done in $((SECONDS - START)) s; raw outputs in $WORK${FAILED:+; failed or skipped: $FAILED}"
# Exit status: 0 only when every step (the table included) succeeded.
[ -z "$FAILED" ] && [ $TABLE_RC = 0 ]
