/**
 * @file port_device.h
 * @brief Facts about this chip and image: unique ID, time, application hash.
 */
#ifndef OTAKEY_PORT_DEVICE_H
#define OTAKEY_PORT_DEVICE_H

#include <stdint.h>

/** @brief The 96-bit unique ID (STM32F429: 0x1FFF7A10, three words in address order, LE). */
void port_device_uid(uint8_t uid[12]);
/** @brief Milliseconds since boot (wraps). */
uint32_t port_time_ms(void);
/** @brief SHA-256 of the application image, computed once at boot by the port. */
void port_app_hash(uint8_t out[32]);

#endif /* OTAKEY_PORT_DEVICE_H */
