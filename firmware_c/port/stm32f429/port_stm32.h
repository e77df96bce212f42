/**
 * @file port_stm32.h
 * @brief What the STM32F429 port's files share with each other (never seen by the core).
 */
#ifndef OTAKEY_PORT_STM32_H
#define OTAKEY_PORT_STM32_H

#include <stdint.h>

/** Clocks after clock_init(), in Hz. */
struct clock_info {
    uint32_t sysclk_hz;
    uint32_t hclk_hz;
    uint32_t pclk1_hz;
    uint32_t pclk2_hz;
    uint32_t pll48_hz;  /**< RNG kernel clock; 0 when the PLL is not running */
    int status;         /**< 0, or the first negative errno of the sequence (fallback in use) */
    uint8_t hse;        /**< 1 if the PLL runs from the 8 MHz HSE, 0 if from HSI */
};

/**
 * @brief RCC/PWR/FLASH ACR: 8 MHz HSE -> PLL 180 MHz (RM0090 §6.3.2, §5.1.4, §3.5.1).
 *        Falls back to HSI as PLL source if HSE does not start, and stays on HSI 16 MHz as SYSCLK
 *        if the PLL or over-drive does not come up; *out always describes the clocks in use.
 * @return 0, or -EIO when a fallback was taken
 */
int clock_init(struct clock_info *out);

/** @brief (Re)start SysTick for a 1 ms COUNTFLAG period at the given HCLK (keeps the ms count). */
void tick_start(uint32_t hclk_hz);
/**
 * @brief Wait until (*reg & mask) == want, at most timeout_ms (SysTick COUNTFLAG ticks, so the
 *        real bound is timeout_ms .. timeout_ms + 1 ms). @return 0 or -EIO on timeout
 */
int tick_wait_reg(volatile uint32_t *reg, uint32_t mask, uint32_t want, uint32_t timeout_ms);

/** @brief GPIOA PA9/PA10 AF7 + USART1 115200 8N1 at the given APB2 clock (RM0090 §30.3.4). */
void usart1_init(uint32_t pclk2_hz);

/** @brief Clock the RNG and set RNGEN (RM0090 §24.3.1). */
void rng_init(void);

#endif /* OTAKEY_PORT_STM32_H */
