/*
 * port_device.h for the STM32F429: unique ID, millisecond time from SysTick, application hash.
 *
 * Time. The firmware is polling-only (unicorn, our CI emulator, runs no exception or interrupt),
 * and Renode's STM32F4 platform has no DWT cycle counter, so the one time base is SysTick polled
 * through COUNTFLAG: SysTick reloads every 1 ms of HCLK with TICKINT=0, and every read of CSR that
 * finds COUNTFLAG set (it clears on read, PM0214 §4.5.1) adds one millisecond. All CSR reads go
 * through tick_poll() so no flag is consumed without being counted. Consequences, on purpose:
 *  - time only advances while someone polls; a computation longer than 1 ms without a poll (an
 *    X25519 ladder) loses all but one of its milliseconds. The clock therefore never runs fast, only
 *    slow, which can only lengthen timeouts and check-in intervals, never cut them short.
 *  - Renode clocks SysTick at a fixed 72 MHz whatever RCC says (stm32f4.repl), so with the reload
 *    computed for 180 MHz one "ms" lasts 2.5 ms of Renode virtual time. We do not detect Renode:
 *    its platform file should set the NVIC's systickFrequency to 180000000 to make virtual time
 *    match; otherwise every firmware timeout is simply 2.5x longer in virtual time.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "otakey/crypto.h"
#include "port/port_device.h"
#include "port_stm32.h"
#include "regs.h"

/* Linker-script symbols (stm32f429.ld): the application image the hash covers. */
extern const uint8_t __app_start[];
extern const uint8_t __app_end[];

static uint32_t g_ms;

void tick_start(uint32_t hclk_hz)
{
    uint32_t reload = hclk_hz / 1000u - 1u;
    if (reload > SYST_RELOAD_MAX) {
        reload = SYST_RELOAD_MAX;
    }
    SYST_CSR = 0u;
    SYST_RVR = reload;
    SYST_CVR = 0u; /* PM0214 §4.5.3: clears the counter and COUNTFLAG */
    SYST_CSR = SYST_CSR_CLKSOURCE | SYST_CSR_ENABLE; /* HCLK, no TICKINT: nothing may interrupt */
}

static uint32_t tick_poll(void)
{
    if ((SYST_CSR & SYST_CSR_COUNTFLAG) != 0u) {
        g_ms++;
    }
    return g_ms;
}

uint32_t port_time_ms(void)
{
    return tick_poll();
}

int tick_wait_reg(volatile uint32_t *reg, uint32_t mask, uint32_t want, uint32_t timeout_ms)
{
    uint32_t start = tick_poll();
    for (;;) {
        if ((*reg & mask) == want) {
            return 0;
        }
        /* One more read after the deadline, so a ready bit that arrived with the last tick wins. */
        if ((uint32_t)(tick_poll() - start) > timeout_ms) {
            return ((*reg & mask) == want) ? 0 : -EIO;
        }
    }
}

void port_device_uid(uint8_t uid[12])
{
    /* RM0090 §39.1: three read-only words at 0x1FFF7A10/14/18; little-endian in address order, as
       protocol §2.1 puts them in the header. */
    for (uint32_t i = 0; i < 3u; i++) {
        uint32_t w = REG32(UID_BASE_ADDR + 4u * i);
        uid[4u * i + 0u] = (uint8_t)w;
        uid[4u * i + 1u] = (uint8_t)(w >> 8);
        uid[4u * i + 2u] = (uint8_t)(w >> 16);
        uid[4u * i + 3u] = (uint8_t)(w >> 24);
    }
}

void port_app_hash(uint8_t out[32])
{
    /* The image does not change while it runs, so hash it once (about 5 M cycles for 48 KB). */
    static uint8_t hash[CRYPTO_SHA256_LEN];
    static uint8_t done;
    if (!done) {
        crypto_sha256(__app_start, (size_t)(__app_end - __app_start), hash);
        done = 1u;
    }
    memcpy(out, hash, sizeof hash);
}
