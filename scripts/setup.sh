#!/usr/bin/env bash
# Installs what OTA-Key needs on a Debian machine (run as root, or with sudo available):
# the ARM toolchain, CMake, clang (fuzzing), Mosquitto, PostgreSQL, and the Python package with
# its test extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi cmake make gcc
              clang libclang-rt-14-dev mosquitto mosquitto-clients postgresql chromium
              openocd stlink-tools)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # --no-install-recommends: the recommended C++ newlib alone is 1.6 GB.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import otakey, pytest, robot' 2>/dev/null \
   || [ pyproject.toml -nt "$("$PY" -c 'import otakey,os;print(os.path.dirname(otakey.__file__))' 2>/dev/null || echo /)" ]; then
  echo "setup: installing the otakey Python package with its test extras"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
fi
echo "setup: ready"
