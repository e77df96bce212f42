/*
 * Host port, non-flash half (see host_io.h): the device's RNG, link, UID, clock and app hash as
 * plain memory that tests fill and drain, plus ctypes-friendly wrappers over one struct dev.
 */
#include "host_io.h"

#include <errno.h>
#include <string.h>

#include "otakey/codec.h"
#include "otakey/device.h"
#include "port/port_device.h"
#include "port/port_link.h"
#include "port/port_rng.h"

static const uint8_t default_uid[12] = {0x30, 0x00, 0x2A, 0x00, 0x11, 0x51, 0x33, 0x35,
                                        0x34, 0x37, 0x38, 0x39};

static struct {
    uint8_t uid[12];
    uint8_t app_hash[32];
    uint32_t now_ms;
    uint64_t rng_state;
    int rng_fail;
    uint8_t rng_queue[HOST_RNG_QUEUE_MAX];
    size_t rng_head, rng_len;
    size_t rng_drawn;
    uint8_t tx[HOST_LINK_TX_MAX];
    size_t tx_len;
    uint8_t rx[HOST_LINK_RX_MAX];
    size_t rx_head, rx_len;
} io = {.uid = {0x30, 0x00, 0x2A, 0x00, 0x11, 0x51, 0x33, 0x35, 0x34, 0x37, 0x38, 0x39}, .rng_state = 1};

static struct dev the_dev;

void host_reset(void)
{
    memcpy(io.uid, default_uid, sizeof io.uid);
    memset(io.app_hash, 0, sizeof io.app_hash);
    io.now_ms = 0;
    io.rng_state = 1;
    io.rng_fail = 0;
    io.rng_head = io.rng_len = io.rng_drawn = 0;
    io.tx_len = 0;
    io.rx_head = io.rx_len = 0;
}

void host_set_uid(const uint8_t uid[12])
{
    memcpy(io.uid, uid, sizeof io.uid);
}

void host_set_app_hash(const uint8_t hash[32])
{
    memcpy(io.app_hash, hash, sizeof io.app_hash);
}

void host_time_set(uint32_t ms)
{
    io.now_ms = ms;
}

void host_time_advance(uint32_t ms)
{
    io.now_ms += ms;
}

uint32_t host_time_get(void)
{
    return io.now_ms;
}

/* ---- RNG ---- */

void host_rng_seed(uint64_t seed)
{
    io.rng_state = seed;
}

int host_rng_push(const uint8_t *buf, size_t len)
{
    if (len > HOST_RNG_QUEUE_MAX - io.rng_len) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        io.rng_queue[(io.rng_head + io.rng_len + i) % HOST_RNG_QUEUE_MAX] = buf[i];
    }
    io.rng_len += len;
    return 0;
}

size_t host_rng_queued(void)
{
    return io.rng_len;
}

size_t host_rng_drawn(void)
{
    return io.rng_drawn;
}

void host_rng_fail(int on)
{
    io.rng_fail = on;
}

/* splitmix64 (Steele, Lea, Flood 2014): deterministic, not a CSPRNG — host tests only. */
static uint64_t splitmix64(void)
{
    uint64_t z = (io.rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int port_rng_fill(void *buf, size_t len)
{
    uint8_t *p = buf;
    if (io.rng_fail) {
        return -EIO;
    }
    for (size_t i = 0; i < len; i++) {
        if (io.rng_len > 0) {
            p[i] = io.rng_queue[io.rng_head];
            io.rng_head = (io.rng_head + 1) % HOST_RNG_QUEUE_MAX;
            io.rng_len--;
        } else {
            p[i] = (uint8_t)splitmix64();
        }
    }
    io.rng_drawn += len;
    return 0;
}

/* ---- link ---- */

int port_link_write(const uint8_t *buf, size_t len)
{
    if (len > HOST_LINK_TX_MAX - io.tx_len) {
        return -ENOSPC; /* a test forgot to drain: fail loudly rather than drop silently */
    }
    memcpy(&io.tx[io.tx_len], buf, len);
    io.tx_len += len;
    return 0;
}

int port_link_read_byte(uint8_t *b)
{
    if (io.rx_len == 0) {
        return 0;
    }
    *b = io.rx[io.rx_head];
    io.rx_head = (io.rx_head + 1) % HOST_LINK_RX_MAX;
    io.rx_len--;
    return 1;
}

int host_link_rx_push(const uint8_t *buf, size_t len)
{
    if (len > HOST_LINK_RX_MAX - io.rx_len) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        io.rx[(io.rx_head + io.rx_len + i) % HOST_LINK_RX_MAX] = buf[i];
    }
    io.rx_len += len;
    return 0;
}

size_t host_link_rx_pending(void)
{
    return io.rx_len;
}

size_t host_link_tx_take(uint8_t *buf, size_t cap)
{
    size_t n = io.tx_len < cap ? io.tx_len : cap;
    memcpy(buf, io.tx, n);
    memmove(io.tx, &io.tx[n], io.tx_len - n);
    io.tx_len -= n;
    return n;
}

size_t host_link_tx_pending(void)
{
    return io.tx_len;
}

/* ---- device facts ---- */

void port_device_uid(uint8_t uid[12])
{
    memcpy(uid, io.uid, sizeof io.uid);
}

uint32_t port_time_ms(void)
{
    return io.now_ms;
}

void port_app_hash(uint8_t out[32])
{
    memcpy(out, io.app_hash, sizeof io.app_hash);
}

/* ---- the device ---- */

int host_dev_boot(uint32_t exchange_timeout_ms, uint32_t checkin_interval_ms)
{
    struct dev_config cfg = {exchange_timeout_ms, checkin_interval_ms};
    return dev_boot(&the_dev, &cfg, io.now_ms);
}

void host_dev_feed(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        dev_on_byte(&the_dev, buf[i], io.now_ms);
    }
}

size_t host_dev_pump(void)
{
    size_t n = 0;
    uint8_t b;
    while (port_link_read_byte(&b) == 1) {
        dev_on_byte(&the_dev, b, io.now_ms);
        n++;
    }
    return n;
}

int host_dev_poll(void)
{
    return dev_poll(&the_dev, io.now_ms);
}

void host_dev_set_pending_action(int action)
{
    the_dev.pending_action = (uint8_t)action;
}

int host_dev_pending_action(void)
{
    return the_dev.pending_action;
}

int host_dev_state(void)
{
    return (int)the_dev.state;
}

const char *host_dev_state_name(void)
{
    return dev_state_name(the_dev.state);
}

size_t host_dev_sizeof(void)
{
    return sizeof(struct dev);
}

int host_dev_has_pk(void)
{
    return the_dev.ks.has_pk;
}

int host_dev_has_ak(void)
{
    return the_dev.ks.has_ak;
}

int host_dev_has_cloud(void)
{
    return the_dev.ks.has_cloud;
}

uint32_t host_dev_ak_version(void)
{
    return the_dev.ks.has_ak ? the_dev.ks.ak_version : 0u;
}

uint32_t host_dev_cloud_version(void)
{
    return the_dev.ks.has_cloud ? the_dev.ks.cloud.version : 0u;
}

uint32_t host_dev_generation(void)
{
    return the_dev.ks.generation;
}

int host_dev_active_area(void)
{
    return ks_active_area();
}

int host_dev_ak_fingerprint(uint8_t out[16])
{
    if (!the_dev.ks.has_ak) {
        return -1;
    }
    codec_fingerprint(the_dev.ks.ak, sizeof the_dev.ks.ak, out);
    return 0;
}

int host_dev_cloud_fingerprint(uint8_t out[16])
{
    if (!the_dev.ks.has_cloud) {
        return -1;
    }
    codec_fingerprint(the_dev.ks.cloud.secret, the_dev.ks.cloud.secret_len, out);
    return 0;
}

static int copy_field(const uint8_t *src, size_t len, uint8_t *out, size_t cap)
{
    if (!the_dev.ks.has_cloud || len > cap) {
        return -1;
    }
    memcpy(out, src, len);
    return (int)len;
}

int host_dev_cloud_client_id(uint8_t *out, size_t cap)
{
    return copy_field(the_dev.ks.cloud.client_id, the_dev.ks.cloud.client_id_len, out, cap);
}

int host_dev_cloud_username(uint8_t *out, size_t cap)
{
    return copy_field(the_dev.ks.cloud.username, the_dev.ks.cloud.username_len, out, cap);
}

uint32_t host_dev_frames_bad(void)
{
    return the_dev.stats.frames_bad;
}

uint32_t host_dev_messages_rejected(void)
{
    return the_dev.stats.messages_rejected;
}

uint32_t host_dev_exchanges_done(void)
{
    return the_dev.stats.exchanges_done;
}

uint32_t host_dev_timeouts(void)
{
    return the_dev.stats.timeouts;
}

int host_dev_last_error(void)
{
    return the_dev.stats.last_error;
}

void host_dev_nonce_d(uint8_t out[16])
{
    memcpy(out, the_dev.nonce_d, sizeof the_dev.nonce_d);
}
