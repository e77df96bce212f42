/**
 * @file fuzz_common.h
 * @brief Helpers shared by the libFuzzer harnesses: a failing-check macro that leaves a stack
 *        trace, a byte reader over the fuzz input, field-wise comparison of keystore states, and
 *        independent oracles written from docs/flash-layout.md and docs/protocol.md (not from the
 *        core's code), so a harness can say what the core *should* have answered.
 *
 * Harness code is test code: it may use stdio and abort(); the core it drives may not.
 */
#ifndef OTAKEY_FUZZ_COMMON_H
#define OTAKEY_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "otakey/keystore.h"

/**
 * On a harness's own per-byte oracle loops: no coverage callbacks (they mirror the core's branches,
 * so they add no signal, only cost), sanitizers kept. noinline, as coverage is added after inlining.
 */
#if defined(__clang__)
#define FUZZ_NOCOV __attribute__((noinline, no_sanitize("coverage")))
#else
#define FUZZ_NOCOV
#endif

/** libFuzzer entry point (declared so -Wmissing-prototypes holds for every harness). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/** A property failed: print where and why, then abort so the engine saves the input with a stack. */
void fuzz_fail(const char *file, int line, const char *what);
#define FUZZ_CHECK(cond)                                                                                              \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            fuzz_fail(__FILE__, __LINE__, #cond);                                                                     \
        }                                                                                                             \
    } while (0)

/** Sequential reader over the fuzz input; reads past the end give zeros and set `short_read`. */
struct fuzz_in {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int short_read;
};

void fuzz_in_init(struct fuzz_in *in, const uint8_t *data, size_t size);
size_t fuzz_in_left(const struct fuzz_in *in);
uint8_t fuzz_u8(struct fuzz_in *in);
uint16_t fuzz_u16(struct fuzz_in *in);
uint32_t fuzz_u32(struct fuzz_in *in);
/** Copy n bytes (zero-filled past the end). */
void fuzz_bytes(struct fuzz_in *in, void *dst, size_t n);
/** Take up to n bytes in place; returns how many were available. */
size_t fuzz_take(struct fuzz_in *in, const uint8_t **out, size_t n);

uint32_t fuzz_le32(const uint8_t *p);
uint16_t fuzz_le16(const uint8_t *p);
void fuzz_put_le32(uint8_t *p, uint32_t v);

/** Field-wise equality of two credentials (only the used bytes of each array). */
int fuzz_cloud_equal(const struct ks_cloud *a, const struct ks_cloud *b);
/** Field-wise equality of two keystore states; `with_generation` 0 ignores the generation. */
int fuzz_state_equal(const struct ks_state *a, const struct ks_state *b, int with_generation);
/** 1 if every byte of p[0..n) is zero. */
int fuzz_all_zero(const void *p, size_t n);

/**
 * Oracle for protocol §3.5: 1 if buf[0..len) is exactly one well-formed credential (version >= 1,
 * platform 1 or 2, four u16-prefixed fields within their maxima, nothing after the last).
 */
int fuzz_oracle_cloud_ok(const uint8_t *buf, size_t len);

/**
 * Oracle for flash-layout §1/§2: 1 if img[0..len) starts with a valid record. Fills *gen and
 * *has_pk for a valid record. Uses the core's SHA-256 (held to FIPS 180-4 vectors in tests/c).
 */
int fuzz_oracle_record_ok(const uint8_t *img, size_t len, uint32_t *gen, uint8_t *has_pk);

/**
 * Make img a record whose SHA-256 matches whatever its header says (magic .. payload): rewrites the
 * 32 hash bytes at 0x10 + align4(payload_len) when they fit in len. @return 1 if it rewrote them.
 */
int fuzz_fix_record_hash(uint8_t *img, size_t len);

/**
 * Build a committed record around an arbitrary payload: commit word, magic, generation, format 1,
 * payload_len, payload, erased padding, correct hash. @return the image length, or 0 if payload_len
 * exceeds KS_MAX_PAYLOAD or cap is too small.
 */
size_t fuzz_build_record(uint32_t gen, const uint8_t *payload, size_t payload_len, uint8_t *out, size_t cap);

/** Boot rule of flash-layout §2 on the two areas' validity and generations: 0, 1 or -1. */
int fuzz_oracle_pick(int va, uint32_t ga, int vb, uint32_t gb);

/** Boot rule of flash-layout §2 on two area images: the active area (0, 1) or -1. */
int fuzz_oracle_active(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

#endif /* OTAKEY_FUZZ_COMMON_H */
