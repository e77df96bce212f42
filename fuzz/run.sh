#!/usr/bin/env bash
# Build the libFuzzer harnesses, make the seed corpora, and run each target for a while.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to all five. Targets run one after another
# (one core each). Per target it prints executions, exec/s, corpus size and crashes, then
#   fuzz: N targets, E executions, C crashes
# and exits non-zero if any target crashed (a crash, a sanitizer report, a failed property, a
# timeout or an out-of-memory). Reproducers kept in fuzz/crashes/<target>-* are replayed as part
# of each target's corpus, so a known bug fails the run until it is fixed.
#
# Environment: FUZZ_BUILD (default build/fuzz), CC (default clang), FUZZ_FLAGS (extra libFuzzer
# flags, e.g. "-use_value_profile=1 -seed=1").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD:-$REPO/build/fuzz}"
SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(fuzz_frame fuzz_message fuzz_keystore fuzz_cloud fuzz_device)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=("${ALL_TARGETS[@]}")
fi
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

max_len_of() {
  case "$1" in
    fuzz_frame) echo 4375 ;;    # largest frame (4118 + delimiter) + 256: the too-long path, a few frames
    fuzz_message) echo 3958 ;;  # mode byte + largest message (3956) + 1 too many; mode 1/2 need less
    fuzz_keystore) echo 16384 ;; # both 16 KB areas' worth of images
    fuzz_cloud) echo 4096 ;;    # largest credential is 3597 bytes
    fuzz_device) echo 8192 ;;   # a script of up to 64 commands
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}

for t in "${TARGETS[@]}"; do
  max_len_of "$t" >/dev/null
done

echo "== build ($BUILD)"
mkdir -p "$BUILD"
cmake -S "$REPO/fuzz" -B "$BUILD" -DCMAKE_C_COMPILER="${CC:-clang}" >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j2 >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log"; exit 1; }

echo "== corpus"
python3 "$REPO/fuzz/make_corpus.py" --out "$BUILD/corpus" "${TARGETS[@]}"

total_execs=0
total_crashes=0
summary=()
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus/$t"
  regress="$BUILD/regress/$t"
  artifacts="$BUILD/crashes/$t"
  log="$BUILD/logs/$t.log"
  mkdir -p "$corpus" "$regress" "$artifacts" "$BUILD/logs"
  rm -f "$regress"/*
  for f in "$REPO"/fuzz/crashes/"$t"-*; do
    [ -e "$f" ] && cp "$f" "$regress/"
  done
  before="$(ls -1 "$artifacts" | sort)"
  echo "== $t: ${SECONDS_PER_TARGET}s, -max_len=$(max_len_of "$t")"
  set +e
  # shellcheck disable=SC2086
  "$BUILD/$t" "$corpus" "$regress" -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len_of "$t")" \
    -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_FLAGS:-} \
    >"$log" 2>&1
  rc=$?
  set -e
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  execs="${execs:-0}"
  rate="${rate:-0}"
  corpus_size="$(find "$corpus" -maxdepth 1 -type f | wc -l)"
  new_artifacts="$(comm -13 <(echo "$before") <(ls -1 "$artifacts" | sort) | grep -E '^(crash|leak|timeout|oom)-' || true)"
  crashes=0
  crash_desc="0"
  if [ -n "$new_artifacts" ] || [ "$rc" -ne 0 ]; then
    crashes="$(printf '%s\n' "$new_artifacts" | grep -c . || true)"
    [ "$crashes" -eq 0 ] && crashes=1
    first="$(printf '%s\n' "$new_artifacts" | head -1)"
    crash_desc="$crashes (${first:+$artifacts/$first, }exit $rc, log $log)"
    grep -m1 -E 'FUZZ PROPERTY FAILED|ERROR: (AddressSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error' \
      "$log" | sed 's/^/    /' || true
  fi
  line="$t: $execs executions, $rate exec/s, corpus $corpus_size, crashes $crash_desc"
  echo "$line"
  summary+=("$line")
  total_execs=$((total_execs + execs))
  total_crashes=$((total_crashes + crashes))
done

echo "== summary"
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#TARGETS[@]} targets, $total_execs executions, $total_crashes crashes"
[ "$total_crashes" -eq 0 ]
