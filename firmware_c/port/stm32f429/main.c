/*
 * The STM32F429 image's main loop: clocks, link, RNG, then the portable device state machine.
 * Polling only: every received byte goes to dev_on_byte, and dev_poll runs between bytes with the
 * SysTick millisecond time.
 */
#include <stdint.h>

#include "otakey/device.h"
#include "port/port_device.h"
#include "port/port_link.h"
#include "port_stm32.h"

#define EXCHANGE_TIMEOUT_MS 2000u
#define CHECKIN_INTERVAL_MS 10000u

/* File scope, not on the stack: struct dev holds the keystore state and the frame decoder (~8 KB).
   Kept non-static so a debugger or the emulator can find it by symbol. */
struct dev g_dev;
/* What clock_init achieved (status != 0: a fallback clock is in use); for the debugger. */
struct clock_info g_clock;

int main(void)
{
    static const struct dev_config config = {
        .exchange_timeout_ms = EXCHANGE_TIMEOUT_MS,
        .checkin_interval_ms = CHECKIN_INTERVAL_MS,
    };

    (void)clock_init(&g_clock); /* on failure g_clock describes the fallback clocks in use */
    usart1_init(g_clock.pclk2_hz);
    rng_init();

    /* Errors here (no valid keystore area) are the core's to report on the console; it keeps
       running so the link stays alive. */
    (void)dev_boot(&g_dev, &config, port_time_ms());

    for (;;) {
        uint8_t b;
        int rc;
        /* Drain what arrived first: USART1 holds one byte, so a byte must be taken within one
           character time (87 us) of the next one's arrival. */
        while ((rc = port_link_read_byte(&b)) != 0) {
            if (rc > 0) {
                dev_on_byte(&g_dev, b, port_time_ms());
            }
        }
        (void)dev_poll(&g_dev, port_time_ms());
    }
}
