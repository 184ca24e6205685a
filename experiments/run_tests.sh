#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite (CPU; about 5 minutes on 2 cores).
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest tests -q "$@"
