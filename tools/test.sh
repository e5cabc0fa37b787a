#!/usr/bin/env bash
# The README's test command: installs everything (tools/install.sh) and runs the test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/python -m pytest -q tests "$@"
