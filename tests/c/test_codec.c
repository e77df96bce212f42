/*
 * Frames (protocol §1) and envelopes (§2): byte-exact against tests/vectors/frames.json and
 * envelopes.json (made by the Python reference), plus each kind of bad input on its own.
 */
#include <stdint.h>
#include <string.h>

#include "json_min.h"
#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "unit.h"

/* ---- helpers ---- */

/* Feed bytes to a decoder; collect the results (1 = frame, < 0 = error) in order. */
struct feed_log {
    int codes[64];
    size_t n;
    uint8_t channel;
    uint8_t payload[CODEC_MAX_PAYLOAD];
    size_t payload_len;
    size_t frames;
};

static void feed(struct codec_frame_rx *rx, const uint8_t *p, size_t len, struct feed_log *log)
{
    for (size_t i = 0; i < len; i++) {
        struct codec_frame f;
        int rc = codec_frame_rx_byte(rx, p[i], &f);
        if (rc == 0) {
            continue;
        }
        if (log->n < 64) {
            log->codes[log->n++] = rc;
        }
        if (rc == 1) {
            log->channel = f.channel;
            log->payload_len = f.payload_len;
            memcpy(log->payload, f.payload, f.payload_len);
            log->frames++;
        }
    }
}

static struct codec_frame_rx g_rx; /* 4 KB: keep it off the stack */
static uint8_t g_buf[CODEC_MAX_ENCODED + 16];
static uint8_t g_big[CODEC_MAX_ENCODED + 16];

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static const uint8_t test_root[32] = {0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
                                      0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
                                      0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f};

static void make_header(struct codec_header *h, uint8_t type, uint8_t key_kind)
{
    memset(h, 0, sizeof *h);
    h->version = CODEC_VERSION;
    h->type = type;
    h->key_kind = key_kind;
    h->key_ref = 7;
    for (unsigned i = 0; i < 12; i++) {
        h->device_id[i] = (uint8_t)(0xA0 + i);
    }
    for (unsigned i = 0; i < 16; i++) {
        h->nonce_d[i] = (uint8_t)(0x40 + i);
        h->nonce_a[i] = (uint8_t)(0x80 + i);
    }
}

/* Build a message with a valid tag around arbitrary (already padded) plaintext blocks, so tests
 * can reach the checks behind the MAC: padding and body length. */
static size_t seal_raw(const uint8_t header[52], const uint8_t *plain, size_t plain_len, uint8_t *out)
{
    uint8_t enc_key[16], mac_key[32];
    uint8_t iv[16];
    memset(iv, 0x5C, sizeof iv);
    memcpy(out, header, 52);
    memcpy(&out[52], iv, 16);
    codec_derive_keys(test_root, enc_key, mac_key);
    crypto_aes128_cbc_encrypt(enc_key, iv, plain, plain_len, &out[68]);
    crypto_hmac_sha256(mac_key, 32, out, 68 + plain_len, &out[68 + plain_len]);
    return 68 + plain_len + 32;
}

/* ---- CRC and COBS ---- */

UNIT_TEST(crc32_matches_iso_hdlc_check_value)
{
    /* The catalogue check value of CRC-32/ISO-HDLC over "123456789". */
    CHECK_EQ_INT(codec_crc32((const uint8_t *)"123456789", 9), 0xCBF43926u);
    CHECK_EQ_INT(codec_crc32(NULL, 0), 0);
}

UNIT_TEST(frame_roundtrip_at_cobs_block_edges_returns_same_payload)
{
    static const size_t sizes[] = {0, 1, 2, 252, 253, 254, 255, 507, 508, 509, 1000, 4095, 4096};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (int zeros = 0; zeros < 2; zeros++) {
            size_t n = sizes[k], len = 0;
            struct feed_log log;
            memset(&log, 0, sizeof log);
            fill_pattern(g_big, n, (uint32_t)n);
            for (size_t i = 0; i < n; i++) {
                if (zeros ? (i % 7 == 0) : (g_big[i] == 0)) {
                    g_big[i] = zeros ? 0 : 1;
                }
            }
            CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, g_big, n, g_buf, sizeof g_buf, &len), 0);
            CHECK(len <= CODEC_MAX_ENCODED + 1);
            CHECK_EQ_INT(g_buf[len - 1], 0);
            CHECK(memchr(g_buf, 0, len - 1) == NULL);
            codec_frame_rx_init(&g_rx);
            feed(&g_rx, g_buf, len, &log);
            CHECK_EQ_INT(log.n, 1);
            CHECK_EQ_INT(log.codes[0], 1);
            CHECK_EQ_INT(log.channel, CODEC_CHAN_AGENT);
            CHECK_EQ_INT(log.payload_len, n);
            CHECK_MEM(log.payload, g_big, n);
        }
    }
}

UNIT_TEST(frame_with_254_nonzero_content_bytes_gets_no_trailing_code)
{
    /* channel + 249 bytes + crc = 254 content bytes, all non-zero: minimal COBS is 0xFF + 254. */
    uint8_t payload[249];
    size_t len = 0;
    uint32_t seed = 1;
    for (;;) {
        uint32_t crc;
        fill_pattern(payload, sizeof payload, seed);
        for (size_t i = 0; i < sizeof payload; i++) {
            payload[i] |= 1u;
        }
        uint8_t content[250];
        content[0] = CODEC_CHAN_CLOUD;
        memcpy(&content[1], payload, sizeof payload);
        crc = codec_crc32(content, sizeof content);
        if ((crc & 0xFFu) && (crc & 0xFF00u) && (crc & 0xFF0000u) && (crc & 0xFF000000u)) {
            break;
        }
        seed++;
    }
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_CLOUD, payload, sizeof payload, g_buf, sizeof g_buf, &len), 0);
    CHECK_EQ_INT(len, 256); /* 0xFF, 254 bytes, delimiter */
    CHECK_EQ_INT(g_buf[0], 0xFF);
    CHECK_EQ_INT(g_buf[255], 0);
}

static uint8_t g_sink[CODEC_MAX_ENCODED + 16];
static size_t g_sink_len;
static size_t g_sink_calls;
static size_t g_sink_max_chunk;

static int capture_sink(const uint8_t *buf, size_t len)
{
    if (len > sizeof g_sink - g_sink_len) {
        return -1;
    }
    memcpy(&g_sink[g_sink_len], buf, len);
    g_sink_len += len;
    g_sink_calls++;
    if (len > g_sink_max_chunk) {
        g_sink_max_chunk = len;
    }
    return 0;
}

UNIT_TEST(frame_send_streams_the_bytes_encode_produces_in_small_blocks)
{
    size_t len = 0;
    struct codec_frame_tx tx;
    fill_pattern(g_big, 3000, 99);
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, g_big, 3000, g_buf, sizeof g_buf, &len), 0);
    g_sink_len = g_sink_calls = g_sink_max_chunk = 0;
    CHECK_EQ_INT(codec_frame_send(CODEC_CHAN_AGENT, g_big, 3000, capture_sink), 0);
    CHECK_EQ_INT(g_sink_len, len);
    CHECK_MEM(g_sink, g_buf, len);
    CHECK(g_sink_max_chunk <= 255);
    /* The same frame put in odd pieces. */
    g_sink_len = 0;
    CHECK_EQ_INT(codec_frame_tx_begin(&tx, CODEC_CHAN_AGENT, capture_sink), 0);
    for (size_t off = 0; off < 3000; off += 37) {
        size_t n = 3000 - off < 37 ? 3000 - off : 37;
        CHECK_EQ_INT(codec_frame_tx_put(&tx, &g_big[off], n), 0);
    }
    CHECK_EQ_INT(codec_frame_tx_end(&tx), 0);
    CHECK_EQ_INT(g_sink_len, len);
    CHECK_MEM(g_sink, g_buf, len);
}

UNIT_TEST(frame_encoder_refuses_oversized_payload_and_unknown_channel)
{
    size_t len = 0;
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, g_big, CODEC_MAX_PAYLOAD + 1, g_buf, sizeof g_buf, &len),
                 CODEC_EBADLEN);
    CHECK_EQ_INT(codec_frame_encode(0x04, g_big, 4, g_buf, sizeof g_buf, &len), CODEC_EBADCHAN);
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, g_big, 100, g_buf, 50, &len), CODEC_ENOSPACE);
}

UNIT_TEST(frame_truncated_content_is_dropped_as_too_short)
{
    /* A valid COBS body whose content is 4 bytes (no room for channel + CRC). */
    static const uint8_t f[] = {0x05, 0x01, 0x02, 0x03, 0x04, 0x00};
    struct feed_log log;
    memset(&log, 0, sizeof log);
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, f, sizeof f, &log);
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(log.codes[0], CODEC_EBADLEN);
}

UNIT_TEST(frame_oversized_reports_too_long_once_and_recovers_next_frame)
{
    size_t len = 0;
    struct feed_log log;
    memset(&log, 0, sizeof log);
    codec_frame_rx_init(&g_rx);
    memset(g_big, 0x41, sizeof g_big);
    feed(&g_rx, g_big, CODEC_MAX_ENCODED + 10, &log); /* never a delimiter */
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(log.codes[0], CODEC_EBADLEN);
    feed(&g_rx, g_big, 4000, &log); /* still dropping: no second report */
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_CONSOLE, (const uint8_t *)"ok\n", 3, g_buf, sizeof g_buf, &len), 0);
    /* The good frame's first byte would still be dropped: the delimiter ending the long frame
     * comes first, as a sender flushing a receiver would send it. */
    feed(&g_rx, (const uint8_t *)"\0", 1, &log);
    feed(&g_rx, g_buf, len, &log);
    CHECK_EQ_INT(log.n, 2);
    CHECK_EQ_INT(log.codes[1], 1);
    CHECK_EQ_INT(log.payload_len, 3);
    CHECK_MEM(log.payload, "ok\n", 3);
}

UNIT_TEST(frame_exactly_max_encoded_bytes_is_accepted)
{
    size_t len = 0;
    struct feed_log log;
    memset(&log, 0, sizeof log);
    fill_pattern(g_big, CODEC_MAX_PAYLOAD, 7);
    for (size_t i = 0; i < CODEC_MAX_PAYLOAD; i++) {
        g_big[i] |= 0x80u; /* no zeros: the worst-case COBS size */
    }
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, g_big, CODEC_MAX_PAYLOAD, g_buf, sizeof g_buf, &len), 0);
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, g_buf, len, &log);
    CHECK_EQ_INT(log.frames, 1);
    CHECK_EQ_INT(log.payload_len, CODEC_MAX_PAYLOAD);
}

UNIT_TEST(frame_with_wrong_crc_is_dropped)
{
    size_t len = 0;
    struct feed_log log;
    memset(&log, 0, sizeof log);
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, (const uint8_t *)"hello", 5, g_buf, sizeof g_buf, &len), 0);
    g_buf[3] ^= 0x01; /* a payload byte, still non-zero */
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, g_buf, len, &log);
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(log.codes[0], CODEC_EBADCRC);
    CHECK_EQ_INT(log.frames, 0);
}

UNIT_TEST(frame_with_bad_cobs_code_is_dropped)
{
    /* The code byte announces 9 bytes, only 3 follow before the delimiter. */
    static const uint8_t f[] = {0x0A, 0x01, 0x02, 0x03, 0x00};
    struct feed_log log;
    memset(&log, 0, sizeof log);
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, f, sizeof f, &log);
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(log.codes[0], CODEC_EBADCOBS);
}

UNIT_TEST(frame_with_unknown_channel_is_dropped)
{
    /* Build channel 0x09 by hand: content = 09 'x' crc. */
    uint8_t content[6] = {0x09, 'x'};
    uint32_t crc = codec_crc32(content, 2);
    uint8_t f[16];
    size_t n = 0;
    struct feed_log log;
    memset(&log, 0, sizeof log);
    for (unsigned i = 0; i < 4; i++) {
        content[2 + i] = (uint8_t)(crc >> (8 * i));
    }
    /* COBS by hand (zero bytes in the CRC would need splitting; pick the general path). */
    {
        size_t code_pos = n++;
        uint8_t code = 1;
        for (size_t i = 0; i < sizeof content; i++) {
            if (content[i] == 0) {
                f[code_pos] = code;
                code_pos = n++;
                code = 1;
            } else {
                f[n++] = content[i];
                code++;
            }
        }
        f[code_pos] = code;
        f[n++] = 0;
    }
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, f, n, &log);
    CHECK_EQ_INT(log.n, 1);
    CHECK_EQ_INT(log.codes[0], CODEC_EBADCHAN);
}

UNIT_TEST(frame_garbage_between_frames_costs_only_the_corrupted_frame)
{
    size_t l1 = 0, l2 = 0;
    static uint8_t stream[2048];
    size_t n = 0;
    static const uint8_t garbage[] = {0x13, 0x37, 0xFF, 0x02, 0x00, 0x99, 0x98, 0x00, 0x00};
    struct feed_log log;
    memset(&log, 0, sizeof log);
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_AGENT, (const uint8_t *)"first", 5, g_buf, sizeof g_buf, &l1), 0);
    memcpy(&stream[n], g_buf, l1);
    n += l1;
    memcpy(&stream[n], garbage, sizeof garbage);
    n += sizeof garbage;
    CHECK_EQ_INT(codec_frame_encode(CODEC_CHAN_CLOUD, (const uint8_t *)"second", 6, g_buf, sizeof g_buf, &l2), 0);
    memcpy(&stream[n], g_buf, l2);
    n += l2;
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, stream, n, &log);
    CHECK_EQ_INT(log.frames, 2);
    CHECK_EQ_INT(log.codes[0], 1);
    CHECK(log.n >= 3);
    for (size_t i = 1; i + 1 < log.n; i++) {
        CHECK(log.codes[i] < 0); /* the garbage produced only drop reports */
    }
    CHECK_EQ_INT(log.codes[log.n - 1], 1);
    CHECK_EQ_INT(log.channel, CODEC_CHAN_CLOUD);
    CHECK_EQ_INT(log.payload_len, 6);
    CHECK_MEM(log.payload, "second", 6);
}

UNIT_TEST(frame_empty_frames_are_ignored_silently)
{
    static const uint8_t f[] = {0x00, 0x00, 0x00};
    struct feed_log log;
    memset(&log, 0, sizeof log);
    codec_frame_rx_init(&g_rx);
    feed(&g_rx, f, sizeof f, &log);
    CHECK_EQ_INT(log.n, 0);
}

/* ---- envelopes ---- */

UNIT_TEST(envelope_seal_then_open_gives_back_header_and_body)
{
    struct codec_header h, got;
    uint8_t body[110], msg[256], iv[16];
    uint8_t *out_body = NULL;
    size_t len = 0, out_len = 0;
    make_header(&h, MSG_CHECKIN, CODEC_KEY_AK);
    fill_pattern(body, sizeof body, 3);
    memset(iv, 0x33, sizeof iv);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, body, sizeof body, msg, sizeof msg, &len), 0);
    CHECK_EQ_INT(len, 52 + 16 + 112 + 32);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &out_body, &out_len), 0);
    CHECK_EQ_INT(out_len, sizeof body);
    CHECK_MEM(out_body, body, sizeof body);
    CHECK_EQ_INT(got.type, MSG_CHECKIN);
    CHECK_EQ_INT(got.key_ref, 7);
    CHECK_MEM(got.nonce_a, h.nonce_a, 16);
}

UNIT_TEST(envelope_any_flipped_bit_fails_the_mac)
{
    struct codec_header h, got;
    uint8_t msg[128], copy[128], iv[16];
    uint8_t *b = NULL;
    size_t len = 0, bl = 0;
    make_header(&h, MSG_CLOUD_REQUEST, CODEC_KEY_AK);
    memset(iv, 1, sizeof iv);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, (const uint8_t *)"\1\0\0\0", 4, msg, sizeof msg, &len), 0);
    CHECK_EQ_INT(len, 116);
    /* header fields covered by the MAC (key_ref, ID, nonces), iv, ciphertext, tag */
    static const size_t offs[] = {4, 8, 19, 20, 36, 51, 52, 67, 68, 83, 84, 115};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        memcpy(copy, msg, len);
        copy[offs[i]] ^= 0x01;
        CHECK_EQ_INT(codec_open(copy, len, test_root, &got, &b, &bl), CODEC_EBADMAC);
    }
    /* and the wrong key */
    {
        uint8_t other[32];
        memcpy(other, test_root, 32);
        other[31] ^= 0x80;
        memcpy(copy, msg, len);
        CHECK_EQ_INT(codec_open(copy, len, other, &got, &b, &bl), CODEC_EBADMAC);
    }
}

UNIT_TEST(envelope_wrong_version_or_reserved_is_rejected)
{
    struct codec_header h, got;
    uint8_t msg[128], iv[16] = {0};
    uint8_t *b = NULL;
    size_t len = 0, bl = 0;
    make_header(&h, MSG_CHECKIN_REPLY, CODEC_KEY_AK);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, (const uint8_t *)"\0\0\0\0", 4, msg, sizeof msg, &len), 0);
    msg[0] = 2;
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADVER);
    msg[0] = 1;
    msg[3] = 1;
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADVER);
}

UNIT_TEST(envelope_unknown_type_or_wrong_key_kind_is_rejected)
{
    struct codec_header h, got;
    uint8_t msg[128], iv[16] = {0};
    uint8_t *b = NULL;
    size_t len = 0, bl = 0;
    make_header(&h, MSG_ACK, CODEC_KEY_AK);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, NULL, 0, msg, sizeof msg, &len), 0);
    msg[1] = 0x05; /* no such type */
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADTYPE);
    msg[1] = MSG_ACK;
    msg[2] = CODEC_KEY_PK; /* ACK is never under PK */
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADTYPE);
    msg[1] = MSG_ERROR;
    msg[2] = CODEC_KEY_NONE; /* ERROR is not an envelope */
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADTYPE);
    /* The sealer refuses the same mistakes. */
    make_header(&h, MSG_PROV_HELLO, CODEC_KEY_AK);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, g_big, 32, msg, sizeof msg, &len), CODEC_EBADTYPE);
}

UNIT_TEST(envelope_truncated_or_misaligned_is_rejected_by_length)
{
    struct codec_header h, got;
    uint8_t msg[160], iv[16] = {0};
    uint8_t *b = NULL;
    size_t len = 0, bl = 0;
    make_header(&h, MSG_PROV_OFFER, CODEC_KEY_PK);
    fill_pattern(g_big, 36, 5);
    CHECK_EQ_INT(codec_seal(&h, test_root, iv, g_big, 36, msg, sizeof msg, &len), 0);
    CHECK_EQ_INT(len, 148);
    CHECK_EQ_INT(codec_open(msg, len - 1, test_root, &got, &b, &bl), CODEC_EBADLEN);
    CHECK_EQ_INT(codec_open(msg, len - 16, test_root, &got, &b, &bl), CODEC_EBADMAC); /* aligned: MAC */
    CHECK_EQ_INT(codec_open(msg, 115, test_root, &got, &b, &bl), CODEC_EBADLEN);
    CHECK_EQ_INT(codec_open(msg, 52, test_root, &got, &b, &bl), CODEC_EBADLEN);
    CHECK_EQ_INT(codec_open(msg, CODEC_MAX_MESSAGE + 16, test_root, &got, &b, &bl), CODEC_EBADLEN);
}

UNIT_TEST(envelope_bad_padding_under_valid_mac_is_rejected_uniformly)
{
    struct codec_header h, got;
    uint8_t header[52], plain[48], msg[200];
    uint8_t *b = NULL;
    size_t len, bl = 0;
    make_header(&h, MSG_PROV_HELLO, CODEC_KEY_PK);
    codec_header_pack(&h, header);
    fill_pattern(plain, sizeof plain, 9);
    /* pad bytes claim 16 but are not all equal */
    memset(&plain[32], 0x10, 16);
    plain[40] = 0x0F;
    len = seal_raw(header, plain, sizeof plain, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADMAC);
    /* pad byte 0 and pad byte 17 are just as bad */
    memset(&plain[32], 0x10, 16);
    plain[47] = 0x00;
    len = seal_raw(header, plain, sizeof plain, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADMAC);
    plain[47] = 0x11;
    len = seal_raw(header, plain, sizeof plain, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADMAC);
    /* control: correct padding opens */
    memset(&plain[32], 0x10, 16);
    len = seal_raw(header, plain, sizeof plain, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), 0);
    CHECK_EQ_INT(bl, 32);
}

UNIT_TEST(envelope_wrong_body_length_under_valid_mac_is_rejected)
{
    struct codec_header h, got;
    uint8_t header[52], plain[48], msg[200];
    uint8_t *b = NULL;
    size_t len, bl = 0;
    make_header(&h, MSG_PROV_HELLO, CODEC_KEY_PK); /* wants exactly 32 */
    codec_header_pack(&h, header);
    fill_pattern(plain, sizeof plain, 11);
    memset(&plain[33], 15, 15); /* 33-byte body */
    len = seal_raw(header, plain, sizeof plain, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADLEN);
    memset(&plain[31], 17, 17); /* 31-byte body: pad 17 is invalid anyway */
    memset(&plain[32], 16, 16);
    plain[31] = 0x42;
    len = seal_raw(header, plain, 32 + 16, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), 0);
    h.type = MSG_CHECKIN; /* same 32-byte body is wrong for a CHECKIN */
    codec_header_pack(&h, header);
    header[2] = CODEC_KEY_AK;
    len = seal_raw(header, plain, 32 + 16, msg);
    CHECK_EQ_INT(codec_open(msg, len, test_root, &got, &b, &bl), CODEC_EBADLEN);
}

UNIT_TEST(codec_body_lengths_follow_protocol_table)
{
    CHECK_EQ_INT(codec_body_len(MSG_PROV_HELLO), 32);
    CHECK_EQ_INT(codec_body_len(MSG_AK_ROTATE_OFFER), 36);
    CHECK_EQ_INT(codec_body_len(MSG_ACK), 0);
    CHECK_EQ_INT(codec_body_len(MSG_CLOUD_REQUEST), 4);
    CHECK_EQ_INT(codec_body_len(MSG_CLOUD_CONFIRM), 5);
    CHECK_EQ_INT(codec_body_len(MSG_CHECKIN), 110);
    CHECK_EQ_INT(codec_body_len(MSG_CHECKIN_REPLY), 4);
    CHECK_EQ_INT(codec_body_len(MSG_CLOUD_UPDATE), -1);
    CHECK_EQ_INT(codec_body_len(MSG_ERROR), CODEC_EBADTYPE);
    CHECK_EQ_INT(codec_body_len(0x42), CODEC_EBADTYPE);
}

/* ---- tests/vectors (made by agent/otakey/protocol) ---- */

static uint8_t g_hex[2 * CODEC_MAX_ENCODED + 64];
static uint8_t g_hex2[2 * CODEC_MAX_ENCODED + 64];

/* The C error for each documented frame error name. Too short and too long share CODEC_EBADLEN. */
static int frame_error_code(const char *name)
{
    static const struct {
        const char *name;
        int code;
    } map[] = {{"frame_bad_cobs", CODEC_EBADCOBS},  {"frame_too_short", CODEC_EBADLEN},
               {"frame_too_long", CODEC_EBADLEN},   {"frame_bad_crc", CODEC_EBADCRC},
               {"frame_bad_channel", CODEC_EBADCHAN}};
    for (size_t i = 0; name != NULL && i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(map[i].name, name) == 0) {
            return map[i].code;
        }
    }
    fprintf(stderr, "unknown frame error name %s\n", name ? name : "(null)");
    return 1000;
}

/* The C error for each check the Python reference names (envelopes.json "reason"). */
static int envelope_error_code(const char *reason)
{
    static const struct {
        const char *reason;
        int code;
    } map[] = {{"length", CODEC_EBADLEN}, {"version", CODEC_EBADVER},     {"reserved", CODEC_EBADVER},
               {"type", CODEC_EBADTYPE},  {"key_kind", CODEC_EBADTYPE},   {"mac", CODEC_EBADMAC},
               {"padding", CODEC_EBADMAC}, {"body_length", CODEC_EBADLEN}};
    for (size_t i = 0; reason != NULL && i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(map[i].reason, reason) == 0) {
            return map[i].code;
        }
    }
    fprintf(stderr, "unknown envelope reason %s\n", reason ? reason : "(null)");
    return 1000;
}

UNIT_TEST(frames_vectors_encode_and_decode_byte_exact)
{
    struct jm_node *root = jm_load("tests/vectors/frames.json");
    const struct jm_node *frames = jm_path(root, "frames");
    CHECK(root != NULL);
    CHECK(jm_len(frames) >= 10);
    CHECK_EQ_INT(jm_int(jm_path(root, "max_encoded"), 0), CODEC_MAX_ENCODED);
    for (size_t i = 0; i < jm_len(frames); i++) {
        const struct jm_node *v = jm_at(frames, i);
        long plen = jm_hex_at(v, "payload", g_big, sizeof g_big);
        long elen = jm_hex_at(v, "encoded", g_hex, sizeof g_hex);
        uint8_t ch = (uint8_t)jm_int(jm_path(v, "channel"), -1);
        size_t len = 0;
        struct feed_log log;
        CHECK(plen >= 0 && elen > 0);
        CHECK_EQ_INT(codec_frame_encode(ch, g_big, (size_t)plen, g_buf, sizeof g_buf, &len), 0);
        CHECK_EQ_INT(len, elen);
        CHECK_MEM(g_buf, g_hex, (size_t)elen);
        g_sink_len = 0;
        CHECK_EQ_INT(codec_frame_send(ch, g_big, (size_t)plen, capture_sink), 0);
        CHECK_EQ_INT(g_sink_len, elen);
        CHECK_MEM(g_sink, g_hex, (size_t)elen);
        memset(&log, 0, sizeof log);
        codec_frame_rx_init(&g_rx);
        feed(&g_rx, g_hex, (size_t)elen, &log);
        CHECK_EQ_INT(log.n, 1);
        CHECK_EQ_INT(log.frames, 1);
        CHECK_EQ_INT(log.channel, ch);
        CHECK_EQ_INT(log.payload_len, plen);
        CHECK_MEM(log.payload, g_big, (size_t)plen);
        if (unit_failed) {
            fprintf(stderr, "  in frame vector %s\n", jm_str(jm_path(v, "name")));
            break;
        }
    }
    jm_free(root);
}

UNIT_TEST(frames_bad_vectors_give_exactly_their_error)
{
    struct jm_node *root = jm_load("tests/vectors/frames.json");
    const struct jm_node *bad = jm_path(root, "bad_frames");
    CHECK(jm_len(bad) >= 5);
    for (size_t i = 0; i < jm_len(bad); i++) {
        const struct jm_node *v = jm_at(bad, i);
        long elen = jm_hex_at(v, "encoded", g_hex, sizeof g_hex);
        struct feed_log log;
        CHECK(elen > 0);
        memset(&log, 0, sizeof log);
        codec_frame_rx_init(&g_rx);
        feed(&g_rx, g_hex, (size_t)elen, &log);
        CHECK_EQ_INT(log.frames, 0);
        CHECK_EQ_INT(log.n, 1);
        CHECK_EQ_INT(log.codes[0], frame_error_code(jm_str(jm_path(v, "error"))));
        if (unit_failed) {
            fprintf(stderr, "  in bad frame vector %s\n", jm_str(jm_path(v, "name")));
            break;
        }
    }
    jm_free(root);
}

UNIT_TEST(frames_stream_vectors_report_every_event_in_order)
{
    struct jm_node *root = jm_load("tests/vectors/frames.json");
    const struct jm_node *streams = jm_path(root, "streams");
    static uint8_t stream[16384];
    CHECK(jm_len(streams) >= 3);
    for (size_t i = 0; i < jm_len(streams); i++) {
        const struct jm_node *v = jm_at(streams, i);
        const struct jm_node *events = jm_path(v, "events");
        long n = jm_hex_at(v, "bytes", stream, sizeof stream);
        size_t got = 0;
        CHECK(n > 0);
        codec_frame_rx_init(&g_rx);
        for (long k = 0; k < n; k++) {
            struct codec_frame f;
            int rc = codec_frame_rx_byte(&g_rx, stream[k], &f);
            const struct jm_node *ev;
            if (rc == 0) {
                continue;
            }
            ev = jm_at(events, got++);
            CHECK(ev != NULL);
            if (ev == NULL) {
                break;
            }
            if (jm_path(ev, "error") != NULL) {
                CHECK_EQ_INT(rc, frame_error_code(jm_str(jm_path(ev, "error"))));
            } else {
                long plen = jm_hex_at(ev, "payload", g_hex2, sizeof g_hex2);
                CHECK_EQ_INT(rc, 1);
                CHECK_EQ_INT(f.channel, jm_int(jm_path(ev, "channel"), -1));
                CHECK_EQ_INT(f.payload_len, plen);
                CHECK(rc != 1 || memcmp(f.payload, g_hex2, (size_t)plen) == 0);
            }
        }
        CHECK_EQ_INT(got, jm_len(events));
        if (unit_failed) {
            fprintf(stderr, "  in stream vector %s\n", jm_str(jm_path(v, "name")));
            break;
        }
    }
    jm_free(root);
}

static void header_from_vector(const struct jm_node *v, struct codec_header *h)
{
    memset(h, 0, sizeof *h);
    h->version = CODEC_VERSION;
    h->type = (uint8_t)jm_int(jm_path(v, "type"), -1);
    h->key_kind = (uint8_t)jm_int(jm_path(v, "key_kind"), CODEC_KEY_NONE);
    h->key_ref = (uint32_t)jm_int(jm_path(v, "key_ref"), 0);
    CHECK_EQ_INT(jm_hex_at(v, "device_id", h->device_id, 12), 12);
    CHECK_EQ_INT(jm_hex_at(v, "nonce_d", h->nonce_d, 16), 16);
    CHECK_EQ_INT(jm_hex_at(v, "nonce_a", h->nonce_a, 16), 16);
}

UNIT_TEST(envelopes_vectors_seal_byte_exact_and_open_to_body)
{
    struct jm_node *root = jm_load("tests/vectors/envelopes.json");
    const struct jm_node *msgs = jm_path(root, "messages");
    CHECK(jm_len(msgs) >= 10);
    for (size_t i = 0; i < jm_len(msgs); i++) {
        const struct jm_node *v = jm_at(msgs, i);
        struct codec_header h, got;
        uint8_t key[32], iv[16];
        uint8_t *body = NULL;
        size_t len = 0, body_len = 0;
        long blen = jm_hex_at(v, "body", g_big, sizeof g_big);
        long mlen = jm_hex_at(v, "message", g_hex, sizeof g_hex);
        header_from_vector(v, &h);
        CHECK_EQ_INT(jm_hex_at(v, "root", key, 32), 32);
        CHECK_EQ_INT(jm_hex_at(v, "iv", iv, 16), 16);
        CHECK(blen >= 0 && mlen > 0);
        CHECK_EQ_INT(codec_seal(&h, key, iv, g_big, (size_t)blen, g_buf, sizeof g_buf, &len), 0);
        CHECK_EQ_INT(len, mlen);
        CHECK_MEM(g_buf, g_hex, (size_t)mlen);
        CHECK_EQ_INT(codec_open(g_hex, (size_t)mlen, key, &got, &body, &body_len), 0);
        CHECK_EQ_INT(body_len, blen);
        CHECK(body != NULL && memcmp(body, g_big, (size_t)blen) == 0);
        CHECK_EQ_INT(got.type, h.type);
        CHECK_EQ_INT(got.key_kind, h.key_kind);
        CHECK_EQ_INT(got.key_ref, h.key_ref);
        CHECK_MEM(got.device_id, h.device_id, 12);
        CHECK_MEM(got.nonce_d, h.nonce_d, 16);
        CHECK_MEM(got.nonce_a, h.nonce_a, 16);
        if (unit_failed) {
            fprintf(stderr, "  in envelope vector %s\n", jm_str(jm_path(v, "name")));
            break;
        }
    }
    jm_free(root);
}

UNIT_TEST(envelopes_bad_vectors_are_rejected_at_the_documented_step)
{
    struct jm_node *root = jm_load("tests/vectors/envelopes.json");
    const struct jm_node *bad = jm_path(root, "bad_messages");
    CHECK(jm_len(bad) >= 10);
    for (size_t i = 0; i < jm_len(bad); i++) {
        const struct jm_node *v = jm_at(bad, i);
        struct codec_header h;
        uint8_t key[32];
        uint8_t *body = NULL;
        size_t body_len = 0;
        long mlen = jm_hex_at(v, "message", g_hex, sizeof g_hex);
        CHECK(mlen > 0);
        CHECK_EQ_INT(jm_hex_at(v, "root", key, 32), 32);
        CHECK_EQ_INT(codec_open(g_hex, (size_t)mlen, key, &h, &body, &body_len),
                     envelope_error_code(jm_str(jm_path(v, "reason"))));
        if (unit_failed) {
            fprintf(stderr, "  in bad envelope vector %s\n", jm_str(jm_path(v, "name")));
            break;
        }
    }
    jm_free(root);
}

UNIT_TEST(error_message_vectors_pack_and_parse)
{
    struct jm_node *root = jm_load("tests/vectors/envelopes.json");
    const struct jm_node *errs = jm_path(root, "errors");
    CHECK(jm_len(errs) >= 3);
    for (size_t i = 0; i < jm_len(errs); i++) {
        const struct jm_node *v = jm_at(errs, i);
        struct codec_header h, got;
        uint8_t msg[CODEC_ERROR_LEN];
        long mlen = jm_hex_at(v, "message", g_hex, sizeof g_hex);
        CHECK_EQ_INT(mlen, CODEC_ERROR_LEN);
        header_from_vector(v, &h); /* no key_kind in the vector: NONE */
        codec_header_pack(&h, msg);
        msg[52] = (uint8_t)jm_int(jm_path(v, "code"), -1);
        CHECK_MEM(msg, g_hex, CODEC_ERROR_LEN);
        CHECK_EQ_INT(codec_header_unpack(g_hex, (size_t)mlen, &got), 0);
        CHECK_EQ_INT(got.type, MSG_ERROR);
        CHECK_EQ_INT(got.key_kind, CODEC_KEY_NONE);
        CHECK_MEM(got.nonce_d, h.nonce_d, 16);
    }
    jm_free(root);
}
