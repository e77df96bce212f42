/**
 * @file host_io.h
 * @brief Host port, non-flash half: deterministic RNG with a queue of exact bytes, captured link
 *        (TX buffer that tests drain, RX queue that tests fill), settable UID, time and app hash;
 *        plus thin wrappers over the device state machine on one static struct dev, so that
 *        Python (ctypes on libotakey_hostdev.so) never needs the struct's layout.
 *
 * All functions take and return scalars or byte buffers. Singletons, like the chip. The flash
 * half is host_flash.h.
 *
 * RNG: port_rng_fill first takes bytes pushed with host_rng_push (in order), then falls back to a
 * splitmix64 stream seeded by host_rng_seed. Tests replay a vector by pushing its RNG draws.
 */
#ifndef OTAKEY_HOST_IO_H
#define OTAKEY_HOST_IO_H

#include <stddef.h>
#include <stdint.h>

#define HOST_RNG_QUEUE_MAX 8192u
#define HOST_LINK_TX_MAX 65536u
#define HOST_LINK_RX_MAX 65536u

/** @brief Reset the I/O half: empty queues, seed 1, time 0, default UID and app hash, RNG failure
 *         off, link write failure off. Flash is untouched (host_flash_reset). */
void host_reset(void);

/** @brief Set the 12-byte UID port_device_uid reports. */
void host_set_uid(const uint8_t uid[12]);
/** @brief Set the 32-byte application hash port_app_hash reports. */
void host_set_app_hash(const uint8_t hash[32]);
/** @brief Set / advance the millisecond clock port_time_ms reports. */
void host_time_set(uint32_t ms);
void host_time_advance(uint32_t ms);
uint32_t host_time_get(void);

/** @brief Seed the fallback generator (also drops nothing from the queue). */
void host_rng_seed(uint64_t seed);
/** @brief Queue exact bytes for the next port_rng_fill calls. @return 0, or -1 if it does not fit */
int host_rng_push(const uint8_t *buf, size_t len);
/** @brief Bytes still queued. */
size_t host_rng_queued(void);
/** @brief Total bytes port_rng_fill handed out since host_reset. */
size_t host_rng_drawn(void);
/** @brief 1: port_rng_fill fails with -EIO (a seed/clock error), 0: works. */
void host_rng_fail(int on);

/** @brief Queue bytes for port_link_read_byte. @return 0, or -1 if it does not fit */
int host_link_rx_push(const uint8_t *buf, size_t len);
/** @brief Bytes waiting in the RX queue. */
size_t host_link_rx_pending(void);
/** @brief Move up to cap captured TX bytes into buf (oldest first). @return bytes moved */
size_t host_link_tx_take(uint8_t *buf, size_t cap);
/** @brief Captured TX bytes not taken yet. */
size_t host_link_tx_pending(void);

/* ---- the device on one static struct dev ---- */

/** @brief dev_boot with the given timeouts (0 = default) at the current host time. @return its rc */
int host_dev_boot(uint32_t exchange_timeout_ms, uint32_t checkin_interval_ms);
/** @brief Feed bytes to dev_on_byte at the current host time. */
void host_dev_feed(const uint8_t *buf, size_t len);
/** @brief Feed every byte waiting in the RX queue (what the port's main loop does). @return bytes fed */
size_t host_dev_pump(void);
/** @brief dev_poll at the current host time. @return its rc */
int host_dev_poll(void);
/** @brief Set the action a CHECKIN_REPLY would have left pending (enum codec_action), so a test can
 *         replay a flow that starts with it (tests/vectors/flows.json). */
void host_dev_set_pending_action(int action);
int host_dev_pending_action(void);
/** @brief Current state (enum dev_state) and its name. */
int host_dev_state(void);
const char *host_dev_state_name(void);
/** @brief sizeof(struct dev): the device's RAM for the state machine. */
size_t host_dev_sizeof(void);

/** @brief Keystore view of the running device. */
int host_dev_has_pk(void);
int host_dev_has_ak(void);
int host_dev_has_cloud(void);
uint32_t host_dev_ak_version(void);
uint32_t host_dev_cloud_version(void);
uint32_t host_dev_generation(void);
int host_dev_active_area(void);
/** @brief Fingerprints (protocol §2.3) of the AK and the cloud secret: keys never leave. @return 0 or -1 if absent */
int host_dev_ak_fingerprint(uint8_t out[16]);
int host_dev_cloud_fingerprint(uint8_t out[16]);
/** @brief Copy the cloud credential's client_id / username (not the secret). @return length or -1 */
int host_dev_cloud_client_id(uint8_t *out, size_t cap);
int host_dev_cloud_username(uint8_t *out, size_t cap);

/** @brief Stats (struct dev_stats). */
uint32_t host_dev_frames_bad(void);
uint32_t host_dev_messages_rejected(void);
uint32_t host_dev_exchanges_done(void);
uint32_t host_dev_timeouts(void);
int host_dev_last_error(void);
/** @brief The current exchange's nonce_d (16 bytes, not secret). */
void host_dev_nonce_d(uint8_t out[16]);

#endif /* OTAKEY_HOST_IO_H */
