#!/usr/bin/env bash
# The whole test suite from a fresh clone: install, lint, start what the tests need, run pytest.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import torch, torchvision, faiss, wandb, submitit, tqdm, sklearn" # fail fast on a broken install

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = "true" ]; then
  echo "== local Slurm (for tests/test_slurm.py)"
  eval "$(bash slurm/local_cluster.sh start)"   # installs slurm-wlm, munge, slurmdbd, mariadb-server if missing
  export SLURM_CONF
else
  echo "== local Slurm: not started (it needs root); tests/test_slurm.py skips. Run as root, or with CI=true, to include it"
  export DEEPCLUSTER_SKIP_SLURM=1
fi

echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
