#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (CPU); TESTS picks test files (default: all of tests/),
# TEST_WORKERS the pytest-xdist processes (default 2, sharing tests in collection order; 0: in this process).
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest ${TESTS:-tests} -q -n "${TEST_WORKERS:-2}" --dist worksteal "$@"
