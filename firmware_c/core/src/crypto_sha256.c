/**
 * @file crypto_sha256.c
 * @brief SHA-256 (FIPS 180-4 §6.2), streaming.
 */
#include "otakey/crypto.h"

/* FIPS 180-4 §4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
    0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
    0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
    0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
    0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32u - n));
}

/* FIPS 180-4 §6.2.2 with the schedule kept as a 16-word ring (w[t mod 16]): a quarter of the stack
 * to wipe and to address, the same words. */
static uint32_t sched_next(uint32_t w[16], unsigned t)
{
    const uint32_t w15 = w[(t - 15u) & 15u];
    const uint32_t w2 = w[(t - 2u) & 15u];
    const uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
    const uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
    w[t & 15u] += s0 + w[(t - 7u) & 15u] + s1;
    return w[t & 15u];
}

static void sha256_compress(uint32_t h[8], const uint8_t block[64])
{
    uint32_t w[16];
    uint32_t a, b, c, d, e, f, g, hh;

    for (unsigned t = 0; t < 16u; t++) {
        w[t] = ((uint32_t)block[4u * t] << 24) | ((uint32_t)block[4u * t + 1u] << 16) |
               ((uint32_t)block[4u * t + 2u] << 8) | (uint32_t)block[4u * t + 3u];
    }
    a = h[0];
    b = h[1];
    c = h[2];
    d = h[3];
    e = h[4];
    f = h[5];
    g = h[6];
    hh = h[7];
    for (unsigned t = 0; t < 64u; t++) {
        const uint32_t wt = (t < 16u) ? w[t] : sched_next(w, t);
        const uint32_t big_s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        const uint32_t ch = (e & f) ^ (~e & g);
        const uint32_t t1 = hh + big_s1 + ch + sha256_k[t] + wt;
        const uint32_t big_s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        const uint32_t t2 = big_s0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
    /* The schedule holds message words, which may be key material (HMAC pads). */
    crypto_wipe(w, sizeof w);
}

void crypto_sha256_init(crypto_sha256_ctx *ctx)
{
    /* FIPS 180-4 §5.3.3: square roots of the first 8 primes. */
    static const uint32_t h0[8] = {
        0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
        0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
    };
    for (unsigned i = 0; i < 8u; i++) {
        ctx->h[i] = h0[i];
    }
    ctx->total_len = 0;
    ctx->block_len = 0;
}

void crypto_sha256_update(crypto_sha256_ctx *ctx, const uint8_t *data, size_t len)
{
    ctx->total_len += (uint64_t)len;
    while (len > 0u) {
        size_t take;
        if (ctx->block_len == 0u && len >= CRYPTO_SHA256_BLOCK) {
            /* A whole block straight from the input (the image hash, flash records): no copy. */
            sha256_compress(ctx->h, data);
            data += CRYPTO_SHA256_BLOCK;
            len -= CRYPTO_SHA256_BLOCK;
            continue;
        }
        take = CRYPTO_SHA256_BLOCK - ctx->block_len;
        if (take > len) {
            take = len;
        }
        for (size_t i = 0; i < take; i++) {
            ctx->block[ctx->block_len + i] = data[i];
        }
        ctx->block_len += take;
        data += take;
        len -= take;
        if (ctx->block_len == CRYPTO_SHA256_BLOCK) {
            sha256_compress(ctx->h, ctx->block);
            ctx->block_len = 0;
        }
    }
}

void crypto_sha256_final(crypto_sha256_ctx *ctx, uint8_t out[32])
{
    const uint64_t bit_len = ctx->total_len * 8u;

    /* FIPS 180-4 §5.1.1: a 1 bit, zeros up to 56 mod 64 bytes, then the 64-bit big-endian bit length. */
    ctx->block[ctx->block_len++] = 0x80;
    if (ctx->block_len > 56u) {
        while (ctx->block_len < CRYPTO_SHA256_BLOCK) {
            ctx->block[ctx->block_len++] = 0;
        }
        sha256_compress(ctx->h, ctx->block);
        ctx->block_len = 0;
    }
    while (ctx->block_len < 56u) {
        ctx->block[ctx->block_len++] = 0;
    }
    for (unsigned i = 0; i < 8u; i++) {
        ctx->block[56u + i] = (uint8_t)(bit_len >> (56u - 8u * i));
    }
    sha256_compress(ctx->h, ctx->block);
    for (unsigned i = 0; i < 8u; i++) {
        out[4u * i] = (uint8_t)(ctx->h[i] >> 24);
        out[4u * i + 1u] = (uint8_t)(ctx->h[i] >> 16);
        out[4u * i + 2u] = (uint8_t)(ctx->h[i] >> 8);
        out[4u * i + 3u] = (uint8_t)ctx->h[i];
    }
    /* A finished context holds nothing worth keeping; clear it so a secret input does not linger. */
    crypto_wipe(ctx, sizeof *ctx);
}

void crypto_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    crypto_sha256_ctx ctx;
    crypto_sha256_init(&ctx);
    crypto_sha256_update(&ctx, data, len);
    crypto_sha256_final(&ctx, out);
}
