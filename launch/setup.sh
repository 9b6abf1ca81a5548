#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at $GAPT_VENV (default: .venv) and install gapt-ds into it.
#   bash launch/setup.sh            # idempotent; prints the venv path on its last line
# torch: on a machine without an NVIDIA GPU the CPU build is installed (never the multi-GB CUDA wheels);
# with `nvidia-smi` present the default (CUDA) build is installed. Override with TORCH_SPEC="torch==X".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${GAPT_VENV:-$root/.venv}
torch_version=${TORCH_VERSION:-2.13.0}
stamp=$venv/.gapt-ds-installed

say() { echo "setup: $*" >&2; }  # progress on stderr: stdout's last line is the venv path
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtualenv $venv"
  python3 -m venv "$venv"
fi
py=$venv/bin/python
# (grep drops the "Location ... is ignored" noise of machines whose pip config lists absent mirrors)
pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# Re-install only when pyproject.toml changed since the last successful set-up.
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ]; then
  echo "$venv"; exit 0
fi

if ! "$py" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    say "installing $TORCH_SPEC"
    pip install "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "installing torch $torch_version (CUDA build: a GPU is present; a few GB)"
    pip install "torch==$torch_version"
  else
    # CPU-only: a local/mirrored +cpu wheel if the configured indexes have one, else PyTorch's CPU index.
    say "installing torch $torch_version (CPU build: no GPU found; ~30 s)"
    pip install "torch==$torch_version+cpu" 2>/dev/null \
      || pip install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu \
                     --extra-index-url https://pypi.org/simple
  fi
fi
say "installing gapt-ds (editable) with DeepSpeed, transformers, datasets, sentencepiece, tensorboard," \
    "accelerate, pytest, ruff (~2 min the first time)"
pip install -e "$root[dev]"
say "done"
touch "$stamp"
echo "$venv"
