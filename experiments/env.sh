# Sourced by the launch scripts: creates .venv on first use and installs molmo-jax with its extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import molmo_jax, pytest, xdist, torch, tensorflow_datasets" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -e ".[test]"
fi
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
