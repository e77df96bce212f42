#!/usr/bin/env bash
# Sets up the machine and runs every test suite: C core (ctest, plain and ASan+UBSan), the
# Cortex-M4 cross build with its size report, ruff, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

JOBS=$(nproc)
echo "== C core on the host (ctest)"
cmake -S . -B build/host -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/host -j "$JOBS" >/dev/null
ctest --test-dir build/host -j "$JOBS" --output-on-failure

echo "== C core on the host with ASan + UBSan (ctest)"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DOTAKEY_SANITIZE=ON -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build build/asan -j "$JOBS" >/dev/null
ctest --test-dir build/asan -j "$JOBS" --output-on-failure

echo "== C core for the Cortex-M4 (size)"
cmake -S . -B build/arm -DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake -DCMAKE_BUILD_TYPE=MinSizeRel >/dev/null
cmake --build build/arm -j "$JOBS" >/dev/null
arm-none-eabi-size -t build/arm/firmware_c/core/libotakey_core.a | tail -n 1

echo "== ruff"
python3 -m ruff check agent tests/python

echo "== pytest"
python3 -m pytest -q -p no:cacheprovider
