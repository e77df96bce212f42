#!/usr/bin/env bash
# Sets up the machine and runs every test suite: C core (ctest, plain and ASan+UBSan), the
# Cortex-M4 cross build (firmware ELF with its size and budget report), libFuzzer on the C parsers
# (OTAKEY_FUZZ_SECONDS per target, default 60, on one core while pytest runs), ruff, pytest, and
# the Robot Framework suites on the emulator.
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

echo "== firmware for the Cortex-M4 (core size, ELF budget)"
cmake -S . -B build/arm -DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake -DCMAKE_BUILD_TYPE=MinSizeRel >/dev/null
cmake --build build/arm -j "$JOBS" > build/arm-build.log 2>&1 || { tail -n 50 build/arm-build.log; exit 1; }
grep -E "^otakey-fw:" build/arm-build.log
echo "core library: $(arm-none-eabi-size -t build/arm/firmware_c/core/libotakey_core.a | tail -n 1)"

echo "== fuzzing the C parsers (${OTAKEY_FUZZ_SECONDS:-60} s per target, in the background; log build/fuzz.log)"
mkdir -p build
bash fuzz/run.sh "${OTAKEY_FUZZ_SECONDS:-60}" > build/fuzz.log 2>&1 &
fuzz_pid=$!
trap 'pkill -P "$fuzz_pid" 2>/dev/null; kill "$fuzz_pid" 2>/dev/null || true' EXIT

echo "== ruff"
python3 -m ruff check agent tests/python

echo "== pytest"
python3 -m pytest -q -p no:cacheprovider

echo "== Robot Framework suites (emulator backend; reports in build/robot)"
bash scripts/robot.sh

echo "== fuzzing results"
if ! wait "$fuzz_pid"; then
  tail -n 60 build/fuzz.log
  echo "fuzzing found a crash (reproducer and stack above; see fuzz/README.md)"
  exit 1
fi
trap - EXIT
sed -n '/^== summary/,$p' build/fuzz.log
