/**
 * @file crypto_util.c
 * @brief Constant-time comparison and secure wipe.
 */
#include "otakey/crypto.h"

int crypto_ct_equal(const void *a, const void *b, size_t n)
{
    const uint8_t *pa = (const uint8_t *)a;
    const uint8_t *pb = (const uint8_t *)b;
    uint32_t diff = 0;

    /* No early exit: the time taken must not reveal where the first difference is (MAC checks). */
    for (size_t i = 0; i < n; i++) {
        diff |= (uint32_t)(pa[i] ^ pb[i]);
    }
    /* diff is in 0..255: (diff - 1) >> 31 is 1 exactly when diff == 0, without a branch. */
    return (int)((diff - 1u) >> 31);
}

void crypto_wipe(void *p, size_t n)
{
    /* Stores through a volatile pointer are observable behaviour, so the compiler may not drop them
     * even when the buffer is dead afterwards (a plain memset before return would be elided). */
    volatile uint8_t *vp = (volatile uint8_t *)p;
    size_t i = 0;
    /* Word stores for the aligned middle: a quarter of the stores on 32-bit cores. */
    while (i < n && ((uintptr_t)(vp + i) & 3u) != 0u) {
        vp[i++] = 0;
    }
    for (; i + 4u <= n; i += 4u) {
        *(volatile uint32_t *)(void *)(vp + i) = 0u;
    }
    for (; i < n; i++) {
        vp[i] = 0;
    }
}
