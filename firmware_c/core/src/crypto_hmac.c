/**
 * @file crypto_hmac.c
 * @brief HMAC-SHA256 (RFC 2104, FIPS 198-1) and HKDF-SHA256 (RFC 5869).
 */
#include "otakey/crypto.h"

#include "otakey/errors.h"

#define HMAC_IPAD 0x36u
#define HMAC_OPAD 0x5cu
#define HKDF_MAX_BLOCKS 255u

void crypto_hmac_sha256_init(crypto_hmac_sha256_ctx *ctx, const uint8_t *key, size_t key_len)
{
    uint8_t k0[CRYPTO_SHA256_BLOCK];
    uint8_t pad[CRYPTO_SHA256_BLOCK];

    /* FIPS 198-1 §4 step 1-3: a key longer than the block is hashed first, then zero-padded to B. */
    for (unsigned i = 0; i < CRYPTO_SHA256_BLOCK; i++) {
        k0[i] = 0;
    }
    if (key_len > CRYPTO_SHA256_BLOCK) {
        crypto_sha256(key, key_len, k0);
    } else {
        for (size_t i = 0; i < key_len; i++) {
            k0[i] = key[i];
        }
    }
    for (unsigned i = 0; i < CRYPTO_SHA256_BLOCK; i++) {
        pad[i] = (uint8_t)(k0[i] ^ HMAC_IPAD);
    }
    crypto_sha256_init(&ctx->inner);
    crypto_sha256_update(&ctx->inner, pad, sizeof pad);
    for (unsigned i = 0; i < CRYPTO_SHA256_BLOCK; i++) {
        pad[i] = (uint8_t)(k0[i] ^ HMAC_OPAD);
    }
    crypto_sha256_init(&ctx->outer);
    crypto_sha256_update(&ctx->outer, pad, sizeof pad);
    crypto_wipe(k0, sizeof k0);
    crypto_wipe(pad, sizeof pad);
}

void crypto_hmac_sha256_update(crypto_hmac_sha256_ctx *ctx, const uint8_t *data, size_t len)
{
    crypto_sha256_update(&ctx->inner, data, len);
}

void crypto_hmac_sha256_final(crypto_hmac_sha256_ctx *ctx, uint8_t out[32])
{
    uint8_t inner_hash[CRYPTO_SHA256_LEN];

    crypto_sha256_final(&ctx->inner, inner_hash);
    crypto_sha256_update(&ctx->outer, inner_hash, sizeof inner_hash);
    crypto_sha256_final(&ctx->outer, out);
    crypto_wipe(inner_hash, sizeof inner_hash);
}

void crypto_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len, uint8_t out[32])
{
    crypto_hmac_sha256_ctx ctx;
    crypto_hmac_sha256_init(&ctx, key, key_len);
    crypto_hmac_sha256_update(&ctx, data, len);
    crypto_hmac_sha256_final(&ctx, out);
}

int crypto_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                       const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len)
{
    static const uint8_t zero_salt[CRYPTO_SHA256_LEN] = {0};
    crypto_hmac_sha256_ctx ctx;
    uint8_t prk[CRYPTO_SHA256_LEN];
    uint8_t t[CRYPTO_SHA256_LEN];
    size_t done = 0;

    if (okm_len > HKDF_MAX_BLOCKS * CRYPTO_SHA256_LEN) {
        return CRYPTO_EBADLEN;
    }
    /* RFC 5869 §2.2: no salt means HashLen zero bytes (HMAC would zero-pad an empty key the same way,
     * but a NULL pointer must not reach the copy loop). */
    if (salt == NULL || salt_len == 0u) {
        salt = zero_salt;
        salt_len = sizeof zero_salt;
    }
    crypto_hmac_sha256(salt, salt_len, ikm, ikm_len, prk);

    /* RFC 5869 §2.3: T(i) = HMAC(PRK, T(i-1) | info | i), T(0) empty. */
    for (uint32_t i = 1; done < okm_len; i++) {
        const uint8_t counter = (uint8_t)i;
        size_t take = okm_len - done;
        crypto_hmac_sha256_init(&ctx, prk, sizeof prk);
        if (i > 1u) {
            crypto_hmac_sha256_update(&ctx, t, sizeof t);
        }
        crypto_hmac_sha256_update(&ctx, info, info_len);
        crypto_hmac_sha256_update(&ctx, &counter, 1);
        crypto_hmac_sha256_final(&ctx, t);
        if (take > sizeof t) {
            take = sizeof t;
        }
        for (size_t j = 0; j < take; j++) {
            okm[done + j] = t[j];
        }
        done += take;
    }
    crypto_wipe(&ctx, sizeof ctx);
    crypto_wipe(prk, sizeof prk);
    crypto_wipe(t, sizeof t);
    return 0;
}
