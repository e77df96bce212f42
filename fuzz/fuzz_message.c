/*
 * fuzz_message: the message header and the encrypt-then-MAC envelope (protocol §2) under a fixed
 * root key. The first byte picks a mode (byte % 3); the rest is that mode's input:
 *
 *   0 raw:        codec_header_unpack and codec_open on arbitrary bytes. Never a crash, and every
 *                 verdict equals a reference of §2.2 written here (length, header, tag, padding,
 *                 body length, in that order).
 *   1 seal:       type (1) ‖ key_kind (1) ‖ key_ref (4) ‖ device_id (12) ‖ nonce_d (16) ‖
 *                 nonce_a (16) ‖ iv (16) ‖ flip_pos (2) ‖ flip_mask (1) ‖ body. codec_seal into an
 *                 exact-size buffer (and one byte short: CODEC_ENOSPACE), then codec_open gives the
 *                 same header and body back when §3 allows that body length for the type; flipping
 *                 any one byte of the sealed message (flip_mask != 0) makes codec_open fail.
 *   2 plaintext:  header (52) ‖ iv (16) ‖ plaintext blocks. The harness encrypts and tags them
 *                 itself, so the padding and body-length checks of §2.2 steps 5-6 run under a
 *                 valid MAC on plaintext the fuzzer controls.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "otakey/codec.h"
#include "otakey/crypto.h"
#include "otakey/errors.h"

static const uint8_t ROOT[32] = {0x03, 0x3c, 0xd0, 0xe7, 0xeb, 0x9b, 0xcb, 0xae, 0x1f, 0x7b, 0x24,
                                 0x4b, 0xfd, 0x71, 0x6b, 0x95, 0x51, 0x35, 0x10, 0xbe, 0x05, 0x9b,
                                 0x79, 0x6d, 0xe1, 0x5d, 0xb7, 0xe0, 0xe8, 0x55, 0xbd, 0x2c};

#define MODE_PREFIX (1u + 1u + 4u + 12u + 16u + 16u + 16u + 2u + 1u)

/* ---- reference of §2.1-§2.2 and §3 (from docs/protocol.md) ---- */

/* Key kind a type may carry: 0 PK, 1 AK, 0xFF none (ERROR); -1 unknown type. */
static int ref_kind_for(uint8_t type)
{
    switch (type) {
    case 0x01:
    case 0x02:
        return 0x00;
    case 0x03:
    case 0x04:
    case 0x10:
    case 0x11:
    case 0x12:
    case 0x20:
    case 0x21:
    case 0x22:
    case 0x30:
    case 0x31:
        return 0x01;
    case 0x7F:
        return 0xFF;
    default:
        return -1;
    }
}

static int ref_header(const uint8_t *buf, size_t len)
{
    if (len < 52) {
        return CODEC_EBADLEN;
    }
    if (buf[0] != 1 || buf[3] != 0) {
        return CODEC_EBADVER;
    }
    if (ref_kind_for(buf[1]) < 0 || ref_kind_for(buf[1]) != buf[2]) {
        return CODEC_EBADTYPE;
    }
    return 0;
}

static int ref_body_len_ok(uint8_t type, size_t n)
{
    switch (type) {
    case 0x01:
    case 0x10:
        return n == 32;
    case 0x02:
    case 0x11:
        return n == 36;
    case 0x03:
    case 0x04:
    case 0x12:
        return n == 0;
    case 0x20:
    case 0x31:
        return n == 4;
    case 0x22:
        return n == 5;
    case 0x30:
        return n == 110;
    case 0x21: /* §3.5: four empty fields (13) .. every field at its maximum (3597) */
        return n >= 13 && n <= 3597;
    default:
        return 0;
    }
}

/* enc_key/mac_key of ROOT, derived once (the core derives them itself on every open). */
static void derived_keys(uint8_t enc_key[16], uint8_t mac_key[32])
{
    static uint8_t enc[16], mac[32];
    static int done;
    if (!done) {
        codec_derive_keys(ROOT, enc, mac);
        done = 1;
    }
    memcpy(enc_key, enc, sizeof enc);
    memcpy(mac_key, mac, sizeof mac);
}

/* How ref_open learns whether the tag is right: by computing it, or from what the harness did. */
enum tag_is { TAG_COMPUTE = 0, TAG_MADE_HERE = 1, TAG_CHANGED_AFTER = 2 };

/*
 * §2.2 steps 1, 2, 4, 5, 6. On 0, (*plain)[0..*body_len) is the body.
 *
 * The reference does not redo crypto whose outcome the harness already knows: with TAG_MADE_HERE
 * the harness computed the tag over these very bytes (mode 2), with TAG_CHANGED_AFTER a byte of a
 * sealed message was changed so no tag can match; and when known_plain is given (the padded
 * plaintext the harness had encrypted) it is the step 5 result instead of a second decryption. The
 * core's own HMAC and AES-CBC are held to their known answers in tests/c; redoing both here took a
 * third of fuzz_message's time.
 */
static int ref_open(const uint8_t *msg, size_t len, enum tag_is tag_is, const uint8_t *known_plain,
                    uint8_t *scratch, const uint8_t **plain, size_t *body_len)
{
    uint8_t enc_key[16], mac_key[32], tag[32];
    const uint8_t *pt;
    size_t ct_len;
    int rc;
    uint8_t pad;

    if (len < 116 || len > 3956 || (len - 100) % 16 != 0) {
        return CODEC_EBADLEN;
    }
    rc = ref_header(msg, len);
    if (rc != 0) {
        return rc;
    }
    if (msg[1] == 0x7F) {
        return CODEC_EBADTYPE; /* ERROR is never an envelope */
    }
    derived_keys(enc_key, mac_key);
    if (tag_is == TAG_CHANGED_AFTER) {
        return CODEC_EBADMAC;
    }
    if (tag_is == TAG_COMPUTE) {
        crypto_hmac_sha256(mac_key, 32, msg, len - 32, tag);
        if (memcmp(tag, msg + len - 32, 32) != 0) {
            return CODEC_EBADMAC;
        }
    }
    ct_len = len - 100;
    if (known_plain != NULL) {
        pt = known_plain;
    } else {
        FUZZ_CHECK(crypto_aes128_cbc_decrypt(enc_key, msg + 52, msg + 68, ct_len, scratch) == 0);
        pt = scratch;
    }
    pad = pt[ct_len - 1];
    if (pad < 1 || pad > 16) {
        return CODEC_EBADMAC;
    }
    for (size_t i = ct_len - pad; i < ct_len; i++) {
        if (pt[i] != pad) {
            return CODEC_EBADMAC;
        }
    }
    if (!ref_body_len_ok(msg[1], ct_len - pad)) {
        return CODEC_EBADLEN;
    }
    *plain = pt;
    *body_len = ct_len - pad;
    return 0;
}

/* codec_open on a private copy, checked against ref_open; on success the body must also equal
 * want[0..want_len) when want is given. Returns codec_open's verdict. */
static int open_and_check(const uint8_t *msg, size_t len, const uint8_t *want_body, size_t want_len,
                          enum tag_is tag_is, const uint8_t *known_plain)
{
    uint8_t *copy = malloc(len ? len : 1);
    uint8_t *scratch = known_plain == NULL && tag_is != TAG_CHANGED_AFTER ? malloc(len ? len : 1) : NULL;
    const uint8_t *plain = NULL;
    struct codec_header h;
    uint8_t *body = NULL;
    size_t body_len = 0, ref_len = 0;
    int rc, want;

    FUZZ_CHECK(copy != NULL);
    if (len != 0) {
        memcpy(copy, msg, len);
    }
    want = ref_open(msg, len, tag_is, known_plain, scratch, &plain, &ref_len);
    rc = codec_open(copy, len, ROOT, &h, &body, &body_len);
    FUZZ_CHECK(rc == want);
    if (rc == 0) {
        FUZZ_CHECK(body == copy + 68 && body_len == ref_len);
        FUZZ_CHECK(body_len == 0 || memcmp(body, plain, body_len) == 0);
        if (want_body != NULL) {
            FUZZ_CHECK(body_len == want_len && (want_len == 0 || memcmp(body, want_body, want_len) == 0));
        }
        FUZZ_CHECK(h.version == msg[0] && h.type == msg[1] && h.key_kind == msg[2]);
        FUZZ_CHECK(h.key_ref == fuzz_le32(msg + 4));
        FUZZ_CHECK(memcmp(h.device_id, msg + 8, 12) == 0 && memcmp(h.nonce_d, msg + 20, 16) == 0 &&
                   memcmp(h.nonce_a, msg + 36, 16) == 0);
    }
    free(copy);
    free(scratch);
    return rc;
}

static void mode_raw(const uint8_t *p, size_t len)
{
    struct codec_header h;
    int rc = codec_header_unpack(p, len, &h);
    FUZZ_CHECK(rc == ref_header(p, len));
    if (rc == 0) {
        uint8_t packed[CODEC_HEADER_LEN];
        codec_header_pack(&h, packed);
        FUZZ_CHECK(memcmp(packed, p, CODEC_HEADER_LEN) == 0); /* reserved is 0 whenever unpack accepts */
    }
    (void)open_and_check(p, len, NULL, 0, TAG_COMPUTE, NULL);
}

static void mode_seal(struct fuzz_in *in)
{
    struct codec_header h;
    uint8_t iv[16], packed[52];
    uint16_t flip_pos;
    uint8_t flip_mask;
    const uint8_t *body;
    size_t body_len, need, out_len = 0;
    uint8_t *out;
    int rc, want;

    h.type = fuzz_u8(in);
    h.key_kind = fuzz_u8(in);
    h.version = CODEC_VERSION;
    h.key_ref = fuzz_u32(in);
    fuzz_bytes(in, h.device_id, sizeof h.device_id);
    fuzz_bytes(in, h.nonce_d, sizeof h.nonce_d);
    fuzz_bytes(in, h.nonce_a, sizeof h.nonce_a);
    fuzz_bytes(in, iv, sizeof iv);
    flip_pos = fuzz_u16(in);
    flip_mask = fuzz_u8(in);
    body_len = fuzz_take(in, &body, fuzz_in_left(in));

    need = 100 + (body_len / 16 + 1) * 16;
    if (body_len > CODEC_MAX_BODY) {
        want = CODEC_EBADLEN;
    } else if (ref_kind_for(h.type) < 0 || ref_kind_for(h.type) != h.key_kind || h.type == 0x7F) {
        want = CODEC_EBADTYPE;
    } else {
        want = 0;
    }
    out = malloc(need);
    FUZZ_CHECK(out != NULL);
    rc = codec_seal(&h, ROOT, iv, body_len ? body : NULL, body_len, out, need, &out_len);
    FUZZ_CHECK(rc == want);
    if (rc != 0) {
        free(out);
        return;
    }
    FUZZ_CHECK(out_len == need);
    codec_header_pack(&h, packed);
    FUZZ_CHECK(memcmp(out, packed, 52) == 0 && memcmp(out + 52, iv, 16) == 0);

    /* The ciphertext is the body with its PKCS#7 pad, CBC-encrypted under enc_key and iv: checked
     * by encrypting here (AES is a permutation, so this is the same check as decrypting the core's
     * ciphertext, and this AES encrypts ~4x faster than it decrypts). */
    {
        size_t padded = need - 100;
        uint8_t enc_key[16], mac_key[32];
        uint8_t *known = malloc(padded), *ct = malloc(padded);
        FUZZ_CHECK(known != NULL && ct != NULL);
        if (body_len != 0) {
            memcpy(known, body, body_len);
        }
        memset(known + body_len, (int)(padded - body_len), padded - body_len);
        derived_keys(enc_key, mac_key);
        FUZZ_CHECK(crypto_aes128_cbc_encrypt(enc_key, iv, known, padded, ct) == 0);
        FUZZ_CHECK(memcmp(ct, out + 68, padded) == 0);
        free(ct);

        /* Round trip: the body comes back exactly when §3 allows its length for the type. The
         * reference checks the core's tag; the plaintext it expects is the one just checked. */
        rc = open_and_check(out, out_len, body, body_len, TAG_COMPUTE, known);
        FUZZ_CHECK(rc == (ref_body_len_ok(h.type, body_len) ? 0 : CODEC_EBADLEN));
        free(known);
    }

    /* Any single changed byte is refused (the MAC covers header, iv and ciphertext). */
    if (flip_mask != 0) {
        out[flip_pos % out_len] ^= flip_mask;
        FUZZ_CHECK(open_and_check(out, out_len, NULL, 0, TAG_CHANGED_AFTER, NULL) != 0);
    }

    /* One byte short of room: CODEC_ENOSPACE, nothing written past the buffer. */
    {
        uint8_t *tight = malloc(need - 1);
        size_t tight_len = 777;
        FUZZ_CHECK(tight != NULL);
        FUZZ_CHECK(codec_seal(&h, ROOT, iv, body_len ? body : NULL, body_len, tight, need - 1, &tight_len) ==
                   CODEC_ENOSPACE);
        FUZZ_CHECK(tight_len == 777);
        free(tight);
    }
    free(out);
}

static void mode_plaintext(struct fuzz_in *in)
{
    uint8_t enc_key[16], mac_key[32];
    const uint8_t *plain;
    size_t plain_len, len;
    uint8_t *msg;

    if (fuzz_in_left(in) < 52 + 16 + 16) {
        return;
    }
    plain_len = fuzz_in_left(in) - 68;
    plain_len -= plain_len % 16;
    if (plain_len > 3856) {
        plain_len = 3856; /* longest ciphertext of §2.2: keeps step 1 passing */
    }
    len = 100 + plain_len;
    msg = malloc(len);
    FUZZ_CHECK(msg != NULL);
    fuzz_bytes(in, msg, 68);
    (void)fuzz_take(in, &plain, plain_len);
    derived_keys(enc_key, mac_key);
    FUZZ_CHECK(crypto_aes128_cbc_encrypt(enc_key, msg + 52, plain, plain_len, msg + 68) == 0);
    crypto_hmac_sha256(mac_key, 32, msg, 68 + plain_len, msg + 68 + plain_len);
    (void)open_and_check(msg, len, NULL, 0, TAG_MADE_HERE, plain);
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in;
    if (size == 0) {
        return 0;
    }
    fuzz_in_init(&in, data + 1, size - 1);
    switch (data[0] % 3) {
    case 0:
        mode_raw(data + 1, size - 1);
        break;
    case 1:
        if (size - 1 < MODE_PREFIX) {
            return 0;
        }
        mode_seal(&in);
        break;
    default:
        mode_plaintext(&in);
        break;
    }
    return 0;
}
