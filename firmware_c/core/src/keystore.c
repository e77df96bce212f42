/*
 * The dual-area keystore of docs/flash-layout.md.
 *
 * Records are produced by one byte stream (ks_stream_record) that goes to a buffer (ks_encode),
 * to flash word by word (commit), or is compared against flash (read-back verify), and records are
 * parsed through one reader over a buffer (ks_decode) or a flash area (boot rule). So the device
 * needs no record-sized buffer, and tests of the buffer versions test the flash paths too.
 *
 * Flash content is untrusted (garbage, torn writes): every length read from it is checked before
 * it is used, and any port error becomes KS_EFLASH right at the call.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "otakey/crypto.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "port/port_flash.h"
#include "le.h"

/* Format constants (flash-layout §1), not facts of the chip. */
#define KS_COMMIT_LEN 4u   /* the commit word */
#define KS_HASH_ALIGN 4u   /* the hash starts at 0x10 + align4(payload_len) */
#define KS_HASH_LEN 32u
#define KS_TLV_HDR 3u
#define KS_PRODUCT_MIN (4u + 1u)
#define KS_AK_LEN (4u + KS_KEY_LEN)
#define KS_CLOUD_MIN (4u + 1u + 4u * 2u)
#define KS_CHUNK 64u       /* stack buffer for hashing and blank checks */

/* Active area as the last ks_load/ks_commit/ks_invalidate_active left it. */
static int ks_cur_active = -1;

static uint32_t align4(uint32_t n)
{
    return (n + KS_HASH_ALIGN - 1u) & ~(KS_HASH_ALIGN - 1u);
}

static uint32_t record_len(uint32_t payload_len)
{
    return KS_HEADER_LEN + align4(payload_len) + KS_HASH_LEN;
}

/* The format programs a 4-byte commit word on its own, so the program unit must divide it. */
static int align_supported(uint32_t a)
{
    return a == 1u || a == 2u || a == 4u;
}

/* ---------------------------------------------------------------- reader: buffer or flash area */

struct ks_src {
    const uint8_t *buf; /* NULL: the flash area */
    int area;
    uint32_t len;
};

static int src_read(const struct ks_src *s, uint32_t off, void *dst, uint32_t n)
{
    if (off > s->len || n > s->len - off) {
        return KS_EBADRECORD;
    }
    if (n == 0) {
        return 0;
    }
    if (s->buf != NULL) {
        memcpy(dst, s->buf + off, n);
        return 0;
    }
    if (port_flash_read(s->area, off, dst, n) != 0) {
        return KS_EFLASH;
    }
    return 0;
}

static void src_flash(struct ks_src *s, int area)
{
    s->buf = NULL;
    s->area = area;
    s->len = port_flash_area_size(area);
}

/* ---------------------------------------------------------------- cloud credential (protocol §3.5) */

static const uint16_t cloud_max[4] = {KS_ENDPOINT_MAX, KS_CLIENT_ID_MAX, KS_USERNAME_MAX, KS_SECRET_MAX};

static int cloud_platform_ok(uint8_t p)
{
    return p == KS_PLATFORM_MOSQUITTO || p == KS_PLATFORM_AWS_IOT;
}

/* The four variable fields of a credential, in wire order. */
static uint8_t *cloud_field(struct ks_cloud *c, unsigned i, uint16_t **len)
{
    switch (i) {
    case 0:
        *len = &c->endpoint_len;
        return c->endpoint;
    case 1:
        *len = &c->client_id_len;
        return c->client_id;
    case 2:
        *len = &c->username_len;
        return c->username;
    default:
        *len = &c->secret_len;
        return c->secret;
    }
}

static const uint8_t *cloud_field_c(const struct ks_cloud *c, unsigned i, uint16_t *len)
{
    switch (i) {
    case 0:
        *len = c->endpoint_len;
        return c->endpoint;
    case 1:
        *len = c->client_id_len;
        return c->client_id;
    case 2:
        *len = c->username_len;
        return c->username;
    default:
        *len = c->secret_len;
        return c->secret;
    }
}

static int cloud_check(const struct ks_cloud *c)
{
    uint16_t l;
    if (c->version == 0 || !cloud_platform_ok(c->platform)) {
        return CODEC_EBADFIELD;
    }
    for (unsigned i = 0; i < 4; i++) {
        (void)cloud_field_c(c, i, &l);
        if (l > cloud_max[i]) {
            return CODEC_EBADFIELD;
        }
    }
    return 0;
}

static uint32_t cloud_wire_len(const struct ks_cloud *c)
{
    return KS_CLOUD_MIN + c->endpoint_len + c->client_id_len + c->username_len + c->secret_len;
}

/*
 * Parse a credential of exactly len bytes at off. Two passes: the first checks every length against
 * its maximum and the end, the second copies; so *c is untouched unless the whole value is good
 * (barring a flash read error during the copy). c may be NULL (validate only).
 */
static int cloud_parse(const struct ks_src *s, uint32_t off, uint32_t len, struct ks_cloud *c)
{
    uint8_t hdr[5];
    uint8_t lb[2];
    uint16_t flen[4];
    uint32_t pos;
    int rc;

    if (len < 5u) {
        return CODEC_EBADLEN;
    }
    rc = src_read(s, off, hdr, 5);
    if (rc != 0) {
        return rc == KS_EFLASH ? rc : CODEC_EBADLEN;
    }
    if (get_le32(hdr) == 0 || !cloud_platform_ok(hdr[4])) {
        return CODEC_EBADFIELD;
    }
    pos = 5;
    for (unsigned i = 0; i < 4; i++) {
        if (len - pos < 2u) {
            return CODEC_EBADLEN;
        }
        rc = src_read(s, off + pos, lb, 2);
        if (rc != 0) {
            return rc == KS_EFLASH ? rc : CODEC_EBADLEN;
        }
        flen[i] = get_le16(lb);
        if (flen[i] > cloud_max[i] || flen[i] > len - pos - 2u) {
            return CODEC_EBADLEN;
        }
        pos += 2u + flen[i];
    }
    if (pos != len) {
        return CODEC_EBADLEN; /* nothing may follow the last field */
    }
    if (c == NULL) {
        return 0;
    }
    c->version = get_le32(hdr);
    c->platform = hdr[4];
    pos = 5;
    for (unsigned i = 0; i < 4; i++) {
        uint16_t *lp;
        uint8_t *dst = cloud_field(c, i, &lp);
        *lp = flen[i];
        rc = src_read(s, off + pos + 2u, dst, flen[i]);
        if (rc != 0) {
            return rc == KS_EFLASH ? rc : CODEC_EBADLEN;
        }
        pos += 2u + flen[i];
    }
    return 0;
}

/* ---------------------------------------------------------------- sink: buffer, flash, or verify */

enum ks_sink_mode { SINK_BUF, SINK_FLASH_WRITE, SINK_FLASH_VERIFY };

struct ks_sink {
    uint8_t mode;
    uint8_t hashing;
    int area;
    int rc;                     /* first error; later puts do nothing */
    uint32_t off;               /* offset of the next byte */
    uint32_t align;
    uint32_t fill;
    uint8_t word[KS_COMMIT_LEN];
    uint8_t *buf;
    size_t cap;
    crypto_sha256_ctx sha;
};

static void sink_flush_word(struct ks_sink *k)
{
    uint32_t woff = k->off - k->align;
    if (k->mode == SINK_FLASH_WRITE) {
        if (port_flash_write(k->area, woff, k->word, k->align) != 0) {
            k->rc = KS_EFLASH;
        }
    } else {
        uint8_t back[KS_COMMIT_LEN];
        if (port_flash_read(k->area, woff, back, k->align) != 0) {
            k->rc = KS_EFLASH;
        } else if (memcmp(back, k->word, k->align) != 0) {
            k->rc = KS_EVERIFY;
        }
        crypto_wipe(back, sizeof back);
    }
    k->fill = 0;
}

static void sink_put(struct ks_sink *k, const uint8_t *p, size_t n)
{
    if (k->rc != 0) {
        return;
    }
    if (k->hashing) {
        crypto_sha256_update(&k->sha, p, n);
    }
    if (k->mode == SINK_BUF) {
        if (k->off > k->cap || n > k->cap - k->off) {
            k->rc = CODEC_ENOSPACE;
            return;
        }
        memcpy(k->buf + k->off, p, n);
        k->off += (uint32_t)n;
        return;
    }
    for (size_t i = 0; i < n && k->rc == 0; i++) {
        k->word[k->fill++] = p[i];
        k->off++;
        if (k->fill == k->align) {
            sink_flush_word(k);
        }
    }
}

static void sink_u8(struct ks_sink *k, uint8_t v)
{
    sink_put(k, &v, 1);
}

static void sink_u16(struct ks_sink *k, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    sink_put(k, b, 2);
}

static void sink_u32(struct ks_sink *k, uint32_t v)
{
    uint8_t b[4];
    put_le32(b, v);
    sink_put(k, b, 4);
}

static void sink_tlv_hdr(struct ks_sink *k, uint8_t tag, uint32_t len)
{
    sink_u8(k, tag);
    sink_u16(k, (uint16_t)len);
}

static void stream_cloud(struct ks_sink *k, const struct ks_cloud *c)
{
    sink_u32(k, c->version);
    sink_u8(k, c->platform);
    for (unsigned i = 0; i < 4; i++) {
        uint16_t l;
        const uint8_t *p = cloud_field_c(c, i, &l);
        sink_u16(k, l);
        sink_put(k, p, l);
    }
}

/* protocol §2.3: po_name is 1..32 bytes of ASCII. */
static int ascii_ok(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (p[i] > 0x7Fu) {
            return 0;
        }
    }
    return 1;
}

/* Checks every field of a state a record will carry. @return 0 or KS_EBADRECORD */
static int state_check(const struct ks_state *st)
{
    if (st->po_name_len < 1u || st->po_name_len > KS_PO_NAME_MAX || !ascii_ok(st->po_name, st->po_name_len)) {
        return KS_EBADRECORD;
    }
    if (st->has_cloud && cloud_check(&st->cloud) != 0) {
        return KS_EBADRECORD;
    }
    return 0;
}

static uint32_t payload_len_of(const struct ks_state *st)
{
    uint32_t n = KS_TLV_HDR + 4u + st->po_name_len;
    if (st->has_pk) {
        n += KS_TLV_HDR + KS_KEY_LEN;
    }
    if (st->has_ak) {
        n += KS_TLV_HDR + KS_AK_LEN;
    }
    if (st->has_cloud) {
        n += KS_TLV_HDR + cloud_wire_len(&st->cloud);
    }
    return n;
}

/*
 * The record from offset 0x04 to the end of the hash (flash-layout §1), TLVs in tag order. The
 * sink's offset must be 4 on entry.
 */
static void stream_record(struct ks_sink *k, const struct ks_state *st, uint32_t gen, uint32_t payload_len,
                          uint8_t erased)
{
    uint8_t digest[KS_HASH_LEN];

    crypto_sha256_init(&k->sha);
    k->hashing = 1;
    sink_u32(k, KS_RECORD_MAGIC);
    sink_u32(k, gen);
    sink_u16(k, (uint16_t)KS_FORMAT);
    sink_u16(k, (uint16_t)payload_len);

    sink_tlv_hdr(k, KS_TAG_PRODUCT, 4u + st->po_name_len);
    sink_u32(k, st->po_id);
    sink_put(k, st->po_name, st->po_name_len);
    if (st->has_pk) {
        sink_tlv_hdr(k, KS_TAG_PK, KS_KEY_LEN);
        sink_put(k, st->pk, KS_KEY_LEN);
    }
    if (st->has_ak) {
        sink_tlv_hdr(k, KS_TAG_AK, KS_AK_LEN);
        sink_u32(k, st->ak_version);
        sink_put(k, st->ak, KS_KEY_LEN);
    }
    if (st->has_cloud) {
        sink_tlv_hdr(k, KS_TAG_CLOUD, cloud_wire_len(&st->cloud));
        stream_cloud(k, &st->cloud);
    }
    k->hashing = 0;
    for (uint32_t i = payload_len; i < align4(payload_len); i++) {
        sink_u8(k, erased);
    }
    crypto_sha256_final(&k->sha, digest);
    sink_put(k, digest, KS_HASH_LEN);
    crypto_wipe(digest, sizeof digest);
}

/* ---------------------------------------------------------------- record parse (boot rule validity) */

/*
 * Validate the record at the start of s and, when st != NULL, load it. *gen and *has_pk describe
 * a valid record. @return 0, KS_EBADRECORD or KS_EFLASH
 */
static int record_parse(const struct ks_src *s, struct ks_state *st, uint32_t *gen, uint8_t *has_pk)
{
    uint8_t chunk[KS_CHUNK];
    uint8_t digest[KS_HASH_LEN];
    crypto_sha256_ctx sha;
    uint32_t payload_len, end, pos, seen = 0;
    int rc, equal;

    if (st != NULL) {
        memset(st, 0, sizeof *st);
    }
    rc = src_read(s, 0, chunk, KS_HEADER_LEN);
    if (rc != 0) {
        return rc;
    }
    if (get_le32(chunk) != KS_COMMIT_MAGIC || get_le32(chunk + 4) != KS_RECORD_MAGIC ||
        get_le16(chunk + 12) != KS_FORMAT) {
        return KS_EBADRECORD;
    }
    payload_len = get_le16(chunk + 14);
    if (payload_len > KS_MAX_PAYLOAD || s->len < record_len(payload_len)) {
        return KS_EBADRECORD;
    }
    *gen = get_le32(chunk + 8);

    /* SHA-256 over magic .. end of payload, read in small chunks. */
    crypto_sha256_init(&sha);
    end = KS_HEADER_LEN + payload_len;
    for (pos = 4; pos < end;) {
        uint32_t n = end - pos < KS_CHUNK ? end - pos : KS_CHUNK;
        rc = src_read(s, pos, chunk, n);
        if (rc != 0) {
            crypto_wipe(chunk, sizeof chunk);
            return rc;
        }
        crypto_sha256_update(&sha, chunk, n);
        pos += n;
    }
    crypto_wipe(chunk, sizeof chunk);
    crypto_sha256_final(&sha, digest);
    rc = src_read(s, KS_HEADER_LEN + align4(payload_len), chunk, KS_HASH_LEN);
    if (rc != 0) {
        return rc;
    }
    equal = crypto_ct_equal(chunk, digest, KS_HASH_LEN);
    crypto_wipe(digest, sizeof digest);
    if (!equal) {
        return KS_EBADRECORD;
    }

    /* TLVs: known tags, each once, lengths in range, exactly filling the payload. */
    for (pos = KS_HEADER_LEN; pos < end;) {
        uint8_t tlv[KS_TLV_HDR];
        uint8_t tag;
        uint32_t len, voff;
        if (end - pos < KS_TLV_HDR) {
            rc = KS_EBADRECORD;
            break;
        }
        rc = src_read(s, pos, tlv, KS_TLV_HDR);
        if (rc != 0) {
            break;
        }
        tag = tlv[0];
        len = get_le16(tlv + 1);
        voff = pos + KS_TLV_HDR;
        if (len > end - voff || tag < KS_TAG_PRODUCT || tag > KS_TAG_CLOUD || (seen & (1u << tag)) != 0) {
            rc = KS_EBADRECORD;
            break;
        }
        seen |= 1u << tag;
        switch (tag) {
        case KS_TAG_PRODUCT:
            if (len < KS_PRODUCT_MIN || len > 4u + KS_PO_NAME_MAX) {
                rc = KS_EBADRECORD;
                break;
            }
            rc = src_read(s, voff, chunk, len);
            if (rc == 0 && !ascii_ok(chunk + 4, len - 4u)) {
                rc = KS_EBADRECORD;
            }
            if (rc == 0 && st != NULL) {
                st->po_id = get_le32(chunk);
                st->po_name_len = (uint8_t)(len - 4u);
                memcpy(st->po_name, chunk + 4, len - 4u);
            }
            break;
        case KS_TAG_PK:
            if (len != KS_KEY_LEN) {
                rc = KS_EBADRECORD;
            } else if (st != NULL) {
                st->has_pk = 1;
                rc = src_read(s, voff, st->pk, KS_KEY_LEN);
            }
            break;
        case KS_TAG_AK:
            if (len != KS_AK_LEN) {
                rc = KS_EBADRECORD;
            } else if (st != NULL) {
                st->has_ak = 1;
                rc = src_read(s, voff, chunk, 4);
                if (rc == 0) {
                    st->ak_version = get_le32(chunk);
                    rc = src_read(s, voff + 4u, st->ak, KS_KEY_LEN);
                }
            }
            break;
        default: /* KS_TAG_CLOUD */
            rc = cloud_parse(s, voff, len, st != NULL ? &st->cloud : NULL);
            if (rc == 0 && st != NULL) {
                st->has_cloud = 1;
            }
            break;
        }
        if (rc != 0) {
            break;
        }
        pos = voff + len;
    }
    if (rc == 0 && (seen & (1u << KS_TAG_PRODUCT)) == 0) {
        rc = KS_EBADRECORD;
    }
    if (rc != 0) {
        if (st != NULL) {
            crypto_wipe(st, sizeof *st);
        }
        return rc == KS_EFLASH ? KS_EFLASH : KS_EBADRECORD;
    }
    *has_pk = (seen & (1u << KS_TAG_PK)) != 0;
    if (st != NULL) {
        st->generation = *gen;
    }
    return 0;
}

/* ---------------------------------------------------------------- area evaluation */

struct ks_area_info {
    uint8_t valid;
    uint8_t has_pk;
    uint32_t gen;
};

static int area_eval(int area, struct ks_area_info *info)
{
    struct ks_src s;
    int rc;
    src_flash(&s, area);
    info->valid = 0;
    info->has_pk = 0;
    info->gen = 0;
    rc = record_parse(&s, NULL, &info->gen, &info->has_pk);
    if (rc == KS_EFLASH) {
        return rc;
    }
    info->valid = rc == 0;
    return 0;
}

static int area_is_blank(int area, uint8_t *blank)
{
    uint8_t chunk[KS_CHUNK];
    uint8_t erased = port_flash_erased_val();
    uint32_t size = port_flash_area_size(area);
    *blank = 1;
    for (uint32_t pos = 0; pos < size;) {
        uint32_t n = size - pos < KS_CHUNK ? size - pos : KS_CHUNK;
        if (port_flash_read(area, pos, chunk, n) != 0) {
            crypto_wipe(chunk, sizeof chunk);
            return KS_EFLASH;
        }
        for (uint32_t i = 0; i < n; i++) {
            if (chunk[i] != erased) {
                *blank = 0;
            }
        }
        pos += n;
        if (!*blank) {
            break;
        }
    }
    crypto_wipe(chunk, sizeof chunk);
    return 0;
}

static int pick_active(const struct ks_area_info info[2])
{
    if (info[PORT_FLASH_AREA_A].valid && info[PORT_FLASH_AREA_B].valid) {
        return info[PORT_FLASH_AREA_B].gen > info[PORT_FLASH_AREA_A].gen ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
    }
    if (info[PORT_FLASH_AREA_A].valid) {
        return PORT_FLASH_AREA_A;
    }
    if (info[PORT_FLASH_AREA_B].valid) {
        return PORT_FLASH_AREA_B;
    }
    return -1;
}

static int eval_both(struct ks_area_info info[2])
{
    if (!align_supported(port_flash_align())) {
        return KS_EFLASH;
    }
    for (int a = PORT_FLASH_AREA_A; a <= PORT_FLASH_AREA_B; a++) {
        if (area_eval(a, &info[a]) != 0) {
            return KS_EFLASH;
        }
    }
    return 0;
}

/*
 * Flash-layout §2 rule 3: with no PK in the active record, the other area must be blank or a valid
 * record without PK; anything else (a PK record, a torn or invalidated record, garbage) is erased.
 * A commit's step 6 uses it with the old, valid record as the other area: erased iff it has a PK.
 * *erased says whether it erased.
 */
static int scrub_other(int active, const struct ks_area_info *other_info, uint8_t other_blank, uint8_t *erased)
{
    int other = active == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
    *erased = 0;
    if (other_blank || (other_info->valid && !other_info->has_pk)) {
        return 0;
    }
    if (port_flash_erase(other) != 0) {
        return KS_EFLASH;
    }
    *erased = 1;
    return 0;
}

/* ---------------------------------------------------------------- public API */

int ks_load(struct ks_state *st, struct ks_boot_report *report)
{
    struct ks_area_info info[2];
    struct ks_boot_report rep;
    struct ks_src s;
    uint32_t gen;
    uint8_t has_pk, erased;
    int active, other, rc;

    memset(st, 0, sizeof *st);
    memset(&rep, 0, sizeof rep);
    rep.active_area = -1;
    ks_cur_active = -1;
    rc = eval_both(info);
    for (int a = PORT_FLASH_AREA_A; rc == 0 && a <= PORT_FLASH_AREA_B; a++) {
        rep.area_valid[a] = info[a].valid;
        rc = area_is_blank(a, &rep.area_blank[a]);
    }
    if (rc == 0) {
        active = pick_active(info);
        if (active < 0) {
            rc = KS_ENOVALID;
        } else {
            src_flash(&s, active);
            /* Second read of the winner, this time into *st; it can only fail on a flash error. */
            rc = record_parse(&s, st, &gen, &has_pk);
            if (rc == KS_EBADRECORD) {
                rc = KS_EFLASH;
            }
            if (rc == 0) {
                rep.active_area = active;
                ks_cur_active = active;
                if (!st->has_pk) {
                    other = active == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
                    rc = scrub_other(active, &info[other], rep.area_blank[other], &erased);
                    rep.scrubbed = erased;
                }
            }
        }
    }
    if (report != NULL) {
        *report = rep;
    }
    return rc;
}

int ks_commit(struct ks_state *st)
{
    struct ks_area_info info[2];
    struct ks_sink k;
    uint8_t commit[KS_COMMIT_LEN];
    uint8_t erased = port_flash_erased_val();
    uint8_t did;
    uint32_t payload_len, gen;
    int active, target, other, rc;

    rc = state_check(st);
    if (rc != 0) {
        return rc;
    }
    payload_len = payload_len_of(st);
    if (payload_len > KS_MAX_PAYLOAD) {
        return KS_ETOOBIG;
    }
    rc = eval_both(info);
    if (rc != 0) {
        return rc;
    }
    active = pick_active(info);
    target = active == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
    other = target == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
    if (record_len(payload_len) > port_flash_area_size(target)) {
        return KS_ETOOBIG;
    }
    if (active >= 0 && info[active].gen == UINT32_MAX) {
        return KS_ETOOBIG; /* the generation cannot grow any further */
    }
    gen = active >= 0 ? info[active].gen + 1u : 1u;

    /* §3 step 2: erase the target. */
    if (port_flash_erase(target) != 0) {
        return KS_EFLASH;
    }
    /* Step 3: stream the record from 0x04, word by word, in address order. */
    memset(&k, 0, sizeof k);
    k.mode = SINK_FLASH_WRITE;
    k.area = target;
    k.align = port_flash_align();
    k.off = KS_COMMIT_LEN;
    stream_record(&k, st, gen, payload_len, erased);
    rc = k.rc;
    /* Step 4: read back and compare, the commit word included (it must still be erased). */
    if (rc == 0) {
        memset(&k, 0, sizeof k);
        k.mode = SINK_FLASH_VERIFY;
        k.area = target;
        k.align = port_flash_align();
        k.off = KS_COMMIT_LEN;
        stream_record(&k, st, gen, payload_len, erased);
        rc = k.rc;
    }
    crypto_wipe(&k, sizeof k);
    if (rc == 0) {
        if (port_flash_read(target, 0, commit, KS_COMMIT_LEN) != 0) {
            rc = KS_EFLASH;
        } else {
            for (unsigned i = 0; i < KS_COMMIT_LEN; i++) {
                if (commit[i] != erased) {
                    rc = KS_EVERIFY;
                }
            }
        }
    }
    if (rc != 0) {
        return rc;
    }
    /* Step 5: the commit word, last. */
    put_le32(commit, KS_COMMIT_MAGIC);
    if (port_flash_write(target, 0, commit, KS_COMMIT_LEN) != 0) {
        return KS_EFLASH;
    }
    if (port_flash_read(target, 0, commit, KS_COMMIT_LEN) != 0) {
        return KS_EFLASH;
    }
    if (get_le32(commit) != KS_COMMIT_MAGIC) {
        return KS_EVERIFY;
    }
    ks_cur_active = target;
    st->generation = gen;
    /* Step 6: the PK scrub. The other area is the old active record (valid), so this erases it
     * exactly when it holds a PK; with nothing active before, nothing is erased here. */
    if (!st->has_pk && active >= 0) {
        return scrub_other(target, &info[other], 0, &did);
    }
    return 0;
}

int ks_invalidate_active(void)
{
    struct ks_area_info info[2];
    uint8_t zero[KS_COMMIT_LEN];
    int active, other, rc;

    rc = eval_both(info);
    if (rc != 0) {
        return rc;
    }
    active = pick_active(info);
    if (active < 0) {
        return KS_ENOVALID;
    }
    other = active == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A;
    if (!info[other].valid) {
        return KS_ENOVALID;
    }
    put_le32(zero, KS_COMMIT_INVALID);
    if (port_flash_write(active, 0, zero, KS_COMMIT_LEN) != 0) {
        return KS_EFLASH;
    }
    if (port_flash_read(active, 0, zero, KS_COMMIT_LEN) != 0) {
        return KS_EFLASH;
    }
    if (get_le32(zero) != KS_COMMIT_INVALID) {
        return KS_EVERIFY;
    }
    ks_cur_active = other;
    return 0;
}

int ks_active_area(void)
{
    return ks_cur_active;
}

int ks_encode(const struct ks_state *st, uint8_t erased_val, uint8_t *buf, size_t cap, size_t *out_len)
{
    struct ks_sink k;
    uint32_t payload_len, total;
    int rc = state_check(st);
    if (rc != 0) {
        return rc;
    }
    payload_len = payload_len_of(st);
    if (payload_len > KS_MAX_PAYLOAD) {
        return KS_ETOOBIG;
    }
    total = record_len(payload_len);
    if (cap < total) {
        return CODEC_ENOSPACE;
    }
    put_le32(buf, KS_COMMIT_MAGIC);
    memset(&k, 0, sizeof k);
    k.mode = SINK_BUF;
    k.buf = buf;
    k.cap = cap;
    k.off = KS_COMMIT_LEN;
    stream_record(&k, st, st->generation, payload_len, erased_val);
    rc = k.rc;
    crypto_wipe(&k, sizeof k);
    if (rc != 0) {
        return rc;
    }
    *out_len = total;
    return 0;
}

int ks_decode(const uint8_t *buf, size_t len, struct ks_state *st)
{
    struct ks_src s;
    uint32_t gen;
    uint8_t has_pk;
    s.buf = buf;
    s.area = -1;
    s.len = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    return record_parse(&s, st, &gen, &has_pk) == 0 ? 0 : KS_EBADRECORD;
}

int ks_cloud_encode(const struct ks_cloud *c, uint8_t *out, size_t cap, size_t *out_len)
{
    struct ks_sink k;
    uint32_t total;
    int rc = cloud_check(c);
    if (rc != 0) {
        return rc;
    }
    total = cloud_wire_len(c);
    if (cap < total) {
        return CODEC_ENOSPACE;
    }
    memset(&k, 0, sizeof k);
    k.mode = SINK_BUF;
    k.buf = out;
    k.cap = cap;
    stream_cloud(&k, c);
    rc = k.rc;
    crypto_wipe(&k, sizeof k);
    if (rc != 0) {
        return rc;
    }
    *out_len = total;
    return 0;
}

int ks_cloud_decode(const uint8_t *buf, size_t len, struct ks_cloud *c)
{
    struct ks_src s;
    if (len > UINT32_MAX) {
        return CODEC_EBADLEN;
    }
    s.buf = buf;
    s.area = -1;
    s.len = (uint32_t)len;
    return cloud_parse(&s, 0, (uint32_t)len, c);
}
