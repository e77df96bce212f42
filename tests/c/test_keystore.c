/*
 * Keystore (docs/flash-layout.md) on the host flash simulator: record codec, cloud credential
 * bounds, each boot-rule case of §2, commit/invalidate, and power-cut sweeps over every flash
 * operation of each update kind (§4), including a second cut during the boot rule's scrub.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "host_flash.h"
#include "otakey/crypto.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "port/port_flash.h"
#include "unit.h"

#define AREA_A PORT_FLASH_AREA_A
#define AREA_B PORT_FLASH_AREA_B
#define AREA_SIZE HOST_FLASH_AREA_SIZE
#define SNAP_SIZE (2u * HOST_FLASH_AREA_SIZE)
#define PO_ID 0x00C0FFEEu
#define PO_NAME "PO-2024-0001"

/* ------------------------------------------------------------------------------ test helpers */

static uint8_t factory_pk[KS_KEY_LEN];
static uint8_t img[AREA_SIZE];
static uint8_t img2[AREA_SIZE];

static void pattern(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(seed + 37u * i + (i >> 3));
    }
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static size_t align4(size_t n)
{
    return (n + 3u) & ~(size_t)3u;
}

static void st_factory(struct ks_state *st, uint32_t gen)
{
    memset(st, 0, sizeof *st);
    st->generation = gen;
    st->po_id = PO_ID;
    st->po_name_len = (uint8_t)strlen(PO_NAME);
    memcpy(st->po_name, PO_NAME, st->po_name_len);
    /* Not an arithmetic pattern like the other fields, so it cannot occur inside one of them. */
    crypto_sha256((const uint8_t *)"factory PK of PO-2024-0001", 26, factory_pk);
    st->has_pk = 1;
    memcpy(st->pk, factory_pk, KS_KEY_LEN);
}

/* A provisioned state: PK gone, AK of the given version. */
static void st_set_ak(struct ks_state *st, uint32_t version)
{
    st->has_pk = 0;
    memset(st->pk, 0, sizeof st->pk);
    st->has_ak = 1;
    st->ak_version = version;
    pattern(st->ak, KS_KEY_LEN, (uint8_t)(0x10 * version + 1));
}

static void field_fill(uint8_t *p, uint16_t *len, uint16_t n, uint8_t seed)
{
    *len = n;
    for (uint16_t i = 0; i < n; i++) {
        p[i] = (uint8_t)('a' + (seed + i) % 26);
    }
}

static void cloud_make(struct ks_cloud *c, uint32_t version, uint8_t platform, uint16_t secret_len)
{
    memset(c, 0, sizeof *c);
    c->version = version;
    c->platform = platform;
    field_fill(c->endpoint, &c->endpoint_len, 21, 1);
    memcpy(c->endpoint, "mqtt://127.0.0.1:1883", 21);
    field_fill(c->client_id, &c->client_id_len, 24, (uint8_t)version);
    field_fill(c->username, &c->username_len, 24, (uint8_t)(version + 3));
    c->secret_len = secret_len;
    pattern(c->secret, secret_len, (uint8_t)(0x55 + version));
}

static void st_set_cloud(struct ks_state *st, uint32_t version, uint8_t platform, uint16_t secret_len)
{
    st->has_cloud = 1;
    cloud_make(&st->cloud, version, platform, secret_len);
}

static int cloud_equal(const struct ks_cloud *a, const struct ks_cloud *b)
{
    return a->version == b->version && a->platform == b->platform && a->endpoint_len == b->endpoint_len &&
           a->client_id_len == b->client_id_len && a->username_len == b->username_len &&
           a->secret_len == b->secret_len && a->endpoint_len <= KS_ENDPOINT_MAX &&
           a->client_id_len <= KS_CLIENT_ID_MAX && a->username_len <= KS_USERNAME_MAX &&
           a->secret_len <= KS_SECRET_MAX && memcmp(a->endpoint, b->endpoint, a->endpoint_len) == 0 &&
           memcmp(a->client_id, b->client_id, a->client_id_len) == 0 &&
           memcmp(a->username, b->username, a->username_len) == 0 &&
           memcmp(a->secret, b->secret, a->secret_len) == 0;
}

static int st_equal(const struct ks_state *a, const struct ks_state *b)
{
    if (a->generation != b->generation || a->po_id != b->po_id || a->po_name_len != b->po_name_len ||
        a->po_name_len > KS_PO_NAME_MAX || memcmp(a->po_name, b->po_name, a->po_name_len) != 0 ||
        a->has_pk != b->has_pk || a->has_ak != b->has_ak || a->has_cloud != b->has_cloud) {
        return 0;
    }
    if (a->has_pk && memcmp(a->pk, b->pk, KS_KEY_LEN) != 0) {
        return 0;
    }
    if (a->has_ak && (a->ak_version != b->ak_version || memcmp(a->ak, b->ak, KS_KEY_LEN) != 0)) {
        return 0;
    }
    return !a->has_cloud || cloud_equal(&a->cloud, &b->cloud);
}

/* Write a state's record image into an area (the rest erased), as a factory tool would. */
static void plant(int area, const struct ks_state *st)
{
    size_t n = 0;
    CHECK_EQ_INT(ks_encode(st, HOST_FLASH_ERASED, img, sizeof img, &n), 0);
    CHECK_EQ_INT(host_flash_raw_fill(area, HOST_FLASH_ERASED), 0);
    CHECK_EQ_INT(host_flash_raw_write(area, 0, img, n), 0);
}

static void plant_raw(int area, const uint8_t *image, size_t n)
{
    CHECK_EQ_INT(host_flash_raw_fill(area, HOST_FLASH_ERASED), 0);
    CHECK_EQ_INT(host_flash_raw_write(area, 0, image, n), 0);
}

static void plant_garbage(int area, uint32_t seed)
{
    static uint8_t g[AREA_SIZE];
    uint32_t x = seed | 1u;
    for (size_t i = 0; i < sizeof g; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        g[i] = (uint8_t)x;
    }
    CHECK_EQ_INT(host_flash_raw_write(area, 0, g, sizeof g), 0);
}

/* A record image built here, independently of keystore.c, from raw header fields and payload. */
static size_t raw_record(uint8_t *out, uint32_t commit, const char *magic, uint32_t gen, uint16_t fmt,
                         uint16_t plen_field, const uint8_t *payload, size_t plen)
{
    size_t hash_off = 16 + align4(plen);
    put32(out, commit);
    memcpy(out + 4, magic, 4);
    put32(out + 8, gen);
    out[12] = (uint8_t)fmt;
    out[13] = (uint8_t)(fmt >> 8);
    out[14] = (uint8_t)plen_field;
    out[15] = (uint8_t)(plen_field >> 8);
    memcpy(out + 16, payload, plen);
    memset(out + 16 + plen, 0xFF, align4(plen) - plen);
    crypto_sha256(out + 4, 12 + plen, out + hash_off);
    return hash_off + 32;
}

static void tlv_put(uint8_t *p, size_t *pos, uint8_t tag, const void *v, uint16_t n)
{
    p[*pos] = tag;
    p[*pos + 1] = (uint8_t)n;
    p[*pos + 2] = (uint8_t)(n >> 8);
    if (n != 0) {
        memcpy(p + *pos + 3, v, n);
    }
    *pos += 3u + n;
}

static size_t product_value(uint8_t *v, const char *name)
{
    put32(v, PO_ID);
    memcpy(v + 4, name, strlen(name));
    return 4 + strlen(name);
}

/* Recompute the hash of a (tampered) image so that only the field under test is wrong. */
static void rehash(uint8_t *image)
{
    size_t plen = (size_t)image[14] | ((size_t)image[15] << 8);
    crypto_sha256(image + 4, 12 + plen, image + 16 + align4(plen));
}

static int flash_contains(const uint8_t *pat, size_t n)
{
    static uint8_t area[AREA_SIZE];
    for (int a = AREA_A; a <= AREA_B; a++) {
        CHECK_EQ_INT(host_flash_raw_read(a, 0, area, sizeof area), 0);
        for (size_t i = 0; i + n <= sizeof area; i++) {
            if (area[i] == pat[0] && memcmp(area + i, pat, n) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

static struct ks_state st_a, st_b, st_got;
static uint8_t snap1[SNAP_SIZE], snap2[SNAP_SIZE];

/* ------------------------------------------------------------------------------ host flash */

UNIT_TEST(test_host_flash_program_only_clears_bits)
{
    uint8_t w[4] = {0xF0, 0x0F, 0xAA, 0x55}, back[4];
    uint8_t w2[4] = {0xFF, 0xF0, 0x0F, 0xFF};
    host_flash_reset();
    CHECK_EQ_INT(port_flash_write(AREA_A, 8, w, 4), 0);
    CHECK_EQ_INT(port_flash_write(AREA_A, 8, w2, 4), 0);
    CHECK_EQ_INT(port_flash_read(AREA_A, 8, back, 4), 0);
    CHECK_EQ_INT(back[0], 0xF0);
    CHECK_EQ_INT(back[1], 0x00);
    CHECK_EQ_INT(back[2], 0x0A);
    CHECK_EQ_INT(back[3], 0x55);
    CHECK_EQ_INT(host_flash_op_count(), 2);
    CHECK_EQ_INT(port_flash_erase(AREA_A), 0);
    CHECK(host_flash_raw_is_blank(AREA_A));
    CHECK_EQ_INT(port_flash_erased_val(), 0xFF);
    CHECK_EQ_INT(port_flash_align(), 4);
    CHECK_EQ_INT(port_flash_area_size(AREA_B), 16384);
}

UNIT_TEST(test_host_flash_rejects_misaligned_and_out_of_range_without_counting)
{
    uint8_t w[8] = {0};
    host_flash_reset();
    CHECK_EQ_INT(port_flash_write(AREA_A, 2, w, 4), -EINVAL);
    CHECK_EQ_INT(port_flash_write(AREA_A, 4, w, 3), -EINVAL);
    CHECK_EQ_INT(port_flash_write(AREA_A, AREA_SIZE - 4, w, 8), -EINVAL);
    CHECK_EQ_INT(port_flash_write(2, 0, w, 4), -EINVAL);
    CHECK_EQ_INT(port_flash_read(AREA_B, AREA_SIZE - 1, w, 2), -EINVAL);
    CHECK_EQ_INT(port_flash_read(-1, 0, w, 1), -EINVAL);
    CHECK_EQ_INT(port_flash_erase(5), -EINVAL);
    CHECK_EQ_INT(port_flash_write(AREA_A, 0, w, 0), 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    CHECK(host_flash_raw_is_blank(AREA_A) && host_flash_raw_is_blank(AREA_B));
}

UNIT_TEST(test_host_flash_cut_modes_fail_every_op_until_power_on)
{
    uint8_t zero[8] = {0}, back[8];
    /* Program of two words, cut at the second: BEFORE leaves it erased, AFTER programs it. */
    host_flash_reset();
    host_flash_cut_at(2, HOST_FLASH_CUT_BEFORE);
    CHECK_EQ_INT(port_flash_write(AREA_A, 0, zero, 8), -EIO);
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, back, 8), 0);
    CHECK_EQ_INT(le32(back), 0);
    CHECK_EQ_INT(le32(back + 4), 0xFFFFFFFFu);
    CHECK(!host_flash_is_powered());
    CHECK_EQ_INT(port_flash_read(AREA_A, 0, back, 4), -EIO);
    CHECK_EQ_INT(port_flash_erase(AREA_A), -EIO);
    CHECK_EQ_INT(host_flash_op_count(), 2);
    host_flash_power_on();
    CHECK_EQ_INT(port_flash_read(AREA_A, 0, back, 4), 0);

    host_flash_reset();
    host_flash_cut_at(1, HOST_FLASH_CUT_AFTER);
    CHECK_EQ_INT(port_flash_write(AREA_A, 4, zero, 4), -EIO);
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 4, back, 4), 0);
    CHECK_EQ_INT(le32(back), 0);
    host_flash_power_on();

    /* Torn program: a proper, non-empty-or-empty subset of the bits to clear. */
    host_flash_reset();
    host_flash_cut_at(1, HOST_FLASH_CUT_TORN);
    CHECK_EQ_INT(port_flash_write(AREA_B, 0, zero, 4), -EIO);
    CHECK_EQ_INT(host_flash_raw_read(AREA_B, 0, back, 4), 0);
    CHECK(le32(back) != 0);
    host_flash_power_on();

    /* Torn erase: part of the sector only. */
    host_flash_reset();
    CHECK_EQ_INT(host_flash_raw_fill(AREA_B, 0x00), 0);
    host_flash_cut_at(1, HOST_FLASH_CUT_TORN);
    CHECK_EQ_INT(port_flash_erase(AREA_B), -EIO);
    CHECK(!host_flash_raw_is_blank(AREA_B));
    CHECK_EQ_INT(host_flash_raw_read(AREA_B, 0, back, 8), 0);
    host_flash_power_on();
    CHECK_EQ_INT(port_flash_erase(AREA_B), 0);
    CHECK(host_flash_raw_is_blank(AREA_B));
}

UNIT_TEST(test_host_flash_torn_erase_is_deterministic_and_has_prefix_and_scatter_variants)
{
    int prefix_seen = 0, scatter_seen = 0;
    for (uint32_t seed = 1; seed <= 16; seed++) {
        host_flash_reset();
        host_flash_set_torn_seed(seed);
        CHECK_EQ_INT(host_flash_raw_fill(AREA_A, 0x00), 0);
        host_flash_cut_at(1, HOST_FLASH_CUT_TORN);
        CHECK_EQ_INT(port_flash_erase(AREA_A), -EIO);
        CHECK_EQ_INT(host_flash_snapshot(snap1, sizeof snap1), 0);
        host_flash_power_on();
        /* Same seed, same op number: same result. */
        host_flash_log_clear();
        CHECK_EQ_INT(host_flash_raw_fill(AREA_A, 0x00), 0);
        host_flash_cut_at(1, HOST_FLASH_CUT_TORN);
        CHECK_EQ_INT(port_flash_erase(AREA_A), -EIO);
        CHECK_EQ_INT(host_flash_snapshot(snap2, sizeof snap2), 0);
        CHECK_MEM(snap1, snap2, SNAP_SIZE);
        CHECK(!host_flash_raw_is_blank(AREA_A));
        {
            size_t i = 0;
            while (i < AREA_SIZE && snap1[i] == 0xFF) {
                i++;
            }
            int is_prefix = 1;
            for (size_t j = i; j < AREA_SIZE; j++) {
                if (snap1[j] != 0) {
                    is_prefix = 0;
                }
            }
            prefix_seen |= is_prefix;
            scatter_seen |= !is_prefix;
        }
    }
    CHECK(prefix_seen);
    CHECK(scatter_seen);
}

/* ------------------------------------------------------------------------------ record codec */

UNIT_TEST(test_keystore_record_round_trip_keeps_every_field)
{
    size_t n;
    struct ks_state *states[3] = {&st_a, &st_b, &st_got};
    st_factory(&st_a, 1);
    st_factory(&st_b, 7);
    st_set_ak(&st_b, 3);
    st_factory(&st_got, 0xFFFFFFF0u);
    st_set_ak(&st_got, 9);
    st_set_cloud(&st_got, 12, KS_PLATFORM_AWS_IOT, KS_SECRET_MAX);
    for (int i = 0; i < 3; i++) {
        static struct ks_state dec;
        CHECK_EQ_INT(ks_encode(states[i], 0xFF, img, sizeof img, &n), 0);
        CHECK_EQ_INT(ks_decode(img, n, &dec), 0);
        CHECK(st_equal(&dec, states[i]));
        /* An area image (record followed by erased bytes) decodes the same. */
        memset(img + n, 0xFF, sizeof img - n);
        CHECK_EQ_INT(ks_decode(img, sizeof img, &dec), 0);
        CHECK(st_equal(&dec, states[i]));
        /* One byte short of the record: rejected. */
        CHECK_EQ_INT(ks_decode(img, n - 1, &dec), KS_EBADRECORD);
    }
}

UNIT_TEST(test_keystore_record_layout_matches_flash_layout)
{
    size_t n;
    uint8_t digest[32];
    uint8_t payload[128];
    size_t plen = 0;
    uint8_t v[40];
    st_factory(&st_a, 0x01020304u);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), 0);
    /* PRODUCT(4 + 12) + PK(32): 19 + 35 = 54 bytes: 2 bytes of erased padding before the hash. */
    tlv_put(payload, &plen, KS_TAG_PRODUCT, v, (uint16_t)product_value(v, PO_NAME));
    tlv_put(payload, &plen, KS_TAG_PK, factory_pk, 32);
    CHECK_EQ_INT(plen, 54);
    CHECK_EQ_INT(n, 16 + 56 + 32);
    CHECK_EQ_INT(le32(img), 0x3CC3A55Au);
    CHECK_MEM(img + 4, "OKKS", 4);
    CHECK_EQ_INT(le32(img + 8), 0x01020304u);
    CHECK_EQ_INT(img[12], 1);
    CHECK_EQ_INT(img[13], 0);
    CHECK_EQ_INT(img[14], 54);
    CHECK_EQ_INT(img[15], 0);
    CHECK_MEM(img + 16, payload, plen);
    CHECK_EQ_INT(img[16 + 54], 0xFF);
    CHECK_EQ_INT(img[16 + 55], 0xFF);
    crypto_sha256(img + 4, 12 + 54, digest);
    CHECK_MEM(img + 72, digest, 32);
    /* The same record built independently is byte-identical. */
    CHECK_EQ_INT(raw_record(img2, 0x3CC3A55Au, "OKKS", 0x01020304u, 1, 54, payload, plen), n);
    CHECK_MEM(img, img2, n);
    /* The erased value given is the padding value. */
    CHECK_EQ_INT(ks_encode(&st_a, 0x00, img, sizeof img, &n), 0);
    CHECK_EQ_INT(img[16 + 54], 0x00);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, n - 1, &n), CODEC_ENOSPACE);
}

UNIT_TEST(test_keystore_encode_rejects_out_of_range_state)
{
    size_t n;
    st_factory(&st_a, 1);
    st_a.po_name_len = 0;
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), KS_EBADRECORD);
    st_a.po_name_len = 33;
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), KS_EBADRECORD);
    st_factory(&st_a, 1);
    st_a.po_name[3] = 0xC3; /* protocol §2.3: po_name is ASCII */
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), KS_EBADRECORD);
    st_factory(&st_a, 1);
    st_set_cloud(&st_a, 0, KS_PLATFORM_MOSQUITTO, 8);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), KS_EBADRECORD);
    st_set_cloud(&st_a, 1, KS_PLATFORM_MOSQUITTO, KS_SECRET_MAX + 1);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img, sizeof img, &n), KS_EBADRECORD);
}

UNIT_TEST(test_keystore_decode_rejects_malformed_tlvs)
{
    static struct ks_state dec;
    uint8_t payload[256], v[64], cloudv[128], akv[36];
    size_t plen, n, clen;
    struct ks_cloud c;
    const char *why[] = {"ok", "duplicate product", "missing product", "pk 31 bytes", "ak 35 bytes",
                         "product 4 bytes", "product 37 bytes", "non-ascii name", "tlv header cut",
                         "tlv value overruns", "cloud trailing byte", "tag 0", "tag 5"};
    cloud_make(&c, 1, KS_PLATFORM_MOSQUITTO, 8);
    CHECK_EQ_INT(ks_cloud_encode(&c, cloudv, sizeof cloudv, &clen), 0);
    pattern(akv, sizeof akv, 3);
    for (int k = 0; k < (int)(sizeof why / sizeof why[0]); k++) {
        plen = 0;
        size_t pv = product_value(v, PO_NAME);
        switch (k) {
        case 0:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 3, akv, 36);
            break;
        case 1:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            break;
        case 2:
            tlv_put(payload, &plen, 2, factory_pk, 32);
            break;
        case 3:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 2, factory_pk, 31);
            break;
        case 4:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 3, akv, 35);
            break;
        case 5:
            tlv_put(payload, &plen, 1, v, 4);
            break;
        case 6:
            memset(v + 4, 'x', 33);
            tlv_put(payload, &plen, 1, v, 37);
            break;
        case 7:
            v[5] = 0x80;
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            break;
        case 8:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            payload[plen++] = 2;
            payload[plen++] = 32;
            break;
        case 9:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 2, factory_pk, 32);
            payload[plen - 32 - 2] = 33; /* PK length field says 33, one more than is there */
            break;
        case 10:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            cloudv[clen] = 0;
            tlv_put(payload, &plen, 4, cloudv, (uint16_t)(clen + 1));
            break;
        case 11:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 0, NULL, 0);
            break;
        default:
            tlv_put(payload, &plen, 1, v, (uint16_t)pv);
            tlv_put(payload, &plen, 5, factory_pk, 4);
            break;
        }
        n = raw_record(img, KS_COMMIT_MAGIC, "OKKS", 2, 1, (uint16_t)plen, payload, plen);
        int rc = ks_decode(img, n, &dec);
        if ((k == 0) != (rc == 0)) {
            fprintf(stderr, "case '%s': rc %d\n", why[k], rc);
        }
        CHECK_EQ_INT(rc, k == 0 ? 0 : KS_EBADRECORD);
        if (rc != 0) {
            CHECK_EQ_INT(dec.has_pk | dec.has_ak | dec.has_cloud | dec.po_name_len, 0);
        }
    }
}

UNIT_TEST(test_keystore_decode_rejects_bad_header_fields_even_with_matching_hash)
{
    static struct ks_state dec;
    size_t n;
    st_factory(&st_a, 3);
    st_set_ak(&st_a, 1);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img2, sizeof img2, &n), 0);
    CHECK_EQ_INT(ks_decode(img2, n, &dec), 0);
    /* magic */
    memcpy(img, img2, n);
    img[7] = 'T';
    rehash(img);
    CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    /* format 2 */
    memcpy(img, img2, n);
    img[12] = 2;
    rehash(img);
    CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    /* commit word blank, torn, invalidated */
    uint32_t words[] = {KS_COMMIT_BLANK, 0x3CC3A5FFu, 0xBCC3A55Au, KS_COMMIT_INVALID};
    for (size_t i = 0; i < 4; i++) {
        memcpy(img, img2, n);
        put32(img, words[i]);
        CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    }
    /* a flipped bit anywhere in magic..hash */
    size_t plen = (size_t)img2[14] | ((size_t)img2[15] << 8);
    CHECK(align4(plen) != plen); /* this record has padding, which no check covers */
    for (size_t off = 4; off < n; off++) {
        if (off >= 16 + plen && off < 16 + align4(plen)) {
            continue;
        }
        memcpy(img, img2, n);
        img[off] ^= 0x10;
        if (ks_decode(img, n, &dec) == 0) {
            fprintf(stderr, "bit flip at %zu accepted\n", off);
            CHECK(0);
        }
    }
}

UNIT_TEST(test_keystore_decode_rejects_payload_len_over_max_or_past_the_end)
{
    static struct ks_state dec;
    static uint8_t payload[4200];
    uint8_t v[40];
    size_t plen = 0, n;
    tlv_put(payload, &plen, 1, v, (uint16_t)product_value(v, PO_NAME));
    n = raw_record(img, KS_COMMIT_MAGIC, "OKKS", 2, 1, (uint16_t)plen, payload, plen);
    CHECK_EQ_INT(ks_decode(img, n, &dec), 0);
    /* 4097 bytes: over the maximum although the hash matches and it fits the area. */
    memset(payload + plen, 0, sizeof payload - plen);
    n = raw_record(img, KS_COMMIT_MAGIC, "OKKS", 2, 1, 4097, payload, 4097);
    CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    /* A length that runs past the buffer is refused before anything is read there. */
    n = raw_record(img, KS_COMMIT_MAGIC, "OKKS", 2, 1, (uint16_t)plen, payload, plen);
    img[14] = 0x00;
    img[15] = 0x10; /* 4096 */
    CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    img[14] = 0xFF;
    img[15] = 0xFF;
    CHECK_EQ_INT(ks_decode(img, n, &dec), KS_EBADRECORD);
    CHECK_EQ_INT(ks_decode(img, 15, &dec), KS_EBADRECORD);
    CHECK_EQ_INT(ks_decode(img, 0, &dec), KS_EBADRECORD);
}

UNIT_TEST(test_keystore_decode_of_mutated_images_never_accepts_a_noncanonical_record)
{
    /* Random byte changes with the hash fixed up: a record that still decodes must re-encode to
     * exactly the same bytes (so every accepted field was in range), and nothing may crash. */
    static struct ks_state dec;
    size_t n, n2;
    uint32_t x = 12345;
    int accepted = 0;
    st_factory(&st_a, 5);
    st_set_ak(&st_a, 2);
    st_set_cloud(&st_a, 3, KS_PLATFORM_MOSQUITTO, 40);
    CHECK_EQ_INT(ks_encode(&st_a, 0xFF, img2, sizeof img2, &n), 0);
    size_t plen0 = (size_t)img2[14] | ((size_t)img2[15] << 8);
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(img, img2, n);
        memset(img + n, 0xFF, 64);
        int changes = 1 + iter % 3;
        for (int c = 0; c < changes; c++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t off = 12 + x % (n - 12 - 32);
            if (off >= 16 + plen0 && off < 16 + align4(plen0)) {
                continue; /* padding is outside the hash and the checks */
            }
            img[off] = (uint8_t)(x >> 24);
        }
        size_t plen = (size_t)img[14] | ((size_t)img[15] << 8);
        if (16 + align4(plen) + 32 <= n + 64) {
            rehash(img);
        }
        if (ks_decode(img, n + 64, &dec) == 0) {
            accepted++;
            CHECK_EQ_INT(ks_encode(&dec, 0xFF, img2 + 8192, 8192, &n2), 0);
            /* Equal except the padding before the hash, which no rule covers. */
            if (memcmp(img2 + 8192, img, 16 + plen) != 0 || memcmp(img2 + 8192 + n2 - 32, img + n2 - 32, 32) != 0) {
                fprintf(stderr, "iteration %d: accepted a record that does not re-encode to itself\n", iter);
                CHECK(0);
                break;
            }
        }
    }
    CHECK(accepted > 0); /* some mutations only change values (names, keys, versions) */
}

/* ------------------------------------------------------------------------------ cloud codec */

static void cloud_max(struct ks_cloud *c)
{
    memset(c, 0, sizeof *c);
    c->version = 0xFFFFFFFFu;
    c->platform = KS_PLATFORM_AWS_IOT;
    field_fill(c->endpoint, &c->endpoint_len, KS_ENDPOINT_MAX, 1);
    field_fill(c->client_id, &c->client_id_len, KS_CLIENT_ID_MAX, 2);
    field_fill(c->username, &c->username_len, KS_USERNAME_MAX, 3);
    c->secret_len = KS_SECRET_MAX;
    pattern(c->secret, KS_SECRET_MAX, 9);
}

UNIT_TEST(test_keystore_cloud_round_trip_each_field_at_max)
{
    static struct ks_cloud c, d;
    static uint8_t wire[4096];
    size_t n;
    cloud_max(&c);
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), 0);
    CHECK_EQ_INT(n, 3597); /* protocol §3.5: 4 + 1 + 3*130 + 3202 */
    CHECK_EQ_INT(le32(wire), 0xFFFFFFFFu);
    CHECK_EQ_INT(wire[4], 2);
    CHECK_EQ_INT(wire[5] | (wire[6] << 8), 128);
    CHECK_EQ_INT(ks_cloud_decode(wire, n, &d), 0);
    CHECK(cloud_equal(&c, &d));
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, n - 1, &n), CODEC_ENOSPACE);
    /* All fields empty is the smallest credential. */
    memset(&c, 0, sizeof c);
    c.version = 1;
    c.platform = KS_PLATFORM_MOSQUITTO;
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), 0);
    CHECK_EQ_INT(n, 13);
    CHECK_EQ_INT(ks_cloud_decode(wire, n, &d), 0);
    CHECK(cloud_equal(&c, &d));
}

UNIT_TEST(test_keystore_cloud_field_one_over_max_is_rejected_and_leaves_output_unchanged)
{
    static struct ks_cloud c, d, canary;
    static uint8_t wire[4200];
    const uint16_t maxes[4] = {KS_ENDPOINT_MAX, KS_CLIENT_ID_MAX, KS_USERNAME_MAX, KS_SECRET_MAX};
    size_t n;
    for (int f = 0; f < 4; f++) {
        /* Hand-built wire form with field f one byte over its maximum (bytes present). */
        size_t pos = 0;
        put32(wire, 1);
        wire[4] = KS_PLATFORM_MOSQUITTO;
        pos = 5;
        for (int g = 0; g < 4; g++) {
            uint16_t l = (uint16_t)(g == f ? maxes[g] + 1 : 3);
            wire[pos] = (uint8_t)l;
            wire[pos + 1] = (uint8_t)(l >> 8);
            memset(wire + pos + 2, 'z', l);
            pos += 2u + l;
        }
        memset(&d, 0x5A, sizeof d);
        memcpy(&canary, &d, sizeof d);
        CHECK_EQ_INT(ks_cloud_decode(wire, pos, &d), CODEC_EBADLEN);
        CHECK_MEM(&d, &canary, sizeof d);
        /* The encoder refuses the same field. */
        cloud_max(&c);
        if (f == 0) {
            c.endpoint_len++;
        } else if (f == 1) {
            c.client_id_len++;
        } else if (f == 2) {
            c.username_len++;
        } else {
            c.secret_len++;
        }
        CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), CODEC_EBADFIELD);
    }
}

UNIT_TEST(test_keystore_cloud_trailing_bytes_and_every_truncation_rejected)
{
    static struct ks_cloud c, d, canary;
    static uint8_t wire[512];
    size_t n;
    cloud_make(&c, 4, KS_PLATFORM_MOSQUITTO, 40);
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), 0);
    memset(&d, 0x33, sizeof d);
    memcpy(&canary, &d, sizeof d);
    wire[n] = 0;
    CHECK_EQ_INT(ks_cloud_decode(wire, n + 1, &d), CODEC_EBADLEN);
    CHECK_MEM(&d, &canary, sizeof d);
    for (size_t cut = 0; cut < n; cut++) {
        CHECK_EQ_INT(ks_cloud_decode(wire, cut, &d), CODEC_EBADLEN);
    }
    CHECK_MEM(&d, &canary, sizeof d);
    CHECK_EQ_INT(ks_cloud_decode(wire, n, &d), 0);
    CHECK(cloud_equal(&c, &d));
}

UNIT_TEST(test_keystore_cloud_zero_version_and_bad_platform_rejected)
{
    static struct ks_cloud c, d, canary;
    static uint8_t wire[512];
    size_t n;
    const uint8_t bad_platforms[] = {0, 3, 0x7F, 0xFF};
    cloud_make(&c, 1, KS_PLATFORM_AWS_IOT, 16);
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), 0);
    memset(&d, 0x77, sizeof d);
    memcpy(&canary, &d, sizeof d);
    put32(wire, 0);
    CHECK_EQ_INT(ks_cloud_decode(wire, n, &d), CODEC_EBADFIELD);
    put32(wire, 1);
    for (size_t i = 0; i < sizeof bad_platforms; i++) {
        wire[4] = bad_platforms[i];
        CHECK_EQ_INT(ks_cloud_decode(wire, n, &d), CODEC_EBADFIELD);
    }
    CHECK_MEM(&d, &canary, sizeof d);
    c.version = 0;
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), CODEC_EBADFIELD);
    c.version = 1;
    c.platform = 3;
    CHECK_EQ_INT(ks_cloud_encode(&c, wire, sizeof wire, &n), CODEC_EBADFIELD);
}

/* ------------------------------------------------------------------------------ boot rule (§2) */

static int boot(struct ks_state *st, struct ks_boot_report *rep)
{
    host_flash_log_clear();
    return ks_load(st, rep);
}

UNIT_TEST(test_keystore_factory_image_boots_with_pk)
{
    struct ks_boot_report rep;
    host_flash_reset();
    st_factory(&st_a, 1);
    plant(AREA_B, &st_a);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK(st_equal(&st_got, &st_a));
    CHECK(st_got.has_pk && !st_got.has_ak);
    CHECK_EQ_INT(rep.active_area, AREA_B);
    CHECK_EQ_INT(ks_active_area(), AREA_B);
    CHECK_EQ_INT(rep.area_valid[AREA_A], 0);
    CHECK_EQ_INT(rep.area_valid[AREA_B], 1);
    CHECK_EQ_INT(rep.area_blank[AREA_A], 1);
    CHECK_EQ_INT(rep.area_blank[AREA_B], 0);
    CHECK_EQ_INT(rep.scrubbed, 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
}

UNIT_TEST(test_keystore_boot_higher_generation_wins_and_a_wins_a_tie)
{
    struct ks_boot_report rep;
    const uint32_t gens[3][2] = {{5, 6}, {7, 6}, {4, 4}};
    const int winner[3] = {AREA_B, AREA_A, AREA_A};
    for (int i = 0; i < 3; i++) {
        host_flash_reset();
        st_factory(&st_a, gens[i][0]);
        st_set_ak(&st_a, 1);
        st_factory(&st_b, gens[i][1]);
        st_set_ak(&st_b, 2);
        plant(AREA_A, &st_a);
        plant(AREA_B, &st_b);
        CHECK_EQ_INT(boot(&st_got, &rep), 0);
        CHECK_EQ_INT(rep.active_area, winner[i]);
        CHECK(st_equal(&st_got, winner[i] == AREA_A ? &st_a : &st_b));
        CHECK(rep.area_valid[0] && rep.area_valid[1]);
        CHECK_EQ_INT(host_flash_op_count(), 0); /* both valid without PK: nothing to scrub */
    }
}

/* Older valid record in A, newer one in B spoiled by `spoil`; the boot must pick A. */
static void boot_falls_back_to_a(void (*spoil)(uint8_t *image, size_t n), int expect_scrub)
{
    struct ks_boot_report rep;
    size_t n;
    host_flash_reset();
    st_factory(&st_a, 2);
    st_set_ak(&st_a, 1);
    plant(AREA_A, &st_a);
    st_factory(&st_b, 3);
    st_set_ak(&st_b, 2);
    CHECK_EQ_INT(ks_encode(&st_b, 0xFF, img, sizeof img, &n), 0);
    spoil(img, n);
    plant_raw(AREA_B, img, n);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK_EQ_INT(rep.active_area, AREA_A);
    CHECK(st_equal(&st_got, &st_a));
    CHECK_EQ_INT(rep.area_valid[AREA_B], 0);
    CHECK_EQ_INT(rep.scrubbed, expect_scrub);
    /* Boot rule 3: A has no PK, so B, neither blank nor a valid record, is erased. */
    CHECK_EQ_INT(host_flash_raw_is_blank(AREA_B), expect_scrub);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    CHECK_EQ_INT(rep.scrubbed, 0);
}

static void spoil_torn_commit(uint8_t *image, size_t n)
{
    (void)n;
    put32(image, 0x3CC3A5FFu); /* programming stopped half way through the commit word */
}

static void spoil_blank_commit(uint8_t *image, size_t n)
{
    (void)n;
    put32(image, KS_COMMIT_BLANK);
}

static void spoil_invalidated(uint8_t *image, size_t n)
{
    (void)n;
    put32(image, KS_COMMIT_INVALID);
}

static void spoil_hash(uint8_t *image, size_t n)
{
    image[n - 1] ^= 1;
}

static void spoil_payload(uint8_t *image, size_t n)
{
    (void)n;
    image[20] ^= 0x80;
}

static void spoil_magic(uint8_t *image, size_t n)
{
    (void)n;
    image[4] = 'X';
    rehash(image);
}

static void spoil_unknown_tag(uint8_t *image, size_t n)
{
    (void)n;
    image[16] = 0x05; /* PRODUCT's tag becomes an unknown one */
    rehash(image);
}

static void spoil_payload_too_long(uint8_t *image, size_t n)
{
    (void)n;
    image[14] = 0x01;
    image[15] = 0x10; /* 4097 */
}

UNIT_TEST(test_keystore_boot_torn_or_blank_commit_word_falls_back)
{
    boot_falls_back_to_a(spoil_torn_commit, 1);
    boot_falls_back_to_a(spoil_blank_commit, 1);
}

UNIT_TEST(test_keystore_boot_invalidated_area_is_skipped_and_erased)
{
    boot_falls_back_to_a(spoil_invalidated, 1);
}

UNIT_TEST(test_keystore_boot_bad_hash_is_invalid)
{
    boot_falls_back_to_a(spoil_hash, 1);
    boot_falls_back_to_a(spoil_payload, 1);
}

UNIT_TEST(test_keystore_boot_bad_magic_is_invalid)
{
    boot_falls_back_to_a(spoil_magic, 1);
}

UNIT_TEST(test_keystore_boot_unknown_tag_is_invalid)
{
    boot_falls_back_to_a(spoil_unknown_tag, 1);
}

UNIT_TEST(test_keystore_boot_payload_too_long_is_invalid)
{
    boot_falls_back_to_a(spoil_payload_too_long, 1);
}

UNIT_TEST(test_keystore_boot_both_blank_reports_no_valid_area)
{
    struct ks_boot_report rep;
    host_flash_reset();
    memset(&st_got, 0x5A, sizeof st_got);
    CHECK_EQ_INT(boot(&st_got, &rep), KS_ENOVALID);
    CHECK_EQ_INT(rep.active_area, -1);
    CHECK_EQ_INT(ks_active_area(), -1);
    CHECK(rep.area_blank[0] && rep.area_blank[1]);
    CHECK(!rep.area_valid[0] && !rep.area_valid[1]);
    CHECK_EQ_INT(st_got.has_pk | st_got.has_ak | st_got.has_cloud | st_got.po_name_len, 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    CHECK_EQ_INT(ks_load(&st_got, NULL), KS_ENOVALID);
}

UNIT_TEST(test_keystore_boot_garbage_in_both_areas_reports_no_valid_and_erases_nothing)
{
    struct ks_boot_report rep;
    uint8_t hdr[16];
    for (uint32_t seed = 1; seed <= 64; seed++) {
        host_flash_reset();
        plant_garbage(AREA_A, seed);
        plant_garbage(AREA_B, seed * 7919u);
        /* Half of the runs: a committed, well-formed header with a garbage length in front. */
        if (seed & 1u) {
            CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, hdr, 16), 0);
            put32(hdr, KS_COMMIT_MAGIC);
            memcpy(hdr + 4, "OKKS", 4);
            hdr[12] = 1;
            hdr[13] = 0;
            CHECK_EQ_INT(host_flash_raw_write(AREA_A, 0, hdr, 16), 0);
        }
        CHECK_EQ_INT(host_flash_snapshot(snap1, sizeof snap1), 0);
        CHECK_EQ_INT(boot(&st_got, &rep), KS_ENOVALID);
        CHECK_EQ_INT(host_flash_op_count(), 0);
        CHECK_EQ_INT(host_flash_snapshot(snap2, sizeof snap2), 0);
        CHECK_MEM(snap1, snap2, SNAP_SIZE);
    }
}

UNIT_TEST(test_keystore_boot_scrubs_pk_left_in_other_area)
{
    struct ks_boot_report rep;
    int kind, area;
    uint32_t off;
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    st_factory(&st_a, 2);
    st_set_ak(&st_a, 1);
    plant(AREA_A, &st_a);
    CHECK(flash_contains(factory_pk, sizeof factory_pk));
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK(st_equal(&st_got, &st_a));
    CHECK_EQ_INT(rep.active_area, AREA_A);
    CHECK_EQ_INT(rep.area_valid[AREA_B], 1);
    CHECK_EQ_INT(rep.scrubbed, 1);
    CHECK_EQ_INT(host_flash_op_count(), 1);
    CHECK_EQ_INT(host_flash_op_at(0, &kind, &area, &off), 0);
    CHECK_EQ_INT(kind, HOST_FLASH_OP_ERASE);
    CHECK_EQ_INT(area, AREA_B);
    CHECK(host_flash_raw_is_blank(AREA_B));
    CHECK(!flash_contains(factory_pk, sizeof factory_pk));
}

UNIT_TEST(test_keystore_boot_erases_garbage_spare_only_when_active_has_no_pk)
{
    struct ks_boot_report rep;
    /* Active without PK: garbage in the spare area is erased. */
    host_flash_reset();
    st_factory(&st_a, 2);
    st_set_ak(&st_a, 1);
    plant(AREA_A, &st_a);
    plant_garbage(AREA_B, 99);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK_EQ_INT(rep.scrubbed, 1);
    CHECK(host_flash_raw_is_blank(AREA_B));
    /* Active with PK (factory image): garbage in the spare area is left alone. */
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    plant_garbage(AREA_A, 98);
    CHECK_EQ_INT(host_flash_snapshot(snap1, sizeof snap1), 0);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK(st_equal(&st_got, &st_b));
    CHECK_EQ_INT(rep.scrubbed, 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    CHECK_EQ_INT(host_flash_snapshot(snap2, sizeof snap2), 0);
    CHECK_MEM(snap1, snap2, SNAP_SIZE);
}

UNIT_TEST(test_keystore_boot_keeps_valid_spare_without_pk)
{
    struct ks_boot_report rep;
    host_flash_reset();
    st_factory(&st_a, 3);
    st_set_ak(&st_a, 1);
    st_set_cloud(&st_a, 2, KS_PLATFORM_MOSQUITTO, 32);
    st_factory(&st_b, 2);
    st_set_ak(&st_b, 1);
    plant(AREA_A, &st_a);
    plant(AREA_B, &st_b);
    CHECK_EQ_INT(boot(&st_got, &rep), 0);
    CHECK(st_equal(&st_got, &st_a));
    CHECK_EQ_INT(rep.scrubbed, 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
}

UNIT_TEST(test_keystore_boot_flash_read_error_reports_eflash)
{
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    host_flash_cut_at(1, HOST_FLASH_CUT_BEFORE);
    CHECK_EQ_INT(port_flash_erase(AREA_A), -EIO); /* power is gone: reads fail too */
    CHECK_EQ_INT(ks_load(&st_got, NULL), KS_EFLASH);
    CHECK_EQ_INT(st_got.has_pk, 0);
    host_flash_power_on();
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
}

/* ------------------------------------------------------------------------------ commit (§3) */

UNIT_TEST(test_keystore_commit_writes_other_area_and_keeps_old_intact)
{
    struct ks_boot_report rep;
    uint8_t before_a[AREA_SIZE];
    host_flash_reset();
    st_factory(&st_a, 2);
    st_set_ak(&st_a, 1);
    plant(AREA_A, &st_a);
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, before_a, sizeof before_a), 0);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 2);
    CHECK_EQ_INT(ks_commit(&st_got), 0);
    CHECK_EQ_INT(st_got.generation, 3);
    CHECK_EQ_INT(ks_active_area(), AREA_B);
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, img, sizeof img), 0);
    CHECK_MEM(img, before_a, sizeof before_a);
    CHECK_EQ_INT(boot(&st_b, &rep), 0);
    CHECK_EQ_INT(rep.active_area, AREA_B);
    CHECK(st_equal(&st_b, &st_got));
    CHECK(rep.area_valid[AREA_A]);
    CHECK_EQ_INT(host_flash_op_count(), 0);
}

UNIT_TEST(test_keystore_commit_programs_words_in_address_order_commit_word_last_then_scrubs_pk)
{
    int kind, area;
    uint32_t off, ops, expect_off = 4;
    size_t n;
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 1);
    host_flash_log_clear();
    CHECK_EQ_INT(ks_commit(&st_got), 0);
    CHECK_EQ_INT(ks_encode(&st_got, 0xFF, img, sizeof img, &n), 0);
    ops = host_flash_op_count();
    CHECK_EQ_INT(ops, 1 + (n - 4) / 4 + 1 + 1);
    CHECK_EQ_INT(host_flash_op_at(0, &kind, &area, &off), 0);
    CHECK(kind == HOST_FLASH_OP_ERASE && area == AREA_A);
    for (uint32_t i = 1; i + 2 < ops; i++) {
        CHECK_EQ_INT(host_flash_op_at(i, &kind, &area, &off), 0);
        CHECK(kind == HOST_FLASH_OP_PROGRAM && area == AREA_A);
        CHECK_EQ_INT(off, expect_off);
        expect_off += 4;
    }
    CHECK_EQ_INT(host_flash_op_at(ops - 2, &kind, &area, &off), 0);
    CHECK(kind == HOST_FLASH_OP_PROGRAM && area == AREA_A && off == 0);
    CHECK_EQ_INT(host_flash_op_at(ops - 1, &kind, &area, &off), 0);
    CHECK(kind == HOST_FLASH_OP_ERASE && area == AREA_B);
    /* The flash holds exactly the encoded record, and no PK anywhere. */
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, img2, sizeof img2), 0);
    CHECK_MEM(img2, img, n);
    CHECK(host_flash_raw_is_blank(AREA_B));
    CHECK(!flash_contains(factory_pk, sizeof factory_pk));
}

UNIT_TEST(test_keystore_commit_with_no_valid_area_writes_area_a_generation_1)
{
    host_flash_reset();
    plant_garbage(AREA_B, 5);
    CHECK_EQ_INT(ks_load(&st_got, NULL), KS_ENOVALID);
    st_factory(&st_a, 77);
    CHECK_EQ_INT(ks_commit(&st_a), 0);
    CHECK_EQ_INT(st_a.generation, 1);
    CHECK_EQ_INT(ks_active_area(), AREA_A);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    CHECK(st_equal(&st_got, &st_a));
}

UNIT_TEST(test_keystore_commit_rejects_bad_state_without_touching_flash)
{
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    CHECK_EQ_INT(host_flash_snapshot(snap1, sizeof snap1), 0);
    host_flash_log_clear();
    st_factory(&st_a, 1);
    st_a.po_name_len = 0;
    CHECK_EQ_INT(ks_commit(&st_a), KS_EBADRECORD);
    st_factory(&st_a, 1);
    st_set_cloud(&st_a, 1, 9, 8);
    CHECK_EQ_INT(ks_commit(&st_a), KS_EBADRECORD);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    CHECK_EQ_INT(host_flash_snapshot(snap2, sizeof snap2), 0);
    CHECK_MEM(snap1, snap2, SNAP_SIZE);
}

UNIT_TEST(test_keystore_commit_read_back_mismatch_leaves_target_uncommitted)
{
    uint8_t w[4];
    host_flash_reset();
    st_factory(&st_b, 1);
    plant(AREA_B, &st_b);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 1);
    /* A worn cell in area A: bit 2 of byte 4 ('O' = 0x4F of the magic) cannot be erased to 1. */
    CHECK_EQ_INT(host_flash_set_stuck_zero(AREA_A, 4, 0x04), 0);
    CHECK_EQ_INT(ks_commit(&st_got), KS_EVERIFY);
    CHECK_EQ_INT(host_flash_raw_read(AREA_A, 0, w, 4), 0);
    CHECK_EQ_INT(le32(w), KS_COMMIT_BLANK);
    CHECK_EQ_INT(ks_active_area(), AREA_B);
    host_flash_set_stuck_zero(AREA_A, 0, 0);
    CHECK_EQ_INT(ks_load(&st_a, NULL), 0);
    CHECK(st_equal(&st_a, &st_b)); /* the factory record still rules, PK intact */
}

UNIT_TEST(test_keystore_invalidate_falls_back_to_previous_record)
{
    struct ks_boot_report rep;
    uint8_t w[4];
    host_flash_reset();
    st_factory(&st_a, 3);
    st_set_ak(&st_a, 1);
    st_set_cloud(&st_a, 1, KS_PLATFORM_MOSQUITTO, 20);
    plant(AREA_A, &st_a);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_cloud(&st_got, 2, KS_PLATFORM_AWS_IOT, 900);
    CHECK_EQ_INT(ks_commit(&st_got), 0);
    CHECK_EQ_INT(ks_active_area(), AREA_B);
    host_flash_log_clear();
    CHECK_EQ_INT(ks_invalidate_active(), 0);
    CHECK_EQ_INT(host_flash_op_count(), 1); /* one program of the commit word, no erase */
    CHECK_EQ_INT(ks_active_area(), AREA_A);
    CHECK_EQ_INT(host_flash_raw_read(AREA_B, 0, w, 4), 0);
    CHECK_EQ_INT(le32(w), KS_COMMIT_INVALID);
    CHECK_EQ_INT(boot(&st_b, &rep), 0);
    CHECK_EQ_INT(rep.active_area, AREA_A);
    CHECK(st_equal(&st_b, &st_a));
    CHECK_EQ_INT(rep.scrubbed, 1); /* the invalidated record is garbage in the spare area */
    CHECK(host_flash_raw_is_blank(AREA_B));
}

UNIT_TEST(test_keystore_invalidate_without_fallback_is_refused_and_changes_nothing)
{
    /* Only one valid record; the other area blank, then garbage, then both blank. */
    for (int k = 0; k < 3; k++) {
        host_flash_reset();
        if (k < 2) {
            st_factory(&st_a, 2);
            st_set_ak(&st_a, 1);
            plant(AREA_A, &st_a);
        }
        if (k == 1) {
            plant_garbage(AREA_B, 17);
        }
        CHECK_EQ_INT(host_flash_snapshot(snap1, sizeof snap1), 0);
        host_flash_log_clear();
        CHECK_EQ_INT(ks_invalidate_active(), KS_ENOVALID);
        CHECK_EQ_INT(host_flash_op_count(), 0);
        CHECK_EQ_INT(host_flash_snapshot(snap2, sizeof snap2), 0);
        CHECK_MEM(snap1, snap2, SNAP_SIZE);
    }
}

/* ------------------------------------------------------------------------------ power cuts (§4) */

struct scenario {
    const char *name;
    void (*plant)(void);
    int (*update)(void);
    int invalidation; /* the update is ks_invalidate_active, not a commit */
};

static struct ks_state sw_st; /* the device's one struct ks_state */

static void plant_factory(void)
{
    st_factory(&st_a, 1);
    plant(AREA_B, &st_a);
}

static int update_provision(void)
{
    int rc = ks_load(&sw_st, NULL);
    if (rc != 0 || !sw_st.has_pk) {
        return -1000;
    }
    st_set_ak(&sw_st, 1);
    return ks_commit(&sw_st);
}

/* Both areas valid: the target of the next commit (A) holds the older record. */
static void plant_two_records(void)
{
    st_factory(&st_a, 4);
    st_set_ak(&st_a, 1);
    st_set_cloud(&st_a, 1, KS_PLATFORM_MOSQUITTO, 24);
    plant(AREA_A, &st_a);
    st_factory(&st_b, 5);
    st_set_ak(&st_b, 1);
    st_set_cloud(&st_b, 2, KS_PLATFORM_MOSQUITTO, 24);
    plant(AREA_B, &st_b);
}

static int update_ak_rotation(void)
{
    int rc = ks_load(&sw_st, NULL);
    if (rc != 0 || sw_st.ak_version != 1) {
        return -1000;
    }
    st_set_ak(&sw_st, 2);
    return ks_commit(&sw_st);
}

/* Cloud update and migration to the other platform, with the largest secret. */
static int update_cloud(void)
{
    int rc = ks_load(&sw_st, NULL);
    if (rc != 0 || sw_st.cloud.version != 2) {
        return -1000;
    }
    st_set_cloud(&sw_st, 3, KS_PLATFORM_AWS_IOT, KS_SECRET_MAX);
    return ks_commit(&sw_st);
}

static int update_invalidate(void)
{
    return ks_invalidate_active();
}

static const struct scenario scn_provision = {"provisioning", plant_factory, update_provision, 0};
static const struct scenario scn_ak_rotation = {"ak_rotation", plant_two_records, update_ak_rotation, 0};
static const struct scenario scn_cloud = {"cloud_update", plant_two_records, update_cloud, 0};
static const struct scenario scn_invalidate = {"invalidation", plant_two_records, update_invalidate, 1};

struct sweep {
    const struct scenario *sc;
    uint32_t n_ops;     /* flash operations of the clean update */
    uint32_t commit_op; /* 1-based number of the commit-word program (invalidation: its only op) */
    int old_area;       /* area active before the update */
    struct ks_state before, after;
    uint8_t snap_init[SNAP_SIZE];
    uint8_t snap_landed[SNAP_SIZE]; /* after the clean update and one boot */
};

static struct sweep sw;
static struct ks_state sw_boot, sw_boot2;
static uint8_t sw_tmp[SNAP_SIZE], sw_tmp2[SNAP_SIZE];

static const int cut_modes[3] = {HOST_FLASH_CUT_BEFORE, HOST_FLASH_CUT_TORN, HOST_FLASH_CUT_AFTER};
static const char *const cut_mode_names[4] = {"none", "before", "torn", "after"};
#define TORN_SEEDS 2u

static int sweep_prepare(const struct scenario *sc)
{
    struct ks_boot_report rep;
    int kind, area;
    uint32_t off;
    memset(&sw, 0, sizeof sw);
    sw.sc = sc;
    host_flash_reset();
    sc->plant();
    CHECK_EQ_INT(host_flash_snapshot(sw.snap_init, SNAP_SIZE), 0);
    CHECK_EQ_INT(boot(&sw.before, &rep), 0);
    CHECK_EQ_INT(host_flash_op_count(), 0);
    sw.old_area = rep.active_area;
    host_flash_log_clear();
    CHECK_EQ_INT(sc->update(), 0);
    sw.n_ops = host_flash_op_count();
    for (uint32_t i = 0; i < sw.n_ops; i++) {
        CHECK_EQ_INT(host_flash_op_at(i, &kind, &area, &off), 0);
        if (kind == HOST_FLASH_OP_PROGRAM && off == 0) {
            CHECK_EQ_INT(sw.commit_op, 0); /* exactly one commit-word program */
            sw.commit_op = i + 1;
        }
    }
    CHECK(sw.commit_op != 0);
    CHECK_EQ_INT(boot(&sw.after, &rep), 0);
    CHECK(!st_equal(&sw.before, &sw.after));
    CHECK_EQ_INT(host_flash_snapshot(sw.snap_landed, SNAP_SIZE), 0);
    return sw.n_ops > 0 && sw.commit_op != 0;
}

/* What §4 says the device boots into after a cut at op n in this mode: 1 = new, 0 = old. */
static int expect_new(uint32_t n, int mode)
{
    if (sw.sc->invalidation) {
        uint8_t w[4];
        /* A torn invalidation that cleared no bit yet leaves the record committed ("new"). */
        CHECK_EQ_INT(host_flash_raw_read(sw.old_area, 0, w, 4), 0);
        return le32(w) != KS_COMMIT_MAGIC;
    }
    return n > sw.commit_op || (n == sw.commit_op && mode == HOST_FLASH_CUT_AFTER);
}

/* Boot after a cut and check §4's invariants; returns NULL or why it failed. */
static const char *check_boot(int want_new, struct ks_state *booted)
{
    struct ks_boot_report rep;
    if (boot(booted, &rep) != 0) {
        return "no valid record after the cut (neither old nor new)";
    }
    if (!st_equal(booted, want_new ? &sw.after : &sw.before)) {
        return st_equal(booted, want_new ? &sw.before : &sw.after) ? "booted into the wrong one of old/new"
                                                                   : "booted into a state that is neither old nor new";
    }
    if (!booted->has_pk && flash_contains(factory_pk, sizeof factory_pk)) {
        return "PK still in flash after the boot rule ran";
    }
    if (booted->has_pk && booted->has_ak) {
        return "PK and AK in one record";
    }
    CHECK_EQ_INT(host_flash_snapshot(sw_tmp, SNAP_SIZE), 0);
    if (boot(&sw_boot2, &rep) != 0 || !st_equal(&sw_boot2, booted)) {
        return "second boot loaded a different state";
    }
    if (host_flash_op_count() != 0 || rep.scrubbed) {
        return "second boot changed flash";
    }
    CHECK_EQ_INT(host_flash_snapshot(sw_tmp2, SNAP_SIZE), 0);
    if (memcmp(sw_tmp, sw_tmp2, SNAP_SIZE) != 0) {
        return "second boot changed flash content";
    }
    return NULL;
}

/* Retry the update if the device came back on the old state, then compare with a clean landing. */
static const char *finish(int booted_new)
{
    struct ks_boot_report rep;
    if (!booted_new) {
        host_flash_log_clear();
        if (sw.sc->update() != 0) {
            return "retried update failed";
        }
    }
    if (boot(&sw_boot2, &rep) != 0 || !st_equal(&sw_boot2, &sw.after)) {
        return "update did not land after the retry";
    }
    CHECK_EQ_INT(host_flash_snapshot(sw_tmp, SNAP_SIZE), 0);
    if (memcmp(sw_tmp, sw.snap_landed, SNAP_SIZE) != 0) {
        return "flash after landing differs from a clean update";
    }
    return NULL;
}

/* Cut the update at op n; returns NULL or why it failed. */
static const char *cut_update(uint32_t n, int mode, uint32_t seed)
{
    CHECK_EQ_INT(host_flash_restore(sw.snap_init, SNAP_SIZE), 0);
    host_flash_power_on();
    host_flash_log_clear();
    host_flash_set_torn_seed(seed);
    host_flash_cut_at(n, mode);
    if (sw.sc->update() == 0) {
        return "update reported success although power was cut";
    }
    if (!host_flash_cut_fired()) {
        return "the cut did not fire";
    }
    host_flash_power_on();
    return NULL;
}

static int run_sweep(const struct scenario *sc)
{
    uint32_t failed_points = 0, runs = 0;
    char failed_list[512] = "";
    size_t fl = 0;
    if (!sweep_prepare(sc)) {
        return 0;
    }
    for (uint32_t n = 1; n <= sw.n_ops; n++) {
        int point_failed = 0;
        for (int m = 0; m < 3; m++) {
            uint32_t seeds = cut_modes[m] == HOST_FLASH_CUT_TORN ? TORN_SEEDS : 1u;
            for (uint32_t seed = 1; seed <= seeds; seed++) {
                const char *why = cut_update(n, cut_modes[m], seed);
                int want_new = 0;
                runs++;
                if (why == NULL) {
                    want_new = expect_new(n, cut_modes[m]);
                    why = check_boot(want_new, &sw_boot);
                }
                if (why == NULL) {
                    why = finish(want_new);
                }
                if (why != NULL) {
                    if (!point_failed) {
                        fprintf(stderr, "%s: cut at op %u/%u (%s, seed %u): %s\n", sc->name, n, sw.n_ops,
                                cut_mode_names[cut_modes[m]], seed, why);
                    }
                    point_failed = 1;
                }
            }
        }
        if (point_failed) {
            failed_points++;
            if (fl + 12 < sizeof failed_list) {
                fl += (size_t)snprintf(failed_list + fl, sizeof failed_list - fl, " %u", n);
            }
        }
    }
    if (failed_points != 0) {
        fprintf(stderr, "%s: %u/%u cut points failed:%s\n", sc->name, failed_points, sw.n_ops, failed_list);
    }
    printf("%s: %u/%u cut points failed (%u runs, commit word at op %u)\n", sc->name, failed_points, sw.n_ops,
           runs, sw.commit_op);
    CHECK_EQ_INT(failed_points, 0);
    return (int)runs;
}

UNIT_TEST(test_keystore_cut_sweep_provisioning_boots_factory_or_ak_never_both)
{
    CHECK(run_sweep(&scn_provision) > 0);
    /* The clean update is erase A, the record words, the commit word, the PK scrub of B. */
    CHECK_EQ_INT(sw.commit_op, sw.n_ops - 1);
    CHECK(sw.before.has_pk && !sw.after.has_pk && sw.after.has_ak);
}

UNIT_TEST(test_keystore_cut_sweep_ak_rotation_boots_old_or_new_ak)
{
    CHECK(run_sweep(&scn_ak_rotation) > 0);
    CHECK_EQ_INT(sw.commit_op, sw.n_ops); /* no PK anywhere: no scrub */
    CHECK_EQ_INT(sw.after.ak_version, 2);
}

UNIT_TEST(test_keystore_cut_sweep_cloud_update_boots_old_or_new_credential)
{
    size_t n;
    CHECK(run_sweep(&scn_cloud) > 0);
    /* The largest credential: the erase, every word of the record, the commit word. */
    CHECK_EQ_INT(ks_encode(&sw.after, 0xFF, img, sizeof img, &n), 0);
    CHECK(n > 3300);
    CHECK_EQ_INT(sw.n_ops, 1 + (n - 4) / 4 + 1);
    CHECK_EQ_INT(sw.after.cloud.platform, KS_PLATFORM_AWS_IOT);
}

UNIT_TEST(test_keystore_cut_sweep_invalidation_boots_new_or_previous)
{
    CHECK(run_sweep(&scn_invalidate) > 0);
    CHECK_EQ_INT(sw.n_ops, 1);
    CHECK_EQ_INT(sw.after.cloud.version, 1);
}

UNIT_TEST(test_keystore_second_cut_during_boot_scrub_boots_the_same_state)
{
    const struct scenario *const scs[4] = {&scn_provision, &scn_ak_rotation, &scn_cloud, &scn_invalidate};
    uint32_t first_points = 0, second_runs = 0, failed = 0;
    static struct ks_state first;
    static uint8_t s1[SNAP_SIZE], s2[SNAP_SIZE];
    for (int i = 0; i < 4; i++) {
        if (!sweep_prepare(scs[i])) {
            continue;
        }
        for (uint32_t n = 1; n <= sw.n_ops; n++) {
            for (int m = 0; m < 3; m++) {
                uint32_t boot_ops;
                if (cut_update(n, cut_modes[m], 1) != NULL) {
                    failed++;
                    continue;
                }
                /* The first boot after the cut, clean: how many operations does the boot rule do? */
                CHECK_EQ_INT(host_flash_snapshot(s1, SNAP_SIZE), 0);
                if (boot(&first, NULL) != 0) {
                    failed++;
                    continue;
                }
                boot_ops = host_flash_op_count();
                CHECK_EQ_INT(host_flash_snapshot(s2, SNAP_SIZE), 0);
                if (boot_ops == 0) {
                    continue;
                }
                first_points++;
                for (uint32_t n2 = 1; n2 <= boot_ops; n2++) {
                    for (int m2 = 0; m2 < 3; m2++) {
                        const char *why = NULL;
                        CHECK_EQ_INT(host_flash_restore(s1, SNAP_SIZE), 0);
                        host_flash_log_clear();
                        host_flash_set_torn_seed(n * 31u + (uint32_t)m);
                        host_flash_cut_at(n2, cut_modes[m2]);
                        second_runs++;
                        if (ks_load(&sw_boot, NULL) == 0) {
                            why = "boot reported success although its scrub was cut";
                        }
                        host_flash_power_on();
                        if (why == NULL) {
                            why = check_boot(st_equal(&first, &sw.after), &sw_boot);
                        }
                        if (why == NULL && !st_equal(&sw_boot, &first)) {
                            why = "second boot chose another record than the first";
                        }
                        if (why == NULL) {
                            CHECK_EQ_INT(host_flash_snapshot(sw_tmp, SNAP_SIZE), 0);
                            if (memcmp(sw_tmp, s2, SNAP_SIZE) != 0) {
                                why = "flash differs from an uncut boot";
                            }
                        }
                        if (why != NULL) {
                            failed++;
                            fprintf(stderr, "%s: cut at op %u (%s), then boot cut at op %u (%s): %s\n",
                                    scs[i]->name, n, cut_mode_names[cut_modes[m]], n2,
                                    cut_mode_names[cut_modes[m2]], why);
                        }
                    }
                }
            }
        }
    }
    printf("second cut: %u/%u runs failed (%u first cuts left a scrub to the boot rule)\n", failed, second_runs,
           first_points);
    CHECK_EQ_INT(failed, 0);
    /* Provisioning cut after its commit word, and every cut of an invalidation that took, leave
     * the boot rule an erase to do. */
    CHECK(first_points >= 4);
}

UNIT_TEST(test_keystore_cut_during_area_b_erase_keeps_area_a)
{
    struct ks_boot_report rep;
    host_flash_reset();
    st_factory(&st_a, 5);
    st_set_ak(&st_a, 1);
    plant(AREA_A, &st_a);
    st_factory(&st_b, 4);
    st_set_ak(&st_b, 1);
    plant(AREA_B, &st_b);
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 2);
    for (uint32_t seed = 1; seed <= 8; seed++) {
        host_flash_set_torn_seed(seed);
        host_flash_log_clear();
        host_flash_cut_at(1, HOST_FLASH_CUT_TORN); /* op 1 of the commit is the erase of B */
        CHECK_EQ_INT(ks_commit(&st_got), KS_EFLASH);
        host_flash_power_on();
        CHECK_EQ_INT(boot(&st_b, &rep), 0);
        CHECK_EQ_INT(rep.active_area, AREA_A);
        CHECK(st_equal(&st_b, &st_a));
        CHECK(host_flash_raw_is_blank(AREA_B)); /* the torn area was removed by the boot rule */
        plant(AREA_B, &st_b); /* the older record again, for the next round to erase */
    }
}

UNIT_TEST(test_keystore_cut_after_commit_word_boots_ak_and_finishes_pk_scrub)
{
    struct ks_boot_report rep;
    uint32_t n;
    host_flash_reset();
    plant_factory();
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 1);
    host_flash_log_clear();
    CHECK_EQ_INT(ks_commit(&st_got), 0);
    n = host_flash_op_count() - 1; /* the commit word; the last op is the scrub */
    host_flash_reset();
    plant_factory();
    CHECK_EQ_INT(ks_load(&st_got, NULL), 0);
    st_set_ak(&st_got, 1);
    host_flash_log_clear();
    host_flash_cut_at(n, HOST_FLASH_CUT_AFTER);
    CHECK_EQ_INT(ks_commit(&st_got), KS_EFLASH);
    host_flash_power_on();
    CHECK(flash_contains(factory_pk, sizeof factory_pk));
    CHECK_EQ_INT(boot(&st_b, &rep), 0);
    CHECK_EQ_INT(rep.active_area, AREA_A);
    CHECK(st_b.has_ak && !st_b.has_pk);
    CHECK_EQ_INT(rep.scrubbed, 1);
    CHECK(!flash_contains(factory_pk, sizeof factory_pk));
}
