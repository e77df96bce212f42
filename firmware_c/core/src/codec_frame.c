/*
 * Link frames (docs/protocol.md §1): COBS(channel ‖ payload ‖ crc32 LE) ‖ 0x00.
 *
 * The decoder keeps the encoded bytes of one frame (at most CODEC_MAX_ENCODED) and decodes them in
 * place when the delimiter arrives. The encoder streams: it holds one COBS block (code byte plus up
 * to 254 data bytes), so no frame-sized transmit buffer exists anywhere.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "otakey/codec.h"
#include "otakey/errors.h"

/* CRC-32/ISO-HDLC, reflected poly 0xEDB88320, one nibble per step: a 64-byte table keeps flash use
 * small on the device and is still ~4x faster than bitwise. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

static uint32_t crc_update(uint32_t crc, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    return crc;
}

uint32_t codec_crc32(const uint8_t *data, size_t len)
{
    return crc_update(0xFFFFFFFFu, data, len) ^ 0xFFFFFFFFu;
}

void codec_frame_rx_init(struct codec_frame_rx *rx)
{
    rx->len = 0;
    rx->overflow = 0;
}

static int is_known_channel(uint8_t ch)
{
    return ch == CODEC_CHAN_AGENT || ch == CODEC_CHAN_CLOUD || ch == CODEC_CHAN_CONSOLE;
}

/* Decode buf[0..n) in place; the write index never passes the read index. */
static int cobs_decode_in_place(uint8_t *buf, size_t n, size_t *out_len)
{
    size_t r = 0, w = 0;
    while (r < n) {
        size_t code = buf[r++]; /* never 0: the delimiter is never stored */
        size_t run = code - 1u;
        if (run > n - r) {
            return CODEC_EBADCOBS;
        }
        memmove(&buf[w], &buf[r], run);
        w += run;
        r += run;
        /* A block shorter than 254 ends in a zero, except the last one (the phantom zero). */
        if (code < 0xFFu && r < n) {
            buf[w++] = 0;
        }
    }
    *out_len = w;
    return 0;
}

int codec_frame_rx_byte(struct codec_frame_rx *rx, uint8_t b, struct codec_frame *out)
{
    size_t n, content_len;
    uint32_t crc;
    int rc;

    if (b != 0) {
        if (rx->overflow) {
            return 0;
        }
        if (rx->len >= CODEC_MAX_ENCODED) {
            /* protocol §1: drop up to the next delimiter, report frame_too_long once */
            rx->overflow = 1;
            rx->len = 0;
            return CODEC_EBADLEN;
        }
        rx->buf[rx->len++] = b;
        return 0;
    }

    /* delimiter */
    if (rx->overflow) {
        rx->overflow = 0;
        rx->len = 0;
        return 0;
    }
    n = rx->len;
    rx->len = 0;
    if (n == 0) {
        return 0; /* empty frame: a flush or two delimiters in a row */
    }
    rc = cobs_decode_in_place(rx->buf, n, &content_len);
    if (rc != 0) {
        return rc;
    }
    if (content_len < 5u || content_len > CODEC_MAX_CONTENT) {
        return CODEC_EBADLEN;
    }
    crc = (uint32_t)rx->buf[content_len - 4u] | ((uint32_t)rx->buf[content_len - 3u] << 8) |
          ((uint32_t)rx->buf[content_len - 2u] << 16) | ((uint32_t)rx->buf[content_len - 1u] << 24);
    if (codec_crc32(rx->buf, content_len - 4u) != crc) {
        return CODEC_EBADCRC;
    }
    if (!is_known_channel(rx->buf[0])) {
        return CODEC_EBADCHAN;
    }
    out->channel = rx->buf[0];
    out->payload = &rx->buf[1];
    out->payload_len = content_len - 5u;
    return 1;
}

/* ---- encoder ---- */

static void tx_emit(struct codec_frame_tx *tx, const uint8_t *p, size_t len)
{
    if (tx->err != 0) {
        return;
    }
    if (tx->sink != NULL) {
        int rc = tx->sink(p, len);
        if (rc != 0) {
            tx->err = rc < 0 ? rc : CODEC_ENOSPACE;
        }
        return;
    }
    if (len > tx->cap - tx->out_len) {
        tx->err = CODEC_ENOSPACE;
        return;
    }
    memcpy(&tx->out[tx->out_len], p, len);
    tx->out_len += len;
}

static void tx_flush_block(struct codec_frame_tx *tx)
{
    tx->block[0] = (uint8_t)(tx->n + 1u);
    tx_emit(tx, tx->block, (size_t)tx->n + 1u);
    tx->last_full = (tx->n == 254u);
    tx->n = 0;
}

/* COBS, one content byte at a time (Cheshire & Baker; a final full block gets no extra code). */
static void tx_cobs_byte(struct codec_frame_tx *tx, uint8_t b)
{
    if (b == 0) {
        tx_flush_block(tx);
        tx->last_full = 0; /* this block stood for a real zero */
        return;
    }
    tx->block[1u + tx->n] = b;
    tx->n++;
    if (tx->n == 254u) {
        tx_flush_block(tx);
    }
}

int codec_frame_tx_begin(struct codec_frame_tx *tx, uint8_t channel, codec_sink_fn sink)
{
    tx->sink = sink;
    if (sink != NULL) {
        tx->out = NULL;
        tx->cap = 0;
    }
    tx->out_len = 0;
    tx->payload_len = 0;
    tx->err = 0;
    tx->last_full = 0;
    tx->n = 0;
    if (!is_known_channel(channel)) {
        tx->err = CODEC_EBADCHAN;
        return tx->err;
    }
    tx->crc = crc_update(0xFFFFFFFFu, &channel, 1);
    tx_cobs_byte(tx, channel);
    return tx->err;
}

int codec_frame_tx_put(struct codec_frame_tx *tx, const uint8_t *data, size_t len)
{
    if (tx->err != 0) {
        return tx->err;
    }
    if (len > CODEC_MAX_PAYLOAD - tx->payload_len) {
        tx->err = CODEC_EBADLEN;
        return tx->err;
    }
    tx->payload_len += len;
    tx->crc = crc_update(tx->crc, data, len);
    for (size_t i = 0; i < len && tx->err == 0; i++) {
        tx_cobs_byte(tx, data[i]);
    }
    return tx->err;
}

int codec_frame_tx_end(struct codec_frame_tx *tx)
{
    uint32_t crc = tx->crc ^ 0xFFFFFFFFu;
    static const uint8_t delim = 0;
    if (tx->err != 0) {
        return tx->err;
    }
    for (unsigned i = 0; i < 4u; i++) {
        tx_cobs_byte(tx, (uint8_t)(crc >> (8u * i)));
    }
    if (tx->n > 0 || !tx->last_full) {
        tx_flush_block(tx);
    }
    tx_emit(tx, &delim, 1);
    return tx->err;
}

int codec_frame_send(uint8_t channel, const uint8_t *payload, size_t len, codec_sink_fn sink)
{
    struct codec_frame_tx tx;
    if (sink == NULL) {
        return CODEC_ENOSPACE;
    }
    codec_frame_tx_begin(&tx, channel, sink);
    codec_frame_tx_put(&tx, payload, len);
    return codec_frame_tx_end(&tx);
}

int codec_frame_encode(uint8_t channel, const uint8_t *payload, size_t len, uint8_t *out, size_t cap,
                       size_t *out_len)
{
    struct codec_frame_tx tx;
    int rc;
    tx.out = out;
    tx.cap = cap;
    codec_frame_tx_begin(&tx, channel, NULL);
    codec_frame_tx_put(&tx, payload, len);
    rc = codec_frame_tx_end(&tx);
    if (rc == 0) {
        *out_len = tx.out_len;
    }
    return rc;
}
