/*
 * The device state machine (docs/protocol.md §3, §4, §6): provisioning, AK rotation, cloud
 * credentials with test-before-confirm, check-in, ERROR, timeouts.
 *
 * RAM: the only large objects are the frame decoder's buffer (agent messages are opened in place
 * there) and the one struct ks_state; frames go out through a streaming encoder, so the biggest
 * transmit buffer is one sealed CHECKIN on the stack.
 *
 * RNG draw order (the vectors replay it): an exchange draws nonce_d (16), then eph_priv (32) for the
 * X25519 flows, then the IV (16) of its first message; every later device message draws its IV
 * just before it is sealed.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/device.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "port/port_device.h"
#include "port/port_link.h"
#include "port/port_rng.h"
#include "le.h"

#define DEV_DEFAULT_TIMEOUT_MS 2000u
#define DEV_DEFAULT_CHECKIN_MS 10000u
/* Largest message the device seals: CHECKIN, 110 bytes of body padded to 112. */
#define DEV_TX_MAX (CODEC_HEADER_LEN + CODEC_IV_LEN + 112u + CODEC_TAG_LEN)
/* SESSION_OPENs for one credential before the device gives up on it (status 2/3 or no answer). */
#define DEV_SESSION_TRIES 3u

#define SESSION_OPEN 0x01u
#define SESSION_RESULT 0x02u
#define SESSION_STATUS_OK 0u

#define CLOUD_RESULT_OK 0u
#define CLOUD_RESULT_REFUSED 1u
#define CLOUD_RESULT_STORE_FAILED 2u

static const char session_topic_prefix[] = "devices/";
static const char session_topic_suffix[] = "/status";
static const char session_payload[] = "online";

/* ---- small helpers ---- */

static int time_reached(uint32_t now, uint32_t t)
{
    return (int32_t)(now - t) >= 0; /* wrap-safe */
}

static int is_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc |= p[i];
    }
    return acc == 0;
}

static int is_wait_state(enum dev_state s)
{
    return s >= DEV_STATE_PROV_WAIT_OFFER && s <= DEV_STATE_CHECKIN_WAIT_REPLY;
}

static int link_sink(const uint8_t *buf, size_t len)
{
    return port_link_write(buf, len);
}

/* Forget everything secret about the exchange in flight. */
static void end_exchange(struct dev *d, enum dev_state next)
{
    crypto_wipe(d->eph_priv, sizeof d->eph_priv);
    d->state = next;
}

/* A failed exchange: remember why for the next check-in, back off before the next attempt. */
static void fail_exchange(struct dev *d, uint8_t last_error, uint32_t now_ms)
{
    if (last_error != DEV_LASTERR_NONE) {
        d->stats.last_error = last_error;
    }
    d->retry_at_ms = now_ms + d->config.exchange_timeout_ms;
    end_exchange(d, DEV_STATE_IDLE);
}

/* last_error for a core error code of a step that failed locally. */
static uint8_t lasterr_of(int rc)
{
    return rc == DEV_ERNG ? DEV_LASTERR_RNG : DEV_LASTERR_STORE_FAILED;
}

/* ---- console ---- */

struct line {
    char buf[128];
    size_t len;
};

static void line_str(struct line *l, const char *s)
{
    while (*s != '\0' && l->len < sizeof l->buf) {
        l->buf[l->len++] = *s++;
    }
}

static void line_u32(struct line *l, uint32_t v)
{
    char tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0);
    while (n > 0 && l->len < sizeof l->buf) {
        l->buf[l->len++] = tmp[--n];
    }
}

static void line_hex(struct line *l, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n && l->len + 2 <= sizeof l->buf; i++) {
        l->buf[l->len++] = digits[p[i] >> 4];
        l->buf[l->len++] = digits[p[i] & 0x0Fu];
    }
}

static void line_send(struct line *l)
{
    line_str(l, "\n");
    (void)codec_frame_send(CODEC_CHAN_CONSOLE, (const uint8_t *)l->buf, l->len, link_sink);
    l->len = 0;
}

static const char *area_name(int area)
{
    return area == 0 ? "A" : (area == 1 ? "B" : "none");
}

static void print_banner(const struct dev *d, int loaded)
{
    struct line l = {.len = 0};
    const char *keys = "none";
    if (loaded) {
        keys = d->ks.has_cloud ? "cloud" : (d->ks.has_ak ? "provisioned" : (d->ks.has_pk ? "factory" : "none"));
    }
    line_str(&l, "OTA-Key fw ");
    line_u32(&l, (DEV_FW_VERSION >> 16) & 0xFFu);
    line_str(&l, ".");
    line_u32(&l, (DEV_FW_VERSION >> 8) & 0xFFu);
    line_str(&l, ".");
    line_u32(&l, DEV_FW_VERSION & 0xFFu);
    line_str(&l, " uid=");
    line_hex(&l, d->uid, sizeof d->uid);
    line_str(&l, " keys=");
    line_str(&l, keys);
    line_str(&l, " area=");
    line_str(&l, area_name(loaded ? d->boot.active_area : -1));
    line_str(&l, " gen=");
    line_u32(&l, loaded ? d->ks.generation : 0u);
    line_send(&l);

    /* One line per boot-rule event (flash-layout §2). */
    if (!loaded) {
        line_str(&l, "keystore: keystore_empty, no valid area");
        line_send(&l);
        return;
    }
    {
        int other = d->boot.active_area == 0 ? 1 : 0;
        if (d->boot.scrubbed) {
            line_str(&l, "keystore: area ");
            line_str(&l, area_name(other));
            line_str(&l, d->boot.area_valid[other] ? " pk scrubbed" : " invalid, erased");
            line_send(&l);
        } else if (!d->boot.area_valid[other] && !d->boot.area_blank[other]) {
            line_str(&l, "keystore: area ");
            line_str(&l, area_name(other));
            line_str(&l, " invalid");
            line_send(&l);
        }
    }
}

/* ---- sending ---- */

/* Seal body under the key the header names and send it on the AGENT channel; draws the IV. */
static int send_msg(struct dev *d, uint8_t type, const uint8_t *body, size_t body_len)
{
    struct codec_header h;
    uint8_t iv[CODEC_IV_LEN];
    uint8_t out[DEV_TX_MAX];
    size_t out_len = 0;
    const uint8_t *root;
    int rc;

    h.version = CODEC_VERSION;
    h.type = type;
    if (type == MSG_PROV_HELLO) {
        h.key_kind = CODEC_KEY_PK;
        h.key_ref = d->ks.po_id;
        root = d->ks.pk;
    } else {
        h.key_kind = CODEC_KEY_AK;
        h.key_ref = d->ks.ak_version;
        root = d->ks.ak;
    }
    memcpy(h.device_id, d->uid, sizeof h.device_id);
    memcpy(h.nonce_d, d->nonce_d, sizeof h.nonce_d);
    memcpy(h.nonce_a, d->nonce_a, sizeof h.nonce_a);
    if (port_rng_fill(iv, sizeof iv) != 0) {
        return DEV_ERNG;
    }
    rc = codec_seal(&h, root, iv, body, body_len, out, sizeof out, &out_len);
    if (rc != 0) {
        return rc;
    }
    (void)codec_frame_send(CODEC_CHAN_AGENT, out, out_len, link_sink);
    return 0;
}

static void build_checkin(const struct dev *d, uint8_t body[110])
{
    memset(body, 0, 110);
    put_le32(&body[0], d->ks.ak_version);
    if (d->ks.has_cloud) {
        put_le32(&body[4], d->ks.cloud.version);
        body[8] = d->ks.cloud.platform;
        codec_fingerprint(d->ks.cloud.secret, d->ks.cloud.secret_len, &body[25]);
    }
    codec_fingerprint(d->ks.ak, sizeof d->ks.ak, &body[9]);
    put_le32(&body[41], DEV_FW_VERSION);
    port_app_hash(&body[45]);
    body[77] = d->stats.last_error;
}

/* Begin an exchange: nonce_d, then eph_priv for the X25519 flows, then the first message. */
static int start_exchange(struct dev *d, enum dev_state wait, uint32_t now_ms)
{
    uint8_t body[110];
    size_t body_len = 0;
    uint8_t type;
    int rc;

    if (port_rng_fill(d->nonce_d, sizeof d->nonce_d) != 0) {
        return DEV_ERNG;
    }
    memset(d->nonce_a, 0, sizeof d->nonce_a);
    switch (wait) {
    case DEV_STATE_PROV_WAIT_OFFER:
    case DEV_STATE_AKROT_WAIT_OFFER:
        type = wait == DEV_STATE_PROV_WAIT_OFFER ? MSG_PROV_HELLO : MSG_AK_ROTATE_HELLO;
        if (port_rng_fill(d->eph_priv, sizeof d->eph_priv) != 0) {
            return DEV_ERNG;
        }
        crypto_x25519_base(body, d->eph_priv);
        body_len = 32;
        break;
    case DEV_STATE_CLOUD_WAIT_UPDATE:
        type = MSG_CLOUD_REQUEST;
        put_le32(body, d->ks.has_cloud ? d->ks.cloud.version : 0u);
        body_len = 4;
        break;
    case DEV_STATE_CHECKIN_WAIT_REPLY:
        type = MSG_CHECKIN;
        build_checkin(d, body);
        body_len = 110;
        break;
    default:
        return DEV_ESTATE;
    }
    rc = send_msg(d, type, body, body_len);
    if (rc != 0) {
        crypto_wipe(d->eph_priv, sizeof d->eph_priv);
        return rc;
    }
    d->state = wait;
    d->deadline_ms = now_ms + d->config.exchange_timeout_ms;
    return 0;
}

/* Stream SESSION_OPEN (§5): request_id ‖ credential (§3.5) ‖ topic ‖ payload, without a buffer. */
static int send_session_open(struct dev *d, uint32_t now_ms)
{
    struct codec_frame_tx tx;
    const struct ks_cloud *c = &d->ks.cloud;
    uint8_t head[2 + 4 + 1];
    uint8_t len2[2];
    const uint8_t *fields[4] = {c->endpoint, c->client_id, c->username, c->secret};
    const uint16_t lens[4] = {c->endpoint_len, c->client_id_len, c->username_len, c->secret_len};
    size_t topic_len = sizeof session_topic_prefix - 1u + c->client_id_len + sizeof session_topic_suffix - 1u;
    int rc;

    d->session_request_id++;
    d->session_tries++;
    head[0] = SESSION_OPEN;
    head[1] = d->session_request_id;
    put_le32(&head[2], c->version);
    head[6] = c->platform;
    codec_frame_tx_begin(&tx, CODEC_CHAN_CLOUD, link_sink);
    codec_frame_tx_put(&tx, head, sizeof head);
    for (unsigned i = 0; i < 4u; i++) {
        len2[0] = (uint8_t)lens[i];
        len2[1] = (uint8_t)(lens[i] >> 8);
        codec_frame_tx_put(&tx, len2, 2);
        codec_frame_tx_put(&tx, fields[i], lens[i]);
    }
    len2[0] = (uint8_t)topic_len;
    len2[1] = (uint8_t)(topic_len >> 8);
    codec_frame_tx_put(&tx, len2, 2);
    codec_frame_tx_put(&tx, (const uint8_t *)session_topic_prefix, sizeof session_topic_prefix - 1u);
    codec_frame_tx_put(&tx, c->client_id, c->client_id_len);
    codec_frame_tx_put(&tx, (const uint8_t *)session_topic_suffix, sizeof session_topic_suffix - 1u);
    len2[0] = (uint8_t)(sizeof session_payload - 1u);
    len2[1] = 0;
    codec_frame_tx_put(&tx, len2, 2);
    codec_frame_tx_put(&tx, (const uint8_t *)session_payload, sizeof session_payload - 1u);
    rc = codec_frame_tx_end(&tx);
    d->state = DEV_STATE_CLOUD_WAIT_SESSION;
    d->deadline_ms = now_ms + d->config.exchange_timeout_ms;
    return rc;
}

static int send_cloud_confirm(struct dev *d, uint8_t result, uint32_t now_ms)
{
    uint8_t body[5];
    int rc;
    put_le32(body, d->new_cloud_version);
    body[4] = result;
    rc = send_msg(d, MSG_CLOUD_CONFIRM, body, sizeof body);
    if (rc != 0) {
        fail_exchange(d, lasterr_of(rc), now_ms);
        return rc;
    }
    d->state = DEV_STATE_CLOUD_WAIT_ACK;
    d->deadline_ms = now_ms + d->config.exchange_timeout_ms;
    return 0;
}

/* The cloud refused the new credential (or could not be reached): fall back to the previous record
 * (DESIGN §2.5: invalidate the new area's commit word, no erase) and tell the agent. */
static void cloud_fall_back(struct dev *d, uint32_t now_ms)
{
    uint8_t result = CLOUD_RESULT_REFUSED;
    if (ks_invalidate_active() != 0) {
        result = CLOUD_RESULT_STORE_FAILED;
    }
    if (ks_load(&d->ks, &d->boot) != 0) {
        /* Nothing valid is left: stop talking (no key to seal with). */
        d->stats.last_error = DEV_LASTERR_STORE_FAILED;
        end_exchange(d, DEV_STATE_NO_KEYS);
        return;
    }
    d->stats.last_error = result == CLOUD_RESULT_REFUSED ? DEV_LASTERR_CLOUD_REFUSED : DEV_LASTERR_STORE_FAILED;
    (void)send_cloud_confirm(d, result, now_ms);
}

/* ---- receiving ---- */

/* The message type the device waits for in each state (0: none). */
static uint8_t expected_type(enum dev_state s)
{
    switch (s) {
    case DEV_STATE_PROV_WAIT_OFFER:
        return MSG_PROV_OFFER;
    case DEV_STATE_AKROT_WAIT_OFFER:
        return MSG_AK_ROTATE_OFFER;
    case DEV_STATE_CLOUD_WAIT_UPDATE:
        return MSG_CLOUD_UPDATE;
    case DEV_STATE_CHECKIN_WAIT_REPLY:
        return MSG_CHECKIN_REPLY;
    case DEV_STATE_PROV_WAIT_ACK:
    case DEV_STATE_AKROT_WAIT_ACK:
    case DEV_STATE_CLOUD_WAIT_ACK:
        return MSG_ACK;
    default:
        return 0;
    }
}

/* States whose answer is the agent's first message of the exchange: it brings nonce_a. */
static int answer_adopts_nonce_a(enum dev_state s)
{
    return s == DEV_STATE_PROV_WAIT_OFFER || s == DEV_STATE_AKROT_WAIT_OFFER || s == DEV_STATE_CLOUD_WAIT_UPDATE ||
           s == DEV_STATE_CHECKIN_WAIT_REPLY;
}

static void on_error_msg(struct dev *d, const uint8_t *msg, size_t len, uint32_t now_ms)
{
    struct codec_header h;
    if (len != CODEC_ERROR_LEN || codec_header_unpack(msg, len, &h) != 0 || h.type != MSG_ERROR ||
        h.key_ref != 0 || msg[52] < ERR_REJECTED || msg[52] > ERR_RETRY) {
        d->stats.messages_rejected++;
        return;
    }
    /* Unauthenticated: it may only end the exchange it names (our device_id and nonce_d). */
    if (!is_wait_state(d->state) || d->state == DEV_STATE_CLOUD_WAIT_SESSION ||
        memcmp(h.device_id, d->uid, sizeof d->uid) != 0 || memcmp(h.nonce_d, d->nonce_d, sizeof d->nonce_d) != 0) {
        d->stats.messages_rejected++;
        return;
    }
    if (d->state == DEV_STATE_PROV_WAIT_ACK || d->state == DEV_STATE_AKROT_WAIT_ACK ||
        d->state == DEV_STATE_CLOUD_WAIT_ACK) {
        /* Keys are final already; an ERROR to the confirm changes nothing stored. */
        end_exchange(d, DEV_STATE_IDLE);
        return;
    }
    fail_exchange(d, msg[52], now_ms); /* ERROR codes 1..3 are last_error codes 1..3 */
}

/* Derive the new AK into ks, commit it (dropping PK), send the confirm under it. */
static void on_offer(struct dev *d, const uint8_t *body, const uint8_t nonce_a[16], uint32_t now_ms)
{
    uint8_t shared[32];
    uint32_t version = get_le32(&body[32]);
    int prov = d->state == DEV_STATE_PROV_WAIT_OFFER;
    int rc;

    /* A rotation must move forward; provisioning starts at 1. */
    if (version == 0 || (!prov && version <= d->ks.ak_version)) {
        d->stats.messages_rejected++;
        return;
    }
    crypto_x25519(shared, d->eph_priv, body);
    if (is_zero(shared, sizeof shared)) { /* low-order point: the uniform error, the exchange times out and restarts */
        crypto_wipe(shared, sizeof shared);
        d->stats.messages_rejected++;
        return;
    }
    crypto_wipe(d->eph_priv, sizeof d->eph_priv);
    memcpy(d->nonce_a, nonce_a, sizeof d->nonce_a);
    codec_derive_ak(shared, d->nonce_d, d->nonce_a, d->uid, d->ks.po_name, d->ks.po_name_len, d->ks.ak);
    crypto_wipe(shared, sizeof shared);
    d->ks.has_ak = 1;
    d->ks.ak_version = version;
    d->new_ak_version = version;
    if (prov) {
        d->ks.has_pk = 0;
        crypto_wipe(d->ks.pk, sizeof d->ks.pk);
    }
    rc = ks_commit(&d->ks);
    if (rc != 0) {
        /* Old record still active: reload it, forget the new AK; the agent's pending AK expires. */
        (void)ks_load(&d->ks, &d->boot);
        fail_exchange(d, DEV_LASTERR_STORE_FAILED, now_ms);
        return;
    }
    rc = send_msg(d, prov ? MSG_PROV_CONFIRM : MSG_AK_ROTATE_CONFIRM, NULL, 0);
    if (rc != 0) {
        fail_exchange(d, lasterr_of(rc), now_ms);
        return;
    }
    d->state = prov ? DEV_STATE_PROV_WAIT_ACK : DEV_STATE_AKROT_WAIT_ACK;
    d->deadline_ms = now_ms + d->config.exchange_timeout_ms;
}

/* The body was authenticated; returns 0, or nonzero when it must be dropped like a bad MAC. */
static int on_cloud_update(struct dev *d, const uint8_t *body, size_t body_len, const uint8_t nonce_a[16],
                           uint32_t now_ms)
{
    int rc;
    uint32_t version = get_le32(body); /* codec_open guaranteed >= 13 bytes */
    /* An update must move forward (a replayed older credential is dropped). */
    if (d->ks.has_cloud && version <= d->ks.cloud.version) {
        return DEV_ESTATE;
    }
    /* ks_cloud_decode leaves the old credential untouched when the body is malformed. */
    rc = ks_cloud_decode(body, body_len, &d->ks.cloud);
    if (rc != 0) {
        return rc;
    }
    memcpy(d->nonce_a, nonce_a, sizeof d->nonce_a);
    d->new_cloud_version = version;
    d->ks.has_cloud = 1;
    rc = ks_commit(&d->ks);
    if (rc != 0) {
        (void)ks_load(&d->ks, &d->boot);
        d->stats.last_error = DEV_LASTERR_STORE_FAILED;
        (void)send_cloud_confirm(d, CLOUD_RESULT_STORE_FAILED, now_ms);
        return 0;
    }
    /* Test before confirm: the gateway opens a cloud session with exactly this credential. */
    d->session_tries = 0;
    (void)send_session_open(d, now_ms);
    return 0;
}

static void on_checkin_reply(struct dev *d, const uint8_t *body, uint32_t now_ms)
{
    if (body[0] > ACTION_REVOKED || body[1] != 0 || body[2] != 0 || body[3] != 0) {
        d->stats.messages_rejected++;
        return;
    }
    d->stats.exchanges_done++;
    d->stats.last_error = 0; /* reported and answered */
    d->next_checkin_ms = now_ms + d->config.checkin_interval_ms;
    if (body[0] == ACTION_REVOKED) {
        end_exchange(d, DEV_STATE_REVOKED);
        return;
    }
    d->pending_action = body[0];
    end_exchange(d, DEV_STATE_IDLE);
}

static void on_agent_msg(struct dev *d, uint8_t *msg, size_t len, uint32_t now_ms)
{
    struct codec_header h;
    const uint8_t *root = NULL;
    uint8_t *body = NULL;
    size_t body_len = 0;
    uint8_t want;

    if (len >= 2 && msg[1] == MSG_ERROR) {
        on_error_msg(d, msg, len, now_ms);
        return;
    }
    want = expected_type(d->state);
    /* Cheap checks first (length, header, our ID, expected type, key), then the tag. */
    if (want == 0 || len < CODEC_MIN_MESSAGE || codec_header_unpack(msg, len, &h) != 0 || h.type != want ||
        memcmp(h.device_id, d->uid, sizeof d->uid) != 0) {
        d->stats.messages_rejected++;
        return;
    }
    if (h.key_kind == CODEC_KEY_PK && d->ks.has_pk && h.key_ref == d->ks.po_id) {
        root = d->ks.pk;
    } else if (h.key_kind == CODEC_KEY_AK && d->ks.has_ak && h.key_ref == d->ks.ak_version) {
        root = d->ks.ak;
    }
    if (root == NULL || codec_open(msg, len, root, &h, &body, &body_len) != 0) {
        d->stats.messages_rejected++;
        return;
    }
    /* §2.2 step 7 / §4: only answers to the exchange in flight. The agent's first answer brings
     * a fresh, non-zero nonce_a; every later one repeats it. */
    if (memcmp(h.nonce_d, d->nonce_d, sizeof d->nonce_d) != 0 ||
        (answer_adopts_nonce_a(d->state) ? is_zero(h.nonce_a, sizeof h.nonce_a)
                                         : memcmp(h.nonce_a, d->nonce_a, sizeof d->nonce_a) != 0)) {
        crypto_wipe(body, body_len);
        d->stats.messages_rejected++;
        return;
    }
    switch (d->state) {
    case DEV_STATE_PROV_WAIT_OFFER:
    case DEV_STATE_AKROT_WAIT_OFFER:
        on_offer(d, body, h.nonce_a, now_ms);
        break;
    case DEV_STATE_CLOUD_WAIT_UPDATE:
        if (on_cloud_update(d, body, body_len, h.nonce_a, now_ms) != 0) {
            d->stats.messages_rejected++;
        }
        break;
    case DEV_STATE_CHECKIN_WAIT_REPLY:
        on_checkin_reply(d, body, now_ms);
        break;
    case DEV_STATE_PROV_WAIT_ACK:
    case DEV_STATE_AKROT_WAIT_ACK:
    case DEV_STATE_CLOUD_WAIT_ACK:
        d->stats.exchanges_done++;
        d->next_checkin_ms = now_ms + d->config.checkin_interval_ms;
        end_exchange(d, DEV_STATE_IDLE);
        break;
    default:
        break;
    }
    crypto_wipe(body, body_len); /* the cloud secret or an offer stays nowhere but in ks */
}

static void on_cloud_msg(struct dev *d, const uint8_t *p, size_t len, uint32_t now_ms)
{
    size_t detail_len;
    if (d->state != DEV_STATE_CLOUD_WAIT_SESSION || len < 5 || p[0] != SESSION_RESULT ||
        p[1] != d->session_request_id || p[2] > 3u) {
        return;
    }
    detail_len = (size_t)p[3] | ((size_t)p[4] << 8);
    if (detail_len > 128u || len != 5u + detail_len) {
        return;
    }
    if (p[2] == SESSION_STATUS_OK) {
        (void)send_cloud_confirm(d, CLOUD_RESULT_OK, now_ms);
    } else {
        /* Refused, unreachable or garbled: never confirm a credential the cloud did not take. */
        cloud_fall_back(d, now_ms);
    }
}

/* ---- public API ---- */

int dev_boot(struct dev *d, const struct dev_config *config, uint32_t now_ms)
{
    int rc;
    memset(d, 0, sizeof *d);
    d->config.exchange_timeout_ms = DEV_DEFAULT_TIMEOUT_MS;
    d->config.checkin_interval_ms = DEV_DEFAULT_CHECKIN_MS;
    if (config != NULL) {
        if (config->exchange_timeout_ms != 0) {
            d->config.exchange_timeout_ms = config->exchange_timeout_ms;
        }
        if (config->checkin_interval_ms != 0) {
            d->config.checkin_interval_ms = config->checkin_interval_ms;
        }
    }
    codec_frame_rx_init(&d->rx);
    port_device_uid(d->uid);
    rc = ks_load(&d->ks, &d->boot);
    d->state = rc == 0 ? DEV_STATE_IDLE : DEV_STATE_NO_KEYS;
    d->next_checkin_ms = now_ms;
    d->retry_at_ms = now_ms;
    print_banner(d, rc == 0);
    return rc;
}

void dev_on_byte(struct dev *d, uint8_t b, uint32_t now_ms)
{
    struct codec_frame f;
    int rc = codec_frame_rx_byte(&d->rx, b, &f);
    if (rc < 0) {
        d->stats.frames_bad++;
        return;
    }
    if (rc == 0 || d->state == DEV_STATE_NO_KEYS || d->state == DEV_STATE_REVOKED) {
        return;
    }
    if (f.channel == CODEC_CHAN_AGENT) {
        /* The payload sits in our own decoder buffer: open it in place. */
        on_agent_msg(d, &d->rx.buf[1], f.payload_len, now_ms);
    } else if (f.channel == CODEC_CHAN_CLOUD) {
        on_cloud_msg(d, f.payload, f.payload_len, now_ms);
    }
}

static int on_timeout(struct dev *d, uint32_t now_ms)
{
    enum dev_state s = d->state;
    d->stats.timeouts++;
    switch (s) {
    case DEV_STATE_PROV_WAIT_ACK:
    case DEV_STATE_AKROT_WAIT_ACK:
    case DEV_STATE_CLOUD_WAIT_ACK:
        /* The key is committed already; the next message under it proves it to the agent (§6),
         * so a lost ACK is no error worth reporting. */
        end_exchange(d, DEV_STATE_IDLE);
        d->next_checkin_ms = now_ms;
        return 0;
    case DEV_STATE_CLOUD_WAIT_SESSION:
        /* The gateway did not answer: ask again, then give the credential up as untested. */
        if (d->session_tries >= DEV_SESSION_TRIES) {
            cloud_fall_back(d, now_ms);
            return 0;
        }
        return send_session_open(d, now_ms);
    default:
        /* No answer: the same exchange again with a fresh nonce_d (and a fresh key pair). */
        d->stats.last_error = DEV_LASTERR_TIMEOUT;
        crypto_wipe(d->eph_priv, sizeof d->eph_priv);
        return start_exchange(d, s, now_ms);
    }
}

int dev_poll(struct dev *d, uint32_t now_ms)
{
    enum dev_state next;
    int rc;

    if (is_wait_state(d->state)) {
        if (!time_reached(now_ms, d->deadline_ms)) {
            return 0;
        }
        rc = on_timeout(d, now_ms);
        if (rc != 0) {
            fail_exchange(d, lasterr_of(rc), now_ms);
        }
        return rc;
    }
    if (d->state != DEV_STATE_IDLE || !time_reached(now_ms, d->retry_at_ms)) {
        return 0;
    }
    /* What to do next, in order: provision; the action the agent asked for; first cloud
     * credentials; the periodic check-in (which brings the next action). */
    if (!d->ks.has_ak) {
        if (!d->ks.has_pk) {
            return 0;
        }
        next = DEV_STATE_PROV_WAIT_OFFER;
    } else if (d->pending_action == ACTION_ROTATE_AK) {
        next = DEV_STATE_AKROT_WAIT_OFFER;
    } else if (d->pending_action == ACTION_UPDATE_CLOUD || !d->ks.has_cloud) {
        next = DEV_STATE_CLOUD_WAIT_UPDATE;
    } else if (time_reached(now_ms, d->next_checkin_ms)) {
        next = DEV_STATE_CHECKIN_WAIT_REPLY;
    } else {
        return 0;
    }
    d->pending_action = ACTION_NONE;
    rc = start_exchange(d, next, now_ms);
    if (rc != 0) {
        fail_exchange(d, lasterr_of(rc), now_ms);
    }
    return rc;
}

const char *dev_state_name(enum dev_state s)
{
    switch (s) {
    case DEV_STATE_NO_KEYS:
        return "no_keys";
    case DEV_STATE_IDLE:
        return "idle";
    case DEV_STATE_PROV_WAIT_OFFER:
        return "prov_wait_offer";
    case DEV_STATE_PROV_WAIT_ACK:
        return "prov_wait_ack";
    case DEV_STATE_AKROT_WAIT_OFFER:
        return "akrot_wait_offer";
    case DEV_STATE_AKROT_WAIT_ACK:
        return "akrot_wait_ack";
    case DEV_STATE_CLOUD_WAIT_UPDATE:
        return "cloud_wait_update";
    case DEV_STATE_CLOUD_WAIT_SESSION:
        return "cloud_wait_session";
    case DEV_STATE_CLOUD_WAIT_ACK:
        return "cloud_wait_ack";
    case DEV_STATE_CHECKIN_WAIT_REPLY:
        return "checkin_wait_reply";
    case DEV_STATE_REVOKED:
        return "revoked";
    }
    return "unknown";
}
