#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job end to end on built-in data.
source "$(dirname "$0")/env.sh"
exec "$PY" -m experiments.main "$@"
