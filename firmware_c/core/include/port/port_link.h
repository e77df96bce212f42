/**
 * @file port_link.h
 * @brief The serial link to the gateway (STM32F429: USART1 at 115200 8N1).
 */
#ifndef OTAKEY_PORT_LINK_H
#define OTAKEY_PORT_LINK_H

#include <stddef.h>
#include <stdint.h>

/** @brief Send len bytes (blocking until queued). @return 0 or a negative errno. */
int port_link_write(const uint8_t *buf, size_t len);
/** @brief Take one received byte if there is one. @return 1 with *b set, 0 if none, or < 0 on error. */
int port_link_read_byte(uint8_t *b);

#endif /* OTAKEY_PORT_LINK_H */
