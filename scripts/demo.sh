#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default. Output goes to ./out/demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${MAMBAGLUE_VENV:-$ROOT/.venv}/bin/mambaglue" demo --out "${1:-out/demo}"
