/**
 * @file device.h
 * @brief The device state machine: every flow of docs/protocol.md, driven by bytes in and time.
 *
 * The port's main loop calls dev_boot() once, then forever: feed each received link byte to
 * dev_on_byte() and call dev_poll() with the time. The machine sends frames through port_link_write,
 * stores keys through the keystore, and takes randomness from port_rng_fill. One device per image
 * (the ports are singletons); the struct is still passed explicitly so its state is visible in tests.
 */
#ifndef OTAKEY_DEVICE_H
#define OTAKEY_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "otakey/codec.h"
#include "otakey/keystore.h"

#define DEV_FW_VERSION ((1u << 16) | (0u << 8) | 0u) /* 1.0.0 */

/** last_error codes reported in the check-in (§3.4), as agent/otakey/protocol/handshake.py LastError. */
enum dev_last_error {
    DEV_LASTERR_NONE = 0,
    DEV_LASTERR_AGENT_REJECTED = 1, /**< the agent answered ERROR(REJECTED) */
    DEV_LASTERR_AGENT_REFUSED = 2,  /**< ERROR(REFUSED) */
    DEV_LASTERR_AGENT_RETRY = 3,    /**< ERROR(RETRY) */
    DEV_LASTERR_TIMEOUT = 4,        /**< no answer in time */
    DEV_LASTERR_CLOUD_REFUSED = 5,  /**< the cloud refused a new credential; fell back */
    DEV_LASTERR_STORE_FAILED = 6,   /**< a keystore commit/invalidation failed */
    DEV_LASTERR_RNG = 7,            /**< the RNG failed */
};

enum dev_state {
    DEV_STATE_NO_KEYS = 0,      /**< no valid keystore area: reports and waits */
    DEV_STATE_IDLE,             /**< nothing in flight; dev_poll starts the next exchange when due */
    DEV_STATE_PROV_WAIT_OFFER,
    DEV_STATE_PROV_WAIT_ACK,
    DEV_STATE_AKROT_WAIT_OFFER,
    DEV_STATE_AKROT_WAIT_ACK,
    DEV_STATE_CLOUD_WAIT_UPDATE,
    DEV_STATE_CLOUD_WAIT_SESSION, /**< testing the new credential through the gateway */
    DEV_STATE_CLOUD_WAIT_ACK,
    DEV_STATE_CHECKIN_WAIT_REPLY,
    DEV_STATE_REVOKED,
};

struct dev_config {
    uint32_t exchange_timeout_ms; /**< resend with a fresh nonce after this (default 2000) */
    uint32_t checkin_interval_ms; /**< check in this often when idle (default 10000) */
};

/** Counters and results that tests, the banner and the check-in read. */
struct dev_stats {
    uint32_t frames_bad;        /**< frames dropped by the frame decoder */
    uint32_t messages_rejected; /**< agent messages dropped by the envelope/nonce checks */
    uint32_t exchanges_done;
    uint32_t timeouts;
    uint8_t last_error;         /**< reported in the next check-in */
};

struct dev {
    enum dev_state state;
    struct dev_config config;
    struct dev_stats stats;
    struct ks_state ks;
    struct ks_boot_report boot;
    uint8_t uid[12];
    /* exchange in flight */
    uint8_t nonce_d[16];
    uint8_t nonce_a[16];
    uint8_t eph_priv[32];
    uint32_t deadline_ms;
    uint32_t next_checkin_ms;
    uint32_t retry_at_ms;       /**< after a failed exchange, start nothing before this */
    uint8_t pending_action;     /**< action from the last CHECKIN_REPLY not yet started */
    uint8_t session_request_id; /**< request_id of the last SESSION_OPEN (CLOUD channel) */
    uint8_t session_tries;      /**< SESSION_OPENs sent for the credential under test */
    uint32_t new_ak_version;    /**< ak_version of the offer being confirmed */
    uint32_t new_cloud_version; /**< version of the credential being tested/confirmed */
    /* The new AK is derived straight into ks.ak and committed: no second copy of any key. */
    struct codec_frame_rx rx;   /**< incremental frame decoder; agent messages are opened in place */
};

/** @brief Load keys (boot rule) and print the banner on the console channel. @return 0 or negative */
int dev_boot(struct dev *d, const struct dev_config *config, uint32_t now_ms);
/** @brief Feed one byte received on the link. */
void dev_on_byte(struct dev *d, uint8_t b, uint32_t now_ms);
/** @brief Start the next exchange when due, and handle timeouts. @return 0 or negative */
int dev_poll(struct dev *d, uint32_t now_ms);
/** @brief A short stable name for a state ("idle", "prov_wait_offer", ...). */
const char *dev_state_name(enum dev_state s);

#endif /* OTAKEY_DEVICE_H */
