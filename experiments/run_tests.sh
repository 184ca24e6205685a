#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (CPU); TESTS picks test files (default: all of tests/).
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest ${TESTS:-tests} -q "$@"
