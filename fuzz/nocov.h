/*
 * nocov.h: force-included (-include) into two core sources in the libFuzzer build only, to take
 * coverage instrumentation off two byte-at-a-time loops without touching the core.
 *
 * With -fsanitize=fuzzer every loop test calls __sanitizer_cov_trace_cmp*, so a loop over every
 * byte of a 16 KB flash area costs tens of thousands of calls per use. These two loops give the
 * fuzzer no signal of their own (their only outcome, a CRC or one "blank" flag, is branched on by
 * instrumented callers), but they were 35-40 % of fuzz_keystore's time and ~10 % of fuzz_frame's:
 *   - crc_update (codec_frame.c): the CRC-32 of every frame byte;
 *   - area_is_blank (keystore.c): compares a whole erased area with 0xFF on every ks_load.
 * They keep ASan and UBSan. A -fsanitize-coverage-ignorelist entry would not do: area_is_blank is
 * inlined into ks_load before the coverage pass runs, so the attribute comes with noinline.
 *
 * If the core renames or changes one of them, the build fails on the conflicting declaration:
 * update it here (the unused-function warning is turned off for these files in CMakeLists.txt, so a
 * removed function only leaves a dead declaration).
 */
#include <stddef.h>
#include <stdint.h>

#define OTAKEY_FUZZ_NOCOV __attribute__((noinline, no_sanitize("coverage")))

#ifdef OTAKEY_FUZZ_NOCOV_CODEC_FRAME
static uint32_t crc_update(uint32_t crc, const uint8_t *data, size_t len) OTAKEY_FUZZ_NOCOV;
#endif

#ifdef OTAKEY_FUZZ_NOCOV_KEYSTORE
static int area_is_blank(int area, uint8_t *blank) OTAKEY_FUZZ_NOCOV;
#endif
