/*
 * Known-answer tests of the core crypto primitives. Expected values are those printed in the
 * standards (FIPS-197 App. C.1, SP 800-38A F.2.1/F.2.2, FIPS 180-4 examples, RFC 4231, RFC 5869,
 * RFC 7748 §5.2 and §6.1); each was cross-checked against pyca/cryptography before being written here.
 */
#include <string.h>

#include "otakey/crypto.h"
#include "otakey/errors.h"
#include "unit.h"

/* Parse hex of a known size; a short parse means a typo in the vector, which fails the case. */
static size_t hexbuf(const char *hex, uint8_t *buf, size_t cap)
{
    size_t n = unit_hex(hex, buf, cap);
    CHECK_EQ_INT(n * 2u, strlen(hex));
    return n;
}

/* ---------------------------------------------------------------- AES-128 (FIPS-197) */

static const char *const AES_C1_KEY = "000102030405060708090a0b0c0d0e0f";
static const char *const AES_C1_PT = "00112233445566778899aabbccddeeff";
static const char *const AES_C1_CT = "69c4e0d86a7b0430d8cdb78070b4c55a";

UNIT_TEST(test_aes128_fips197_c1_encrypt_gives_expected_ciphertext)
{
    uint8_t key[16], pt[16], ct[16], out[16];
    crypto_aes128_ctx ctx;
    hexbuf(AES_C1_KEY, key, sizeof key);
    hexbuf(AES_C1_PT, pt, sizeof pt);
    hexbuf(AES_C1_CT, ct, sizeof ct);
    crypto_aes128_init(&ctx, key);
    crypto_aes128_encrypt_block(&ctx, pt, out);
    CHECK_MEM(out, ct, 16);
}

UNIT_TEST(test_aes128_fips197_c1_decrypt_gives_expected_plaintext)
{
    uint8_t key[16], pt[16], ct[16], out[16];
    crypto_aes128_ctx ctx;
    hexbuf(AES_C1_KEY, key, sizeof key);
    hexbuf(AES_C1_PT, pt, sizeof pt);
    hexbuf(AES_C1_CT, ct, sizeof ct);
    crypto_aes128_init(&ctx, key);
    crypto_aes128_decrypt_block(&ctx, ct, out);
    CHECK_MEM(out, pt, 16);
}

UNIT_TEST(test_aes128_block_in_place_encrypt_and_decrypt_match_separate_buffers)
{
    uint8_t key[16], pt[16], ct[16], buf[16];
    crypto_aes128_ctx ctx;
    hexbuf(AES_C1_KEY, key, sizeof key);
    hexbuf(AES_C1_PT, pt, sizeof pt);
    hexbuf(AES_C1_CT, ct, sizeof ct);
    crypto_aes128_init(&ctx, key);
    memcpy(buf, pt, 16);
    crypto_aes128_encrypt_block(&ctx, buf, buf);
    CHECK_MEM(buf, ct, 16);
    crypto_aes128_decrypt_block(&ctx, buf, buf);
    CHECK_MEM(buf, pt, 16);
}

/* ---------------------------------------------------------------- AES-128-CBC (SP 800-38A F.2) */

static const char *const CBC_KEY = "2b7e151628aed2a6abf7158809cf4f3c";
static const char *const CBC_IV = "000102030405060708090a0b0c0d0e0f";
static const char *const CBC_PT = "6bc1bee22e409f96e93d7e117393172a"
                                  "ae2d8a571e03ac9c9eb76fac45af8e51"
                                  "30c81c46a35ce411e5fbc1191a0a52ef"
                                  "f69f2445df4f9b17ad2b417be66c3710";
static const char *const CBC_CT = "7649abac8119b246cee98e9b12e9197d"
                                  "5086cb9b507219ee95db113a917678b2"
                                  "73bed6b8e3c1743b7116e69e22229516"
                                  "3ff1caa1681fac09120eca307586e1a7";

UNIT_TEST(test_cbc_sp800_38a_f21_encrypt_gives_all_four_blocks)
{
    uint8_t key[16], iv[16], pt[64], ct[64], out[64];
    hexbuf(CBC_KEY, key, sizeof key);
    hexbuf(CBC_IV, iv, sizeof iv);
    hexbuf(CBC_PT, pt, sizeof pt);
    hexbuf(CBC_CT, ct, sizeof ct);
    CHECK_EQ_INT(crypto_aes128_cbc_encrypt(key, iv, pt, sizeof pt, out), 0);
    CHECK_MEM(out, ct, 64);
}

UNIT_TEST(test_cbc_sp800_38a_f22_decrypt_gives_all_four_blocks)
{
    uint8_t key[16], iv[16], pt[64], ct[64], out[64];
    hexbuf(CBC_KEY, key, sizeof key);
    hexbuf(CBC_IV, iv, sizeof iv);
    hexbuf(CBC_PT, pt, sizeof pt);
    hexbuf(CBC_CT, ct, sizeof ct);
    CHECK_EQ_INT(crypto_aes128_cbc_decrypt(key, iv, ct, sizeof ct, out), 0);
    CHECK_MEM(out, pt, 64);
}

UNIT_TEST(test_cbc_in_place_encrypt_and_decrypt_give_sp800_38a_vectors)
{
    uint8_t key[16], iv[16], pt[64], ct[64], buf[64];
    hexbuf(CBC_KEY, key, sizeof key);
    hexbuf(CBC_IV, iv, sizeof iv);
    hexbuf(CBC_PT, pt, sizeof pt);
    hexbuf(CBC_CT, ct, sizeof ct);
    memcpy(buf, pt, sizeof buf);
    CHECK_EQ_INT(crypto_aes128_cbc_encrypt(key, iv, buf, sizeof buf, buf), 0);
    CHECK_MEM(buf, ct, 64);
    CHECK_EQ_INT(crypto_aes128_cbc_decrypt(key, iv, buf, sizeof buf, buf), 0);
    CHECK_MEM(buf, pt, 64);
}

UNIT_TEST(test_cbc_length_not_block_multiple_rejected_and_output_untouched)
{
    uint8_t key[16] = {0}, iv[16] = {0}, in[33] = {0}, out[33], canary[33];
    const size_t bad_lens[] = {1, 15, 17, 31, 33};
    memset(canary, 0xa5, sizeof canary);
    for (size_t i = 0; i < sizeof bad_lens / sizeof bad_lens[0]; i++) {
        memcpy(out, canary, sizeof out);
        CHECK_EQ_INT(crypto_aes128_cbc_encrypt(key, iv, in, bad_lens[i], out), CRYPTO_EBADLEN);
        CHECK_EQ_INT(crypto_aes128_cbc_decrypt(key, iv, in, bad_lens[i], out), CRYPTO_EBADLEN);
        CHECK_MEM(out, canary, sizeof out);
    }
    /* Zero blocks is a valid (empty) message. */
    CHECK_EQ_INT(crypto_aes128_cbc_encrypt(key, iv, in, 0, out), 0);
    CHECK_MEM(out, canary, sizeof out);
}

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4) */

static void check_sha256_of_string(const char *msg, const char *expect_hex)
{
    uint8_t expect[32], out[32];
    hexbuf(expect_hex, expect, sizeof expect);
    crypto_sha256((const uint8_t *)msg, strlen(msg), out);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_sha256_abc_gives_fips180_digest)
{
    check_sha256_of_string("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

UNIT_TEST(test_sha256_empty_message_gives_known_digest)
{
    uint8_t expect[32], out[32];
    hexbuf("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", expect, sizeof expect);
    crypto_sha256(NULL, 0, out);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_sha256_448bit_message_spanning_two_blocks_gives_fips180_digest)
{
    check_sha256_of_string("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                           "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

UNIT_TEST(test_sha256_896bit_message_gives_fips180_digest)
{
    check_sha256_of_string("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                           "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
                           "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

UNIT_TEST(test_sha256_million_a_streamed_in_odd_chunks_gives_fips180_digest)
{
    static const size_t chunks[] = {1, 3, 63, 65, 127, 997, 7, 64, 129, 500};
    uint8_t a[1000], expect[32], out[32];
    crypto_sha256_ctx ctx;
    size_t fed = 0;
    unsigned ci = 0;
    memset(a, 'a', sizeof a);
    hexbuf("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", expect, sizeof expect);
    crypto_sha256_init(&ctx);
    while (fed < 1000000u) {
        size_t n = chunks[ci++ % (sizeof chunks / sizeof chunks[0])];
        if (n > 1000000u - fed) {
            n = 1000000u - fed;
        }
        crypto_sha256_update(&ctx, a, n);
        fed += n;
    }
    crypto_sha256_final(&ctx, out);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_sha256_streaming_equals_one_shot_at_every_split_point)
{
    uint8_t msg[200], one[32], parts[32];
    for (size_t i = 0; i < sizeof msg; i++) {
        msg[i] = (uint8_t)(i * 37u + 11u);
    }
    /* Every prefix length (crossing the 55/56/64-byte padding edges) and every split of it. */
    for (size_t len = 0; len <= sizeof msg; len += (len < 130u) ? 1u : 7u) {
        crypto_sha256(msg, len, one);
        for (size_t split = 0; split <= len; split++) {
            crypto_sha256_ctx ctx;
            crypto_sha256_init(&ctx);
            crypto_sha256_update(&ctx, msg, split);
            crypto_sha256_update(&ctx, NULL, 0);
            crypto_sha256_update(&ctx, msg + split, len - split);
            crypto_sha256_final(&ctx, parts);
            CHECK_MEM(parts, one, 32);
        }
    }
}

/* ---------------------------------------------------------------- HMAC-SHA256 (RFC 4231) */

static void check_hmac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t data_len,
                       const char *expect_hex)
{
    uint8_t expect[32], out[32];
    const size_t n = hexbuf(expect_hex, expect, sizeof expect);
    crypto_hmac_sha256(key, key_len, data, data_len, out);
    CHECK_MEM(out, expect, n);
}

UNIT_TEST(test_hmac_rfc4231_case1_20_byte_key_gives_expected_tag)
{
    uint8_t key[20];
    memset(key, 0x0b, sizeof key);
    check_hmac(key, sizeof key, (const uint8_t *)"Hi There", 8,
               "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

UNIT_TEST(test_hmac_rfc4231_case2_short_key_gives_expected_tag)
{
    const char *data = "what do ya want for nothing?";
    check_hmac((const uint8_t *)"Jefe", 4, (const uint8_t *)data, strlen(data),
               "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

UNIT_TEST(test_hmac_rfc4231_case3_50_byte_data_gives_expected_tag)
{
    uint8_t key[20], data[50];
    memset(key, 0xaa, sizeof key);
    memset(data, 0xdd, sizeof data);
    check_hmac(key, sizeof key, data, sizeof data,
               "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
}

UNIT_TEST(test_hmac_rfc4231_case4_25_byte_key_gives_expected_tag)
{
    uint8_t key[25], data[50];
    for (size_t i = 0; i < sizeof key; i++) {
        key[i] = (uint8_t)(i + 1u);
    }
    memset(data, 0xcd, sizeof data);
    check_hmac(key, sizeof key, data, sizeof data,
               "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
}

UNIT_TEST(test_hmac_rfc4231_case5_truncated_tag_matches_first_16_bytes)
{
    uint8_t key[20];
    memset(key, 0x0c, sizeof key);
    check_hmac(key, sizeof key, (const uint8_t *)"Test With Truncation", 20,
               "a3b6167473100ee06e0c796c2955552b");
}

UNIT_TEST(test_hmac_rfc4231_case6_131_byte_key_is_hashed_first)
{
    const char *data = "Test Using Larger Than Block-Size Key - Hash Key First";
    uint8_t key[131];
    memset(key, 0xaa, sizeof key);
    check_hmac(key, sizeof key, (const uint8_t *)data, strlen(data),
               "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

UNIT_TEST(test_hmac_rfc4231_case7_131_byte_key_and_long_data_gives_expected_tag)
{
    const char *data = "This is a test using a larger than block-size key and a larger than block-size data. "
                       "The key needs to be hashed before being used by the HMAC algorithm.";
    uint8_t key[131], expect[32], out[32];
    crypto_hmac_sha256_ctx ctx;
    memset(key, 0xaa, sizeof key);
    check_hmac(key, sizeof key, (const uint8_t *)data, strlen(data),
               "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
    /* The same through the streaming interface, fed in three uneven pieces. */
    hexbuf("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", expect, sizeof expect);
    crypto_hmac_sha256_init(&ctx, key, sizeof key);
    crypto_hmac_sha256_update(&ctx, (const uint8_t *)data, 5);
    crypto_hmac_sha256_update(&ctx, (const uint8_t *)data + 5, 100);
    crypto_hmac_sha256_update(&ctx, (const uint8_t *)data + 105, strlen(data) - 105);
    crypto_hmac_sha256_final(&ctx, out);
    CHECK_MEM(out, expect, 32);
}

/* ---------------------------------------------------------------- HKDF-SHA256 (RFC 5869) */

/* PRK is checked as HMAC(salt or 32 zero bytes, IKM), RFC 5869 §2.2; OKM through crypto_hkdf_sha256. */
static void check_hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                       const uint8_t *info, size_t info_len, const char *prk_hex, const char *okm_hex)
{
    static const uint8_t zeros[32] = {0};
    uint8_t prk_expect[32], prk[32], okm_expect[82], okm[82 + 1];
    const size_t okm_len = hexbuf(okm_hex, okm_expect, sizeof okm_expect);
    hexbuf(prk_hex, prk_expect, sizeof prk_expect);
    if (salt_len == 0u) {
        crypto_hmac_sha256(zeros, sizeof zeros, ikm, ikm_len, prk);
    } else {
        crypto_hmac_sha256(salt, salt_len, ikm, ikm_len, prk);
    }
    CHECK_MEM(prk, prk_expect, 32);
    /* One canary byte past okm_len must survive. */
    memset(okm, 0x5a, sizeof okm);
    CHECK_EQ_INT(crypto_hkdf_sha256(salt, salt_len, ikm, ikm_len, info, info_len, okm, okm_len), 0);
    CHECK_MEM(okm, okm_expect, okm_len);
    CHECK_EQ_INT(okm[okm_len], 0x5a);
}

UNIT_TEST(test_hkdf_rfc5869_case1_gives_expected_prk_and_okm)
{
    uint8_t ikm[22], salt[13], info[10];
    memset(ikm, 0x0b, sizeof ikm);
    for (size_t i = 0; i < sizeof salt; i++) {
        salt[i] = (uint8_t)i;
    }
    for (size_t i = 0; i < sizeof info; i++) {
        info[i] = (uint8_t)(0xf0u + i);
    }
    check_hkdf(ikm, sizeof ikm, salt, sizeof salt, info, sizeof info,
               "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
               "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

UNIT_TEST(test_hkdf_rfc5869_case2_long_inputs_give_expected_prk_and_okm)
{
    uint8_t ikm[80], salt[80], info[80];
    for (size_t i = 0; i < 80u; i++) {
        ikm[i] = (uint8_t)i;
        salt[i] = (uint8_t)(0x60u + i);
        info[i] = (uint8_t)(0xb0u + i);
    }
    check_hkdf(ikm, sizeof ikm, salt, sizeof salt, info, sizeof info,
               "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
               "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
               "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
               "cc30c58179ec3e87c14c01d5c1f3434f1d87");
}

UNIT_TEST(test_hkdf_rfc5869_case3_null_salt_and_empty_info_give_expected_prk_and_okm)
{
    uint8_t ikm[22];
    memset(ikm, 0x0b, sizeof ikm);
    check_hkdf(ikm, sizeof ikm, NULL, 0, NULL, 0,
               "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
               "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

UNIT_TEST(test_hkdf_request_over_255_blocks_rejected_and_output_untouched)
{
    static uint8_t okm[255u * 32u + 1u];
    const uint8_t ikm[4] = {1, 2, 3, 4};
    memset(okm, 0x77, sizeof okm);
    CHECK_EQ_INT(crypto_hkdf_sha256(NULL, 0, ikm, sizeof ikm, NULL, 0, okm, sizeof okm), CRYPTO_EBADLEN);
    CHECK_EQ_INT(okm[0], 0x77);
    CHECK_EQ_INT(okm[sizeof okm - 1u], 0x77);
    /* Exactly 255 blocks is the RFC's maximum and is allowed; the byte after it stays untouched. */
    CHECK_EQ_INT(crypto_hkdf_sha256(NULL, 0, ikm, sizeof ikm, NULL, 0, okm, sizeof okm - 1u), 0);
    CHECK_EQ_INT(okm[sizeof okm - 1u], 0x77);
}

UNIT_TEST(test_hkdf_prefix_of_longer_output_equals_shorter_request)
{
    const uint8_t ikm[3] = {9, 8, 7}, salt[2] = {1, 2}, info[3] = {'a', 'b', 'c'};
    uint8_t long_okm[100], short_okm[33];
    CHECK_EQ_INT(crypto_hkdf_sha256(salt, sizeof salt, ikm, sizeof ikm, info, sizeof info, long_okm,
                                    sizeof long_okm),
                 0);
    CHECK_EQ_INT(crypto_hkdf_sha256(salt, sizeof salt, ikm, sizeof ikm, info, sizeof info, short_okm,
                                    sizeof short_okm),
                 0);
    CHECK_MEM(short_okm, long_okm, sizeof short_okm);
}

/* ---------------------------------------------------------------- X25519 (RFC 7748) */

static void check_x25519(const char *k_hex, const char *u_hex, const char *out_hex)
{
    uint8_t k[32], u[32], expect[32], out[32];
    hexbuf(k_hex, k, sizeof k);
    hexbuf(u_hex, u, sizeof u);
    hexbuf(out_hex, expect, sizeof expect);
    crypto_x25519(out, k, u);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_x25519_rfc7748_5_2_vector1_gives_expected_u)
{
    check_x25519("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                 "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                 "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
}

UNIT_TEST(test_x25519_rfc7748_5_2_vector2_gives_expected_u)
{
    check_x25519("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                 "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                 "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
}

/* RFC 7748 §5.2: k = u = 9, then repeatedly (k, u) = (X25519(k, u), k). */
static void x25519_iterate(unsigned iterations, uint8_t k[32])
{
    uint8_t u[32] = {9}, next[32];
    memset(k, 0, 32);
    k[0] = 9;
    for (unsigned i = 0; i < iterations; i++) {
        crypto_x25519(next, k, u);
        memcpy(u, k, 32);
        memcpy(k, next, 32);
    }
}

UNIT_TEST(test_x25519_rfc7748_iterated_once_gives_expected_k)
{
    uint8_t k[32], expect[32];
    hexbuf("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079", expect, sizeof expect);
    x25519_iterate(1, k);
    CHECK_MEM(k, expect, 32);
}

UNIT_TEST(test_x25519_rfc7748_iterated_1000_times_gives_expected_k)
{
    uint8_t k[32], expect[32];
    hexbuf("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51", expect, sizeof expect);
    x25519_iterate(1000, k);
    CHECK_MEM(k, expect, 32);
}

static const char *const ALICE_PRIV = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
static const char *const ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
static const char *const BOB_PRIV = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
static const char *const BOB_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
static const char *const ALICE_BOB_SHARED =
    "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

UNIT_TEST(test_x25519_rfc7748_6_1_base_gives_alice_and_bob_public_keys)
{
    uint8_t priv[32], expect[32], out[32];
    hexbuf(ALICE_PRIV, priv, sizeof priv);
    hexbuf(ALICE_PUB, expect, sizeof expect);
    crypto_x25519_base(out, priv);
    CHECK_MEM(out, expect, 32);
    hexbuf(BOB_PRIV, priv, sizeof priv);
    hexbuf(BOB_PUB, expect, sizeof expect);
    crypto_x25519_base(out, priv);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_x25519_rfc7748_6_1_both_sides_derive_the_same_shared_secret)
{
    check_x25519(ALICE_PRIV, BOB_PUB, ALICE_BOB_SHARED);
    check_x25519(BOB_PRIV, ALICE_PUB, ALICE_BOB_SHARED);
}

UNIT_TEST(test_x25519_top_bit_of_u_is_ignored)
{
    /* RFC 7748 §5.2 vector 1 with bit 255 of u set must give the vector's own answer. */
    uint8_t k[32], u[32], expect[32], out[32];
    hexbuf("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4", k, sizeof k);
    hexbuf("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c", u, sizeof u);
    hexbuf("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552", expect, sizeof expect);
    CHECK_EQ_INT(u[31] & 0x80, 0);
    u[31] |= 0x80;
    crypto_x25519(out, k, u);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_x25519_non_canonical_u_is_reduced_mod_p)
{
    /* u = p + 9 = 2^255 - 10 encodes the same field element as 9 (RFC 7748 §5: accept and reduce). */
    uint8_t priv[32], u[32], expect[32], out[32];
    hexbuf(ALICE_PRIV, priv, sizeof priv);
    hexbuf(ALICE_PUB, expect, sizeof expect);
    memset(u, 0xff, sizeof u);
    u[0] = 0xf6;
    u[31] = 0x7f;
    crypto_x25519(out, priv, u);
    CHECK_MEM(out, expect, 32);
}

UNIT_TEST(test_x25519_low_order_point_zero_gives_all_zero_output)
{
    uint8_t priv[32], u[32] = {0}, out[32], zeros[32] = {0};
    hexbuf(ALICE_PRIV, priv, sizeof priv);
    memset(out, 0xee, sizeof out);
    crypto_x25519(out, priv, u);
    CHECK_MEM(out, zeros, 32);
}

UNIT_TEST(test_x25519_scalar_is_clamped_so_low_and_top_bits_do_not_matter)
{
    uint8_t priv[32], expect[32], out[32];
    hexbuf(ALICE_PRIV, priv, sizeof priv);
    hexbuf(ALICE_PUB, expect, sizeof expect);
    priv[0] ^= 0x07; /* bits 0..2 are cleared by clamping */
    priv[31] ^= 0x80; /* bit 255 is cleared, bit 254 set */
    priv[31] |= 0x40;
    crypto_x25519_base(out, priv);
    CHECK_MEM(out, expect, 32);
}

/* ---------------------------------------------------------------- PKCS#7 */

UNIT_TEST(test_pkcs7_pad_then_unpad_round_trips_lengths_0_to_33)
{
    for (size_t len = 0; len <= 33u; len++) {
        uint8_t buf[33 + 16];
        size_t padded, out_len = 999;
        for (size_t i = 0; i < len; i++) {
            buf[i] = (uint8_t)(0x10u + i); /* data bytes that look like pad values */
        }
        padded = crypto_pkcs7_pad(buf, len, sizeof buf);
        CHECK_EQ_INT(padded, (len / 16u + 1u) * 16u);
        for (size_t i = len; i < padded; i++) {
            CHECK_EQ_INT(buf[i], padded - len);
        }
        CHECK_EQ_INT(crypto_pkcs7_unpad(buf, padded, &out_len), 0);
        CHECK_EQ_INT(out_len, len);
    }
}

UNIT_TEST(test_pkcs7_pad_without_room_returns_zero_and_writes_nothing)
{
    uint8_t buf[32];
    memset(buf, 0x33, sizeof buf);
    CHECK_EQ_INT(crypto_pkcs7_pad(buf, 16, 31), 0); /* needs 32 */
    CHECK_EQ_INT(crypto_pkcs7_pad(buf, 20, 10), 0); /* len beyond cap */
    for (size_t i = 0; i < sizeof buf; i++) {
        CHECK_EQ_INT(buf[i], 0x33);
    }
    CHECK_EQ_INT(crypto_pkcs7_pad(buf, 16, 32), 32);
}

static int unpad_status(const uint8_t *buf, size_t len)
{
    size_t out_len = 12345;
    const int rc = crypto_pkcs7_unpad(buf, len, &out_len);
    if (rc != 0) {
        CHECK_EQ_INT(out_len, 12345); /* no output on failure */
    }
    return rc;
}

UNIT_TEST(test_pkcs7_unpad_rejects_pad_byte_zero)
{
    uint8_t buf[32];
    memset(buf, 0, sizeof buf);
    CHECK_EQ_INT(unpad_status(buf, sizeof buf), CRYPTO_EBADPAD);
}

UNIT_TEST(test_pkcs7_unpad_rejects_pad_byte_17)
{
    uint8_t buf[32];
    memset(buf, 17, sizeof buf);
    CHECK_EQ_INT(unpad_status(buf, sizeof buf), CRYPTO_EBADPAD);
    memset(buf, 0xff, sizeof buf);
    CHECK_EQ_INT(unpad_status(buf, sizeof buf), CRYPTO_EBADPAD);
}

UNIT_TEST(test_pkcs7_unpad_rejects_inconsistent_pad_bytes)
{
    uint8_t buf[32];
    memset(buf, 0xab, sizeof buf);
    memset(buf + 28, 4, 4);
    CHECK_EQ_INT(unpad_status(buf, sizeof buf), 0);
    /* Any single wrong byte inside the claimed pad is caught, including the first one. */
    for (size_t i = 28; i < 31u; i++) {
        buf[i] = 5;
        CHECK_EQ_INT(unpad_status(buf, sizeof buf), CRYPTO_EBADPAD);
        buf[i] = 4;
    }
    /* A full block of 16: the first pad byte differing is caught too. */
    memset(buf + 16, 16, 16);
    buf[16] = 15;
    CHECK_EQ_INT(unpad_status(buf, sizeof buf), CRYPTO_EBADPAD);
}

UNIT_TEST(test_pkcs7_unpad_rejects_length_not_block_multiple)
{
    uint8_t buf[33];
    memset(buf, 1, sizeof buf);
    CHECK_EQ_INT(unpad_status(buf, 15), CRYPTO_EBADLEN);
    CHECK_EQ_INT(unpad_status(buf, 17), CRYPTO_EBADLEN);
    CHECK_EQ_INT(unpad_status(buf, 33), CRYPTO_EBADLEN);
}

UNIT_TEST(test_pkcs7_unpad_rejects_empty_input)
{
    uint8_t buf[1] = {1};
    CHECK_EQ_INT(unpad_status(buf, 0), CRYPTO_EBADLEN);
}

/* ---------------------------------------------------------------- ct_equal, wipe */

UNIT_TEST(test_ct_equal_returns_one_for_equal_buffers)
{
    uint8_t a[40], b[40];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = b[i] = (uint8_t)(i * 7u);
    }
    CHECK_EQ_INT(crypto_ct_equal(a, b, sizeof a), 1);
    CHECK_EQ_INT(crypto_ct_equal(a, b, 0), 1);
}

UNIT_TEST(test_ct_equal_returns_zero_when_first_or_last_byte_differs)
{
    uint8_t a[40], b[40];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = b[i] = (uint8_t)(i * 7u);
    }
    b[0] ^= 0x80;
    CHECK_EQ_INT(crypto_ct_equal(a, b, sizeof a), 0);
    b[0] ^= 0x80;
    b[39] ^= 0x01;
    CHECK_EQ_INT(crypto_ct_equal(a, b, sizeof a), 0);
    CHECK_EQ_INT(crypto_ct_equal(a, b, 39), 1);
}

UNIT_TEST(test_wipe_zeroes_every_byte_and_nothing_beyond)
{
    uint8_t buf[48];
    memset(buf, 0xc3, sizeof buf);
    crypto_wipe(buf + 8, 32);
    for (size_t i = 0; i < sizeof buf; i++) {
        CHECK_EQ_INT(buf[i], (i >= 8u && i < 40u) ? 0 : 0xc3);
    }
}

UNIT_TEST(test_wipe_at_every_alignment_and_length_zeroes_exactly_the_range)
{
    /* The word stores cover the aligned middle; the byte stores the edges at either end. */
    uint32_t storage[16];
    uint8_t *buf = (uint8_t *)storage;
    for (size_t off = 0; off < 8u; off++) {
        for (size_t n = 0; n <= 40u; n++) {
            memset(buf, 0xc3, sizeof storage);
            crypto_wipe(buf + off, n);
            for (size_t i = 0; i < sizeof storage; i++) {
                CHECK_EQ_INT(buf[i], (i >= off && i < off + n) ? 0 : 0xc3);
            }
        }
    }
}
