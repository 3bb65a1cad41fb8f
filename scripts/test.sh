#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# ROS isolation (localhost discovery, own domain, temp log dir) is set by test/conftest.py.
# --durations: the ten slowest tests, to keep the suite's time in check (docs/development.md, Tests: budget and flakes).
exec "${MAMBAGLUE_VENV:-$ROOT/.venv}/bin/python" -m pytest -q -rs --durations=10 "$@"
