/**
 * @file regs.h
 * @brief The STM32F429 registers this port touches, and nothing else.
 *
 * Our own minimal definitions (no CMSIS or ST header is vendored). Addresses, offsets and bit
 * positions follow RM0090 (section numbers beside each block) as collected, with sources, in
 * /work/shared/STM32F429.md. Only the port's .c files include this header; the core never sees a
 * register.
 */
#ifndef OTAKEY_PORT_STM32F429_REGS_H
#define OTAKEY_PORT_STM32F429_REGS_H

#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* ---- Memory map (RM0090 §2.3, Table 1/3) ---------------------------------------------------- */
#define FLASH_BASE_ADDR 0x08000000u
#define UID_BASE_ADDR 0x1FFF7A10u /* RM0090 §39.1: 96-bit unique ID, three words */

/* ---- RCC, base 0x4002_3800 (RM0090 §6.3) ----------------------------------------------------- */
#define RCC_BASE 0x40023800u
#define RCC_CR REG32(RCC_BASE + 0x00u)      /* §6.3.1 */
#define RCC_PLLCFGR REG32(RCC_BASE + 0x04u) /* §6.3.2 */
#define RCC_CFGR REG32(RCC_BASE + 0x08u)    /* §6.3.3 */
#define RCC_AHB1ENR REG32(RCC_BASE + 0x30u) /* §6.3.10 */
#define RCC_AHB2ENR REG32(RCC_BASE + 0x34u) /* §6.3.11 */
#define RCC_APB1ENR REG32(RCC_BASE + 0x40u) /* §6.3.13 */
#define RCC_APB2ENR REG32(RCC_BASE + 0x44u) /* §6.3.14 */

#define RCC_CR_HSION (1u << 0)
#define RCC_CR_HSIRDY (1u << 1)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_HSEBYP (1u << 18)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)

#define RCC_PLLCFGR_PLLM_POS 0u /* [5:0]  VCO input = source / PLLM, 1..2 MHz */
#define RCC_PLLCFGR_PLLN_POS 6u /* [14:6] VCO output = input * PLLN, 100..432 MHz */
#define RCC_PLLCFGR_PLLP_POS 16u /* [17:16] 00=/2 01=/4 10=/6 11=/8 */
#define RCC_PLLCFGR_PLLSRC_HSE (1u << 22)
#define RCC_PLLCFGR_PLLQ_POS 24u /* [27:24] PLL48CLK = VCO / PLLQ, must be <= 48 MHz for the RNG */
/* The fields we own; bit 29 and the others are reserved and kept as read (reset 0x2400_3010). */
#define RCC_PLLCFGR_FIELDS (0x3Fu | (0x1FFu << 6) | (3u << 16) | (1u << 22) | (0xFu << 24))

#define RCC_CFGR_SW_MASK 3u
#define RCC_CFGR_SW_HSI 0u
#define RCC_CFGR_SW_HSE 1u
#define RCC_CFGR_SW_PLL 2u
#define RCC_CFGR_SWS_POS 2u /* [3:2] reads back the clock actually in use */
#define RCC_CFGR_HPRE_POS 4u /* [7:4]   0xxx = /1 */
#define RCC_CFGR_PPRE1_POS 10u /* [12:10] 100 = /2, 101 = /4 */
#define RCC_CFGR_PPRE2_POS 13u /* [15:13] */
#define RCC_CFGR_PRESC_MASK ((0xFu << 4) | (7u << 10) | (7u << 13))
#define RCC_CFGR_PPRE_DIV2 4u
#define RCC_CFGR_PPRE_DIV4 5u

#define RCC_AHB1ENR_GPIOAEN (1u << 0)
#define RCC_AHB2ENR_RNGEN (1u << 6)
#define RCC_APB1ENR_PWREN (1u << 28)
#define RCC_APB2ENR_USART1EN (1u << 4)

/* ---- PWR, base 0x4000_7000 (RM0090 §5.4) ----------------------------------------------------- */
#define PWR_BASE 0x40007000u
#define PWR_CR REG32(PWR_BASE + 0x00u)  /* §5.4.1 */
#define PWR_CSR REG32(PWR_BASE + 0x04u) /* §5.4.2 */

#define PWR_CR_VOS_MASK (3u << 14)
#define PWR_CR_VOS_SCALE1 (3u << 14)
#define PWR_CR_ODEN (1u << 16)
#define PWR_CR_ODSWEN (1u << 17)
#define PWR_CSR_ODRDY (1u << 16)
#define PWR_CSR_ODSWRDY (1u << 17)

/* ---- FLASH interface, base 0x4002_3C00 (RM0090 §3.9) ----------------------------------------- */
#define FLASH_R_BASE 0x40023C00u
#define FLASH_ACR REG32(FLASH_R_BASE + 0x00u)  /* §3.9.1 */
#define FLASH_KEYR REG32(FLASH_R_BASE + 0x04u) /* §3.9.2 */
#define FLASH_SR REG32(FLASH_R_BASE + 0x0Cu)   /* §3.9.4 */
#define FLASH_CR REG32(FLASH_R_BASE + 0x10u)   /* §3.9.8 (F42x/43x numbering) */

#define FLASH_ACR_LATENCY_MASK 0xFu /* [3:0] on F42x (the ST SVD's 3 bits are wrong) */
#define FLASH_ACR_PRFTEN (1u << 8)
#define FLASH_ACR_ICEN (1u << 9)
#define FLASH_ACR_DCEN (1u << 10)
#define FLASH_ACR_ICRST (1u << 11)
#define FLASH_ACR_DCRST (1u << 12)

#define FLASH_KEY1 0x45670123u /* §3.6.1 unlock sequence, in this order */
#define FLASH_KEY2 0xCDEF89ABu

#define FLASH_SR_EOP (1u << 0)   /* only with EOPIE: never waited for */
#define FLASH_SR_OPERR (1u << 1) /* only with ERRIE */
#define FLASH_SR_WRPERR (1u << 4)
#define FLASH_SR_PGAERR (1u << 5)
#define FLASH_SR_PGPERR (1u << 6)
#define FLASH_SR_PGSERR (1u << 7)
#define FLASH_SR_RDERR (1u << 8) /* F42x/43x only */
#define FLASH_SR_BSY (1u << 16)
#define FLASH_SR_ERRORS                                                                            \
    (FLASH_SR_OPERR | FLASH_SR_WRPERR | FLASH_SR_PGAERR | FLASH_SR_PGPERR | FLASH_SR_PGSERR |     \
     FLASH_SR_RDERR)

#define FLASH_CR_PG (1u << 0)
#define FLASH_CR_SER (1u << 1)
#define FLASH_CR_MER (1u << 2) /* bank 1 mass erase (CMSIS calls it MER1) */
#define FLASH_CR_SNB_POS 3u    /* [7:3]; bank-2 sector n is written as n + 4 */
#define FLASH_CR_SNB_MASK (0x1Fu << 3)
#define FLASH_CR_PSIZE_MASK (3u << 8)
#define FLASH_CR_PSIZE_X32 (2u << 8) /* x32 at 2.7..3.6 V */
#define FLASH_CR_MER1 (1u << 15)     /* bank 2 mass erase (CMSIS calls it MER2) */
#define FLASH_CR_STRT (1u << 16)
#define FLASH_CR_LOCK (1u << 31)

/* ---- GPIOA, base 0x4002_0000 (RM0090 §8.4) --------------------------------------------------- */
#define GPIOA_BASE 0x40020000u
#define GPIOA_MODER REG32(GPIOA_BASE + 0x00u)   /* §8.4.1: 2 bits per pin, 10 = alternate function */
#define GPIOA_PUPDR REG32(GPIOA_BASE + 0x0Cu)   /* §8.4.4: 01 = pull-up */
#define GPIOA_AFRH REG32(GPIOA_BASE + 0x24u)    /* §8.4.10: 4 bits per pin 8..15 */

/* ---- USART1, base 0x4001_1000 on APB2 (RM0090 §30.6) ----------------------------------------- */
#define USART1_BASE 0x40011000u
#define USART1_SR REG32(USART1_BASE + 0x00u)  /* §30.6.1 */
#define USART1_DR REG32(USART1_BASE + 0x04u)  /* §30.6.2 */
#define USART1_BRR REG32(USART1_BASE + 0x08u) /* §30.6.3: mantissa[15:4].fraction[3:0] */
#define USART1_CR1 REG32(USART1_BASE + 0x0Cu) /* §30.6.4 */
#define USART1_CR2 REG32(USART1_BASE + 0x10u) /* §30.6.5 */
#define USART1_CR3 REG32(USART1_BASE + 0x14u) /* §30.6.6 */

#define USART_SR_PE (1u << 0)
#define USART_SR_FE (1u << 1)
#define USART_SR_NF (1u << 2)
#define USART_SR_ORE (1u << 3)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TC (1u << 6)
#define USART_SR_TXE (1u << 7)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_UE (1u << 13)

/* ---- RNG, base 0x5006_0800 on AHB2 (RM0090 §24.4) -------------------------------------------- */
#define RNG_BASE 0x50060800u
#define RNG_CR REG32(RNG_BASE + 0x00u) /* §24.4.1 */
#define RNG_SR REG32(RNG_BASE + 0x04u) /* §24.4.2 */
#define RNG_DR REG32(RNG_BASE + 0x08u) /* §24.4.3 */

#define RNG_CR_RNGEN (1u << 2)
#define RNG_CR_IE (1u << 3)
#define RNG_SR_DRDY (1u << 0)
#define RNG_SR_CECS (1u << 1)
#define RNG_SR_SECS (1u << 2)
#define RNG_SR_CEIS (1u << 5) /* rc_w0: cleared by writing 0 */
#define RNG_SR_SEIS (1u << 6) /* rc_w0 */

/* ---- Cortex-M4 system control space (PM0214 §4.3-§4.6; ARMv7-M ARM B3.2) ---------------------- */
#define SYST_CSR REG32(0xE000E010u) /* PM0214 §4.5.1 */
#define SYST_RVR REG32(0xE000E014u) /* §4.5.2: RELOAD[23:0] */
#define SYST_CVR REG32(0xE000E018u) /* §4.5.3: any write clears it and COUNTFLAG */
#define SCB_VTOR REG32(0xE000ED08u) /* §4.4.4: TBLOFF[31:7] */
#define SCB_CPACR REG32(0xE000ED88u) /* §4.6.1: CP10 [21:20], CP11 [23:22] */

#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_TICKINT (1u << 1)
#define SYST_CSR_CLKSOURCE (1u << 2) /* 1 = HCLK (0 = HCLK/8 on STM32F4; Renode forces 1) */
#define SYST_CSR_COUNTFLAG (1u << 16) /* 1 if the counter hit 0 since the last CSR read */
#define SYST_RELOAD_MAX 0x00FFFFFFu
#define SCB_CPACR_CP10_CP11_FULL (0xFu << 20)

static inline void barrier_dsb(void) { __asm__ volatile("dsb 0xF" ::: "memory"); }
static inline void barrier_isb(void) { __asm__ volatile("isb 0xF" ::: "memory"); }

#endif /* OTAKEY_PORT_STM32F429_REGS_H */
