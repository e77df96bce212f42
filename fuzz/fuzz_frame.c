/*
 * fuzz_frame: the link frame decoder (codec_frame_rx_byte) and encoders of protocol §1.
 *
 * Every input is used twice:
 *   1. as a byte stream fed to codec_frame_rx_byte. Never a crash; each byte's verdict equals that
 *      of a reference decoder written here from protocol §1 (same frames, same error codes, same
 *      resynchronisation); every frame returned re-encodes (codec_frame_encode and the streaming
 *      codec_frame_send agree byte for byte) to a frame that a fresh decoder returns unchanged.
 *   2. as channel (first byte) ‖ payload for the encoders: unknown channel -> CODEC_EBADCHAN,
 *      payload over 4096 -> CODEC_EBADLEN, else a round trip; an output buffer one byte short gives
 *      CODEC_ENOSPACE without writing past it (the buffer is heap-allocated to its exact size).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "otakey/codec.h"
#include "otakey/errors.h"

/* ---- reference decoder (protocol §1, written independently of codec_frame.c) ---- */

enum { REF_NONE = 0, REF_FRAME = 1 };

struct ref_rx {
    uint8_t buf[CODEC_MAX_ENCODED];
    size_t len;
    int dropping;
    uint8_t content[CODEC_MAX_ENCODED];
    size_t content_len;
};

static int ref_cobs(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len) FUZZ_NOCOV;
static int ref_byte(struct ref_rx *r, uint8_t b) FUZZ_NOCOV;

static int ref_cobs(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len)
{
    size_t i = 0, w = 0;
    while (i < n) {
        size_t code = in[i];
        size_t end = i + code;
        if (code == 0 || end > n) {
            return CODEC_EBADCOBS;
        }
        for (size_t j = i + 1; j < end; j++) {
            out[w++] = in[j];
        }
        i = end;
        if (code != 0xFF && i < n) {
            out[w++] = 0;
        }
    }
    *out_len = w;
    return 0;
}

static int ref_byte(struct ref_rx *r, uint8_t b)
{
    size_t n;
    int rc;
    uint8_t ch;
    if (b != 0) {
        if (r->dropping) {
            return REF_NONE;
        }
        if (r->len >= CODEC_MAX_ENCODED) {
            r->dropping = 1;
            r->len = 0;
            return CODEC_EBADLEN; /* frame_too_long, reported once */
        }
        r->buf[r->len++] = b;
        return REF_NONE;
    }
    if (r->dropping) {
        r->dropping = 0;
        r->len = 0;
        return REF_NONE;
    }
    n = r->len;
    r->len = 0;
    if (n == 0) {
        return REF_NONE;
    }
    rc = ref_cobs(r->buf, n, r->content, &r->content_len);
    if (rc != 0) {
        return rc;
    }
    if (r->content_len < 5 || r->content_len > CODEC_MAX_CONTENT) {
        return CODEC_EBADLEN;
    }
    if (codec_crc32(r->content, r->content_len - 4) != fuzz_le32(r->content + r->content_len - 4)) {
        return CODEC_EBADCRC;
    }
    ch = r->content[0];
    if (ch != CODEC_CHAN_AGENT && ch != CODEC_CHAN_CLOUD && ch != CODEC_CHAN_CONSOLE) {
        return CODEC_EBADCHAN;
    }
    return REF_FRAME;
}

/* ---- encoder cross-checks ---- */

static uint8_t sink_buf[CODEC_MAX_ENCODED + 16];
static size_t sink_len;
static size_t sink_calls;

static int sink(const uint8_t *buf, size_t len)
{
    FUZZ_CHECK(len <= 255); /* the streaming encoder emits at most one COBS block at a time */
    FUZZ_CHECK(len <= sizeof sink_buf - sink_len);
    memcpy(sink_buf + sink_len, buf, len);
    sink_len += len;
    sink_calls++;
    return 0;
}

/* Encode (channel, payload) both ways, check the framing invariants, decode again. The encoding is
 * left in enc[0..*enc_len_out) for check_split_put. */
static uint8_t enc[CODEC_MAX_ENCODED + 1];

static void check_round_trip(uint8_t channel, const uint8_t *payload, size_t len, size_t *enc_len_out)
{
    static struct codec_frame_rx rx;
    size_t enc_len = 0;
    int rc, frames = 0;

    rc = codec_frame_encode(channel, payload, len, enc, sizeof enc, &enc_len);
    FUZZ_CHECK(rc == 0);
    /* protocol §1: at most 4118 encoded bytes plus the delimiter, one 0x00 and only at the end */
    FUZZ_CHECK(enc_len >= 7 && enc_len <= CODEC_MAX_ENCODED + 1);
    FUZZ_CHECK(enc_len <= 1 + len + 4 + (len + 5 + 253) / 254 + 1);
    FUZZ_CHECK(enc[enc_len - 1] == 0);
    FUZZ_CHECK(memchr(enc, 0, enc_len - 1) == NULL);

    sink_len = 0;
    sink_calls = 0;
    rc = codec_frame_send(channel, payload, len, sink);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(sink_len == enc_len && memcmp(sink_buf, enc, enc_len) == 0);

    codec_frame_rx_init(&rx);
    for (size_t i = 0; i < enc_len; i++) {
        struct codec_frame f;
        rc = codec_frame_rx_byte(&rx, enc[i], &f);
        if (i + 1 < enc_len) {
            FUZZ_CHECK(rc == 0);
        } else {
            FUZZ_CHECK(rc == 1);
            FUZZ_CHECK(f.channel == channel && f.payload_len == len);
            FUZZ_CHECK(len == 0 || memcmp(f.payload, payload, len) == 0);
            frames++;
        }
    }
    FUZZ_CHECK(frames == 1);

    /* One byte short: CODEC_ENOSPACE, and ASan sees any write past the exact-size heap buffer. */
    {
        uint8_t *tight = malloc(enc_len - 1);
        size_t tight_len = 12345;
        FUZZ_CHECK(tight != NULL);
        rc = codec_frame_encode(channel, payload, len, tight, enc_len - 1, &tight_len);
        FUZZ_CHECK(rc == CODEC_ENOSPACE && tight_len == 12345);
        free(tight);
    }
    if (enc_len_out != NULL) {
        *enc_len_out = enc_len;
    }
}

/* The streaming encoder fed in two pieces gives the same bytes as codec_frame_encode in one
 * (enc[0..enc_len), just checked by check_round_trip). */
static void check_split_put(uint8_t channel, const uint8_t *payload, size_t len, size_t split, size_t enc_len)
{
    struct codec_frame_tx tx;
    sink_len = 0;
    FUZZ_CHECK(codec_frame_tx_begin(&tx, channel, sink) == 0);
    FUZZ_CHECK(codec_frame_tx_put(&tx, payload, split) == 0);
    FUZZ_CHECK(codec_frame_tx_put(&tx, payload + split, len - split) == 0);
    FUZZ_CHECK(codec_frame_tx_end(&tx) == 0);
    FUZZ_CHECK(sink_len == enc_len && memcmp(sink_buf, enc, enc_len) == 0);
}

static int known_channel(uint8_t ch)
{
    return ch == CODEC_CHAN_AGENT || ch == CODEC_CHAN_CLOUD || ch == CODEC_CHAN_CONSOLE;
}

/* 1. The stream, byte by byte against the reference. The loop itself carries no coverage callbacks
 * (its checks compare with the reference, they are not branches worth steering by); the decoder
 * and the round trips it calls are instrumented as usual. */
static void check_stream(const uint8_t *data, size_t size) FUZZ_NOCOV;

static void check_stream(const uint8_t *data, size_t size)
{
    static struct codec_frame_rx rx;
    static struct ref_rx ref;
    static uint8_t payload[CODEC_MAX_PAYLOAD];

    codec_frame_rx_init(&rx);
    memset(&ref, 0, sizeof ref);
    for (size_t i = 0; i < size; i++) {
        struct codec_frame f;
        int rc = codec_frame_rx_byte(&rx, data[i], &f);
        int want = ref_byte(&ref, data[i]);
        FUZZ_CHECK(rc == want);
        FUZZ_CHECK(rx.len <= CODEC_MAX_ENCODED);
        if (rc == 1) {
            FUZZ_CHECK(known_channel(f.channel));
            FUZZ_CHECK(f.payload_len <= CODEC_MAX_PAYLOAD);
            FUZZ_CHECK(f.payload >= rx.buf && f.payload + f.payload_len <= rx.buf + sizeof rx.buf);
            FUZZ_CHECK(f.channel == ref.content[0] && f.payload_len == ref.content_len - 5);
            FUZZ_CHECK(f.payload_len == 0 || memcmp(f.payload, ref.content + 1, f.payload_len) == 0);
            /* The payload lives in the decoder's buffer: copy it before encoding anything. */
            memcpy(payload, f.payload, f.payload_len);
            check_round_trip(f.channel, payload, f.payload_len, NULL);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_stream(data, size);

    /* 2. the encoders on channel ‖ payload */
    if (size >= 1) {
        uint8_t channel = data[0];
        const uint8_t *p = data + 1;
        size_t len = size - 1;
        uint8_t out[16];
        size_t out_len = 0;
        if (!known_channel(channel)) {
            FUZZ_CHECK(codec_frame_encode(channel, p, len, out, sizeof out, &out_len) == CODEC_EBADCHAN);
        } else if (len > CODEC_MAX_PAYLOAD) {
            uint8_t *big = malloc(CODEC_MAX_ENCODED + 1);
            FUZZ_CHECK(big != NULL);
            FUZZ_CHECK(codec_frame_encode(channel, p, len, big, CODEC_MAX_ENCODED + 1, &out_len) == CODEC_EBADLEN);
            free(big);
        } else {
            size_t enc_len = 0;
            check_round_trip(channel, p, len, &enc_len);
            check_split_put(channel, p, len, len == 0 ? 0 : (size_t)p[0] * 17u % (len + 1), enc_len);
        }
    }
    return 0;
}
