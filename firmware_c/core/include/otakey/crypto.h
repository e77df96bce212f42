/**
 * @file crypto.h
 * @brief Primitives of the portable core: AES-128 (+CBC, PKCS#7), SHA-256, HMAC-SHA256, HKDF-SHA256,
 *        X25519, constant-time compare and secure wipe.
 *
 * Written for this project (no C crypto library is reachable for the target) and held to the
 * standards' known-answer tests in tests/c/. No dynamic allocation, no table lookups indexed by
 * secret data in X25519; AES uses a byte S-box (documented limitation: cache timing is not a
 * concern on the Cortex-M4, which has no data cache on flash/SRAM for these tables).
 */
#ifndef OTAKEY_CRYPTO_H
#define OTAKEY_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_AES_BLOCK 16u
#define CRYPTO_AES128_KEY_LEN 16u
#define CRYPTO_SHA256_LEN 32u
#define CRYPTO_SHA256_BLOCK 64u
#define CRYPTO_X25519_LEN 32u

typedef struct {
    uint32_t rk[44]; /**< expanded key, FIPS-197 §5.2 */
} crypto_aes128_ctx;

/** @brief Expand a 128-bit key (FIPS-197 §5.2). */
void crypto_aes128_init(crypto_aes128_ctx *ctx, const uint8_t key[16]);
/** @brief Encrypt one block (FIPS-197 §5.1). in and out may alias. */
void crypto_aes128_encrypt_block(const crypto_aes128_ctx *ctx, const uint8_t in[16], uint8_t out[16]);
/** @brief Decrypt one block (FIPS-197 §5.3, inverse cipher). in and out may alias. */
void crypto_aes128_decrypt_block(const crypto_aes128_ctx *ctx, const uint8_t in[16], uint8_t out[16]);

/**
 * @brief AES-128-CBC (SP 800-38A §6.2). len must be a multiple of 16. in and out may alias.
 * @return 0 or CRYPTO_EBADLEN
 */
int crypto_aes128_cbc_encrypt(const uint8_t key[16], const uint8_t iv[16], const uint8_t *in, size_t len,
                              uint8_t *out);
/** @brief AES-128-CBC decryption. @return 0 or CRYPTO_EBADLEN */
int crypto_aes128_cbc_decrypt(const uint8_t key[16], const uint8_t iv[16], const uint8_t *in, size_t len,
                              uint8_t *out);

/**
 * @brief Append PKCS#7 padding to buf[0..len) in place (buf must have room for len + 16).
 * @return the padded length (a multiple of 16, > len), or 0 if cap is too small
 */
size_t crypto_pkcs7_pad(uint8_t *buf, size_t len, size_t cap);
/**
 * @brief Check PKCS#7 padding of buf[0..len) without branching on the pad bytes' values.
 * @return 0 and *out_len = unpadded length, or CRYPTO_EBADPAD / CRYPTO_EBADLEN
 */
int crypto_pkcs7_unpad(const uint8_t *buf, size_t len, size_t *out_len);

typedef struct {
    uint32_t h[8];
    uint64_t total_len;
    uint8_t block[64];
    size_t block_len;
} crypto_sha256_ctx;

/** @brief SHA-256 (FIPS 180-4 §6.2). */
void crypto_sha256_init(crypto_sha256_ctx *ctx);
void crypto_sha256_update(crypto_sha256_ctx *ctx, const uint8_t *data, size_t len);
void crypto_sha256_final(crypto_sha256_ctx *ctx, uint8_t out[32]);
void crypto_sha256(const uint8_t *data, size_t len, uint8_t out[32]);

typedef struct {
    crypto_sha256_ctx inner;
    crypto_sha256_ctx outer;
} crypto_hmac_sha256_ctx;

/** @brief HMAC-SHA256 (RFC 2104 / FIPS 198-1); any key length. */
void crypto_hmac_sha256_init(crypto_hmac_sha256_ctx *ctx, const uint8_t *key, size_t key_len);
void crypto_hmac_sha256_update(crypto_hmac_sha256_ctx *ctx, const uint8_t *data, size_t len);
void crypto_hmac_sha256_final(crypto_hmac_sha256_ctx *ctx, uint8_t out[32]);
void crypto_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len, uint8_t out[32]);

/**
 * @brief HKDF-SHA256 extract + expand (RFC 5869). salt may be NULL/0 (32 zero bytes).
 * @return 0 or CRYPTO_EBADLEN if okm_len > 255 * 32
 */
int crypto_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                       const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len);

/** @brief X25519 (RFC 7748 §5): out = scalar * point. The scalar is clamped internally. */
void crypto_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);
/** @brief out = scalar * 9 (the public key of scalar). */
void crypto_x25519_base(uint8_t out[32], const uint8_t scalar[32]);

/** @brief Constant-time compare. @return 1 if the n bytes are equal, else 0. */
int crypto_ct_equal(const void *a, const void *b, size_t n);
/** @brief Zero n bytes in a way the compiler cannot elide. */
void crypto_wipe(void *p, size_t n);

#endif /* OTAKEY_CRYPTO_H */
