/*
 * The device state machine on the host port: against tests/vectors/flows.json (byte-exact device
 * messages from replayed RNG draws), and against a small agent written here with the codec, for
 * what the vectors do not cover: replays, ERROR, timeouts, the cloud test session, the banner.
 */
#include <stdint.h>
#include <string.h>

#include "host_flash.h"
#include "host_io.h"
#include "json_min.h"
#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/device.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "port/port_flash.h"
#include "unit.h"

/* ---- what the device sent ---- */

#define MAX_OUT 16
struct out_frame {
    uint8_t channel;
    size_t len;
    uint8_t payload[CODEC_MAX_PAYLOAD + 1]; /* NUL-terminated, for console lines */
};
static struct out_frame g_out[MAX_OUT];
static size_t g_nout;
static struct codec_frame_rx g_rx;
static uint8_t g_tx[65536];

/* Decode everything the device wrote since the last call into g_out. */
static size_t drain(void)
{
    size_t n = host_link_tx_take(g_tx, sizeof g_tx);
    g_nout = 0;
    codec_frame_rx_init(&g_rx);
    for (size_t i = 0; i < n; i++) {
        struct codec_frame f;
        int rc = codec_frame_rx_byte(&g_rx, g_tx[i], &f);
        CHECK(rc >= 0);
        if (rc == 1 && g_nout < MAX_OUT) {
            g_out[g_nout].channel = f.channel;
            g_out[g_nout].len = f.payload_len;
            memcpy(g_out[g_nout].payload, f.payload, f.payload_len);
            g_out[g_nout].payload[f.payload_len] = 0;
            g_nout++;
        }
    }
    return g_nout;
}

/* The last AGENT-channel message the device sent, or NULL. */
static struct out_frame *last_agent_msg(void)
{
    for (size_t i = g_nout; i > 0; i--) {
        if (g_out[i - 1].channel == CODEC_CHAN_AGENT) {
            return &g_out[i - 1];
        }
    }
    return NULL;
}

static void feed_frame(uint8_t channel, const uint8_t *p, size_t len)
{
    static uint8_t enc[CODEC_MAX_ENCODED + 1];
    size_t n = 0;
    CHECK_EQ_INT(codec_frame_encode(channel, p, len, enc, sizeof enc, &n), 0);
    host_dev_feed(enc, n);
}

/* ---- a factory device ---- */

static const uint8_t uid[12] = {0x21, 0x00, 0x3B, 0x00, 0x0D, 0x51, 0x34, 0x31, 0x32, 0x36, 0x38, 0x30};
static const uint8_t pk[32] = {0xB1, 0x6E, 0x29, 0x4A, 0x03, 0x77, 0x18, 0xC2, 0x5D, 0x90, 0xE4,
                               0x0F, 0x61, 0x33, 0xA8, 0x7B, 0x12, 0xDE, 0x45, 0x99, 0x20, 0x6C,
                               0xF1, 0x0A, 0x8E, 0x57, 0x3D, 0xC4, 0x26, 0xBA, 0x70, 0x05};
#define PO_ID 4242u
static const char po_name[] = "PO-2024-TEST";
static struct ks_state g_ks; /* 3.7 KB: off the stack */

static void plant_factory_record(void)
{
    static uint8_t img[HOST_FLASH_AREA_SIZE];
    size_t len = 0;
    memset(&g_ks, 0, sizeof g_ks);
    g_ks.generation = 1;
    g_ks.po_id = PO_ID;
    g_ks.po_name_len = (uint8_t)(sizeof po_name - 1);
    memcpy(g_ks.po_name, po_name, sizeof po_name - 1);
    g_ks.has_pk = 1;
    memcpy(g_ks.pk, pk, 32);
    CHECK_EQ_INT(ks_encode(&g_ks, HOST_FLASH_ERASED, img, sizeof img, &len), 0);
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_B, 0, img, len), 0);
}

#define TIMEOUT_MS 1000u
#define CHECKIN_MS 60000u

static void boot_factory_device(void)
{
    host_reset();
    host_flash_reset();
    host_set_uid(uid);
    host_rng_seed(0x5eed);
    plant_factory_record();
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    drain(); /* the banner */
}

/* ---- a small agent built from the codec ---- */

struct agent {
    uint8_t ak[32];
    uint32_t ak_version;
    uint8_t nonce_d[16];
    uint8_t nonce_a[16];
    uint8_t type;        /* last message received */
    uint8_t key_kind;
    uint32_t key_ref;
    uint8_t body[CODEC_MAX_BODY];
    size_t body_len;
    uint8_t sent[CODEC_MAX_MESSAGE]; /* the last message sent, for replays */
    size_t sent_len;
};
static struct agent g_ag;
static uint8_t agent_nonce_seq;

/* Open the device's last agent message with the key it names. @return codec rc */
static int agent_receive(void)
{
    struct out_frame *m = last_agent_msg();
    struct codec_header h;
    uint8_t *body = NULL;
    static uint8_t copy[CODEC_MAX_MESSAGE];
    int rc;
    if (m == NULL) {
        return -1;
    }
    memcpy(copy, m->payload, m->len);
    rc = codec_header_unpack(copy, m->len, &h);
    if (rc != 0) {
        return rc;
    }
    rc = codec_open(copy, m->len, h.key_kind == CODEC_KEY_PK ? pk : g_ag.ak, &h, &body, &g_ag.body_len);
    if (rc != 0) {
        return rc;
    }
    CHECK_MEM(h.device_id, uid, 12);
    g_ag.type = h.type;
    g_ag.key_kind = h.key_kind;
    g_ag.key_ref = h.key_ref;
    memcpy(g_ag.nonce_d, h.nonce_d, 16);
    memcpy(g_ag.body, body, g_ag.body_len);
    return 0;
}

static void agent_fresh_nonce_a(void)
{
    agent_nonce_seq++;
    memset(g_ag.nonce_a, 0xA0 ^ agent_nonce_seq, 16);
}

static void agent_send(uint8_t type, uint8_t key_kind, uint32_t key_ref, const uint8_t *root, const uint8_t *body,
                       size_t body_len)
{
    struct codec_header h;
    uint8_t iv[16];
    memset(&h, 0, sizeof h);
    h.version = CODEC_VERSION;
    h.type = type;
    h.key_kind = key_kind;
    h.key_ref = key_ref;
    memcpy(h.device_id, uid, 12);
    memcpy(h.nonce_d, g_ag.nonce_d, 16);
    memcpy(h.nonce_a, g_ag.nonce_a, 16);
    memset(iv, 0x1F ^ type, 16);
    CHECK_EQ_INT(codec_seal(&h, root, iv, body, body_len, g_ag.sent, sizeof g_ag.sent, &g_ag.sent_len), 0);
    feed_frame(CODEC_CHAN_AGENT, g_ag.sent, g_ag.sent_len);
}

static void agent_send_error(uint8_t code, const uint8_t nonce_d[16])
{
    struct codec_header h;
    uint8_t msg[CODEC_ERROR_LEN];
    memset(&h, 0, sizeof h);
    h.version = CODEC_VERSION;
    h.type = MSG_ERROR;
    h.key_kind = CODEC_KEY_NONE;
    memcpy(h.device_id, uid, 12);
    memcpy(h.nonce_d, nonce_d, 16);
    codec_header_pack(&h, msg);
    msg[52] = code;
    feed_frame(CODEC_CHAN_AGENT, msg, sizeof msg);
}

/* Answer a HELLO (PROV or AK_ROTATE) with an offer; derives the AK the device will derive. */
static void agent_offer(uint8_t offer_type, uint32_t new_version)
{
    uint8_t eph_priv[32], body[36], shared[32];
    uint8_t old_ak[32];
    uint32_t old_version = g_ag.ak_version;
    memcpy(old_ak, g_ag.ak, 32);
    memset(eph_priv, 0x77 ^ (uint8_t)new_version, 32);
    agent_fresh_nonce_a();
    crypto_x25519_base(body, eph_priv);
    body[32] = (uint8_t)new_version;
    body[33] = body[34] = body[35] = 0;
    crypto_x25519(shared, eph_priv, g_ag.body); /* the device's eph_pub */
    codec_derive_ak(shared, g_ag.nonce_d, g_ag.nonce_a, uid, (const uint8_t *)po_name, sizeof po_name - 1,
                    g_ag.ak);
    g_ag.ak_version = new_version;
    if (offer_type == MSG_PROV_OFFER) {
        agent_send(offer_type, CODEC_KEY_PK, PO_ID, pk, body, sizeof body);
    } else {
        agent_send(offer_type, CODEC_KEY_AK, old_version, old_ak, body, sizeof body);
    }
}

static void agent_ack(void)
{
    agent_send(MSG_ACK, CODEC_KEY_AK, g_ag.ak_version, g_ag.ak, NULL, 0);
}

static void fingerprint_check_device_ak(void)
{
    uint8_t fp_dev[16], fp_ag[16];
    CHECK_EQ_INT(host_dev_ak_fingerprint(fp_dev), 0);
    codec_fingerprint(g_ag.ak, 32, fp_ag);
    CHECK_MEM(fp_dev, fp_ag, 16);
}

/* Boot a factory device and run provisioning to the ACK. */
static void provision(void)
{
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    CHECK_EQ_INT(host_dev_poll(), 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_PROV_HELLO);
    agent_offer(MSG_PROV_OFFER, 1);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_PROV_CONFIRM);
    CHECK_EQ_INT(g_ag.key_ref, 1);
    agent_ack();
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
}

static const char cloud_secret[] = "s3cret-password-for-the-broker";

static size_t make_cloud_update(uint32_t version, uint8_t *out, size_t cap)
{
    static struct ks_cloud c;
    size_t len = 0;
    memset(&c, 0, sizeof c);
    c.version = version;
    c.platform = KS_PLATFORM_MOSQUITTO;
    c.endpoint_len = 21;
    memcpy(c.endpoint, "mqtt://127.0.0.1:1883", 21);
    c.client_id_len = 24;
    memcpy(c.client_id, "21003b000d51343132363830", 24);
    c.username_len = 24;
    memcpy(c.username, "21003b000d51343132363830", 24);
    c.secret_len = (uint16_t)(sizeof cloud_secret - 1);
    memcpy(c.secret, cloud_secret, sizeof cloud_secret - 1);
    CHECK_EQ_INT(ks_cloud_encode(&c, out, cap, &len), 0);
    return len;
}

/* Provision, then answer the device's CLOUD_REQUEST; returns with the SESSION_OPEN drained. */
static void provision_and_send_cloud_update(uint32_t version)
{
    uint8_t body[512];
    size_t n;
    provision();
    CHECK_EQ_INT(host_dev_poll(), 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CLOUD_REQUEST);
    CHECK_EQ_INT(g_ag.body_len, 4);
    n = make_cloud_update(version, body, sizeof body);
    agent_fresh_nonce_a();
    agent_send(MSG_CLOUD_UPDATE, CODEC_KEY_AK, g_ag.ak_version, g_ag.ak, body, n);
    CHECK_EQ_INT(drain(), 1);
    CHECK_EQ_INT(g_out[0].channel, CODEC_CHAN_CLOUD);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_CLOUD_WAIT_SESSION);
}

static void gateway_result(uint8_t request_id, uint8_t status)
{
    uint8_t p[5] = {0x02, request_id, status, 0, 0};
    feed_frame(CODEC_CHAN_CLOUD, p, sizeof p);
}

/* ---- tests ---- */

UNIT_TEST(device_boot_prints_banner_with_factory_keys_on_console)
{
    static const char want[] = "OTA-Key fw 1.0.0 uid=21003b000d51343132363830 keys=factory area=B gen=1\n";
    host_reset();
    host_flash_reset();
    host_set_uid(uid);
    plant_factory_record();
    CHECK_EQ_INT(host_dev_boot(0, 0), 0);
    CHECK_EQ_INT(drain(), 1);
    CHECK_EQ_INT(g_out[0].channel, CODEC_CHAN_CONSOLE);
    CHECK_EQ_INT(g_out[0].len, sizeof want - 1);
    CHECK_MEM(g_out[0].payload, want, sizeof want - 1);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK(host_dev_sizeof() < 12u * 1024u);
}

UNIT_TEST(device_boot_on_blank_flash_reports_no_keys_and_stays_silent)
{
    static const char want[] = "OTA-Key fw 1.0.0 uid=21003b000d51343132363830 keys=none area=none gen=0\n";
    host_reset();
    host_flash_reset();
    host_set_uid(uid);
    CHECK_EQ_INT(host_dev_boot(0, 0), KS_ENOVALID);
    CHECK_EQ_INT(drain(), 2);
    CHECK_MEM(g_out[0].payload, want, sizeof want - 1);
    CHECK(memcmp(g_out[1].payload, "keystore: keystore_empty", 24) == 0);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_NO_KEYS);
    host_time_advance(100000);
    CHECK_EQ_INT(host_dev_poll(), 0);
    CHECK_EQ_INT(drain(), 0);
}

UNIT_TEST(device_boot_after_interrupted_pk_scrub_erases_pk_area_and_says_so)
{
    provision();
    /* Put the factory PK record back in area B, as if the scrub erase had been cut. */
    plant_factory_record();
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    CHECK_EQ_INT(drain(), 2);
    CHECK(strstr((const char *)g_out[0].payload, "keys=provisioned area=A gen=2") != NULL);
    CHECK_EQ_INT(g_out[1].len, strlen("keystore: area B pk scrubbed\n"));
    CHECK_MEM(g_out[1].payload, "keystore: area B pk scrubbed\n", g_out[1].len);
    CHECK(host_flash_raw_is_blank(PORT_FLASH_AREA_B));
}

UNIT_TEST(device_boot_reports_garbage_in_spare_area_erased_or_kept)
{
    static const uint8_t junk[8] = {0xDE, 0xAD, 0xBE, 0xEF, 0x12, 0x34, 0x56, 0x78};
    /* Provisioned (no PK): the boot rule erases garbage in the spare area and says so. */
    provision();
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_B, 0, junk, sizeof junk), 0);
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    CHECK_EQ_INT(drain(), 2);
    CHECK_EQ_INT(g_out[1].len, strlen("keystore: area B invalid, erased\n"));
    CHECK_MEM(g_out[1].payload, "keystore: area B invalid, erased\n", g_out[1].len);
    CHECK(host_flash_raw_is_blank(PORT_FLASH_AREA_B));
    /* Factory (PK active): garbage in the spare area is reported but left alone. */
    host_flash_reset();
    plant_factory_record();
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_A, 0, junk, sizeof junk), 0);
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    CHECK_EQ_INT(drain(), 2);
    CHECK(strstr((const char *)g_out[0].payload, "keys=factory area=B gen=1") != NULL);
    CHECK_EQ_INT(g_out[1].len, strlen("keystore: area A invalid\n"));
    CHECK_MEM(g_out[1].payload, "keystore: area A invalid\n", g_out[1].len);
    CHECK(!host_flash_raw_is_blank(PORT_FLASH_AREA_A));
}

UNIT_TEST(device_provisioning_commits_agent_ak_and_erases_pk)
{
    provision();
    CHECK_EQ_INT(host_dev_has_pk(), 0);
    CHECK_EQ_INT(host_dev_has_ak(), 1);
    CHECK_EQ_INT(host_dev_ak_version(), 1);
    CHECK_EQ_INT(host_dev_generation(), 2);
    CHECK_EQ_INT(host_dev_active_area(), PORT_FLASH_AREA_A);
    CHECK(host_flash_raw_is_blank(PORT_FLASH_AREA_B)); /* PK scrubbed from flash */
    fingerprint_check_device_ak();
    CHECK_EQ_INT(host_dev_exchanges_done(), 1);
    /* RNG: nonce_d 16 + eph 32 + iv 16, then the confirm's iv 16 */
    CHECK_EQ_INT(host_rng_drawn(), 80);
    /* Next exchange when idle with AK but no cloud: CLOUD_REQUEST(have_version 0). */
    CHECK_EQ_INT(host_dev_poll(), 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CLOUD_REQUEST);
    CHECK_MEM(g_ag.body, "\0\0\0\0", 4);
}

UNIT_TEST(device_replayed_offer_after_provisioning_is_dropped_without_state_change)
{
    uint8_t replay[CODEC_MAX_MESSAGE];
    size_t replay_len;
    uint32_t ops, rejected;
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    agent_offer(MSG_PROV_OFFER, 1);
    memcpy(replay, g_ag.sent, g_ag.sent_len);
    replay_len = g_ag.sent_len;
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    agent_ack();
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    ops = host_flash_op_count();
    rejected = host_dev_messages_rejected();
    feed_frame(CODEC_CHAN_AGENT, replay, replay_len);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK_EQ_INT(host_dev_messages_rejected(), rejected + 1);
    CHECK_EQ_INT(host_flash_op_count(), ops);
    CHECK_EQ_INT(host_dev_generation(), 2);
    CHECK_EQ_INT(drain(), 0);
    fingerprint_check_device_ak();
}

UNIT_TEST(device_stale_offer_for_an_earlier_hello_is_dropped)
{
    uint8_t nonce1[16], nonce2[16];
    uint32_t ops;
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    memcpy(nonce1, g_ag.nonce_d, 16);
    /* The first HELLO times out; the device says HELLO again with a fresh nonce. */
    host_time_advance(TIMEOUT_MS);
    host_dev_poll();
    drain();
    host_dev_nonce_d(nonce2);
    CHECK(memcmp(nonce1, nonce2, 16) != 0);
    /* The agent's offer to the first HELLO arrives late. */
    ops = host_flash_op_count();
    agent_offer(MSG_PROV_OFFER, 1);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_OFFER);
    CHECK_EQ_INT(host_flash_op_count(), ops);
    CHECK_EQ_INT(host_dev_has_pk(), 1);
    CHECK_EQ_INT(drain(), 0);
}

UNIT_TEST(device_timeout_resends_hello_with_fresh_nonce_and_key)
{
    uint8_t nonce1[16], eph1[32];
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    memcpy(nonce1, g_ag.nonce_d, 16);
    memcpy(eph1, g_ag.body, 32);
    host_time_advance(TIMEOUT_MS - 1);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 0); /* not yet */
    host_time_advance(1);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 1);
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_PROV_HELLO);
    CHECK(memcmp(g_ag.nonce_d, nonce1, 16) != 0);
    CHECK(memcmp(g_ag.body, eph1, 32) != 0);
    CHECK_EQ_INT(host_dev_timeouts(), 1);
    CHECK_EQ_INT(host_dev_last_error(), DEV_LASTERR_TIMEOUT);
    /* The answer to the new HELLO completes provisioning. */
    agent_offer(MSG_PROV_OFFER, 1);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_PROV_CONFIRM);
    agent_ack();
    fingerprint_check_device_ak();
}

UNIT_TEST(device_error_reply_ends_exchange_records_code_and_backs_off)
{
    uint8_t wrong[16];
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    /* An ERROR naming another exchange is ignored. */
    memcpy(wrong, g_ag.nonce_d, 16);
    wrong[0] ^= 1;
    agent_send_error(ERR_REFUSED, wrong);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_OFFER);
    /* The one for this exchange ends it. */
    agent_send_error(ERR_RETRY, g_ag.nonce_d);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK_EQ_INT(host_dev_last_error(), DEV_LASTERR_AGENT_RETRY);
    CHECK_EQ_INT(host_dev_has_pk(), 1);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 0); /* backs off for one timeout */
    host_time_advance(TIMEOUT_MS);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 1);
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_PROV_HELLO);
}

UNIT_TEST(device_offer_under_wrong_key_or_with_bad_mac_is_dropped)
{
    uint8_t other_pk[32];
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    memcpy(other_pk, pk, 32);
    other_pk[0] ^= 0xFF;
    agent_fresh_nonce_a();
    agent_send(MSG_PROV_OFFER, CODEC_KEY_PK, PO_ID, other_pk, g_ag.body, 36);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_OFFER);
    CHECK_EQ_INT(host_dev_messages_rejected(), 1);
    /* A valid offer with one ciphertext bit flipped. */
    agent_offer(MSG_PROV_OFFER, 1);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_ACK); /* the clean one went through */
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    g_ag.sent[70] ^= 0x04;
    feed_frame(CODEC_CHAN_AGENT, g_ag.sent, g_ag.sent_len); /* tampered offer: not expected, dropped */
    CHECK_EQ_INT(host_dev_messages_rejected(), 2);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_ACK);
}

UNIT_TEST(device_garbage_on_the_link_is_counted_and_next_frame_still_works)
{
    static const uint8_t junk[] = {0x42, 0x13, 0x00, 0x07, 0x01, 0x00, 0x00};
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    host_dev_feed(junk, sizeof junk);
    CHECK(host_dev_frames_bad() >= 2);
    agent_offer(MSG_PROV_OFFER, 1);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_ACK);
}

UNIT_TEST(device_cloud_credential_accepted_by_cloud_is_confirmed_with_result_0)
{
    uint8_t fp_dev[16], fp_want[16];
    provision_and_send_cloud_update(1);
    /* SESSION_OPEN carries exactly the stored credential, then topic and payload. */
    CHECK_EQ_INT(g_out[0].payload[0], 0x01);
    CHECK_EQ_INT(g_out[0].payload[1], 1); /* request_id */
    {
        uint8_t cred[512];
        size_t n = make_cloud_update(1, cred, sizeof cred);
        static const char tail[] = "\x27\x00" "devices/21003b000d51343132363830/status" "\x06\x00" "online";
        CHECK_MEM(&g_out[0].payload[2], cred, n);
        CHECK_EQ_INT(g_out[0].len, 2 + n + sizeof tail - 1);
        CHECK_MEM(&g_out[0].payload[2 + n], tail, sizeof tail - 1);
    }
    CHECK_EQ_INT(host_dev_has_cloud(), 1);
    gateway_result(1, 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CLOUD_CONFIRM);
    CHECK_MEM(g_ag.body, "\x01\x00\x00\x00\x00", 5);
    agent_ack();
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK_EQ_INT(host_dev_cloud_version(), 1);
    CHECK_EQ_INT(host_dev_generation(), 3);
    CHECK_EQ_INT(host_dev_cloud_fingerprint(fp_dev), 0);
    codec_fingerprint((const uint8_t *)cloud_secret, sizeof cloud_secret - 1, fp_want);
    CHECK_MEM(fp_dev, fp_want, 16);
}

UNIT_TEST(device_cloud_credential_refused_by_cloud_falls_back_and_reports_result_1)
{
    provision_and_send_cloud_update(1);
    gateway_result(2, 1); /* wrong request_id: ignored */
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_CLOUD_WAIT_SESSION);
    gateway_result(1, 1); /* the broker refused the credential */
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CLOUD_CONFIRM);
    CHECK_MEM(g_ag.body, "\x01\x00\x00\x00\x01", 5);
    CHECK_EQ_INT(host_dev_has_cloud(), 0);
    CHECK_EQ_INT(host_dev_generation(), 2); /* back on the provisioning record */
    CHECK_EQ_INT(host_dev_active_area(), PORT_FLASH_AREA_A);
    CHECK_EQ_INT(host_dev_last_error(), DEV_LASTERR_CLOUD_REFUSED);
    agent_ack();
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    /* A reboot agrees: the invalidated record stays invalid. */
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    CHECK_EQ_INT(host_dev_has_cloud(), 0);
    CHECK_EQ_INT(host_dev_generation(), 2);
    fingerprint_check_device_ak();
}

UNIT_TEST(device_cloud_session_without_answer_is_retried_then_given_up)
{
    provision_and_send_cloud_update(1);
    host_time_advance(TIMEOUT_MS);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 1);
    CHECK_EQ_INT(g_out[0].channel, CODEC_CHAN_CLOUD);
    CHECK_EQ_INT(g_out[0].payload[1], 2); /* a new request_id */
    host_time_advance(TIMEOUT_MS);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 1);
    host_time_advance(TIMEOUT_MS);
    host_dev_poll(); /* third try unanswered: fall back, report result 1 */
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CLOUD_CONFIRM);
    CHECK_EQ_INT(g_ag.body[4], 1);
    CHECK_EQ_INT(host_dev_has_cloud(), 0);
}

UNIT_TEST(device_checkin_reports_keys_and_applies_rotate_action)
{
    uint8_t fp[16];
    uint8_t reply[4] = {ACTION_ROTATE_AK, 0, 0, 0};
    provision_and_send_cloud_update(1);
    gateway_result(1, 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    agent_ack();
    host_time_advance(CHECKIN_MS);
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_CHECKIN);
    CHECK_EQ_INT(g_ag.body_len, 110);
    CHECK_EQ_INT(g_ag.body[0], 1);  /* ak_version */
    CHECK_EQ_INT(g_ag.body[4], 1);  /* cloud_version */
    CHECK_EQ_INT(g_ag.body[8], 1);  /* mosquitto */
    codec_fingerprint(g_ag.ak, 32, fp);
    CHECK_MEM(&g_ag.body[9], fp, 16);
    codec_fingerprint((const uint8_t *)cloud_secret, sizeof cloud_secret - 1, fp);
    CHECK_MEM(&g_ag.body[25], fp, 16);
    CHECK_MEM(&g_ag.body[41], "\x00\x00\x01\x00", 4); /* 1.0.0 */
    agent_fresh_nonce_a();
    agent_send(MSG_CHECKIN_REPLY, CODEC_KEY_AK, 1, g_ag.ak, reply, sizeof reply);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    /* The action starts at the next poll: AK rotation under AK 1. */
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_AK_ROTATE_HELLO);
    CHECK_EQ_INT(g_ag.key_ref, 1);
    agent_offer(MSG_AK_ROTATE_OFFER, 2);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    CHECK_EQ_INT(g_ag.type, MSG_AK_ROTATE_CONFIRM);
    CHECK_EQ_INT(g_ag.key_ref, 2);
    agent_ack();
    CHECK_EQ_INT(host_dev_ak_version(), 2);
    CHECK_EQ_INT(host_dev_cloud_version(), 1); /* the credential rides along */
    fingerprint_check_device_ak();
}

UNIT_TEST(device_checkin_reply_revoked_stops_all_exchanges)
{
    uint8_t reply[4] = {ACTION_REVOKED, 0, 0, 0};
    provision_and_send_cloud_update(1);
    gateway_result(1, 0);
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    agent_ack();
    host_time_advance(CHECKIN_MS);
    host_dev_poll();
    drain();
    CHECK_EQ_INT(agent_receive(), 0);
    agent_fresh_nonce_a();
    agent_send(MSG_CHECKIN_REPLY, CODEC_KEY_AK, 1, g_ag.ak, reply, sizeof reply);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_REVOKED);
    host_time_advance(10u * CHECKIN_MS);
    host_dev_poll();
    CHECK_EQ_INT(drain(), 0);
    CHECK_EQ_INT(host_dev_has_ak(), 1); /* keys kept for forensics */
}

UNIT_TEST(device_rng_failure_sends_nothing_and_is_reported)
{
    memset(&g_ag, 0, sizeof g_ag);
    boot_factory_device();
    host_rng_fail(1);
    CHECK_EQ_INT(host_dev_poll(), DEV_ERNG);
    CHECK_EQ_INT(drain(), 0);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK_EQ_INT(host_dev_last_error(), DEV_LASTERR_RNG);
    host_rng_fail(0);
    host_time_advance(TIMEOUT_MS);
    CHECK_EQ_INT(host_dev_poll(), 0);
    CHECK_EQ_INT(drain(), 1);
}

/* ---- tests/vectors/flows.json: the device replays each flow byte for byte ---- */

static void ks_from_json(const struct jm_node *j, struct ks_state *st)
{
    const struct jm_node *c = jm_path(j, "cloud");
    const char *name = jm_str(jm_path(j, "po_name"));
    memset(st, 0, sizeof *st);
    st->generation = (uint32_t)jm_int(jm_path(j, "generation"), 0);
    st->po_id = (uint32_t)jm_int(jm_path(j, "po_id"), 0);
    CHECK(name != NULL && strlen(name) <= KS_PO_NAME_MAX);
    if (name != NULL) {
        st->po_name_len = (uint8_t)strlen(name);
        memcpy(st->po_name, name, st->po_name_len);
    }
    st->has_pk = !jm_is_null(jm_path(j, "pk"));
    if (st->has_pk) {
        CHECK_EQ_INT(jm_hex_at(j, "pk", st->pk, 32), 32);
    }
    st->has_ak = !jm_is_null(jm_path(j, "ak"));
    if (st->has_ak) {
        CHECK_EQ_INT(jm_hex_at(j, "ak", st->ak, 32), 32);
        st->ak_version = (uint32_t)jm_int(jm_path(j, "ak_version"), 0);
    }
    st->has_cloud = c != NULL && !jm_is_null(c);
    if (st->has_cloud) {
        const char *ep = jm_str(jm_path(c, "endpoint"));
        const char *cid = jm_str(jm_path(c, "client_id"));
        const char *user = jm_str(jm_path(c, "username"));
        long sl = jm_hex_at(c, "secret", st->cloud.secret, sizeof st->cloud.secret);
        CHECK(ep && cid && user && sl >= 0);
        st->cloud.version = (uint32_t)jm_int(jm_path(c, "version"), 0);
        st->cloud.platform = (uint8_t)jm_int(jm_path(c, "platform"), 0);
        st->cloud.endpoint_len = (uint16_t)strlen(ep);
        memcpy(st->cloud.endpoint, ep, st->cloud.endpoint_len);
        st->cloud.client_id_len = (uint16_t)strlen(cid);
        memcpy(st->cloud.client_id, cid, st->cloud.client_id_len);
        st->cloud.username_len = (uint16_t)strlen(user);
        memcpy(st->cloud.username, user, st->cloud.username_len);
        st->cloud.secret_len = (uint16_t)sl;
    }
}

/* The device's keystore (through its fingerprints and host view) equals the vector's. */
static void check_device_keystore(const struct ks_state *want)
{
    uint8_t fp_dev[16], fp_want[16];
    CHECK_EQ_INT(host_dev_generation(), want->generation);
    CHECK_EQ_INT(host_dev_has_pk(), want->has_pk);
    CHECK_EQ_INT(host_dev_has_ak(), want->has_ak);
    CHECK_EQ_INT(host_dev_has_cloud(), want->has_cloud);
    if (want->has_ak) {
        CHECK_EQ_INT(host_dev_ak_version(), want->ak_version);
        CHECK_EQ_INT(host_dev_ak_fingerprint(fp_dev), 0);
        codec_fingerprint(want->ak, 32, fp_want);
        CHECK_MEM(fp_dev, fp_want, 16);
    }
    if (want->has_cloud) {
        uint8_t buf[KS_CLIENT_ID_MAX];
        CHECK_EQ_INT(host_dev_cloud_version(), want->cloud.version);
        CHECK_EQ_INT(host_dev_cloud_fingerprint(fp_dev), 0);
        codec_fingerprint(want->cloud.secret, want->cloud.secret_len, fp_want);
        CHECK_MEM(fp_dev, fp_want, 16);
        CHECK_EQ_INT(host_dev_cloud_client_id(buf, sizeof buf), want->cloud.client_id_len);
        CHECK_MEM(buf, want->cloud.client_id, want->cloud.client_id_len);
        CHECK_EQ_INT(host_dev_cloud_username(buf, sizeof buf), want->cloud.username_len);
        CHECK_MEM(buf, want->cloud.username, want->cloud.username_len);
    }
}

static struct jm_node *g_flows;

static void free_flows(void)
{
    jm_free(g_flows);
    g_flows = NULL;
}

static const struct jm_node *find_flow(const char *name)
{
    const struct jm_node *flows;
    if (g_flows == NULL) {
        g_flows = jm_load("tests/vectors/flows.json");
        atexit(free_flows);
    }
    flows = jm_path(g_flows, "flows");
    for (size_t i = 0; i < jm_len(flows); i++) {
        if (strcmp(jm_str(jm_path(jm_at(flows, i), "name")), name) == 0) {
            return jm_at(flows, i);
        }
    }
    fprintf(stderr, "flow %s not in flows.json\n", name);
    return NULL;
}

/* Boot a device on the flow's keystore_before with its RNG draws queued. */
static void boot_flow_device(const struct jm_node *flow)
{
    static uint8_t img[HOST_FLASH_AREA_SIZE];
    static uint8_t buf[64];
    const struct jm_node *draws = jm_path(flow, "device_rng_draws");
    uint8_t dev_id[12], hash[32];
    size_t len = 0;

    host_reset();
    host_flash_reset();
    CHECK_EQ_INT(jm_hex_at(flow, "inputs.device_id", dev_id, 12), 12);
    host_set_uid(dev_id);
    if (jm_hex_at(flow, "inputs.app_hash", hash, 32) == 32) {
        host_set_app_hash(hash);
    }
    ks_from_json(jm_path(flow, "keystore_before"), &g_ks);
    CHECK_EQ_INT(ks_encode(&g_ks, HOST_FLASH_ERASED, img, sizeof img, &len), 0);
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_B, 0, img, len), 0);
    for (size_t i = 0; i < jm_len(draws); i++) {
        long n = jm_hex_at(jm_at(draws, i), "hex", buf, sizeof buf);
        CHECK(n > 0);
        CHECK_EQ_INT(host_rng_push(buf, (size_t)n), 0);
    }
    CHECK_EQ_INT(host_dev_boot(TIMEOUT_MS, CHECKIN_MS), 0);
    drain();
}

/*
 * Run a flow: the device starts the exchange (after `action` was left pending by a check-in), every
 * d2a message must come out byte-exact, every a2d message is fed in; the CLOUD session of the
 * flow is checked and answered where it falls. Returns with the flow's last message handled.
 */
static void replay_flow(const struct jm_node *flow, int action)
{
    const struct jm_node *msgs = jm_path(flow, "messages");
    const struct jm_node *session = jm_path(flow, "session");
    static uint8_t want[CODEC_MAX_PAYLOAD];
    size_t si = 0;

    CHECK(msgs != NULL && jm_len(msgs) >= 2);
    boot_flow_device(flow);
    host_dev_set_pending_action(action);
    CHECK_EQ_INT(host_dev_poll(), 0);
    drain();
    for (size_t i = 0; i < jm_len(msgs) && !unit_failed; i++) {
        const struct jm_node *m = jm_at(msgs, i);
        const char *dir = jm_str(jm_path(m, "dir"));
        long n = jm_hex_at(m, "message", want, sizeof want);
        CHECK(n > 0 && dir != NULL);
        if (strcmp(dir, "d2a") == 0) {
            struct out_frame *got = last_agent_msg();
            CHECK_EQ_INT(g_nout, 1);
            CHECK(got != NULL);
            if (got != NULL) {
                CHECK_EQ_INT(got->len, n);
                CHECK_MEM(got->payload, want, (size_t)n);
            }
            continue;
        }
        feed_frame(CODEC_CHAN_AGENT, want, (size_t)n);
        drain();
        /* The gateway's part, if the device now asks for a cloud session. */
        while (g_nout == 1 && g_out[0].channel == CODEC_CHAN_CLOUD && si + 1 < jm_len(session)) {
            long sl = jm_hex_at(jm_at(session, si), "payload", want, sizeof want);
            CHECK_EQ_INT(g_out[0].len, sl);
            CHECK_MEM(g_out[0].payload, want, (size_t)sl);
            sl = jm_hex_at(jm_at(session, si + 1), "payload", want, sizeof want);
            si += 2;
            feed_frame(CODEC_CHAN_CLOUD, want, (size_t)sl);
            drain();
        }
    }
    CHECK_EQ_INT(si, jm_len(session));
    CHECK_EQ_INT(host_rng_queued(), 0); /* every draw the vector lists was taken, in that order */
    CHECK_EQ_INT(host_dev_messages_rejected(), 0);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    ks_from_json(jm_path(flow, "keystore_after"), &g_ks);
    check_device_keystore(&g_ks);
}

UNIT_TEST(flow_provisioning_vector_replays_byte_exact)
{
    const struct jm_node *flow = find_flow("provisioning");
    CHECK(flow != NULL);
    replay_flow(flow, ACTION_NONE);
    CHECK(host_flash_raw_is_blank(PORT_FLASH_AREA_B)); /* the PK record is gone from flash */
}

UNIT_TEST(flow_ak_rotation_vector_replays_byte_exact)
{
    const struct jm_node *flow = find_flow("ak_rotation");
    CHECK(flow != NULL);
    replay_flow(flow, ACTION_ROTATE_AK);
}

UNIT_TEST(flow_cloud_update_vector_replays_byte_exact_with_test_session)
{
    const struct jm_node *flow = find_flow("cloud_update");
    CHECK(flow != NULL);
    replay_flow(flow, ACTION_UPDATE_CLOUD);
}

UNIT_TEST(flow_checkin_vector_replays_byte_exact_and_keeps_returned_action)
{
    const struct jm_node *flow = find_flow("checkin");
    CHECK(flow != NULL);
    replay_flow(flow, ACTION_NONE);
    CHECK_EQ_INT(host_dev_pending_action(), jm_int(jm_path(flow, "derived.action"), -1));
}

UNIT_TEST(flow_provisioning_offer_replayed_after_completion_changes_nothing)
{
    const struct jm_node *flow = find_flow("provisioning");
    static uint8_t offer[CODEC_MAX_MESSAGE];
    long n;
    uint32_t ops;
    CHECK(flow != NULL);
    replay_flow(flow, ACTION_NONE);
    n = jm_hex_at(flow, "messages.1.message", offer, sizeof offer);
    CHECK(n > 0);
    ops = host_flash_op_count();
    feed_frame(CODEC_CHAN_AGENT, offer, (size_t)n);
    CHECK_EQ_INT(drain(), 0);
    CHECK_EQ_INT(host_dev_messages_rejected(), 1);
    CHECK_EQ_INT(host_flash_op_count(), ops);
    ks_from_json(jm_path(flow, "keystore_after"), &g_ks);
    check_device_keystore(&g_ks);
}

UNIT_TEST(flow_provisioning_error_instead_of_offer_is_answered_by_giving_up)
{
    const struct jm_node *flow = find_flow("provisioning");
    static uint8_t hello[CODEC_MAX_MESSAGE];
    uint8_t nonce_d[16];
    CHECK(flow != NULL);
    boot_flow_device(flow);
    CHECK_EQ_INT(host_dev_poll(), 0);
    drain();
    CHECK(jm_hex_at(flow, "messages.0.message", hello, sizeof hello) > 0);
    CHECK_MEM(last_agent_msg()->payload, hello, 20);
    memcpy(nonce_d, &hello[20], 16);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_OFFER);
    /* ERROR(REFUSED) with the right nonce but another device's ID (agent_send_error names `uid`,
     * not the flow's device) is not for us */
    agent_send_error(ERR_REFUSED, nonce_d);
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_PROV_WAIT_OFFER);
    CHECK_EQ_INT(host_dev_messages_rejected(), 1);
    {
        /* ERROR(REFUSED) with this device's ID and nonce ends the exchange; the PK stays */
        struct codec_header h;
        uint8_t msg[CODEC_ERROR_LEN];
        CHECK_EQ_INT(codec_header_unpack(hello, CODEC_HEADER_LEN, &h), 0);
        h.type = MSG_ERROR;
        h.key_kind = CODEC_KEY_NONE;
        h.key_ref = 0;
        codec_header_pack(&h, msg);
        msg[52] = ERR_REFUSED;
        feed_frame(CODEC_CHAN_AGENT, msg, sizeof msg);
    }
    CHECK_EQ_INT(host_dev_state(), DEV_STATE_IDLE);
    CHECK_EQ_INT(host_dev_last_error(), DEV_LASTERR_AGENT_REFUSED);
    CHECK_EQ_INT(host_dev_has_pk(), 1);
    CHECK_EQ_INT(host_dev_generation(), 1);
}
