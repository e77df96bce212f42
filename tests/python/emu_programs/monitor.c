/* A command monitor: the host drives register and memory accesses made by the CPU itself, one
 * line per command, numbers in hex. Built with RT_ENABLE_FPU=0: the FPU stays off until a test
 * grants access through CPACR (w4 E000ED88 00F00000).
 *
 *   r1|r2|r4 ADDR        read, answers "= VALUE"
 *   w1|w2|w4 ADDR VALUE  store, answers "ok"
 *   U                    unlock FLASH_CR (only if locked), answers "cr=VALUE"
 *   K VALUE              write FLASH_KEYR once, answers "ok"
 *   E SNB                sector erase (x32), answers "sr=VALUE"
 *   P ADDR VALUE         program a word (x32), answers "sr=VALUE"
 *   C                    clocks to 180 MHz, answers "clk=STEP" (0 = done)
 *   T RELOAD             SysTick from HCLK: polls until COUNTFLAG, answers "loops=N"
 *   G N                  N words from the RNG, answers "SR DR" per word
 *   F                    one floating-point multiply, answers "f=BITS"
 *   X N                  N rounds of an integer mix, answers "x=VALUE"
 *   Y                    echo bytes until 0x04
 *   R                    AIRCR.SYSRESETREQ
 *   W                    wfi, then "woke"
 */
#include "rt.h"

static uint32_t mix(uint32_t n)
{
    uint32_t x = 0x12345678u;
    for (uint32_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x += i;
    }
    return x;
}

static void answer(const char *label, uint32_t v)
{
    rt_puts(label);
    rt_put_hex(v);
    rt_putc('\n');
}

static void rng_words(uint32_t n)
{
    RCC_AHB2ENR |= 1u << 6;
    RNG_CR = 1u << 2;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t sr = 0;
        for (uint32_t tries = 0; tries < 1000u; tries++) {
            sr = RNG_SR;
            if (sr & 0x67u) {
                break;
            }
        }
        uint32_t dr = RNG_DR;
        rt_put_hex(sr);
        rt_putc(' ');
        rt_put_hex(dr);
        rt_putc('\n');
    }
}

static void systick(uint32_t reload)
{
    SYST_CSR = 0;
    SYST_RVR = reload;
    SYST_CVR = 0;
    SYST_CSR = (1u << 2) | 1u; /* CLKSOURCE = HCLK, ENABLE */
    uint32_t loops = 0;
    while (!(SYST_CSR & (1u << 16))) {
        loops++;
    }
    SYST_CSR = 0;
    answer("loops=", loops);
}

static void fpu_multiply(void)
{
    uint32_t bits;
    __asm__ volatile("vmov s0, %1\n\t"
                     "vadd.f32 s0, s0, s0\n\t"
                     "vmov %0, s0"
                     : "=r"(bits)
                     : "r"(0x3FC00000u)
                     : "s0");
    answer("f=", bits);
}

int main(void)
{
    char line[64];
    rt_uart_init();
    rt_puts("boot\n");
    for (;;) {
        rt_getline(line, sizeof line);
        const char *p = line + 1;
        char op = line[0];
        if (op == 'r' || op == 'w') {
            char width = *p++;
            uint32_t address = rt_hex(&p);
            uint32_t value = op == 'w' ? rt_hex(&p) : 0;
            if (op == 'r') {
                uint32_t v = width == '1' ? *(volatile uint8_t *)address
                             : width == '2' ? *(volatile uint16_t *)address
                                            : *(volatile uint32_t *)address;
                answer("= ", v);
            } else {
                if (width == '1') {
                    *(volatile uint8_t *)address = (uint8_t)value;
                } else if (width == '2') {
                    *(volatile uint16_t *)address = (uint16_t)value;
                } else {
                    *(volatile uint32_t *)address = value;
                }
                rt_puts("ok\n");
            }
        } else if (op == 'U') {
            rt_flash_unlock();
            answer("cr=", FLASH_CR);
        } else if (op == 'K') {
            FLASH_KEYR = rt_hex(&p);
            rt_puts("ok\n");
        } else if (op == 'E') {
            answer("sr=", rt_flash_erase(rt_hex(&p)));
        } else if (op == 'P') {
            uint32_t address = rt_hex(&p);
            answer("sr=", rt_flash_program_word(address, rt_hex(&p)));
        } else if (op == 'C') {
            answer("clk=", (uint32_t)rt_clock_180mhz());
        } else if (op == 'T') {
            systick(rt_hex(&p));
        } else if (op == 'G') {
            rng_words(rt_hex(&p));
        } else if (op == 'F') {
            fpu_multiply();
        } else if (op == 'X') {
            answer("x=", mix(rt_hex(&p)));
        } else if (op == 'Y') {
            for (int c = rt_getc(); c != 4; c = rt_getc()) {
                rt_putc((char)c);
            }
            rt_puts("\nend\n");
        } else if (op == 'R') {
            SCB_AIRCR = 0x05FA0004u;
            for (;;) {
            }
        } else if (op == 'W') {
            __asm__ volatile("wfi");
            rt_puts("woke\n");
        } else {
            rt_puts("?\n");
        }
    }
}
