/*
 * fuzz_device: the device state machine (device.c) on the host port, fed by the fuzzer through
 * its link, its clock and its flash.
 *
 * Input: ks_kind (1) ‖ rng_seed (1) ‖ then commands, each an opcode byte (% 8) and its operands:
 *   0 RAW      n (1) ‖ n bytes fed to dev_on_byte as they are
 *   1 TICK     dt (2): the clock advances dt ms, then dev_poll
 *   2 AGENT    flags (1) ‖ [type (1) if 0x01] ‖ [key_ref (4) if 0x04] ‖ [device_id (12) if 0x08] ‖
 *              [nonce_d (16) if 0x10] ‖ nonce_a (16) ‖ iv (16) ‖ body: an agent message the harness
 *              seals with the device's own key (0x02: another key), its ID and nonces; the type is
 *              the one the state waits for unless 0x01; body raw (u16 length ‖ bytes) or, with 0x40,
 *              well-formed for the type (0x80: with the next version); framed on AGENT and fed
 *   3 ERROR    flags (1) ‖ code (1) ‖ ...: an ERROR message (§3.6) echoing or not the exchange
 *   4 SESSION  flags (1) ‖ status (1) ‖ n (1) ‖ detail: a SESSION_RESULT on the CLOUD channel
 *   5 CUT      n (2) ‖ mode (1): a power cut at the n-th flash operation from now
 *   6 REBOOT   the device boots again (SRAM lost, flash kept)
 *   7 RNG      on (1): the RNG fails (-EIO) or works again
 * The keystore booted first is a factory (PK) record, a provisioned (AK v1) one, or AK + cloud.
 *
 * Sealing with the device's key lets the fuzzer past the MAC into every flow (offers with any
 * point, credentials of any shape, replies, ACKs at any time), which raw bytes alone never reach.
 *
 * Properties after every command: no crash; the state is a valid enum value; every byte the
 * device sent is a well-formed frame (AGENT: an envelope under its current key with its ID;
 * CLOUD: a SESSION_OPEN whose credential is the stored one and whose fields keep the §5 limits;
 * CONSOLE: a line); the flash holds a valid record and, unless a power cut fired, it is exactly
 * the device's in-RAM keystore; across the whole run PK never comes back once gone and the AK
 * never disappears or goes back to a lower version. After a power cut the device reboots and
 * must find its keys.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "host_flash.h"
#include "host_io.h"
#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/device.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"

#define MAX_COMMANDS 64
#define TIMEOUT_MS 1000u
#define CHECKIN_MS 5000u

static const uint8_t UID[12] = {0x86, 0xf8, 0x0f, 0x16, 0x0c, 0x28, 0x83, 0x97, 0x19, 0x90, 0x56, 0x6f};
static const uint8_t OTHER_KEY[32] = {0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE,
                                      0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE,
                                      0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE};

static struct dev d;
static struct dev_config cfg = {TIMEOUT_MS, CHECKIN_MS};
static uint32_t now;

/* What the run has seen on flash, for the monotonic properties. */
static struct {
    int pk_gone;
    int has_ak;
    uint32_t ak_version;
} seen;

/* ---- X25519, memoised ----
 *
 * Every exchange the device starts makes a key pair (crypto_x25519_base on RNG bytes), every offer
 * it takes a shared secret (crypto_x25519), and every structured offer the harness builds a point:
 * under ASan each costs about a millisecond, most of this target's time, and a script may hold
 * dozens. The RNG is seeded from the input, so the same scalars and points come back run after run:
 * the link maps both calls (-Wl,--wrap, CMakeLists.txt) to these wrappers, which answer a repeat of
 * the exact same input from a table and compute anything else for real. A pure function called with
 * the same bytes gives the same bytes and runs the same code (X25519 is held to RFC 7748 in tests/c),
 * so nothing the fuzzer can observe changes; the wrappers still read and write the caller's buffers
 * in full, so ASan checks them on every call. FUZZ_DEVICE_NO_MEMO=1 turns the table off.
 */
void __real_crypto_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);
void __real_crypto_x25519_base(uint8_t out[32], const uint8_t scalar[32]);
void __wrap_crypto_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);
void __wrap_crypto_x25519_base(uint8_t out[32], const uint8_t scalar[32]);

#define MEMO_SLOTS 4096u

struct memo_slot {
    uint8_t used;
    uint8_t in[64]; /* scalar ‖ point (the base point 9 for crypto_x25519_base) */
    uint8_t out[32];
};

static struct memo_slot memo[MEMO_SLOTS];

static int memo_on(void)
{
    static int on = -1;
    if (on < 0) {
        on = getenv("FUZZ_DEVICE_NO_MEMO") == NULL;
    }
    return on;
}

static struct memo_slot *memo_slot(const uint8_t in[64])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (unsigned i = 0; i < 64; i++) {
        h = (h ^ in[i]) * 16777619u;
    }
    return &memo[h % MEMO_SLOTS];
}

void __wrap_crypto_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32])
{
    uint8_t in[64];
    struct memo_slot *m;
    memcpy(in, scalar, 32);
    memcpy(in + 32, point, 32);
    m = memo_slot(in);
    if (memo_on() && m->used && memcmp(m->in, in, sizeof in) == 0) {
        memcpy(out, m->out, 32);
        return;
    }
    __real_crypto_x25519(out, scalar, point);
    m->used = 1;
    memcpy(m->in, in, sizeof in);
    memcpy(m->out, out, 32);
}

void __wrap_crypto_x25519_base(uint8_t out[32], const uint8_t scalar[32])
{
    uint8_t in[64] = {0};
    struct memo_slot *m;
    memcpy(in, scalar, 32);
    in[32] = 9; /* u = 9: the same key as crypto_x25519(out, scalar, 9) */
    m = memo_slot(in);
    if (memo_on() && m->used && memcmp(m->in, in, sizeof in) == 0) {
        memcpy(out, m->out, 32);
        return;
    }
    __real_crypto_x25519_base(out, scalar);
    m->used = 1;
    memcpy(m->in, in, sizeof in);
    memcpy(m->out, out, 32);
}

/* ---- the planted keystore ---- */

static void plant(uint8_t kind)
{
    static struct ks_state st;
    static uint8_t img[HOST_FLASH_AREA_SIZE];
    size_t n = 0;
    memset(&st, 0, sizeof st);
    st.generation = 1;
    st.po_id = 4660;
    st.po_name_len = 12;
    memcpy(st.po_name, "PO-2024-0042", 12);
    if (kind == 0) {
        st.has_pk = 1;
        for (unsigned i = 0; i < 32; i++) {
            st.pk[i] = (uint8_t)(0x40 + i);
        }
    } else {
        st.generation = 2;
        st.has_ak = 1;
        st.ak_version = 1;
        for (unsigned i = 0; i < 32; i++) {
            st.ak[i] = (uint8_t)(0xA0 ^ i);
        }
    }
    if (kind == 2) {
        st.generation = 3;
        st.has_cloud = 1;
        st.cloud.version = 1;
        st.cloud.platform = KS_PLATFORM_MOSQUITTO;
        st.cloud.endpoint_len = 21;
        memcpy(st.cloud.endpoint, "mqtt://127.0.0.1:1883", 21);
        st.cloud.client_id_len = 24;
        memcpy(st.cloud.client_id, "86f80f160c2883971990566f", 24);
        st.cloud.username_len = 24;
        memcpy(st.cloud.username, "86f80f160c2883971990566f", 24);
        st.cloud.secret_len = 16;
        memcpy(st.cloud.secret, "secret-password!", 16);
    }
    FUZZ_CHECK(ks_encode(&st, 0xFF, img, sizeof img, &n) == 0);
    /* The factory record sits in area B like on a fresh board; later ones in A. */
    FUZZ_CHECK(host_flash_raw_write(kind == 0 ? 1 : 0, 0, img, n) == 0);
}

/* ---- flash as the boot rule sees it (raw reads: no counting, no side effects) ---- */

static uint8_t area_img[2][HOST_FLASH_AREA_SIZE];

/* The last state flash_active verified, valid while no flash operation happened since. */
static struct {
    int valid;
    uint32_t op_count;
    int active;
    struct ks_state st;
} flash_cache;

static int flash_active(struct ks_state *st)
{
    int active;
    if (flash_cache.valid && flash_cache.op_count == host_flash_op_count() && !host_flash_cut_fired()) {
        *st = flash_cache.st;
        return flash_cache.active;
    }
    FUZZ_CHECK(host_flash_raw_read(0, 0, area_img[0], HOST_FLASH_AREA_SIZE) == 0);
    FUZZ_CHECK(host_flash_raw_read(1, 0, area_img[1], HOST_FLASH_AREA_SIZE) == 0);
    active = fuzz_oracle_active(area_img[0], HOST_FLASH_AREA_SIZE, area_img[1], HOST_FLASH_AREA_SIZE);
    if (active >= 0) {
        FUZZ_CHECK(ks_decode(area_img[active], HOST_FLASH_AREA_SIZE, st) == 0);
    }
    flash_cache.valid = 1;
    flash_cache.op_count = host_flash_op_count();
    flash_cache.active = active;
    flash_cache.st = *st;
    return active;
}

/* ---- what the device sent ---- */

static struct codec_frame_rx out_rx;
static uint8_t tx[HOST_LINK_TX_MAX];

static int is_device_type(uint8_t t)
{
    return t == MSG_PROV_HELLO || t == MSG_PROV_CONFIRM || t == MSG_AK_ROTATE_HELLO || t == MSG_AK_ROTATE_CONFIRM ||
           t == MSG_CLOUD_REQUEST || t == MSG_CLOUD_CONFIRM || t == MSG_CHECKIN;
}

static void check_agent_frame(const uint8_t *p, size_t len, int keys_current)
{
    static uint8_t copy[CODEC_MAX_MESSAGE];
    struct codec_header h;
    uint8_t *body = NULL;
    size_t body_len = 0;
    const uint8_t *root;

    FUZZ_CHECK(len >= CODEC_MIN_MESSAGE && len <= CODEC_MAX_MESSAGE && (len - 100) % 16 == 0);
    FUZZ_CHECK(codec_header_unpack(p, len, &h) == 0);
    FUZZ_CHECK(is_device_type(h.type));
    FUZZ_CHECK(memcmp(h.device_id, UID, sizeof UID) == 0);
    if (!keys_current) {
        return;
    }
    /* Sealed under the key the device holds (PK for PROV_HELLO, else its AK), named in the header. */
    if (h.type == MSG_PROV_HELLO) {
        FUZZ_CHECK(d.ks.has_pk && h.key_ref == d.ks.po_id);
        root = d.ks.pk;
    } else {
        FUZZ_CHECK(d.ks.has_ak && h.key_ref == d.ks.ak_version);
        root = d.ks.ak;
    }
    memcpy(copy, p, len);
    FUZZ_CHECK(codec_open(copy, len, root, &h, &body, &body_len) == 0);
}

static void check_cloud_frame(const uint8_t *p, size_t len, int keys_current)
{
    static struct ks_cloud c;
    size_t pos = 2, cred_start, n;
    FUZZ_CHECK(len >= 2 && p[0] == 0x01); /* the device only ever sends SESSION_OPEN */
    FUZZ_CHECK(p[1] == d.session_request_id || !keys_current);
    /* credential (§3.5): version, platform, four u16-prefixed fields */
    cred_start = pos;
    FUZZ_CHECK(len - pos >= 5);
    pos += 5;
    for (int i = 0; i < 4; i++) {
        FUZZ_CHECK(len - pos >= 2);
        n = fuzz_le16(p + pos);
        FUZZ_CHECK(n <= len - pos - 2);
        pos += 2 + n;
    }
    FUZZ_CHECK(ks_cloud_decode(p + cred_start, pos - cred_start, &c) == 0);
    if (keys_current) {
        FUZZ_CHECK(d.ks.has_cloud && fuzz_cloud_equal(&c, &d.ks.cloud));
    }
    /* topic (2 + n <= 256) and payload (2 + n <= 256), then nothing (§5) */
    FUZZ_CHECK(len - pos >= 2);
    n = fuzz_le16(p + pos);
    /* protocol §5: topic at most 256 bytes (the gateway answers MALFORMED otherwise). A 128-byte
     * topic bound once failed here for a client_id of 114..128 bytes: the reproducer stays in
     * fuzz/crashes/fuzz_device-session-topic-over-128 as a regression input. */
    FUZZ_CHECK(n <= 256);
    FUZZ_CHECK(n <= len - pos - 2);
    pos += 2 + n;
    FUZZ_CHECK(len - pos >= 2);
    n = fuzz_le16(p + pos);
    FUZZ_CHECK(n <= 256 && n == len - pos - 2);
}

static void drain(int keys_current)
{
    size_t n = host_link_tx_take(tx, sizeof tx);
    for (size_t i = 0; i < n; i++) {
        struct codec_frame f;
        int rc = codec_frame_rx_byte(&out_rx, tx[i], &f);
        FUZZ_CHECK(rc >= 0); /* the device never sends a malformed frame */
        if (rc != 1) {
            continue;
        }
        if (f.channel == CODEC_CHAN_AGENT) {
            check_agent_frame(f.payload, f.payload_len, keys_current);
        } else if (f.channel == CODEC_CHAN_CLOUD) {
            check_cloud_frame(f.payload, f.payload_len, keys_current);
        } else {
            FUZZ_CHECK(f.payload_len >= 1 && f.payload[f.payload_len - 1] == '\n');
        }
    }
    FUZZ_CHECK(out_rx.len == 0); /* every send is a whole frame */
}

/* ---- feeding the device ---- */

static void feed(const uint8_t *p, size_t n)
{
    host_time_set(now);
    for (size_t i = 0; i < n; i++) {
        dev_on_byte(&d, p[i], now);
    }
}

static void feed_frame(uint8_t channel, const uint8_t *payload, size_t len)
{
    static uint8_t enc[CODEC_MAX_ENCODED + 1];
    size_t n = 0;
    if (codec_frame_encode(channel, payload, len, enc, sizeof enc, &n) == 0) {
        feed(enc, n);
    }
}

/* protocol §3: what the agent answers in each waiting state. */
static uint8_t expected_type(enum dev_state s)
{
    switch (s) {
    case DEV_STATE_PROV_WAIT_OFFER:
        return MSG_PROV_OFFER;
    case DEV_STATE_AKROT_WAIT_OFFER:
        return MSG_AK_ROTATE_OFFER;
    case DEV_STATE_CLOUD_WAIT_UPDATE:
        return MSG_CLOUD_UPDATE;
    case DEV_STATE_PROV_WAIT_ACK:
    case DEV_STATE_AKROT_WAIT_ACK:
    case DEV_STATE_CLOUD_WAIT_ACK:
        return MSG_ACK;
    default:
        return MSG_CHECKIN_REPLY;
    }
}

static int first_answer(enum dev_state s)
{
    return s == DEV_STATE_PROV_WAIT_OFFER || s == DEV_STATE_AKROT_WAIT_OFFER || s == DEV_STATE_CLOUD_WAIT_UPDATE ||
           s == DEV_STATE_CHECKIN_WAIT_REPLY;
}

/* A well-formed body of the type, its variable parts from the input. */
static size_t structured_body(struct fuzz_in *in, uint8_t type, int next_version, uint8_t *b)
{
    size_t pos, n;
    switch (type) {
    case MSG_PROV_OFFER:
    case MSG_AK_ROTATE_OFFER: {
        uint8_t scalar[32];
        fuzz_bytes(in, scalar, sizeof scalar);
        crypto_x25519_base(b, scalar);
        fuzz_put_le32(b + 32, next_version ? (d.ks.has_ak ? d.ks.ak_version + 1u : 1u) : fuzz_u32(in));
        return 36;
    }
    case MSG_CLOUD_UPDATE: {
        static const size_t max[4] = {KS_ENDPOINT_MAX, KS_CLIENT_ID_MAX, KS_USERNAME_MAX, KS_SECRET_MAX};
        fuzz_put_le32(b, next_version ? (d.ks.has_cloud ? d.ks.cloud.version + 1u : 1u) : fuzz_u32(in));
        b[4] = (uint8_t)(1u + fuzz_u8(in) % 2u);
        pos = 5;
        for (int i = 0; i < 4; i++) {
            n = (i == 3 ? fuzz_u16(in) : fuzz_u8(in)) % (max[i] + 1u);
            b[pos] = (uint8_t)n;
            b[pos + 1] = (uint8_t)(n >> 8);
            pos += 2;
            fuzz_bytes(in, b + pos, n);
            pos += n;
        }
        return pos;
    }
    case MSG_CHECKIN_REPLY:
        memset(b, 0, 4);
        b[0] = (uint8_t)(fuzz_u8(in) % 5u);
        return 4;
    case MSG_ACK:
        return 0;
    default:
        n = fuzz_u8(in);
        fuzz_bytes(in, b, n);
        return n;
    }
}

static void cmd_agent(struct fuzz_in *in)
{
    static uint8_t body[CODEC_MAX_BODY];
    static uint8_t msg[CODEC_MAX_MESSAGE];
    struct codec_header h;
    uint8_t flags = fuzz_u8(in);
    uint8_t iv[16];
    const uint8_t *root;
    size_t body_len, msg_len = 0;

    h.version = CODEC_VERSION;
    h.type = (flags & 0x01) ? fuzz_u8(in) : expected_type(d.state);
    if (h.type == MSG_PROV_HELLO || h.type == MSG_PROV_OFFER) {
        h.key_kind = CODEC_KEY_PK;
        h.key_ref = d.ks.po_id;
        root = d.ks.pk;
    } else {
        h.key_kind = CODEC_KEY_AK;
        h.key_ref = d.ks.ak_version;
        root = d.ks.ak;
    }
    if (flags & 0x02) {
        root = OTHER_KEY;
    }
    if (flags & 0x04) {
        h.key_ref = fuzz_u32(in);
    }
    memcpy(h.device_id, d.uid, sizeof h.device_id);
    if (flags & 0x08) {
        fuzz_bytes(in, h.device_id, sizeof h.device_id);
    }
    memcpy(h.nonce_d, d.nonce_d, sizeof h.nonce_d);
    if (flags & 0x10) {
        fuzz_bytes(in, h.nonce_d, sizeof h.nonce_d);
    }
    /* Always 16 bytes, so a script's layout does not depend on the state it reaches: a first answer
     * brings the agent's fresh nonce_a, later ones repeat the device's unless flag 0x20. */
    fuzz_bytes(in, h.nonce_a, sizeof h.nonce_a);
    if (!(flags & 0x20) && !first_answer(d.state)) {
        memcpy(h.nonce_a, d.nonce_a, sizeof h.nonce_a);
    }
    fuzz_bytes(in, iv, sizeof iv);
    if (flags & 0x40) {
        body_len = structured_body(in, h.type, flags & 0x80, body);
    } else {
        body_len = fuzz_u16(in) % (CODEC_MAX_BODY + 1u);
        fuzz_bytes(in, body, body_len);
    }
    if (codec_seal(&h, root, iv, body, body_len, msg, sizeof msg, &msg_len) == 0) {
        feed_frame(CODEC_CHAN_AGENT, msg, msg_len);
    }
}

static void cmd_error(struct fuzz_in *in)
{
    uint8_t msg[CODEC_ERROR_LEN];
    struct codec_header h;
    uint8_t flags = fuzz_u8(in);
    uint8_t code = fuzz_u8(in);
    memset(&h, 0, sizeof h);
    h.version = CODEC_VERSION;
    h.type = MSG_ERROR;
    h.key_kind = CODEC_KEY_NONE;
    h.key_ref = (flags & 0x01) ? fuzz_u32(in) : 0u;
    memcpy(h.device_id, d.uid, sizeof h.device_id);
    if (flags & 0x02) {
        fuzz_bytes(in, h.device_id, sizeof h.device_id);
    }
    memcpy(h.nonce_d, d.nonce_d, sizeof h.nonce_d);
    if (flags & 0x04) {
        fuzz_bytes(in, h.nonce_d, sizeof h.nonce_d);
    }
    memcpy(h.nonce_a, d.nonce_a, sizeof h.nonce_a);
    codec_header_pack(&h, msg);
    msg[52] = (flags & 0x08) ? code : (uint8_t)(1u + code % 3u);
    feed_frame(CODEC_CHAN_AGENT, msg, (flags & 0x10) ? (size_t)(code % CODEC_ERROR_LEN) : sizeof msg);
}

static void cmd_session(struct fuzz_in *in)
{
    uint8_t p[5 + 255];
    uint8_t flags = fuzz_u8(in);
    uint8_t status = fuzz_u8(in);
    uint8_t n = fuzz_u8(in);
    size_t detail = (flags & 0x04) ? n : n % 129u;
    p[0] = (flags & 0x01) ? fuzz_u8(in) : 0x02;
    p[1] = (flags & 0x02) ? fuzz_u8(in) : d.session_request_id;
    p[2] = (flags & 0x08) ? status : (uint8_t)(status % 4u);
    p[3] = (uint8_t)detail;
    p[4] = 0;
    fuzz_bytes(in, p + 5, detail);
    feed_frame(CODEC_CHAN_CLOUD, p, 5 + ((flags & 0x10) ? detail / 2u : detail));
}

/* ---- invariants ---- */

static void check_flash_monotonic(const struct ks_state *st)
{
    if (seen.pk_gone) {
        FUZZ_CHECK(!st->has_pk); /* PK never comes back */
    }
    if (!st->has_pk) {
        seen.pk_gone = 1;
    }
    if (seen.has_ak) {
        FUZZ_CHECK(st->has_ak && st->ak_version >= seen.ak_version);
    }
    if (st->has_ak) {
        seen.has_ak = 1;
        seen.ak_version = st->ak_version;
    }
}

static void boot(void)
{
    static struct ks_state fl;
    int rc;
    host_time_set(now);
    rc = dev_boot(&d, &cfg, now);
    FUZZ_CHECK(rc == 0); /* a valid record is always there to boot from */
    FUZZ_CHECK(d.state == DEV_STATE_IDLE);
    FUZZ_CHECK(flash_active(&fl) == ks_active_area() && fuzz_state_equal(&d.ks, &fl, 1));
    codec_frame_rx_init(&out_rx);
    drain(1);
}

/* FUZZ_DEVICE_TRACE=1 prints the state after each command (to check seed scripts by hand). */
static int trace_on(void)
{
    static int on = -1;
    if (on < 0) {
        on = getenv("FUZZ_DEVICE_TRACE") != NULL;
    }
    return on;
}

static void after_command(void)
{
    static struct ks_state fl;
    int active, cut = host_flash_cut_fired();

    FUZZ_CHECK((int)d.state >= DEV_STATE_NO_KEYS && (int)d.state <= DEV_STATE_REVOKED);
    FUZZ_CHECK(d.rx.len <= CODEC_MAX_ENCODED);
    drain(!cut);
    if (cut) {
        /* Power is gone: flash keeps what it has, SRAM is lost, the device boots again. */
        host_flash_power_on();
        FUZZ_CHECK(flash_active(&fl) >= 0);
        check_flash_monotonic(&fl);
        boot();
        return;
    }
    active = flash_active(&fl);
    FUZZ_CHECK(active >= 0);
    check_flash_monotonic(&fl);
    FUZZ_CHECK(d.state != DEV_STATE_NO_KEYS);
    /* What the device believes is what a reboot would load. */
    FUZZ_CHECK(ks_active_area() == active);
    FUZZ_CHECK(fuzz_state_equal(&d.ks, &fl, 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in;
    uint8_t kind;
    if (size < 2) {
        return 0;
    }
    fuzz_in_init(&in, data, size);
    kind = (uint8_t)(fuzz_u8(&in) % 3u);

    host_reset();
    host_flash_reset();
    host_set_uid(UID);
    host_rng_seed(1u + fuzz_u8(&in));
    memset(&seen, 0, sizeof seen);
    flash_cache.valid = 0;
    now = 1000;
    plant(kind);
    boot();

    for (int i = 0; i < MAX_COMMANDS && fuzz_in_left(&in) > 0; i++) {
        uint8_t op = (uint8_t)(fuzz_u8(&in) % 8u);
        switch (op) {
        case 0: {
            const uint8_t *p;
            size_t n = fuzz_take(&in, &p, fuzz_u8(&in));
            feed(p, n);
            break;
        }
        case 1:
            now += fuzz_u16(&in);
            host_time_set(now);
            (void)dev_poll(&d, now);
            break;
        case 2:
            cmd_agent(&in);
            break;
        case 3:
            cmd_error(&in);
            break;
        case 4:
            cmd_session(&in);
            break;
        case 5: {
            uint16_t n = fuzz_u16(&in);
            host_flash_cut_at(1u + n % 400u, 1 + fuzz_u8(&in) % 3);
            break;
        }
        case 6:
            host_flash_power_on();
            host_flash_cut_at(0, HOST_FLASH_CUT_NONE);
            boot();
            break;
        default:
            host_rng_fail(fuzz_u8(&in) & 1u);
            break;
        }
        after_command();
        if (trace_on()) {
            fprintf(stderr, "cmd %d op %u -> %s gen=%u ak=%u cloud=%u rejected=%u\n", i, op, dev_state_name(d.state),
                    d.ks.generation, d.ks.ak_version, d.ks.has_cloud ? d.ks.cloud.version : 0u,
                    d.stats.messages_rejected);
        }
    }
    host_rng_fail(0);
    return 0;
}
