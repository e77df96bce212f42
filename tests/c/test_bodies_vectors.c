/*
 * The C body codecs against tests/vectors/bodies.json (made by the Python reference): cloud
 * credentials byte-exact both ways and every malformed one refused without touching the output,
 * and the fixed body length of every message type. Check-in and cloud-session bodies are built
 * and parsed inside the device state machine; their bytes are checked by test_device's flows.
 */
#include <stdint.h>
#include <string.h>

#include "json_min.h"
#include "otakey/codec.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"
#include "unit.h"

#define VECTORS "tests/vectors/bodies.json"

static uint8_t buf[8192];
static uint8_t out[8192];
static struct ks_cloud want, got;

static int text(const struct jm_node *n, uint8_t *dst, size_t max, uint16_t *len)
{
    if (n == NULL || n->type != JM_STR || n->slen > max) {
        return -1;
    }
    memcpy(dst, n->str, n->slen);
    *len = (uint16_t)n->slen;
    return 0;
}

static int cloud_from_json(const struct jm_node *j, struct ks_cloud *c)
{
    long n;
    memset(c, 0, sizeof *c);
    c->version = (uint32_t)jm_int(jm_member(j, "version"), 0);
    c->platform = (uint8_t)jm_int(jm_member(j, "platform"), 0);
    if (text(jm_member(j, "endpoint"), c->endpoint, KS_ENDPOINT_MAX, &c->endpoint_len) != 0 ||
        text(jm_member(j, "client_id"), c->client_id, KS_CLIENT_ID_MAX, &c->client_id_len) != 0 ||
        text(jm_member(j, "username"), c->username, KS_USERNAME_MAX, &c->username_len) != 0) {
        return -1;
    }
    n = jm_hex(jm_member(j, "secret"), c->secret, KS_SECRET_MAX);
    if (n < 0) {
        return -1;
    }
    c->secret_len = (uint16_t)n;
    return 0;
}

static int same_cloud(const struct ks_cloud *a, const struct ks_cloud *b)
{
    return a->version == b->version && a->platform == b->platform && a->endpoint_len == b->endpoint_len &&
           a->client_id_len == b->client_id_len && a->username_len == b->username_len &&
           a->secret_len == b->secret_len && memcmp(a->endpoint, b->endpoint, a->endpoint_len) == 0 &&
           memcmp(a->client_id, b->client_id, a->client_id_len) == 0 &&
           memcmp(a->username, b->username, a->username_len) == 0 &&
           memcmp(a->secret, b->secret, a->secret_len) == 0;
}

UNIT_TEST(test_bodies_vectors_cloud_credentials_encode_byte_exact_and_decode_back)
{
    struct jm_node *root = jm_load(VECTORS);
    const struct jm_node *list = jm_member(root, "cloud_credentials");
    CHECK(jm_len(list) > 0);
    for (size_t i = 0; i < jm_len(list); i++) {
        const struct jm_node *v = jm_at(list, i);
        long n = jm_hex(jm_member(v, "encoded"), buf, sizeof buf);
        size_t len = 0;
        CHECK(n > 0);
        CHECK_EQ_INT(cloud_from_json(jm_member(v, "credential"), &want), 0);
        CHECK_EQ_INT(ks_cloud_encode(&want, out, sizeof out, &len), 0);
        CHECK_EQ_INT(len, n);
        CHECK_MEM(out, buf, (size_t)n);
        memset(&got, 0, sizeof got);
        CHECK_EQ_INT(ks_cloud_decode(buf, (size_t)n, &got), 0);
        CHECK(same_cloud(&got, &want));
    }
    jm_free(root);
}

UNIT_TEST(test_bodies_vectors_bad_cloud_credentials_refused_and_output_untouched)
{
    struct jm_node *root = jm_load(VECTORS);
    const struct jm_node *list = jm_member(root, "bad_cloud_credentials");
    CHECK(jm_len(list) >= 10);
    for (size_t i = 0; i < jm_len(list); i++) {
        const struct jm_node *v = jm_at(list, i);
        long n = jm_hex(jm_member(v, "encoded"), buf, sizeof buf);
        CHECK(n >= 0);
        memset(&got, 0xA5, sizeof got);
        memcpy(&want, &got, sizeof got);
        int rc = ks_cloud_decode(buf, (size_t)n, &got);
        if (rc == 0) {
            fprintf(stderr, "accepted bad credential %s\n", jm_str(jm_member(v, "name")));
        }
        CHECK(rc == CODEC_EBADLEN || rc == CODEC_EBADFIELD);
        CHECK_MEM(&got, &want, sizeof got);
    }
    jm_free(root);
}

UNIT_TEST(test_bodies_vectors_fixed_body_lengths_match_the_c_codec)
{
    struct jm_node *root = jm_load(VECTORS);
    const struct jm_node *list = jm_member(root, "bodies");
    CHECK(jm_len(list) > 0);
    for (size_t i = 0; i < jm_len(list); i++) {
        const struct jm_node *v = jm_at(list, i);
        long n = jm_hex_len(jm_member(v, "encoded"));
        CHECK_EQ_INT(codec_body_len((uint8_t)jm_int(jm_member(v, "type"), -1)), n);
    }
    const struct jm_node *checkins = jm_member(root, "checkins");
    CHECK(jm_len(checkins) > 0);
    for (size_t i = 0; i < jm_len(checkins); i++) {
        CHECK_EQ_INT(codec_body_len(MSG_CHECKIN), jm_hex_len(jm_member(jm_at(checkins, i), "encoded")));
    }
    CHECK_EQ_INT(codec_body_len(MSG_CLOUD_UPDATE), -1);
    jm_free(root);
}
