/**
 * @file codec.h
 * @brief Link frames (COBS + CRC-32), the message header and encrypt-then-MAC envelope, and the
 *        message bodies of docs/protocol.md. Pure: no I/O except through the callback given to
 *        codec_frame_send, no allocation.
 */
#ifndef OTAKEY_CODEC_H
#define OTAKEY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define CODEC_MAX_PAYLOAD 4096u
#define CODEC_MAX_CONTENT (1u + CODEC_MAX_PAYLOAD + 4u)
#define CODEC_MAX_ENCODED 4118u

#define CODEC_CHAN_AGENT 0x01u
#define CODEC_CHAN_CLOUD 0x02u
#define CODEC_CHAN_CONSOLE 0x03u

#define CODEC_VERSION 0x01u
#define CODEC_HEADER_LEN 52u
#define CODEC_IV_LEN 16u
#define CODEC_TAG_LEN 32u
#define CODEC_NONCE_LEN 16u
#define CODEC_ID_LEN 12u
#define CODEC_MAX_BODY 3840u
#define CODEC_MIN_MESSAGE 116u
#define CODEC_MAX_MESSAGE 3956u
#define CODEC_ERROR_LEN 53u

#define CODEC_KEY_PK 0x00u
#define CODEC_KEY_AK 0x01u
#define CODEC_KEY_NONE 0xFFu

enum codec_msg_type {
    MSG_PROV_HELLO = 0x01,
    MSG_PROV_OFFER = 0x02,
    MSG_PROV_CONFIRM = 0x03,
    MSG_ACK = 0x04,
    MSG_AK_ROTATE_HELLO = 0x10,
    MSG_AK_ROTATE_OFFER = 0x11,
    MSG_AK_ROTATE_CONFIRM = 0x12,
    MSG_CLOUD_REQUEST = 0x20,
    MSG_CLOUD_UPDATE = 0x21,
    MSG_CLOUD_CONFIRM = 0x22,
    MSG_CHECKIN = 0x30,
    MSG_CHECKIN_REPLY = 0x31,
    MSG_ERROR = 0x7F,
};

enum codec_error_code { ERR_REJECTED = 0x01, ERR_REFUSED = 0x02, ERR_RETRY = 0x03 };
enum codec_action { ACTION_NONE = 0, ACTION_ROTATE_AK = 1, ACTION_UPDATE_CLOUD = 2, ACTION_REVOKED = 3 };

/** Incremental frame decoder state (protocol §1). */
struct codec_frame_rx {
    uint8_t buf[CODEC_MAX_ENCODED];
    size_t len;
    uint8_t overflow;    /**< dropping bytes until the next delimiter */
};

/** A decoded frame; payload points into the decoder's buffer, valid until the next byte is fed. */
struct codec_frame {
    uint8_t channel;
    const uint8_t *payload;
    size_t payload_len;
};

/** @brief CRC-32/ISO-HDLC (zlib.crc32). */
uint32_t codec_crc32(const uint8_t *data, size_t len);

void codec_frame_rx_init(struct codec_frame_rx *rx);
/**
 * @brief Feed one byte. @return 1 and *out set when a good frame ended, 0 when more bytes are
 *        needed (or an empty frame was skipped), or a negative CODEC_E* for a dropped frame.
 */
int codec_frame_rx_byte(struct codec_frame_rx *rx, uint8_t b, struct codec_frame *out);

/** @brief Byte sink used by codec_frame_send (e.g. port_link_write). @return 0 or negative */
typedef int (*codec_sink_fn)(const uint8_t *buf, size_t len);
/** @brief Encode channel ‖ payload ‖ crc as one COBS frame with its delimiter, streamed to sink. */
int codec_frame_send(uint8_t channel, const uint8_t *payload, size_t len, codec_sink_fn sink);
/** @brief Encode a frame into out (cap ≥ CODEC_MAX_ENCODED + 1 suffices). @return 0 or CODEC_E* */
int codec_frame_encode(uint8_t channel, const uint8_t *payload, size_t len, uint8_t *out, size_t cap,
                       size_t *out_len);

/**
 * Streaming frame encoder: the payload is given in pieces and leaves through the sink one COBS
 * block (≤ 255 bytes) at a time, so a sender needs no frame-sized buffer (the device streams a
 * ~4 KB SESSION_OPEN this way). Fields are private to codec_frame.c.
 */
struct codec_frame_tx {
    codec_sink_fn sink;  /**< NULL: write into out/cap instead (codec_frame_encode) */
    uint8_t *out;
    size_t cap;
    size_t out_len;
    uint32_t crc;
    size_t payload_len;  /**< payload bytes put so far */
    int err;             /**< first error, sticky */
    uint8_t last_full;   /**< the last block emitted was a full 0xFF block */
    uint8_t n;           /**< data bytes waiting in block[1..n] */
    uint8_t block[255];  /**< code byte + up to 254 data bytes */
};

/** @brief Start a frame on channel (CODEC_CHAN_*). @return 0 or CODEC_EBADCHAN */
int codec_frame_tx_begin(struct codec_frame_tx *tx, uint8_t channel, codec_sink_fn sink);
/** @brief Append payload bytes. @return 0, CODEC_EBADLEN past CODEC_MAX_PAYLOAD, or the sink's error */
int codec_frame_tx_put(struct codec_frame_tx *tx, const uint8_t *data, size_t len);
/** @brief Append the CRC, flush, send the delimiter. @return 0 or the first error of the frame */
int codec_frame_tx_end(struct codec_frame_tx *tx);

/** The 52-byte header (protocol §2.1). */
struct codec_header {
    uint8_t version;
    uint8_t type;
    uint8_t key_kind;
    uint32_t key_ref;
    uint8_t device_id[CODEC_ID_LEN];
    uint8_t nonce_d[CODEC_NONCE_LEN];
    uint8_t nonce_a[CODEC_NONCE_LEN];
};

void codec_header_pack(const struct codec_header *h, uint8_t out[CODEC_HEADER_LEN]);
/** @brief Parse and check version/reserved/type/key kind (§2.2 step 2). @return 0 or CODEC_E* */
int codec_header_unpack(const uint8_t *buf, size_t len, struct codec_header *h);

/** @brief enc_key/mac_key of §2.2 from a 32-byte root key. */
void codec_derive_keys(const uint8_t root[32], uint8_t enc_key[16], uint8_t mac_key[32]);

/**
 * @brief Seal body under root: out = header ‖ iv ‖ AES-CBC(PKCS#7(body)) ‖ tag.
 * @return 0 and *out_len, or CODEC_EBADLEN / CODEC_ENOSPACE
 */
int codec_seal(const struct codec_header *h, const uint8_t root[32], const uint8_t iv[16], const uint8_t *body,
               size_t body_len, uint8_t *out, size_t cap, size_t *out_len);

/**
 * @brief Open a message in place (§2.2 steps 1, 2, 4, 5, 6; the caller picks the key from the header
 *        with codec_header_unpack first, and checks nonces after). On success *body points into msg.
 *        On any failure msg may have been decrypted in place but the caller must treat it as garbage.
 * @return 0 or CODEC_EBADLEN / CODEC_EBADVER / CODEC_EBADTYPE / CODEC_EBADMAC
 */
int codec_open(uint8_t *msg, size_t len, const uint8_t root[32], struct codec_header *h, uint8_t **body,
               size_t *body_len);

/** @brief Required body length for a type, or -1 for variable (CLOUD_UPDATE), or CODEC_EBADTYPE. */
int codec_body_len(uint8_t type);

/** @brief Key fingerprint (§2.3): HMAC-SHA256(key, "OTA-Key v1 fingerprint")[0:16]. */
void codec_fingerprint(const uint8_t *key, size_t key_len, uint8_t out[16]);

/** @brief AK derivation (§2.3) from the X25519 shared secret. */
void codec_derive_ak(const uint8_t shared[32], const uint8_t nonce_d[16], const uint8_t nonce_a[16],
                     const uint8_t device_id[12], const uint8_t *po_name, size_t po_name_len, uint8_t ak[32]);

#endif /* OTAKEY_CODEC_H */
