/**
 * @file port_rng.h
 * @brief Random bytes for nonces, IVs and ephemeral keys (STM32F429: RNG, RM0090 §24).
 */
#ifndef OTAKEY_PORT_RNG_H
#define OTAKEY_PORT_RNG_H

#include <stddef.h>
#include <stdint.h>

/** @brief Fill buf with len random bytes. @return 0 or a negative errno (-EIO on seed/clock error). */
int port_rng_fill(void *buf, size_t len);

#endif /* OTAKEY_PORT_RNG_H */
