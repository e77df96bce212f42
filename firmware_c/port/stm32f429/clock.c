/*
 * Clock tree: 8 MHz HSE (DISC1 crystal) -> PLL -> 180 MHz SYSCLK/HCLK, APB1 45 MHz, APB2 90 MHz,
 * PLL48CLK 45 MHz for the RNG.
 *
 *   VCO in  = 8 MHz / PLLM 8    = 1 MHz      (RM0090 §6.3.2: 1..2 MHz)
 *   VCO out = 1 MHz * PLLN 360  = 360 MHz    (100..432 MHz)
 *   SYSCLK  = 360 / PLLP 2      = 180 MHz    (<= 180 MHz with over-drive)
 *   PLL48   = 360 / PLLQ 8      = 45 MHz     (<= 48 MHz for the RNG; ST's example uses 7 = 51.4 MHz,
 *                                             which over-clocks it)
 *   APB1 /4 = 45 MHz (<= 45), APB2 /2 = 90 MHz (<= 90)   (DS9405)
 *
 * Sequence (RM0090 §5.1.4, §6.3; the order of ST's SystemClock_Config): scale 1, HSE on, PLL on,
 * over-drive ODEN/ODRDY then ODSWEN/ODSWRDY, 5 wait states confirmed in ACR, prescalers, switch,
 * confirm SWS. Every wait is bounded by SysTick COUNTFLAG ticks. If HSE does not start the PLL takes
 * HSI 16 MHz with PLLM 16 (same 1 MHz VCO input); if the PLL, over-drive or wait states fail we stay
 * on HSI 16 MHz and report the clocks actually in use, so the USART baud rate stays right.
 */
#include <errno.h>
#include <stdint.h>

#include "port_stm32.h"
#include "regs.h"

#define HSI_HZ 16000000u
#define HSE_HZ 8000000u
#define PLL_M_HSE 8u
#define PLL_M_HSI 16u
#define PLL_N 360u
#define PLL_P_DIV 2u /* field value 00 */
#define PLL_Q 8u
#define VCO_HZ (1000000u * PLL_N)
#define SYSCLK_PLL_HZ (VCO_HZ / PLL_P_DIV)
#define FLASH_WS_180MHZ 5u /* RM0090 §3.5.1 Table 11, 2.7..3.6 V: 5 WS up to 180 MHz */

/* Bounds in ms: HSE start-up ~2 ms typ. (ST uses 100 ms), PLL lock ~0.1 ms, over-drive (ST 1000 ms) */
#define TIMEOUT_HSE_MS 100u
#define TIMEOUT_PLL_MS 10u
#define TIMEOUT_OD_MS 100u
#define TIMEOUT_SWITCH_MS 10u

static void clocks_hsi(struct clock_info *out)
{
    out->sysclk_hz = HSI_HZ;
    out->hclk_hz = HSI_HZ;
    out->pclk1_hz = HSI_HZ;
    out->pclk2_hz = HSI_HZ;
}

/* Back to HSI with the PLL off: reset state, needed only if something started us with the PLL on
   (a debugger, a bootloader), because PLLCFGR may only be written while PLLON=0 (§6.3.2). */
static int clock_to_hsi(void)
{
    RCC_CR |= RCC_CR_HSION;
    int rc = tick_wait_reg(&RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY, TIMEOUT_SWITCH_MS);
    if (rc != 0) {
        return rc;
    }
    RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_HSI;
    rc = tick_wait_reg(&RCC_CFGR, RCC_CFGR_SW_MASK << RCC_CFGR_SWS_POS, RCC_CFGR_SW_HSI << RCC_CFGR_SWS_POS,
                       TIMEOUT_SWITCH_MS);
    if (rc != 0) {
        return rc;
    }
    RCC_CFGR &= ~RCC_CFGR_PRESC_MASK;
    RCC_CR &= ~RCC_CR_PLLON;
    return tick_wait_reg(&RCC_CR, RCC_CR_PLLRDY, 0u, TIMEOUT_PLL_MS);
}

static int pll_start(struct clock_info *out)
{
    uint32_t pllm = PLL_M_HSI;
    uint32_t src = 0u;

    RCC_CR |= RCC_CR_HSEON; /* crystal, not bypass: HSEBYP stays 0 */
    if (tick_wait_reg(&RCC_CR, RCC_CR_HSERDY, RCC_CR_HSERDY, TIMEOUT_HSE_MS) == 0) {
        pllm = PLL_M_HSE;
        src = RCC_PLLCFGR_PLLSRC_HSE;
        out->hse = 1u;
    } else {
        RCC_CR &= ~RCC_CR_HSEON;
        out->status = -EIO;
    }

    /* PLLP field 0 = /2; reserved bits (bit 29 reads 1) are kept as they read. */
    RCC_PLLCFGR = (RCC_PLLCFGR & ~RCC_PLLCFGR_FIELDS) | (pllm << RCC_PLLCFGR_PLLM_POS) |
                  (PLL_N << RCC_PLLCFGR_PLLN_POS) | (0u << RCC_PLLCFGR_PLLP_POS) | src |
                  (PLL_Q << RCC_PLLCFGR_PLLQ_POS);
    RCC_CR |= RCC_CR_PLLON;
    int rc = tick_wait_reg(&RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY, TIMEOUT_PLL_MS);
    if (rc == 0) {
        out->pll48_hz = VCO_HZ / PLL_Q;
    }
    return rc;
}

/* RM0090 §5.1.4: over-drive is entered with the PLL on and SYSCLK still on HSI/HSE. */
static int overdrive_enable(void)
{
    PWR_CR |= PWR_CR_ODEN;
    int rc = tick_wait_reg(&PWR_CSR, PWR_CSR_ODRDY, PWR_CSR_ODRDY, TIMEOUT_OD_MS);
    if (rc != 0) {
        return rc;
    }
    PWR_CR |= PWR_CR_ODSWEN;
    return tick_wait_reg(&PWR_CSR, PWR_CSR_ODSWRDY, PWR_CSR_ODSWRDY, TIMEOUT_OD_MS);
}

int clock_init(struct clock_info *out)
{
    out->status = 0;
    out->hse = 0u;
    out->pll48_hz = 0u;
    clocks_hsi(out);
    tick_start(HSI_HZ);

    if ((RCC_CR & RCC_CR_PLLON) != 0u || (RCC_CFGR & RCC_CFGR_SW_MASK) != RCC_CFGR_SW_HSI) {
        int rc = clock_to_hsi();
        if (rc != 0) {
            /* Cannot even get back to a known clock: leave everything as found. */
            out->status = rc;
            return rc;
        }
    }

    /* §6.3.13 PWREN, read back so the enable has taken effect before PWR is touched; §5.4.1 VOS
       scale 1 is required for 180 MHz (it only takes effect once the PLL is on). */
    RCC_APB1ENR |= RCC_APB1ENR_PWREN;
    (void)RCC_APB1ENR;
    PWR_CR = (PWR_CR & ~PWR_CR_VOS_MASK) | PWR_CR_VOS_SCALE1;

    int rc = pll_start(out);
    if (rc == 0) {
        rc = overdrive_enable();
    }
    if (rc == 0) {
        /* §3.5.1: raise the wait states before the clock, and confirm by reading ACR back. */
        FLASH_ACR = (FLASH_ACR & ~FLASH_ACR_LATENCY_MASK) | FLASH_WS_180MHZ | FLASH_ACR_PRFTEN |
                    FLASH_ACR_ICEN | FLASH_ACR_DCEN;
        if ((FLASH_ACR & FLASH_ACR_LATENCY_MASK) != FLASH_WS_180MHZ) {
            rc = -EIO;
        }
    }
    if (rc == 0) {
        /* HPRE /1, PPRE1 /4, PPRE2 /2 before the switch (APB stays within limits at every step). */
        RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_PRESC_MASK) | (RCC_CFGR_PPRE_DIV4 << RCC_CFGR_PPRE1_POS) |
                   (RCC_CFGR_PPRE_DIV2 << RCC_CFGR_PPRE2_POS);
        RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL;
        rc = tick_wait_reg(&RCC_CFGR, RCC_CFGR_SW_MASK << RCC_CFGR_SWS_POS,
                           RCC_CFGR_SW_PLL << RCC_CFGR_SWS_POS, TIMEOUT_SWITCH_MS);
        if (rc != 0) {
            /* The switch did not show in SWS: go back to HSI so *out is true. */
            RCC_CFGR = (RCC_CFGR & ~(RCC_CFGR_SW_MASK | RCC_CFGR_PRESC_MASK)) | RCC_CFGR_SW_HSI;
            (void)tick_wait_reg(&RCC_CFGR, RCC_CFGR_SW_MASK << RCC_CFGR_SWS_POS,
                                RCC_CFGR_SW_HSI << RCC_CFGR_SWS_POS, TIMEOUT_SWITCH_MS);
        }
    }
    if (rc != 0) {
        if (out->status == 0) {
            out->status = rc;
        }
        return out->status;
    }

    out->sysclk_hz = SYSCLK_PLL_HZ;
    out->hclk_hz = SYSCLK_PLL_HZ;
    out->pclk1_hz = SYSCLK_PLL_HZ / 4u;
    out->pclk2_hz = SYSCLK_PLL_HZ / 2u;
    tick_start(out->hclk_hz);
    return out->status;
}
