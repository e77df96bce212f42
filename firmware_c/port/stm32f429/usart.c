/*
 * port_link.h for the STM32F429I-DISC1: USART1 on PA9 (TX) / PA10 (RX), AF7, 115200 8N1, polled.
 * On DISC1 USART1 is the ST-LINK/V2-B virtual COM port, so the gateway opens the board's VCP.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "port/port_link.h"
#include "port_stm32.h"
#include "regs.h"

#define LINK_BAUD 115200u
#define TIMEOUT_TXE_MS 10u /* one byte takes 87 us at 115200 */

#define PIN_TX 9u
#define PIN_RX 10u
#define AF_USART1 7u

void usart1_init(uint32_t pclk2_hz)
{
    /* §6.3.10/§6.3.14 clock gates; read back so they are on before the blocks are written. */
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIOAEN;
    RCC_APB2ENR |= RCC_APB2ENR_USART1EN;
    (void)RCC_APB2ENR;

    /* §8.4.10 AF7 first, then §8.4.1 MODER = 10 (alternate function), so the pins never drive
       another function in between; §8.4.4 pull-up on RX keeps an open line idle (high). */
    GPIOA_AFRH = (GPIOA_AFRH & ~((0xFu << 4u * (PIN_TX - 8u)) | (0xFu << 4u * (PIN_RX - 8u)))) |
                 (AF_USART1 << 4u * (PIN_TX - 8u)) | (AF_USART1 << 4u * (PIN_RX - 8u));
    GPIOA_PUPDR = (GPIOA_PUPDR & ~(3u << 2u * PIN_RX)) | (1u << 2u * PIN_RX);
    GPIOA_MODER = (GPIOA_MODER & ~((3u << 2u * PIN_TX) | (3u << 2u * PIN_RX))) | (2u << 2u * PIN_TX) |
                  (2u << 2u * PIN_RX);

    /* §30.3.4 with OVER8 = 0: BRR = USARTDIV in 12.4 fixed point = round(PCLK2 / baud);
       90 MHz -> 0x30D (115 237 baud, +0.03 %); the HSI fallback 16 MHz -> 0x8B (-0.08 %). */
    USART1_CR1 = 0u;
    USART1_BRR = (pclk2_hz + LINK_BAUD / 2u) / LINK_BAUD;
    USART1_CR2 = 0u; /* 1 stop bit */
    USART1_CR3 = 0u; /* no flow control, no DMA */
    USART1_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE; /* M=0 8 bits, PCE=0, no interrupts */
}

int port_link_write(const uint8_t *buf, size_t len)
{
    if (buf == NULL && len != 0u) {
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if (tick_wait_reg(&USART1_SR, USART_SR_TXE, USART_SR_TXE, TIMEOUT_TXE_MS) != 0) {
            return -EIO;
        }
        USART1_DR = buf[i]; /* §30.6.1: a DR write clears TXE */
    }
    return 0;
}

int port_link_read_byte(uint8_t *b)
{
    uint32_t sr = USART1_SR;
    if ((sr & USART_SR_RXNE) == 0u) {
        return 0;
    }
    /* §30.6.1: the SR read above followed by this DR read clears RXNE and ORE/NF/FE/PE. After an
       overrun the byte in DR is still good (the next one was lost; the frame CRC catches that). A
       framing or parity error means this byte itself is wrong: drop it. */
    uint8_t v = (uint8_t)USART1_DR;
    if ((sr & (USART_SR_FE | USART_SR_PE)) != 0u) {
        return -EIO;
    }
    *b = v;
    return 1;
}
