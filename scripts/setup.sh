# Sourced by the build scripts after they cd to the repository root: find mmgen (the README's
# set-up puts it in .venv), use 2 threads unless told otherwise, and copy_tokenizer.
if ! command -v mmgen > /dev/null && [ -f .venv/bin/activate ]; then
  source .venv/bin/activate
fi
command -v mmgen > /dev/null || { echo "mmgen is not installed (pip install -e .)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# copy_tokenizer SRC RUN: the run's own copy of a tokenizer folder in RUN/tokenizer (kept once
# made, so a resumed build uses the same weights); a copy cut short is redone, not nested into.
copy_tokenizer() {
  [ -d "$2/tokenizer" ] && return
  rm -rf "$2/tokenizer.tmp"
  cp -r "$1" "$2/tokenizer.tmp" && mv "$2/tokenizer.tmp" "$2/tokenizer"
}
