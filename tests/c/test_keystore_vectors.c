/*
 * The C keystore against tests/vectors/keystore.json, made by the Python reference
 * (agent/otakey/protocol/keystore.py): record images byte-exact both ways, every bad record
 * refused, every boot case's active area/scrub/generation, and the flash operations of a commit.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "host_flash.h"
#include "json_min.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "port/port_flash.h"
#include "unit.h"

#define VECTORS "tests/vectors/keystore.json"
#define AREA_SIZE HOST_FLASH_AREA_SIZE

static uint8_t image[AREA_SIZE];
static uint8_t encoded[AREA_SIZE];
static uint8_t expect_flash[2][AREA_SIZE];
static uint8_t got_flash[AREA_SIZE];
static struct ks_state st_json, st_got;

static struct jm_node *load(void)
{
    struct jm_node *root = jm_load(VECTORS);
    CHECK(root != NULL);
    if (root != NULL) {
        CHECK_EQ_INT(jm_int(jm_member(root, "area_size"), -1), port_flash_area_size(PORT_FLASH_AREA_A));
        CHECK_EQ_INT(jm_int(jm_member(root, "erased_value"), -1), port_flash_erased_val());
    }
    return root;
}

/* Copy a JSON string into a fixed field; -1 if absent, not a string or too long. */
static int text_field(const struct jm_node *n, uint8_t *dst, size_t max, uint16_t *len)
{
    if (n == NULL || n->type != JM_STR || n->slen > max) {
        return -1;
    }
    memcpy(dst, n->str, n->slen);
    *len = (uint16_t)n->slen;
    return 0;
}

static int state_from_json(const struct jm_node *j, struct ks_state *st)
{
    const struct jm_node *c;
    uint16_t l = 0;
    memset(st, 0, sizeof *st);
    if (j == NULL || j->type != JM_OBJ) {
        return -1;
    }
    st->generation = (uint32_t)jm_int(jm_member(j, "generation"), -1);
    st->po_id = (uint32_t)jm_int(jm_member(j, "po_id"), -1);
    if (text_field(jm_member(j, "po_name"), st->po_name, KS_PO_NAME_MAX, &l) != 0) {
        return -1;
    }
    st->po_name_len = (uint8_t)l;
    if (!jm_is_null(jm_member(j, "pk"))) {
        if (jm_hex(jm_member(j, "pk"), st->pk, KS_KEY_LEN) != KS_KEY_LEN) {
            return -1;
        }
        st->has_pk = 1;
    }
    if (!jm_is_null(jm_member(j, "ak"))) {
        if (jm_hex(jm_member(j, "ak"), st->ak, KS_KEY_LEN) != KS_KEY_LEN) {
            return -1;
        }
        st->has_ak = 1;
        st->ak_version = (uint32_t)jm_int(jm_member(j, "ak_version"), -1);
    }
    c = jm_member(j, "cloud");
    if (!jm_is_null(c)) {
        long n;
        st->has_cloud = 1;
        st->cloud.version = (uint32_t)jm_int(jm_member(c, "version"), -1);
        st->cloud.platform = (uint8_t)jm_int(jm_member(c, "platform"), -1);
        if (text_field(jm_member(c, "endpoint"), st->cloud.endpoint, KS_ENDPOINT_MAX, &st->cloud.endpoint_len) ||
            text_field(jm_member(c, "client_id"), st->cloud.client_id, KS_CLIENT_ID_MAX,
                       &st->cloud.client_id_len) ||
            text_field(jm_member(c, "username"), st->cloud.username, KS_USERNAME_MAX, &st->cloud.username_len)) {
            return -1;
        }
        n = jm_hex(jm_member(c, "secret"), st->cloud.secret, KS_SECRET_MAX);
        if (n < 0) {
            return -1;
        }
        st->cloud.secret_len = (uint16_t)n;
    }
    return 0;
}

static int st_equal(const struct ks_state *a, const struct ks_state *b)
{
    const struct ks_cloud *x = &a->cloud, *y = &b->cloud;
    if (a->generation != b->generation || a->po_id != b->po_id || a->po_name_len != b->po_name_len ||
        memcmp(a->po_name, b->po_name, a->po_name_len) != 0 || a->has_pk != b->has_pk ||
        a->has_ak != b->has_ak || a->has_cloud != b->has_cloud) {
        return 0;
    }
    if ((a->has_pk && memcmp(a->pk, b->pk, KS_KEY_LEN) != 0) ||
        (a->has_ak && (a->ak_version != b->ak_version || memcmp(a->ak, b->ak, KS_KEY_LEN) != 0))) {
        return 0;
    }
    if (!a->has_cloud) {
        return 1;
    }
    return x->version == y->version && x->platform == y->platform && x->endpoint_len == y->endpoint_len &&
           x->client_id_len == y->client_id_len && x->username_len == y->username_len &&
           x->secret_len == y->secret_len && memcmp(x->endpoint, y->endpoint, x->endpoint_len) == 0 &&
           memcmp(x->client_id, y->client_id, x->client_id_len) == 0 &&
           memcmp(x->username, y->username, x->username_len) == 0 &&
           memcmp(x->secret, y->secret, x->secret_len) == 0;
}

/* An area image from a hex prefix, padded with the erased value. -1 if the hex is bad. */
static long area_from_hex(const struct jm_node *n, uint8_t *dst)
{
    long len = jm_hex(n, dst, AREA_SIZE);
    if (len >= 0) {
        memset(dst + len, HOST_FLASH_ERASED, AREA_SIZE - (size_t)len);
    }
    return len;
}

static int area_index(const struct jm_node *n)
{
    const char *s = jm_str(n);
    if (s == NULL) {
        return -1;
    }
    return strcmp(s, "A") == 0 ? PORT_FLASH_AREA_A : strcmp(s, "B") == 0 ? PORT_FLASH_AREA_B : -2;
}

static void plant_areas(const struct jm_node *v)
{
    host_flash_reset();
    CHECK(area_from_hex(jm_member(v, "area_a"), expect_flash[0]) >= 0);
    CHECK(area_from_hex(jm_member(v, "area_b"), expect_flash[1]) >= 0);
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_A, 0, expect_flash[0], AREA_SIZE), 0);
    CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_B, 0, expect_flash[1], AREA_SIZE), 0);
}

UNIT_TEST(test_keystore_vectors_records_encode_byte_exact_and_decode_to_state)
{
    struct jm_node *root = load();
    const struct jm_node *recs = jm_member(root, "records");
    CHECK(jm_len(recs) >= 5);
    for (size_t i = 0; i < jm_len(recs); i++) {
        const struct jm_node *r = jm_at(recs, i);
        const char *name = jm_str(jm_member(r, "name"));
        long n = jm_hex(jm_member(r, "image"), image, sizeof image);
        size_t out = 0;
        int ok = 1;
        CHECK(n > 0);
        CHECK_EQ_INT(state_from_json(jm_member(r, "state"), &st_json), 0);
        CHECK_EQ_INT(ks_encode(&st_json, HOST_FLASH_ERASED, encoded, sizeof encoded, &out), 0);
        CHECK_EQ_INT(out, n);
        if (out != (size_t)n || memcmp(encoded, image, out) != 0) {
            ok = 0;
        }
        CHECK_EQ_INT(ks_decode(image, (size_t)n, &st_got), 0);
        if (!st_equal(&st_got, &st_json)) {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "record vector %s differs\n", name ? name : "?");
            CHECK(0);
        }
    }
    jm_free(root);
}

UNIT_TEST(test_keystore_vectors_bad_records_rejected_by_decode_and_boot)
{
    struct jm_node *root = load();
    const struct jm_node *bad = jm_member(root, "bad_records");
    CHECK(jm_len(bad) >= 20);
    for (size_t i = 0; i < jm_len(bad); i++) {
        const struct jm_node *r = jm_at(bad, i);
        const char *name = jm_str(jm_member(r, "name"));
        long n = area_from_hex(jm_member(r, "image"), image);
        struct ks_boot_report rep;
        int rc_decode, rc_boot;
        CHECK(n > 0);
        rc_decode = ks_decode(image, AREA_SIZE, &st_got);
        /* Planted as the only non-blank area, it must not boot. */
        host_flash_reset();
        CHECK_EQ_INT(host_flash_raw_write(PORT_FLASH_AREA_B, 0, image, AREA_SIZE), 0);
        rc_boot = ks_load(&st_got, &rep);
        if (rc_decode != KS_EBADRECORD || rc_boot != KS_ENOVALID || rep.area_valid[1]) {
            fprintf(stderr, "bad record %s (%s): decode %d, boot %d\n", name ? name : "?",
                    jm_str(jm_member(r, "why")) ? jm_str(jm_member(r, "why")) : "?", rc_decode, rc_boot);
            CHECK(0);
        }
        CHECK_EQ_INT(host_flash_op_count(), 0);
    }
    jm_free(root);
}

UNIT_TEST(test_keystore_vectors_boot_cases_pick_expected_area_scrub_and_generation)
{
    struct jm_node *root = load();
    const struct jm_node *cases = jm_member(root, "boot_cases");
    CHECK(jm_len(cases) >= 10);
    for (size_t i = 0; i < jm_len(cases); i++) {
        const struct jm_node *c = jm_at(cases, i);
        const char *name = jm_str(jm_member(c, "name"));
        const struct jm_node *gen = jm_member(c, "generation");
        int want_active = jm_is_null(jm_member(c, "active")) ? -1 : area_index(jm_member(c, "active"));
        int want_scrub = jm_bool(jm_member(c, "scrub"), -1);
        struct ks_boot_report rep;
        int rc, ok;
        plant_areas(c);
        rc = ks_load(&st_got, &rep);
        ok = rc == (want_active < 0 ? KS_ENOVALID : 0) && rep.active_area == want_active &&
             rep.scrubbed == want_scrub && (int)host_flash_op_count() == want_scrub &&
             (jm_is_null(gen) ? want_active < 0 : st_got.generation == (uint32_t)jm_int(gen, -1));
        if (ok && want_scrub) {
            ok = host_flash_raw_is_blank(want_active == PORT_FLASH_AREA_A ? PORT_FLASH_AREA_B : PORT_FLASH_AREA_A);
        }
        if (!ok) {
            fprintf(stderr, "boot case %s: rc %d, active %d (want %d), scrubbed %d (want %d), generation %u\n",
                    name ? name : "?", rc, rep.active_area, want_active, rep.scrubbed, want_scrub,
                    st_got.generation);
            CHECK(0);
        }
    }
    jm_free(root);
}

UNIT_TEST(test_keystore_vectors_commits_perform_the_reference_flash_ops)
{
    struct jm_node *root = load();
    const struct jm_node *commits = jm_member(root, "commits");
    CHECK(jm_len(commits) >= 2);
    for (size_t i = 0; i < jm_len(commits); i++) {
        const struct jm_node *c = jm_at(commits, i);
        const char *name = jm_str(jm_member(c, "name"));
        const struct jm_node *ops = jm_member(c, "ops");
        int target = area_index(jm_member(c, "target"));
        int bad_ops = 0;
        plant_areas(c);
        CHECK_EQ_INT(state_from_json(jm_member(c, "state"), &st_json), 0);
        host_flash_log_clear();
        CHECK_EQ_INT(ks_commit(&st_json), 0);
        CHECK_EQ_INT(st_json.generation, jm_int(jm_member(c, "generation"), -1));
        CHECK_EQ_INT(ks_active_area(), target);
        CHECK_EQ_INT(host_flash_op_count(), jm_len(ops));
        /* Same operations in the same order; apply the reference's ones to the planted images. */
        for (size_t k = 0; k < jm_len(ops); k++) {
            const struct jm_node *o = jm_at(ops, k);
            const char *op = jm_str(jm_member(o, "op"));
            int area = area_index(jm_member(o, "area"));
            uint32_t off = (uint32_t)jm_int(jm_member(o, "offset"), -1);
            int kind, got_area;
            uint32_t got_off;
            uint8_t data[8];
            int is_erase = op != NULL && strcmp(op, "erase") == 0;
            if (area < 0 || host_flash_op_at((uint32_t)k, &kind, &got_area, &got_off) != 0 ||
                kind != (is_erase ? HOST_FLASH_OP_ERASE : HOST_FLASH_OP_PROGRAM) || got_area != area ||
                (!is_erase && got_off != off)) {
                bad_ops++;
                continue;
            }
            if (is_erase) {
                memset(expect_flash[area], HOST_FLASH_ERASED, AREA_SIZE);
            } else {
                long n = jm_hex(jm_member(o, "data"), data, sizeof data);
                if (n != (long)port_flash_align() || off + (uint32_t)n > AREA_SIZE) {
                    bad_ops++;
                    continue;
                }
                for (long b = 0; b < n; b++) {
                    expect_flash[area][off + (uint32_t)b] &= data[b];
                }
            }
        }
        for (int a = PORT_FLASH_AREA_A; a <= PORT_FLASH_AREA_B; a++) {
            CHECK_EQ_INT(host_flash_raw_read(a, 0, got_flash, AREA_SIZE), 0);
            if (memcmp(got_flash, expect_flash[a], AREA_SIZE) != 0) {
                bad_ops++;
            }
        }
        if (bad_ops != 0) {
            fprintf(stderr, "commit vector %s: %d mismatches with the reference's operations\n",
                    name ? name : "?", bad_ops);
            CHECK(0);
        }
    }
    jm_free(root);
}
