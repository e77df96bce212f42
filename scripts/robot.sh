#!/usr/bin/env bash
# The Robot Framework suites (robot_tests/) on a device backend: emu (default, the built-in
# emulator), renode (pyrenode3 pointed at a Renode: renode/README.md) or board (a real
# STM32F429I-DISC1: OTAKEY_BOARD_PORT, OTAKEY_BOARD_PROBE). Reports and a JUnit file go to
# build/robot/; a failed test leaves its flash image, console and agent log there too.
#   scripts/robot.sh                      # every suite on the emulator
#   BACKEND=renode scripts/robot.sh --suite provisioning
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m robot --pythonpath agent --variable "BACKEND:${BACKEND:-emu}" --outputdir build/robot \
    --xunit junit.xml "$@" robot_tests
