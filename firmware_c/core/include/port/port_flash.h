/**
 * @file port_flash.h
 * @brief The core's only view of flash: two keystore areas, area-relative offsets.
 *
 * Implemented by the STM32F429 port (FLASH interface, RM0090 §3), by the host simulator
 * (firmware_c/host) and therefore also by every emulator run. The core never hard-codes the erased
 * value, the program unit or an area's size: it asks.
 */
#ifndef OTAKEY_PORT_FLASH_H
#define OTAKEY_PORT_FLASH_H

#include <stddef.h>
#include <stdint.h>

enum port_flash_area {
    PORT_FLASH_AREA_A = 0, /**< keystore area A (STM32F429: sector 1) */
    PORT_FLASH_AREA_B = 1, /**< keystore area B (STM32F429: sector 2, factory PK record) */
};

/** @brief Read len bytes at off. @return 0 or a negative errno (-EINVAL out of range, -EIO). */
int port_flash_read(int area, uint32_t off, void *dst, size_t len);
/**
 * @brief Program len bytes at off. off and len are multiples of port_flash_align(); programming
 *        only clears bits. len == 0 returns 0. @return 0 or a negative errno.
 */
int port_flash_write(int area, uint32_t off, const void *src, size_t len);
/** @brief Erase the whole area (one sector). @return 0 or a negative errno. */
int port_flash_erase(int area);
/** @brief Size of the area in bytes. */
uint32_t port_flash_area_size(int area);
/** @brief Program unit in bytes (4 on the STM32F429 with PSIZE x32). */
uint32_t port_flash_align(void);
/** @brief Value of an erased byte (0xFF on the STM32F429). */
uint8_t port_flash_erased_val(void);

#endif /* OTAKEY_PORT_FLASH_H */
