/* Tiny runtime for the emulator's test programs: registers (RM0090 names), USART1, clocks. */
#ifndef RT_H
#define RT_H

#include <stdint.h>

#define REG32(a) (*(volatile uint32_t *)(uintptr_t)(a))

#define RCC_BASE 0x40023800u
#define RCC_CR REG32(RCC_BASE + 0x00u)
#define RCC_PLLCFGR REG32(RCC_BASE + 0x04u)
#define RCC_CFGR REG32(RCC_BASE + 0x08u)
#define RCC_AHB1ENR REG32(RCC_BASE + 0x30u)
#define RCC_AHB2ENR REG32(RCC_BASE + 0x34u)
#define RCC_APB1ENR REG32(RCC_BASE + 0x40u)
#define RCC_APB2ENR REG32(RCC_BASE + 0x44u)
#define RCC_CSR REG32(RCC_BASE + 0x74u)

#define PWR_CR REG32(0x40007000u)
#define PWR_CSR REG32(0x40007004u)

#define FLASH_ACR REG32(0x40023C00u)
#define FLASH_KEYR REG32(0x40023C04u)
#define FLASH_SR REG32(0x40023C0Cu)
#define FLASH_CR REG32(0x40023C10u)
#define FLASH_SR_BSY (1u << 16)
#define FLASH_SR_ERRORS 0x1F3u
#define FLASH_CR_PG (1u << 0)
#define FLASH_CR_SER (1u << 1)
#define FLASH_CR_STRT (1u << 16)
#define FLASH_CR_LOCK (1u << 31)
#define FLASH_PSIZE_X32 (2u << 8)

#define GPIOA_MODER REG32(0x40020000u)
#define GPIOA_AFRH REG32(0x40020024u)

#define USART1_BASE 0x40011000u
#define USART1_SR REG32(USART1_BASE + 0x00u)
#define USART1_DR REG32(USART1_BASE + 0x04u)
#define USART1_BRR REG32(USART1_BASE + 0x08u)
#define USART1_CR1 REG32(USART1_BASE + 0x0Cu)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TXE (1u << 7)

#define RNG_CR REG32(0x50060800u)
#define RNG_SR REG32(0x50060804u)
#define RNG_DR REG32(0x50060808u)

#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SCB_AIRCR REG32(0xE000ED0Cu)

void rt_uart_init(void);
void rt_putc(char c);
void rt_puts(const char *s);
void rt_put_hex(uint32_t v);
int rt_getc(void);
int rt_getline(char *buf, int size);
uint32_t rt_hex(const char **p);
int rt_clock_180mhz(void);
void rt_flash_unlock(void);
uint32_t rt_flash_wait(void);
uint32_t rt_flash_erase(uint32_t snb);
uint32_t rt_flash_program_word(uint32_t address, uint32_t value);

#endif
