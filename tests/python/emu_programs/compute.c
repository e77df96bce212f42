/* A pure compute loop for the speed benchmark and determinism checks: no peripheral access
 * until the result is printed, then wfi. */
#include "rt.h"

#ifndef ROUNDS
#define ROUNDS 20000000u
#endif

int main(void)
{
    uint32_t a = 1u, b = 0x9E3779B9u;
    for (uint32_t i = 0; i < ROUNDS; i++) {
        a = a * 1664525u + 1013904223u;
        b ^= a + (b << 6) + (b >> 2);
    }
    rt_uart_init();
    rt_puts("result ");
    rt_put_hex(a ^ b);
    rt_putc('\n');
    return 0;
}
