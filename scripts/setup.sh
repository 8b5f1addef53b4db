# Sourced by the build scripts after they cd to the repository root: find mmgen (the README's
# set-up puts it in .venv) and use 2 threads unless told otherwise.
if ! command -v mmgen > /dev/null && [ -f .venv/bin/activate ]; then
  source .venv/bin/activate
fi
command -v mmgen > /dev/null || { echo "mmgen is not installed (pip install -e .)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
