#!/usr/bin/env bash
# Download, HERE (where pip can reach PyPI), the wheels that bench/gpu_check.sh needs on the GPU
# machine and that its image lacks, into the git-ignored .whl/ folder (carried with carry=[".whl"]).
#
#   bash bench/prepare_gpu_wheels.sh [--with-decord]
#
# The GPU image (Python 3.12, torch 2.11, no network) has lightning, einops, torchmetrics, scipy,
# safetensors 0.8.0, huggingface-hub 1.33, regex, requests, filelock, pillow, numpy, pyyaml, but no
# diffusers, decord, PyAV or jsonargparse.  Only diffusers is on gpu_check.sh's path
# (mmgen.ar.model and mmgen.tokenizer.model subclass its ModelMixin/ConfigMixin); its own
# requirements are all on the image (importlib_metadata is only imported on Python < 3.8).
# decord is optional: no step of the check reads video files.  PyAV and jsonargparse are not needed.
set -euo pipefail

DIFFUSERS_VERSION=${DIFFUSERS_VERSION:-0.42.1}  # the version the project's venv runs; needs huggingface-hub>=1.32, safetensors>=0.8
DECORD_VERSION=0.6.0
WITH_DECORD=0
for arg in "$@"; do
  case "$arg" in
    --with-decord) WITH_DECORD=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare_gpu_wheels.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
git check-ignore -q .whl/probe.whl || { echo "prepare_gpu_wheels.sh: .whl/ is not git-ignored; add /.whl/ to .gitignore" >&2; exit 1; }
mkdir -p .whl
PY=${PYTHON:-python3}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$1"
}
# One version of each package only: two wheels of one name stop the whole install there.
rm -f .whl/diffusers-*.whl
download "diffusers==$DIFFUSERS_VERSION"
if [ $WITH_DECORD = 1 ]; then
  rm -f .whl/decord-*.whl
  download "decord==$DECORD_VERSION"
fi

echo "wheels in .whl/ ($(du -sh .whl | cut -f1), limit for a device call: 64 MiB with the working tree):"
for w in .whl/*.whl; do
  echo "  $(basename "$w")"
  unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /'
done
