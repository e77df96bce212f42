/*
 * Message header and encrypt-then-MAC envelope (docs/protocol.md §2), body lengths (§3) and the
 * derived values of §2.3. The receive order of §2.2 is kept exactly: the tag is compared in
 * constant time before a single ciphertext byte is decrypted, so padding is only ever looked at
 * under a valid MAC and no failure can be told apart from another by timing of the MAC check.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/errors.h"
#include "le.h"

static const uint8_t label_enc[] = "OTA-Key v1 enc";
static const uint8_t label_mac[] = "OTA-Key v1 mac";
static const uint8_t label_ak[] = "OTA-Key v1 AK";
static const uint8_t label_fp[] = "OTA-Key v1 fingerprint";
#define LABEL_LEN(l) (sizeof(l) - 1u) /* labels go on the wire without their NUL */

void codec_header_pack(const struct codec_header *h, uint8_t out[CODEC_HEADER_LEN])
{
    out[0] = h->version;
    out[1] = h->type;
    out[2] = h->key_kind;
    out[3] = 0;
    put_le32(&out[4], h->key_ref);
    memcpy(&out[8], h->device_id, CODEC_ID_LEN);
    memcpy(&out[20], h->nonce_d, CODEC_NONCE_LEN);
    memcpy(&out[36], h->nonce_a, CODEC_NONCE_LEN);
}

/* key_kind allowed for each type (§3): which root protects it, or none for ERROR. */
static int key_kind_allowed(uint8_t type, uint8_t key_kind)
{
    switch (type) {
    case MSG_PROV_HELLO:
    case MSG_PROV_OFFER:
        return key_kind == CODEC_KEY_PK;
    case MSG_PROV_CONFIRM:
    case MSG_ACK:
    case MSG_AK_ROTATE_HELLO:
    case MSG_AK_ROTATE_OFFER:
    case MSG_AK_ROTATE_CONFIRM:
    case MSG_CLOUD_REQUEST:
    case MSG_CLOUD_UPDATE:
    case MSG_CLOUD_CONFIRM:
    case MSG_CHECKIN:
    case MSG_CHECKIN_REPLY:
        return key_kind == CODEC_KEY_AK;
    case MSG_ERROR:
        return key_kind == CODEC_KEY_NONE;
    default:
        return -1; /* unknown type */
    }
}

int codec_header_unpack(const uint8_t *buf, size_t len, struct codec_header *h)
{
    int allowed;
    if (buf == NULL || len < CODEC_HEADER_LEN) {
        return CODEC_EBADLEN;
    }
    if (buf[0] != CODEC_VERSION || buf[3] != 0) {
        return CODEC_EBADVER;
    }
    allowed = key_kind_allowed(buf[1], buf[2]);
    if (allowed != 1) {
        return CODEC_EBADTYPE;
    }
    h->version = buf[0];
    h->type = buf[1];
    h->key_kind = buf[2];
    h->key_ref = get_le32(&buf[4]);
    memcpy(h->device_id, &buf[8], CODEC_ID_LEN);
    memcpy(h->nonce_d, &buf[20], CODEC_NONCE_LEN);
    memcpy(h->nonce_a, &buf[36], CODEC_NONCE_LEN);
    return 0;
}

void codec_derive_keys(const uint8_t root[32], uint8_t enc_key[16], uint8_t mac_key[32])
{
    /* Lengths are fixed and far below 255*32: HKDF cannot fail here. */
    (void)crypto_hkdf_sha256(NULL, 0, root, 32, label_enc, LABEL_LEN(label_enc), enc_key, 16);
    (void)crypto_hkdf_sha256(NULL, 0, root, 32, label_mac, LABEL_LEN(label_mac), mac_key, 32);
}

int codec_body_len(uint8_t type)
{
    switch (type) {
    case MSG_PROV_HELLO:
    case MSG_AK_ROTATE_HELLO:
        return 32;
    case MSG_PROV_OFFER:
    case MSG_AK_ROTATE_OFFER:
        return 36;
    case MSG_PROV_CONFIRM:
    case MSG_AK_ROTATE_CONFIRM:
    case MSG_ACK:
        return 0;
    case MSG_CLOUD_REQUEST:
        return 4;
    case MSG_CLOUD_CONFIRM:
        return 5;
    case MSG_CHECKIN:
        return 110;
    case MSG_CHECKIN_REPLY:
        return 4;
    case MSG_CLOUD_UPDATE:
        return -1;
    default:
        return CODEC_EBADTYPE; /* ERROR is not an envelope and has no body */
    }
}

/* Body length check of §2.2 step 6. CLOUD_UPDATE is variable: its fields are checked by
 * ks_cloud_decode; here only the §3.5 bounds (smallest: four empty strings; largest: 3597). */
static int body_len_ok(uint8_t type, size_t len)
{
    int want = codec_body_len(type);
    if (want == -1) {
        return len >= 4u + 1u + 4u * 2u && len <= 4u + 1u + 3u * 130u + 3202u;
    }
    return want >= 0 && len == (size_t)want;
}

int codec_seal(const struct codec_header *h, const uint8_t root[32], const uint8_t iv[16], const uint8_t *body,
               size_t body_len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t enc_key[16], mac_key[32];
    size_t padded;
    const size_t ct_off = CODEC_HEADER_LEN + CODEC_IV_LEN;
    int allowed = key_kind_allowed(h->type, h->key_kind);

    if (body_len > CODEC_MAX_BODY || (body == NULL && body_len != 0)) {
        return CODEC_EBADLEN;
    }
    if (allowed != 1 || h->type == MSG_ERROR) {
        return CODEC_EBADTYPE;
    }
    /* padded body is body_len rounded up to the next block (always at least one pad byte) */
    padded = (body_len / CRYPTO_AES_BLOCK + 1u) * CRYPTO_AES_BLOCK;
    if (cap < ct_off + padded + CODEC_TAG_LEN) {
        return CODEC_ENOSPACE;
    }
    codec_header_pack(h, out);
    memcpy(&out[CODEC_HEADER_LEN], iv, CODEC_IV_LEN);
    if (body_len != 0) {
        memmove(&out[ct_off], body, body_len);
    }
    if (crypto_pkcs7_pad(&out[ct_off], body_len, cap - ct_off - CODEC_TAG_LEN) != padded) {
        return CODEC_ENOSPACE;
    }
    codec_derive_keys(root, enc_key, mac_key);
    (void)crypto_aes128_cbc_encrypt(enc_key, iv, &out[ct_off], padded, &out[ct_off]);
    crypto_hmac_sha256(mac_key, sizeof mac_key, out, ct_off + padded, &out[ct_off + padded]);
    crypto_wipe(enc_key, sizeof enc_key);
    crypto_wipe(mac_key, sizeof mac_key);
    *out_len = ct_off + padded + CODEC_TAG_LEN;
    return 0;
}

int codec_open(uint8_t *msg, size_t len, const uint8_t root[32], struct codec_header *h, uint8_t **body,
               size_t *body_len)
{
    uint8_t enc_key[16], mac_key[32], tag[32];
    const size_t ct_off = CODEC_HEADER_LEN + CODEC_IV_LEN;
    size_t ct_len, plain_len = 0;
    int rc, mac_ok, pad_rc;

    /* step 1: length */
    if (msg == NULL || len < CODEC_MIN_MESSAGE || len > CODEC_MAX_MESSAGE ||
        (len - (CODEC_HEADER_LEN + CODEC_IV_LEN + CODEC_TAG_LEN)) % CRYPTO_AES_BLOCK != 0) {
        return CODEC_EBADLEN;
    }
    /* step 2: header (ERROR is never an envelope) */
    rc = codec_header_unpack(msg, len, h);
    if (rc != 0) {
        return rc;
    }
    if (h->type == MSG_ERROR) {
        return CODEC_EBADTYPE;
    }
    /* step 4: tag, all 32 bytes compared in constant time */
    ct_len = len - ct_off - CODEC_TAG_LEN;
    codec_derive_keys(root, enc_key, mac_key);
    crypto_hmac_sha256(mac_key, sizeof mac_key, msg, ct_off + ct_len, tag);
    mac_ok = crypto_ct_equal(tag, &msg[ct_off + ct_len], CODEC_TAG_LEN);
    crypto_wipe(mac_key, sizeof mac_key);
    crypto_wipe(tag, sizeof tag);
    if (!mac_ok) {
        crypto_wipe(enc_key, sizeof enc_key);
        return CODEC_EBADMAC;
    }
    /* step 5: decrypt in place, then padding (only reachable under a valid MAC) */
    (void)crypto_aes128_cbc_decrypt(enc_key, &msg[CODEC_HEADER_LEN], &msg[ct_off], ct_len, &msg[ct_off]);
    crypto_wipe(enc_key, sizeof enc_key);
    pad_rc = crypto_pkcs7_unpad(&msg[ct_off], ct_len, &plain_len);
    if (pad_rc != 0) {
        crypto_wipe(&msg[ct_off], ct_len);
        return CODEC_EBADMAC; /* uniform: a key holder's bad padding is no different to a bad tag */
    }
    /* step 6: body length for the type */
    if (!body_len_ok(h->type, plain_len)) {
        crypto_wipe(&msg[ct_off], ct_len);
        return CODEC_EBADLEN;
    }
    *body = &msg[ct_off];
    *body_len = plain_len;
    return 0;
}

void codec_fingerprint(const uint8_t *key, size_t key_len, uint8_t out[16])
{
    uint8_t mac[32];
    crypto_hmac_sha256(key, key_len, label_fp, LABEL_LEN(label_fp), mac);
    memcpy(out, mac, 16);
    crypto_wipe(mac, sizeof mac);
}

void codec_derive_ak(const uint8_t shared[32], const uint8_t nonce_d[16], const uint8_t nonce_a[16],
                     const uint8_t device_id[12], const uint8_t *po_name, size_t po_name_len, uint8_t ak[32])
{
    uint8_t salt[32];
    uint8_t info[LABEL_LEN(label_ak) + CODEC_ID_LEN + 32u];
    size_t info_len = LABEL_LEN(label_ak) + CODEC_ID_LEN;

    if (po_name_len > 32u) {
        po_name_len = 32u; /* po_name is 1..32 bytes by the record format; never read past that */
    }
    memcpy(salt, nonce_d, 16);
    memcpy(&salt[16], nonce_a, 16);
    memcpy(info, label_ak, LABEL_LEN(label_ak));
    memcpy(&info[LABEL_LEN(label_ak)], device_id, CODEC_ID_LEN);
    if (po_name_len != 0) {
        memcpy(&info[info_len], po_name, po_name_len);
    }
    info_len += po_name_len;
    (void)crypto_hkdf_sha256(salt, sizeof salt, shared, 32, info, info_len, ak, 32);
}
