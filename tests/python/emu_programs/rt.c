/* Tiny runtime for the emulator's test programs (polling only: the model has no interrupts). */
#include "rt.h"

void rt_uart_init(void)
{
    RCC_AHB1ENR |= 1u << 0;                                   /* GPIOAEN */
    RCC_APB2ENR |= 1u << 4;                                   /* USART1EN */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 18)) | (0xAu << 18); /* PA9, PA10: alternate function */
    GPIOA_AFRH = (GPIOA_AFRH & ~0xFF0u) | 0x770u;             /* AF7 = USART1 */
    USART1_BRR = 0x8Bu;                                       /* 115200 baud from HSI 16 MHz */
    USART1_CR1 = (1u << 13) | (1u << 3) | (1u << 2);          /* UE | TE | RE */
}

void rt_putc(char c)
{
    while (!(USART1_SR & USART_SR_TXE)) {
    }
    USART1_DR = (uint8_t)c;
}

void rt_puts(const char *s)
{
    while (*s) {
        rt_putc(*s++);
    }
}

void rt_put_hex(uint32_t v)
{
    for (int shift = 28; shift >= 0; shift -= 4) {
        rt_putc("0123456789ABCDEF"[(v >> shift) & 0xFu]);
    }
}

int rt_getc(void)
{
    while (!(USART1_SR & USART_SR_RXNE)) {
    }
    return (int)(USART1_DR & 0xFFu);
}

int rt_getline(char *buf, int size)
{
    int n = 0;
    for (;;) {
        int c = rt_getc();
        if (c == '\n') {
            break;
        }
        if (n < size - 1) {
            buf[n++] = (char)c;
        }
    }
    buf[n] = 0;
    return n;
}

uint32_t rt_hex(const char **p)
{
    const char *s = *p;
    uint32_t v = 0;
    while (*s == ' ') {
        s++;
    }
    for (;; s++) {
        char c = *s;
        uint32_t d;
        if (c >= '0' && c <= '9') {
            d = (uint32_t)(c - '0');
        } else if (c >= 'A' && c <= 'F') {
            d = (uint32_t)(c - 'A' + 10);
        } else if (c >= 'a' && c <= 'f') {
            d = (uint32_t)(c - 'a' + 10);
        } else {
            break;
        }
        v = (v << 4) | d;
    }
    *p = s;
    return v;
}

/* 180 MHz from the 8 MHz HSE as ST's STM32F429I-Discovery examples do, but with PLLQ = 8 so that
 * PLL48CLK = 45 MHz stays within the RNG's 48 MHz limit. Returns 0, or the step that timed out. */
static int wait_set(volatile uint32_t *reg, uint32_t mask)
{
    for (uint32_t i = 0; i < 100000u; i++) {
        if ((*reg & mask) == mask) {
            return 0;
        }
    }
    return 1;
}

int rt_clock_180mhz(void)
{
    RCC_APB1ENR |= 1u << 28;                     /* PWREN */
    PWR_CR |= 3u << 14;                          /* VOS = scale 1 */
    RCC_CR |= 1u << 16;                          /* HSEON */
    if (wait_set(&RCC_CR, 1u << 17)) {           /* HSERDY */
        return 1;
    }
    RCC_PLLCFGR = (1u << 22) | 8u | (360u << 6) | (0u << 16) | (8u << 24);
    RCC_CR |= 1u << 24;                          /* PLLON */
    if (wait_set(&RCC_CR, 1u << 25)) {           /* PLLRDY */
        return 2;
    }
    PWR_CR |= 1u << 16;                          /* ODEN */
    if (wait_set(&PWR_CSR, 1u << 16)) {          /* ODRDY */
        return 3;
    }
    PWR_CR |= 1u << 17;                          /* ODSWEN */
    if (wait_set(&PWR_CSR, 1u << 17)) {          /* ODSWRDY */
        return 4;
    }
    FLASH_ACR = (1u << 8) | (1u << 9) | (1u << 10) | 5u; /* PRFTEN ICEN DCEN, 5 WS */
    if ((FLASH_ACR & 0xFu) != 5u) {
        return 5;
    }
    RCC_CFGR = (5u << 10) | (4u << 13) | 2u;     /* APB1 /4, APB2 /2, SW = PLL */
    if (wait_set(&RCC_CFGR, 2u << 2)) {          /* SWS = PLL */
        return 6;
    }
    USART1_BRR = 0x30Du;                         /* 115200 baud from PCLK2 = 90 MHz */
    return 0;
}

void rt_flash_unlock(void)
{
    if (FLASH_CR & FLASH_CR_LOCK) {
        FLASH_KEYR = 0x45670123u;
        FLASH_KEYR = 0xCDEF89ABu;
    }
}

uint32_t rt_flash_wait(void)
{
    uint32_t sr;
    do {
        sr = FLASH_SR;
    } while (sr & FLASH_SR_BSY);
    return sr;
}

uint32_t rt_flash_erase(uint32_t snb)
{
    rt_flash_wait();
    FLASH_SR = FLASH_SR_ERRORS;
    FLASH_CR = FLASH_PSIZE_X32 | FLASH_CR_SER | (snb << 3);
    FLASH_CR |= FLASH_CR_STRT;
    uint32_t sr = rt_flash_wait();
    FLASH_CR &= ~(FLASH_CR_SER | (0x1Fu << 3));
    return sr;
}

uint32_t rt_flash_program_word(uint32_t address, uint32_t value)
{
    rt_flash_wait();
    FLASH_CR = FLASH_PSIZE_X32 | FLASH_CR_PG;
    REG32(address) = value;
    uint32_t sr = rt_flash_wait();
    FLASH_CR &= ~FLASH_CR_PG;
    return sr;
}
