/*
 * port_rng.h for the STM32F429: the true RNG (RM0090 §24), clocked by PLL48CLK = 45 MHz (PLLQ 8).
 *
 * Each word is taken only from an SR read that shows DRDY with no seed or clock error (§24.3.2,
 * §24.4.2). Seed error: clear SEIS, restart the RNG (RNGEN 0 -> 1), discard, try again a few times.
 * Clock error: cannot be repaired here (the clock tree is fixed), so -EIO. The continuous test of
 * §24.3.1 (FIPS PUB 140-2) is done in software: the first word after enabling is only kept for
 * comparison, and a word equal to the previous one counts as a failure. Every wait is bounded.
 * In Renode DRDY simply follows RNGEN and the error flags never rise; the unicorn model seeds it per
 * device. On any failure the caller's buffer is wiped, so no partial output is ever used.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "port/port_device.h"
#include "port/port_rng.h"
#include "port_stm32.h"
#include "regs.h"

#define RNG_MAX_RESTARTS 3u
#define TIMEOUT_DRDY_MS 5u /* a word takes ~40 PLL48CLK periods (~1 us) */

static uint32_t g_last;   /* previous word, for the continuous test */
static uint8_t g_primed;  /* g_last holds a word from the current RNGEN period */

void rng_init(void)
{
    RCC_AHB2ENR |= RCC_AHB2ENR_RNGEN; /* §6.3.11 */
    (void)RCC_AHB2ENR;
    RNG_CR = RNG_CR_RNGEN; /* IE = 0: polled */
    g_primed = 0u;
}

static void rng_restart(void)
{
    RNG_CR &= ~RNG_CR_RNGEN;
    RNG_CR |= RNG_CR_RNGEN;
    g_primed = 0u;
}

static int rng_word(uint32_t *out)
{
    uint32_t restarts = 0;
    uint32_t start = port_time_ms();

    for (;;) {
        /* Checked first, so that every path below (including a flag that will not clear) is bounded. */
        if ((uint32_t)(port_time_ms() - start) > TIMEOUT_DRDY_MS) {
            return -EIO;
        }
        uint32_t sr = RNG_SR;
        if ((sr & (RNG_SR_SECS | RNG_SR_SEIS)) != 0u) {
            /* §24.3.2 seed error: SEIS is rc_w0, so write 0 there and 1 to CEIS (no effect). */
            RNG_SR = RNG_SR_CEIS;
            rng_restart();
            if (++restarts > RNG_MAX_RESTARTS) {
                return -EIO;
            }
            start = port_time_ms();
            continue;
        }
        if ((sr & (RNG_SR_CECS | RNG_SR_CEIS)) != 0u) {
            RNG_SR = RNG_SR_SEIS; /* clear CEIS (rc_w0) for the next call */
            if ((sr & RNG_SR_CECS) != 0u) {
                return -EIO; /* PLL48CLK too slow or stopped */
            }
            continue; /* an old clock error that has passed: earlier values stay valid */
        }
        if ((sr & RNG_SR_DRDY) != 0u) {
            uint32_t v = RNG_DR;
            if (!g_primed) {
                g_last = v;
                g_primed = 1u;
                continue;
            }
            if (v == g_last) {
                /* Continuous test failed: treat like a seed error. */
                rng_restart();
                if (++restarts > RNG_MAX_RESTARTS) {
                    return -EIO;
                }
                start = port_time_ms();
                continue;
            }
            g_last = v;
            *out = v;
            return 0;
        }
    }
}

int port_rng_fill(void *buf, size_t len)
{
    uint8_t *p = buf;
    if (p == NULL && len != 0u) {
        return -EINVAL;
    }
    size_t done = 0;
    while (done < len) {
        uint32_t w;
        if (rng_word(&w) != 0) {
            memset(p, 0, len);
            return -EIO;
        }
        size_t n = len - done < sizeof w ? len - done : sizeof w;
        memcpy(p + done, &w, n);
        done += n;
    }
    return 0;
}
