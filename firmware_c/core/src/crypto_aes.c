/**
 * @file crypto_aes.c
 * @brief AES-128 (FIPS-197), CBC mode (SP 800-38A §6.2) and PKCS#7 padding (RFC 5652 §6.3).
 *
 * Byte-oriented: the state is 16 bytes in FIPS-197 column order (state[4c + r]), rounds use the byte
 * S-box and xtime(), which keeps flash use small on the Cortex-M4. The S-box lookup is indexed by
 * key-dependent data; see crypto.h for why that is accepted on this target.
 */
#include "otakey/crypto.h"

#include "otakey/errors.h"

#define AES128_ROUNDS 10

/* FIPS-197 Figure 7: multiplicative inverse in GF(2^8) followed by the affine map. */
static const uint8_t aes_sbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

/* FIPS-197 Figure 14: the inverse of aes_sbox. */
static const uint8_t aes_inv_sbox[256] = {
    0x52, 0x09, 0x6a, 0xd5, 0x30, 0x36, 0xa5, 0x38, 0xbf, 0x40, 0xa3, 0x9e, 0x81, 0xf3, 0xd7, 0xfb,
    0x7c, 0xe3, 0x39, 0x82, 0x9b, 0x2f, 0xff, 0x87, 0x34, 0x8e, 0x43, 0x44, 0xc4, 0xde, 0xe9, 0xcb,
    0x54, 0x7b, 0x94, 0x32, 0xa6, 0xc2, 0x23, 0x3d, 0xee, 0x4c, 0x95, 0x0b, 0x42, 0xfa, 0xc3, 0x4e,
    0x08, 0x2e, 0xa1, 0x66, 0x28, 0xd9, 0x24, 0xb2, 0x76, 0x5b, 0xa2, 0x49, 0x6d, 0x8b, 0xd1, 0x25,
    0x72, 0xf8, 0xf6, 0x64, 0x86, 0x68, 0x98, 0x16, 0xd4, 0xa4, 0x5c, 0xcc, 0x5d, 0x65, 0xb6, 0x92,
    0x6c, 0x70, 0x48, 0x50, 0xfd, 0xed, 0xb9, 0xda, 0x5e, 0x15, 0x46, 0x57, 0xa7, 0x8d, 0x9d, 0x84,
    0x90, 0xd8, 0xab, 0x00, 0x8c, 0xbc, 0xd3, 0x0a, 0xf7, 0xe4, 0x58, 0x05, 0xb8, 0xb3, 0x45, 0x06,
    0xd0, 0x2c, 0x1e, 0x8f, 0xca, 0x3f, 0x0f, 0x02, 0xc1, 0xaf, 0xbd, 0x03, 0x01, 0x13, 0x8a, 0x6b,
    0x3a, 0x91, 0x11, 0x41, 0x4f, 0x67, 0xdc, 0xea, 0x97, 0xf2, 0xcf, 0xce, 0xf0, 0xb4, 0xe6, 0x73,
    0x96, 0xac, 0x74, 0x22, 0xe7, 0xad, 0x35, 0x85, 0xe2, 0xf9, 0x37, 0xe8, 0x1c, 0x75, 0xdf, 0x6e,
    0x47, 0xf1, 0x1a, 0x71, 0x1d, 0x29, 0xc5, 0x89, 0x6f, 0xb7, 0x62, 0x0e, 0xaa, 0x18, 0xbe, 0x1b,
    0xfc, 0x56, 0x3e, 0x4b, 0xc6, 0xd2, 0x79, 0x20, 0x9a, 0xdb, 0xc0, 0xfe, 0x78, 0xcd, 0x5a, 0xf4,
    0x1f, 0xdd, 0xa8, 0x33, 0x88, 0x07, 0xc7, 0x31, 0xb1, 0x12, 0x10, 0x59, 0x27, 0x80, 0xec, 0x5f,
    0x60, 0x51, 0x7f, 0xa9, 0x19, 0xb5, 0x4a, 0x0d, 0x2d, 0xe5, 0x7a, 0x9f, 0x93, 0xc9, 0x9c, 0xef,
    0xa0, 0xe0, 0x3b, 0x4d, 0xae, 0x2a, 0xf5, 0xb0, 0xc8, 0xeb, 0xbb, 0x3c, 0x83, 0x53, 0x99, 0x61,
    0x17, 0x2b, 0x04, 0x7e, 0xba, 0x77, 0xd6, 0x26, 0xe1, 0x69, 0x14, 0x63, 0x55, 0x21, 0x0c, 0x7d,
};

/* Multiply by x in GF(2^8) mod x^8 + x^4 + x^3 + x + 1 (FIPS-197 §4.2.1), without a branch on b. */
static uint8_t xtime(uint8_t b)
{
    return (uint8_t)((uint8_t)(b << 1) ^ (uint8_t)(0x1bu & (0u - (uint32_t)(b >> 7))));
}

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint32_t sub_word(uint32_t w)
{
    return ((uint32_t)aes_sbox[(w >> 24) & 0xffu] << 24) | ((uint32_t)aes_sbox[(w >> 16) & 0xffu] << 16) |
           ((uint32_t)aes_sbox[(w >> 8) & 0xffu] << 8) | (uint32_t)aes_sbox[w & 0xffu];
}

void crypto_aes128_init(crypto_aes128_ctx *ctx, const uint8_t key[16])
{
    /* FIPS-197 §5.2 with Nk = 4: Rcon[i] = x^(i-1) in GF(2^8). */
    uint8_t rcon = 0x01;

    for (unsigned i = 0; i < 4u; i++) {
        ctx->rk[i] = load_be32(key + 4u * i);
    }
    for (unsigned i = 4; i < 44u; i++) {
        uint32_t temp = ctx->rk[i - 1u];
        if ((i & 3u) == 0u) {
            temp = sub_word((temp << 8) | (temp >> 24)) ^ ((uint32_t)rcon << 24);
            rcon = xtime(rcon);
        }
        ctx->rk[i] = ctx->rk[i - 4u] ^ temp;
    }
}

static void add_round_key(uint8_t s[16], const uint32_t *rk)
{
    for (unsigned c = 0; c < 4u; c++) {
        s[4u * c + 0u] ^= (uint8_t)(rk[c] >> 24);
        s[4u * c + 1u] ^= (uint8_t)(rk[c] >> 16);
        s[4u * c + 2u] ^= (uint8_t)(rk[c] >> 8);
        s[4u * c + 3u] ^= (uint8_t)rk[c];
    }
}

/* SubBytes then ShiftRows (FIPS-197 §5.1.1-2): row r of the output column c comes from column c + r. */
static void sub_shift_rows(uint8_t s[16])
{
    uint8_t t[16];
    for (unsigned c = 0; c < 4u; c++) {
        for (unsigned r = 0; r < 4u; r++) {
            t[4u * c + r] = aes_sbox[s[4u * ((c + r) & 3u) + r]];
        }
    }
    for (unsigned i = 0; i < 16u; i++) {
        s[i] = t[i];
    }
}

/* InvShiftRows then InvSubBytes (FIPS-197 §5.3.1-2): row r of column c comes from column c - r. */
static void inv_shift_sub_rows(uint8_t s[16])
{
    uint8_t t[16];
    for (unsigned c = 0; c < 4u; c++) {
        for (unsigned r = 0; r < 4u; r++) {
            t[4u * c + r] = aes_inv_sbox[s[4u * ((c + 4u - r) & 3u) + r]];
        }
    }
    for (unsigned i = 0; i < 16u; i++) {
        s[i] = t[i];
    }
}

/* MixColumns (FIPS-197 §5.1.3): each column times {03}x^3 + {01}x^2 + {01}x + {02}. */
static void mix_columns(uint8_t s[16])
{
    for (unsigned c = 0; c < 4u; c++) {
        uint8_t *col = s + 4u * c;
        const uint8_t a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
        const uint8_t all = (uint8_t)(a0 ^ a1 ^ a2 ^ a3);
        /* 2a ^ 3b ^ c ^ d == a ^ (a ^ b ^ c ^ d) ^ 2(a ^ b): saves three multiplications. */
        col[0] = (uint8_t)(a0 ^ all ^ xtime((uint8_t)(a0 ^ a1)));
        col[1] = (uint8_t)(a1 ^ all ^ xtime((uint8_t)(a1 ^ a2)));
        col[2] = (uint8_t)(a2 ^ all ^ xtime((uint8_t)(a2 ^ a3)));
        col[3] = (uint8_t)(a3 ^ all ^ xtime((uint8_t)(a3 ^ a0)));
    }
}

/* InvMixColumns (FIPS-197 §5.3.3): each column times {0b}x^3 + {0d}x^2 + {09}x + {0e}. */
static void inv_mix_columns(uint8_t s[16])
{
    for (unsigned c = 0; c < 4u; c++) {
        uint8_t *col = s + 4u * c;
        uint8_t a[4], x2[4], x4[4], x8[4];
        for (unsigned r = 0; r < 4u; r++) {
            a[r] = col[r];
            x2[r] = xtime(a[r]);
            x4[r] = xtime(x2[r]);
            x8[r] = xtime(x4[r]);
        }
        for (unsigned r = 0; r < 4u; r++) {
            const unsigned r1 = (r + 1u) & 3u, r2 = (r + 2u) & 3u, r3 = (r + 3u) & 3u;
            const uint8_t m14 = (uint8_t)(x8[r] ^ x4[r] ^ x2[r]);
            const uint8_t m11 = (uint8_t)(x8[r1] ^ x2[r1] ^ a[r1]);
            const uint8_t m13 = (uint8_t)(x8[r2] ^ x4[r2] ^ a[r2]);
            const uint8_t m9 = (uint8_t)(x8[r3] ^ a[r3]);
            col[r] = (uint8_t)(m14 ^ m11 ^ m13 ^ m9);
        }
    }
}

void crypto_aes128_encrypt_block(const crypto_aes128_ctx *ctx, const uint8_t in[16], uint8_t out[16])
{
    uint8_t s[16];
    for (unsigned i = 0; i < 16u; i++) {
        s[i] = in[i];
    }
    add_round_key(s, ctx->rk);
    for (unsigned round = 1; round < AES128_ROUNDS; round++) {
        sub_shift_rows(s);
        mix_columns(s);
        add_round_key(s, ctx->rk + 4u * round);
    }
    sub_shift_rows(s);
    add_round_key(s, ctx->rk + 4u * AES128_ROUNDS);
    /* Written only at the end, so out may be the same buffer as in. */
    for (unsigned i = 0; i < 16u; i++) {
        out[i] = s[i];
    }
    crypto_wipe(s, sizeof s);
}

void crypto_aes128_decrypt_block(const crypto_aes128_ctx *ctx, const uint8_t in[16], uint8_t out[16])
{
    uint8_t s[16];
    for (unsigned i = 0; i < 16u; i++) {
        s[i] = in[i];
    }
    add_round_key(s, ctx->rk + 4u * AES128_ROUNDS);
    for (unsigned round = AES128_ROUNDS - 1u; round > 0u; round--) {
        inv_shift_sub_rows(s);
        add_round_key(s, ctx->rk + 4u * round);
        inv_mix_columns(s);
    }
    inv_shift_sub_rows(s);
    add_round_key(s, ctx->rk);
    for (unsigned i = 0; i < 16u; i++) {
        out[i] = s[i];
    }
    crypto_wipe(s, sizeof s);
}

int crypto_aes128_cbc_encrypt(const uint8_t key[16], const uint8_t iv[16], const uint8_t *in, size_t len,
                              uint8_t *out)
{
    crypto_aes128_ctx ctx;
    uint8_t chain[16];

    if ((len % CRYPTO_AES_BLOCK) != 0u) {
        return CRYPTO_EBADLEN;
    }
    crypto_aes128_init(&ctx, key);
    for (unsigned i = 0; i < 16u; i++) {
        chain[i] = iv[i];
    }
    for (size_t off = 0; off < len; off += CRYPTO_AES_BLOCK) {
        /* C_j = E(P_j ^ C_{j-1}); the XOR goes into chain so in and out may alias. */
        for (unsigned i = 0; i < 16u; i++) {
            chain[i] ^= in[off + i];
        }
        crypto_aes128_encrypt_block(&ctx, chain, chain);
        for (unsigned i = 0; i < 16u; i++) {
            out[off + i] = chain[i];
        }
    }
    crypto_wipe(&ctx, sizeof ctx);
    crypto_wipe(chain, sizeof chain);
    return 0;
}

int crypto_aes128_cbc_decrypt(const uint8_t key[16], const uint8_t iv[16], const uint8_t *in, size_t len,
                              uint8_t *out)
{
    crypto_aes128_ctx ctx;
    uint8_t prev[16], cur[16], plain[16];

    if ((len % CRYPTO_AES_BLOCK) != 0u) {
        return CRYPTO_EBADLEN;
    }
    crypto_aes128_init(&ctx, key);
    for (unsigned i = 0; i < 16u; i++) {
        prev[i] = iv[i];
    }
    for (size_t off = 0; off < len; off += CRYPTO_AES_BLOCK) {
        /* P_j = D(C_j) ^ C_{j-1}; C_j is saved first because writing out may overwrite it. */
        for (unsigned i = 0; i < 16u; i++) {
            cur[i] = in[off + i];
        }
        crypto_aes128_decrypt_block(&ctx, cur, plain);
        for (unsigned i = 0; i < 16u; i++) {
            out[off + i] = (uint8_t)(plain[i] ^ prev[i]);
            prev[i] = cur[i];
        }
    }
    crypto_wipe(&ctx, sizeof ctx);
    crypto_wipe(plain, sizeof plain);
    return 0;
}

size_t crypto_pkcs7_pad(uint8_t *buf, size_t len, size_t cap)
{
    const size_t pad = CRYPTO_AES_BLOCK - (len % CRYPTO_AES_BLOCK);

    /* Checked as "cap - len < pad" so len + pad cannot wrap around. */
    if (len > cap || cap - len < pad) {
        return 0;
    }
    for (size_t i = 0; i < pad; i++) {
        buf[len + i] = (uint8_t)pad;
    }
    return len + pad;
}

int crypto_pkcs7_unpad(const uint8_t *buf, size_t len, size_t *out_len)
{
    uint32_t pad, bad, acc = 0;

    if (len == 0u || (len % CRYPTO_AES_BLOCK) != 0u) {
        return CRYPTO_EBADLEN;
    }
    pad = buf[len - 1u];
    /* pad must be 1..16: (pad - 1) >> 31 flags 0, (16 - pad) >> 31 flags 17..255. */
    bad = ((pad - 1u) >> 31) | ((16u - pad) >> 31);
    /* Every one of the last 16 bytes is read, whatever pad says; those inside the pad must equal it.
     * in_pad is all-ones when i < pad, computed from the sign of i - pad rather than a comparison. */
    for (uint32_t i = 0; i < CRYPTO_AES_BLOCK; i++) {
        const uint32_t in_pad = 0u - ((i - pad) >> 31);
        acc |= ((uint32_t)buf[len - 1u - i] ^ pad) & in_pad;
    }
    /* acc is 0..255, so 0 - acc has its top bit set exactly when some pad byte differed. */
    bad |= (0u - acc) >> 31;
    if (bad != 0u) {
        return CRYPTO_EBADPAD;
    }
    *out_len = len - pad;
    return 0;
}
