#!/usr/bin/env bash
# Lint (ruff) and run the test suite; sets up .venv first (launch/setup.sh). Extra arguments go to pytest:
#   bash launch/test.sh                 # everything (CPU: about 5 min on 2 cores, plus ~1 min of set-up)
#   bash launch/test.sh -m "not distributed" -x
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/launch/setup.sh" | tail -n 1)
# CPU-only machine: tell DeepSpeed so (GPU nodes auto-detect cuda/nccl).
command -v nvidia-smi >/dev/null 2>&1 || export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
cd "$root"
"$venv/bin/ruff" check .   # lint first (config: pyproject.toml [tool.ruff])
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
