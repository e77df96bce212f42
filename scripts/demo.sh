#!/usr/bin/env bash
# Sets up the machine and runs the OTA-Key demo (extra arguments go to `otakey demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec otakey demo "$@"
