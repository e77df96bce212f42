/**
 * @file crypto_x25519.c
 * @brief X25519 (RFC 7748 §5) for a 32-bit core with a 32x32->64 multiplier (Cortex-M4 SMULL/SMLAL).
 *
 * A field element of GF(2^255 - 19) is ten signed limbs in radix 2^25.5: limb i holds 26 bits when i is
 * even and 25 bits when i is odd, so limb i sits at bit 25 * i + ceil(i / 2). Products are 64-bit sums
 * of 32x32 products; nothing needs a 64x64 multiply.
 *
 * Limb bounds (checked where they matter): after fe_carry_wide every limb is within about 2^25 (even)
 * or 2^24 (odd). A sum or difference of two such elements stays below 2^26 / 2^25, so 19 times a limb
 * fits in int32 and a product row sums at most ten terms of < 2^58, well inside int64. Every input to
 * fe_mul/fe_sq in the ladder is a carried element or one add/sub of two carried elements.
 *
 * Constant time: the ladder runs 255 identical steps; the secret scalar bit only enters fe_cswap as an
 * all-zeros/all-ones mask. No branch or memory index depends on secret data. Right shifts of negative
 * values rely on arithmetic shift (what GCC and Clang do on every target we build for).
 */
#include "otakey/crypto.h"

typedef int32_t fe[10];

/* Round-to-nearest carry out of a 64-bit limb sum: the carry goes on in 64 bits, while what stays in the
 * limb is within +-2^25 (even) or +-2^24 (odd), so it is computed from the low 32 bits alone (the
 * wrap-around cancels). On a 32-bit core that halves the work of a carry. */
#define CARRY_WIDE(t, h, i, bits)                                                           \
    do {                                                                                   \
        const int64_t c_ = ((t)[i] + ((int64_t)1 << ((bits) - 1))) >> (bits);              \
        (t)[(i) + 1] += c_;                                                                \
        (h)[i] = (int32_t)((uint32_t)(t)[i] - ((uint32_t)c_ << (bits)));                   \
    } while (0)

/* Bring 64-bit limb sums back to the carried bounds. Two interleaved chains (from 0 and from 4) shorten
 * the dependency; the last carry of limb 9 folds into limb 0 because 2^255 = 19 (mod p). Limbs 4 and 0
 * are carried twice; their second carry is small (< 2^13) and goes into a limb already in bounds. */
static void fe_carry_wide(fe h, int64_t t[10])
{
    int64_t c, v;

    CARRY_WIDE(t, h, 0, 26);
    CARRY_WIDE(t, h, 4, 26);
    CARRY_WIDE(t, h, 1, 25);
    CARRY_WIDE(t, h, 5, 25);
    CARRY_WIDE(t, h, 2, 26);
    CARRY_WIDE(t, h, 6, 26);
    /* Limb 3 carries into limb 4, already reduced: finish limb 4 from that 64-bit sum. */
    c = (t[3] + ((int64_t)1 << 24)) >> 25;
    h[3] = (int32_t)((uint32_t)t[3] - ((uint32_t)c << 25));
    v = (int64_t)h[4] + c;
    c = (v + ((int64_t)1 << 25)) >> 26;
    h[4] = (int32_t)((uint32_t)v - ((uint32_t)c << 26));
    h[5] += (int32_t)c;
    CARRY_WIDE(t, h, 7, 25);
    CARRY_WIDE(t, h, 8, 26);
    c = (t[9] + ((int64_t)1 << 24)) >> 25;
    h[9] = (int32_t)((uint32_t)t[9] - ((uint32_t)c << 25));
    v = (int64_t)h[0] + 19 * c;
    c = (v + ((int64_t)1 << 25)) >> 26;
    h[0] = (int32_t)((uint32_t)v - ((uint32_t)c << 26));
    h[1] += (int32_t)c;
}

static void fe_mul(fe h, const fe f, const fe g)
{
    const int32_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4], f5 = f[5], f6 = f[6], f7 = f[7],
        f8 = f[8], f9 = f[9];
    const int32_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4], g5 = g[5], g6 = g[6], g7 = g[7],
        g8 = g[8], g9 = g[9];
    /* 2^255 = 19 (mod p): a product that lands past limb 9 folds back times 19. */
    const int32_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4, g5_19 = 19 * g5,
        g6_19 = 19 * g6, g7_19 = 19 * g7, g8_19 = 19 * g8, g9_19 = 19 * g9;
    /* Two odd (25-bit) limbs sit one bit below the product's limb position: times 2. */
    const int32_t f1_2 = 2 * f1, f3_2 = 2 * f3, f5_2 = 2 * f5, f7_2 = 2 * f7, f9_2 = 2 * f9;
    int64_t t[10];
    t[0] = (int64_t)f0 * g0 + (int64_t)f1_2 * g9_19 + (int64_t)f2 * g8_19 + (int64_t)f3_2 * g7_19
           + (int64_t)f4 * g6_19 + (int64_t)f5_2 * g5_19 + (int64_t)f6 * g4_19 + (int64_t)f7_2 * g3_19
           + (int64_t)f8 * g2_19 + (int64_t)f9_2 * g1_19;
    t[1] = (int64_t)f0 * g1 + (int64_t)f1 * g0 + (int64_t)f2 * g9_19 + (int64_t)f3 * g8_19
           + (int64_t)f4 * g7_19 + (int64_t)f5 * g6_19 + (int64_t)f6 * g5_19 + (int64_t)f7 * g4_19
           + (int64_t)f8 * g3_19 + (int64_t)f9 * g2_19;
    t[2] = (int64_t)f0 * g2 + (int64_t)f1_2 * g1 + (int64_t)f2 * g0 + (int64_t)f3_2 * g9_19
           + (int64_t)f4 * g8_19 + (int64_t)f5_2 * g7_19 + (int64_t)f6 * g6_19 + (int64_t)f7_2 * g5_19
           + (int64_t)f8 * g4_19 + (int64_t)f9_2 * g3_19;
    t[3] = (int64_t)f0 * g3 + (int64_t)f1 * g2 + (int64_t)f2 * g1 + (int64_t)f3 * g0 + (int64_t)f4 * g9_19
           + (int64_t)f5 * g8_19 + (int64_t)f6 * g7_19 + (int64_t)f7 * g6_19 + (int64_t)f8 * g5_19
           + (int64_t)f9 * g4_19;
    t[4] = (int64_t)f0 * g4 + (int64_t)f1_2 * g3 + (int64_t)f2 * g2 + (int64_t)f3_2 * g1 + (int64_t)f4 * g0
           + (int64_t)f5_2 * g9_19 + (int64_t)f6 * g8_19 + (int64_t)f7_2 * g7_19 + (int64_t)f8 * g6_19
           + (int64_t)f9_2 * g5_19;
    t[5] = (int64_t)f0 * g5 + (int64_t)f1 * g4 + (int64_t)f2 * g3 + (int64_t)f3 * g2 + (int64_t)f4 * g1
           + (int64_t)f5 * g0 + (int64_t)f6 * g9_19 + (int64_t)f7 * g8_19 + (int64_t)f8 * g7_19
           + (int64_t)f9 * g6_19;
    t[6] = (int64_t)f0 * g6 + (int64_t)f1_2 * g5 + (int64_t)f2 * g4 + (int64_t)f3_2 * g3 + (int64_t)f4 * g2
           + (int64_t)f5_2 * g1 + (int64_t)f6 * g0 + (int64_t)f7_2 * g9_19 + (int64_t)f8 * g8_19
           + (int64_t)f9_2 * g7_19;
    t[7] = (int64_t)f0 * g7 + (int64_t)f1 * g6 + (int64_t)f2 * g5 + (int64_t)f3 * g4 + (int64_t)f4 * g3
           + (int64_t)f5 * g2 + (int64_t)f6 * g1 + (int64_t)f7 * g0 + (int64_t)f8 * g9_19
           + (int64_t)f9 * g8_19;
    t[8] = (int64_t)f0 * g8 + (int64_t)f1_2 * g7 + (int64_t)f2 * g6 + (int64_t)f3_2 * g5 + (int64_t)f4 * g4
           + (int64_t)f5_2 * g3 + (int64_t)f6 * g2 + (int64_t)f7_2 * g1 + (int64_t)f8 * g0
           + (int64_t)f9_2 * g9_19;
    t[9] = (int64_t)f0 * g9 + (int64_t)f1 * g8 + (int64_t)f2 * g7 + (int64_t)f3 * g6 + (int64_t)f4 * g5
           + (int64_t)f5 * g4 + (int64_t)f6 * g3 + (int64_t)f7 * g2 + (int64_t)f8 * g1 + (int64_t)f9 * g0;
    fe_carry_wide(h, t);
}

static void fe_sq(fe h, const fe f)
{
    const int32_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4], f5 = f[5], f6 = f[6], f7 = f[7],
        f8 = f[8], f9 = f[9];
    const int32_t f0_2 = 2 * f0, f1_2 = 2 * f1, f1_4 = 4 * f1, f2_2 = 2 * f2, f3_2 = 2 * f3, f3_4 = 4 * f3,
        f4_2 = 2 * f4, f5_2 = 2 * f5, f5_4 = 4 * f5, f5_19 = 19 * f5, f6_2 = 2 * f6, f6_19 = 19 * f6,
        f7_2 = 2 * f7, f7_4 = 4 * f7, f7_19 = 19 * f7, f8_2 = 2 * f8, f8_19 = 19 * f8, f9_2 = 2 * f9,
        f9_19 = 19 * f9;
    int64_t t[10];
    t[0] = (int64_t)f0 * f0 + (int64_t)f1_4 * f9_19 + (int64_t)f2_2 * f8_19 + (int64_t)f3_4 * f7_19
           + (int64_t)f4_2 * f6_19 + (int64_t)f5_2 * f5_19;
    t[1] = (int64_t)f0_2 * f1 + (int64_t)f2_2 * f9_19 + (int64_t)f3_2 * f8_19 + (int64_t)f4_2 * f7_19
           + (int64_t)f5_2 * f6_19;
    t[2] = (int64_t)f0_2 * f2 + (int64_t)f1_2 * f1 + (int64_t)f3_4 * f9_19 + (int64_t)f4_2 * f8_19
           + (int64_t)f5_4 * f7_19 + (int64_t)f6 * f6_19;
    t[3] = (int64_t)f0_2 * f3 + (int64_t)f1_2 * f2 + (int64_t)f4_2 * f9_19 + (int64_t)f5_2 * f8_19
           + (int64_t)f6_2 * f7_19;
    t[4] = (int64_t)f0_2 * f4 + (int64_t)f1_4 * f3 + (int64_t)f2 * f2 + (int64_t)f5_4 * f9_19
           + (int64_t)f6_2 * f8_19 + (int64_t)f7_2 * f7_19;
    t[5] = (int64_t)f0_2 * f5 + (int64_t)f1_2 * f4 + (int64_t)f2_2 * f3 + (int64_t)f6_2 * f9_19
           + (int64_t)f7_2 * f8_19;
    t[6] = (int64_t)f0_2 * f6 + (int64_t)f1_4 * f5 + (int64_t)f2_2 * f4 + (int64_t)f3_2 * f3
           + (int64_t)f7_4 * f9_19 + (int64_t)f8 * f8_19;
    t[7] = (int64_t)f0_2 * f7 + (int64_t)f1_2 * f6 + (int64_t)f2_2 * f5 + (int64_t)f3_2 * f4
           + (int64_t)f8_2 * f9_19;
    t[8] = (int64_t)f0_2 * f8 + (int64_t)f1_4 * f7 + (int64_t)f2_2 * f6 + (int64_t)f3_4 * f5
           + (int64_t)f4 * f4 + (int64_t)f9_2 * f9_19;
    t[9] = (int64_t)f0_2 * f9 + (int64_t)f1_2 * f8 + (int64_t)f2_2 * f7 + (int64_t)f3_2 * f6
           + (int64_t)f4_2 * f5;
    fe_carry_wide(h, t);
}

static void fe_add(fe h, const fe f, const fe g)
{
    for (unsigned i = 0; i < 10u; i++) {
        h[i] = f[i] + g[i];
    }
}

static void fe_sub(fe h, const fe f, const fe g)
{
    for (unsigned i = 0; i < 10u; i++) {
        h[i] = f[i] - g[i];
    }
}

static void fe_copy(fe h, const fe f)
{
    for (unsigned i = 0; i < 10u; i++) {
        h[i] = f[i];
    }
}

static void fe_set_small(fe h, int32_t v)
{
    h[0] = v;
    for (unsigned i = 1; i < 10u; i++) {
        h[i] = 0;
    }
}

/* h = f * a24 with a24 = (486662 - 2) / 4 = 121665 (RFC 7748 §5). */
static void fe_mul_a24(fe h, const fe f)
{
    int64_t t[10];
    for (unsigned i = 0; i < 10u; i++) {
        t[i] = (int64_t)f[i] * 121665;
    }
    fe_carry_wide(h, t);
}

/* Swap f and g when b == 1, leave them when b == 0: the same loads, XORs and stores either way. */
static void fe_cswap(fe f, fe g, uint32_t b)
{
    const int32_t mask = -(int32_t)b;
    for (unsigned i = 0; i < 10u; i++) {
        const int32_t x = (f[i] ^ g[i]) & mask;
        f[i] ^= x;
        g[i] ^= x;
    }
}

static unsigned limb_bits(unsigned i)
{
    return (i & 1u) ? 25u : 26u;
}

/* Little-endian bytes to limbs. Bit 255 is dropped, as RFC 7748 §5 requires for u-coordinates: the
 * ten limbs cover exactly bits 0..254. A non-canonical value (p..2^255-1) is accepted and reduced by
 * the arithmetic, as the RFC allows. */
static void fe_frombytes(fe h, const uint8_t s[32])
{
    uint32_t w[9];
    int64_t t[10];
    unsigned pos = 0;

    for (unsigned i = 0; i < 8u; i++) {
        w[i] = (uint32_t)s[4u * i] | ((uint32_t)s[4u * i + 1u] << 8) | ((uint32_t)s[4u * i + 2u] << 16) |
               ((uint32_t)s[4u * i + 3u] << 24);
    }
    w[8] = 0;
    for (unsigned i = 0; i < 10u; i++) {
        const unsigned bits = limb_bits(i);
        const uint64_t pair = (uint64_t)w[pos / 32u] | ((uint64_t)w[pos / 32u + 1u] << 32);
        t[i] = (int64_t)((pair >> (pos % 32u)) & (((uint64_t)1 << bits) - 1u));
        pos += bits;
    }
    /* Limbs straight from bytes are non-negative up to 2^26; carrying centres them like fe_mul output. */
    fe_carry_wide(h, t);
}

/* Fully reduce to the canonical value in [0, p) and write 32 little-endian bytes. */
static void fe_tobytes(uint8_t s[32], const fe f)
{
    int32_t h[10], g[10];
    int32_t c = 0;
    uint64_t acc = 0;
    unsigned nacc = 0, n = 0;

    fe_copy(h, f);
    /* Floor carries: after the first pass only limb 0 can be off by a few times 19; the second pass
     * settles every limb into [0, 2^bits), the third is a margin. The value is then in [0, 2^255). */
    for (unsigned pass = 0; pass < 3u; pass++) {
        for (unsigned i = 0; i < 10u; i++) {
            const unsigned bits = limb_bits(i);
            c = h[i] >> bits;
            h[i] -= c * (int32_t)(1u << bits);
            if (i < 9u) {
                h[i + 1u] += c;
            } else {
                h[0] += 19 * c;
            }
        }
    }
    /* value >= p exactly when value + 19 reaches 2^255; then value - p is value + 19 without bit 255. */
    g[0] = h[0] + 19;
    for (unsigned i = 0; i < 10u; i++) {
        const unsigned bits = limb_bits(i);
        if (i > 0u) {
            g[i] = h[i] + c;
        }
        c = g[i] >> bits;
        g[i] -= c * (int32_t)(1u << bits);
    }
    {
        const int32_t mask = -c; /* c is 0 or 1 here */
        for (unsigned i = 0; i < 10u; i++) {
            h[i] ^= (h[i] ^ g[i]) & mask;
        }
    }
    for (unsigned i = 0; i < 10u; i++) {
        acc |= (uint64_t)(uint32_t)h[i] << nacc;
        nacc += limb_bits(i);
        while (nacc >= 8u) {
            s[n++] = (uint8_t)acc;
            acc >>= 8;
            nacc -= 8u;
        }
    }
    s[n] = (uint8_t)acc; /* the last 7 bits: bit 255 is always 0 */
    crypto_wipe(h, sizeof h);
    crypto_wipe(g, sizeof g);
}

static void fe_sq_n(fe h, const fe f, unsigned n)
{
    fe_sq(h, f);
    for (unsigned i = 1; i < n; i++) {
        fe_sq(h, h);
    }
}

/* out = z^(p - 2) = 1/z (Fermat), p - 2 = 2^255 - 21, by a fixed chain of 254 squarings and 11
 * multiplications; the exponent is public, so the chain is the same for every z. Comments give the
 * exponent reached; z_a_b means z^(2^a - 2^b). */
static void fe_invert(fe out, const fe z)
{
    fe z2, z9, z11, z_5_0, z_10_0, z_20_0, z_50_0, z_100_0, t;

    fe_sq(z2, z);                /* 2 */
    fe_sq_n(t, z2, 2);           /* 8 */
    fe_mul(z9, t, z);            /* 9 */
    fe_mul(z11, z9, z2);         /* 11 */
    fe_sq(t, z11);               /* 22 */
    fe_mul(z_5_0, t, z9);        /* 31 = 2^5 - 1 */
    fe_sq_n(t, z_5_0, 5);        /* 2^10 - 2^5 */
    fe_mul(z_10_0, t, z_5_0);    /* 2^10 - 1 */
    fe_sq_n(t, z_10_0, 10);      /* 2^20 - 2^10 */
    fe_mul(z_20_0, t, z_10_0);   /* 2^20 - 1 */
    fe_sq_n(t, z_20_0, 20);      /* 2^40 - 2^20 */
    fe_mul(t, t, z_20_0);        /* 2^40 - 1 */
    fe_sq_n(t, t, 10);           /* 2^50 - 2^10 */
    fe_mul(z_50_0, t, z_10_0);   /* 2^50 - 1 */
    fe_sq_n(t, z_50_0, 50);      /* 2^100 - 2^50 */
    fe_mul(z_100_0, t, z_50_0);  /* 2^100 - 1 */
    fe_sq_n(t, z_100_0, 100);    /* 2^200 - 2^100 */
    fe_mul(t, t, z_100_0);       /* 2^200 - 1 */
    fe_sq_n(t, t, 50);           /* 2^250 - 2^50 */
    fe_mul(t, t, z_50_0);        /* 2^250 - 1 */
    fe_sq_n(t, t, 5);            /* 2^255 - 2^5 */
    fe_mul(out, t, z11);         /* 2^255 - 21 */
}

void crypto_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32])
{
    uint8_t k[32];
    fe x1, x2, z2, x3, z3;
    fe a, aa, b, bb, e, c, d, da, cb;
    uint32_t swap = 0;

    /* RFC 7748 §5 decodeScalar25519: clear the 3 low bits (cofactor 8), clear bit 255, set bit 254. */
    for (unsigned i = 0; i < 32u; i++) {
        k[i] = scalar[i];
    }
    k[0] &= 248u;
    k[31] &= 127u;
    k[31] |= 64u;

    fe_frombytes(x1, point);
    fe_set_small(x2, 1);
    fe_set_small(z2, 0);
    fe_copy(x3, x1);
    fe_set_small(z3, 1);

    /* RFC 7748 §5 Montgomery ladder, bit 254 down to 0, with the swap deferred to the next step. */
    for (int t = 254; t >= 0; t--) {
        const uint32_t k_t = ((uint32_t)k[(unsigned)t >> 3] >> ((unsigned)t & 7u)) & 1u;
        swap ^= k_t;
        fe_cswap(x2, x3, swap);
        fe_cswap(z2, z3, swap);
        swap = k_t;

        fe_add(a, x2, z2);   /* A = x2 + z2 */
        fe_sq(aa, a);        /* AA = A^2 */
        fe_sub(b, x2, z2);   /* B = x2 - z2 */
        fe_sq(bb, b);        /* BB = B^2 */
        fe_sub(e, aa, bb);   /* E = AA - BB */
        fe_add(c, x3, z3);   /* C = x3 + z3 */
        fe_sub(d, x3, z3);   /* D = x3 - z3 */
        fe_mul(da, d, a);    /* DA = D * A */
        fe_mul(cb, c, b);    /* CB = C * B */
        fe_add(x3, da, cb);
        fe_sq(x3, x3);       /* x3 = (DA + CB)^2 */
        fe_sub(z3, da, cb);
        fe_sq(z3, z3);
        fe_mul(z3, x1, z3);  /* z3 = x1 * (DA - CB)^2 */
        fe_mul(x2, aa, bb);  /* x2 = AA * BB */
        fe_mul_a24(z2, e);
        fe_add(z2, aa, z2);
        fe_mul(z2, e, z2);   /* z2 = E * (AA + a24 * E) */
    }
    fe_cswap(x2, x3, swap);
    fe_cswap(z2, z3, swap);

    /* x2 / z2; z2 = 0 (a low-order input point) gives 0 since 0^(p-2) = 0, as RFC 7748 expects. */
    fe_invert(z2, z2);
    fe_mul(x2, x2, z2);
    fe_tobytes(out, x2);

    crypto_wipe(k, sizeof k);
    crypto_wipe(x1, sizeof x1);
    crypto_wipe(x2, sizeof x2);
    crypto_wipe(z2, sizeof z2);
    crypto_wipe(x3, sizeof x3);
    crypto_wipe(z3, sizeof z3);
    crypto_wipe(a, sizeof a);
    crypto_wipe(aa, sizeof aa);
    crypto_wipe(b, sizeof b);
    crypto_wipe(bb, sizeof bb);
    crypto_wipe(e, sizeof e);
    crypto_wipe(c, sizeof c);
    crypto_wipe(d, sizeof d);
    crypto_wipe(da, sizeof da);
    crypto_wipe(cb, sizeof cb);
}

void crypto_x25519_base(uint8_t out[32], const uint8_t scalar[32])
{
    static const uint8_t base_u[32] = {9};
    crypto_x25519(out, scalar, base_u);
}
