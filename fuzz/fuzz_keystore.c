/*
 * fuzz_keystore: keystore records (docs/flash-layout.md) from a buffer and from the host flash
 * simulator. The first byte picks a mode (byte % 4):
 *
 *   0 image:    ks_decode on arbitrary bytes.
 *   1 payload:  generation (4) ‖ payload; the harness wraps the payload in a committed record with a
 *               correct SHA-256, so the TLV parser is what gets fuzzed.
 *   2 rehash:   an image whose hash the harness recomputes wherever its header puts it, so header
 *               fields (payload_len, format, ...) are fuzzed under a valid hash.
 *   3 flash:    flags (1) ‖ cut_n (2) ‖ torn_seed (1) ‖ len_a (2) ‖ area A bytes ‖ area B bytes,
 *               planted into the simulator (rest erased), then ks_load, and with flag 0x04 a
 *               ks_commit over it, optionally cut by a power cut.
 *
 * Properties: never a crash or an out-of-bounds read (images live in exact-size heap buffers);
 * ks_decode accepts exactly what the flash-layout oracle accepts and zeroes the state otherwise; an
 * accepted state re-encodes with ks_encode to a canonical image that decodes equal. On flash,
 * ks_load picks the area the boot rule picks, loads what ks_decode reads from that area, scrubs
 * the spare area exactly when rule 3 says so and touches nothing else; a second ks_load changes
 * nothing; ks_commit makes the new state active with generation + 1; a power cut at any flash
 * operation of the commit boots into the old state or the new one, never neither.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "host_flash.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"

#define AREA HOST_FLASH_AREA_SIZE

#define F_FIX_A 0x01u
#define F_FIX_B 0x02u
#define F_COMMIT 0x04u
#define F_PROVISION 0x08u
#define F_CLOUD 0x10u
#define F_CUT_SHIFT 5u

static size_t align4(size_t n)
{
    return (n + 3u) & ~(size_t)3u;
}

/* ks_encode of an accepted state: canonical, same length, decodes equal, idempotent. */
static void check_reencode(const struct ks_state *st, size_t want_len)
{
    static struct ks_state again, third;
    uint8_t *buf = malloc(AREA), *buf2 = malloc(AREA), *tight;
    size_t n = 0, n2 = 0, tn = 99;

    FUZZ_CHECK(buf != NULL && buf2 != NULL);
    FUZZ_CHECK(ks_encode(st, 0xFF, buf, AREA, &n) == 0);
    if (want_len != 0) {
        FUZZ_CHECK(n == want_len); /* the same TLVs in tag order take the same room */
    }
    FUZZ_CHECK(ks_decode(buf, n, &again) == 0);
    FUZZ_CHECK(fuzz_state_equal(st, &again, 1));
    FUZZ_CHECK(ks_encode(&again, 0xFF, buf2, AREA, &n2) == 0);
    FUZZ_CHECK(n2 == n && memcmp(buf, buf2, n) == 0);
    /* A decode of the exact-size image and of one byte less (hash cut off). */
    {
        uint8_t *exact = malloc(n);
        FUZZ_CHECK(exact != NULL);
        memcpy(exact, buf, n);
        FUZZ_CHECK(ks_decode(exact, n, &third) == 0);
        FUZZ_CHECK(ks_decode(exact, n - 1, &third) == KS_EBADRECORD);
        FUZZ_CHECK(fuzz_all_zero(&third, sizeof third));
        free(exact);
    }
    tight = malloc(n - 1);
    FUZZ_CHECK(tight != NULL);
    FUZZ_CHECK(ks_encode(st, 0xFF, tight, n - 1, &tn) == CODEC_ENOSPACE && tn == 99);
    free(tight);
    free(buf);
    free(buf2);
}

/* ks_decode on an exact-size copy of img, against the oracle. */
static void check_decode(const uint8_t *img, size_t len)
{
    static struct ks_state st;
    uint8_t *copy = malloc(len ? len : 1);
    uint32_t gen = 0;
    uint8_t has_pk = 0;
    int ok, rc;

    FUZZ_CHECK(copy != NULL);
    if (len != 0) {
        memcpy(copy, img, len);
    }
    ok = fuzz_oracle_record_ok(copy, len, &gen, &has_pk);
    memset(&st, 0xA5, sizeof st);
    rc = ks_decode(copy, len, &st);
    FUZZ_CHECK(rc == 0 || rc == KS_EBADRECORD);
    FUZZ_CHECK((rc == 0) == (ok != 0));
    if (rc != 0) {
        FUZZ_CHECK(fuzz_all_zero(&st, sizeof st)); /* keystore.h: zeroed on failure */
    } else {
        FUZZ_CHECK(st.generation == gen && (st.has_pk != 0) == (has_pk != 0));
        FUZZ_CHECK(st.po_name_len >= 1 && st.po_name_len <= KS_PO_NAME_MAX);
        check_reencode(&st, 16 + align4(fuzz_le16(copy + 14)) + 32);
    }
    free(copy);
}

/* ---- flash mode ---- */

static uint8_t img[2][AREA];
static uint8_t after[2][AREA];

static int blank(const uint8_t *p)
{
    static uint8_t erased[AREA];
    if (erased[0] != 0xFF) {
        memset(erased, 0xFF, sizeof erased);
    }
    return memcmp(p, erased, AREA) == 0;
}

static void read_areas(uint8_t out[2][AREA])
{
    FUZZ_CHECK(host_flash_raw_read(0, 0, out[0], AREA) == 0);
    FUZZ_CHECK(host_flash_raw_read(1, 0, out[1], AREA) == 0);
}

static void default_state(struct ks_state *st)
{
    memset(st, 0, sizeof *st);
    st->po_id = 0x1234;
    st->po_name_len = 7;
    memcpy(st->po_name, "PO-FUZZ", 7);
    st->has_pk = 1;
    for (unsigned i = 0; i < KS_KEY_LEN; i++) {
        st->pk[i] = (uint8_t)(0x40 + i);
    }
}

/*
 * The oracle's verdict on area a as read into img[a]. A check_load usually sees an area exactly as
 * the previous one left it (the second boot, the boot after a commit that did not touch it), so the
 * last verdict per area is kept with a copy of the bytes it was made on and reused when they match.
 */
static void oracle_area(int a, uint8_t *valid, uint32_t *gen, uint8_t *pk, uint8_t *is_blank)
{
    static struct {
        int known;
        uint8_t valid, pk, blank;
        uint32_t gen;
        uint8_t bytes[AREA];
    } last[2];
    if (!last[a].known || memcmp(last[a].bytes, img[a], AREA) != 0) {
        last[a].gen = 0;
        last[a].pk = 0;
        last[a].valid = (uint8_t)fuzz_oracle_record_ok(img[a], AREA, &last[a].gen, &last[a].pk);
        last[a].blank = (uint8_t)blank(img[a]);
        memcpy(last[a].bytes, img[a], AREA);
        last[a].known = 1;
    }
    *valid = last[a].valid;
    *gen = last[a].gen;
    *pk = last[a].pk;
    *is_blank = last[a].blank;
}

/* ks_load against the boot rule; returns its rc and leaves the state in *st. */
static int check_load(struct ks_state *st, struct ks_boot_report *rep)
{
    static struct ks_state want;
    uint32_t gen[2] = {0, 0};
    uint8_t pk[2] = {0, 0}, valid[2], is_blank[2];
    int active, other, rc, must_scrub;

    read_areas(img);
    for (int a = 0; a < 2; a++) {
        oracle_area(a, &valid[a], &gen[a], &pk[a], &is_blank[a]);
    }
    active = fuzz_oracle_pick(valid[0], gen[0], valid[1], gen[1]);

    rc = ks_load(st, rep);
    read_areas(after);
    FUZZ_CHECK(rep->area_valid[0] == valid[0] && rep->area_valid[1] == valid[1]);
    FUZZ_CHECK(rep->area_blank[0] == is_blank[0] && rep->area_blank[1] == is_blank[1]);
    FUZZ_CHECK(rep->active_area == active);
    FUZZ_CHECK(ks_active_area() == active);
    if (active < 0) {
        FUZZ_CHECK(rc == KS_ENOVALID);
        FUZZ_CHECK(fuzz_all_zero(st, sizeof *st));
        FUZZ_CHECK(rep->scrubbed == 0);
        FUZZ_CHECK(memcmp(img, after, sizeof img) == 0);
        return rc;
    }
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(ks_decode(img[active], AREA, &want) == 0);
    FUZZ_CHECK(fuzz_state_equal(st, &want, 1));
    other = 1 - active;
    /* flash-layout §2 rule 3 */
    must_scrub = !st->has_pk && !is_blank[other] && !(valid[other] && !pk[other]);
    FUZZ_CHECK(rep->scrubbed == must_scrub);
    FUZZ_CHECK(memcmp(after[active], img[active], AREA) == 0);
    if (must_scrub) {
        FUZZ_CHECK(blank(after[other]));
    } else {
        FUZZ_CHECK(memcmp(after[other], img[other], AREA) == 0);
    }
    return rc;
}

static void plant(int area, const uint8_t *p, size_t n, int fix)
{
    static uint8_t buf[AREA];
    memset(buf, 0xFF, sizeof buf);
    if (n != 0) {
        memcpy(buf, p, n);
    }
    if (fix) {
        (void)fuzz_fix_record_hash(buf, AREA);
    }
    FUZZ_CHECK(host_flash_raw_write(area, 0, buf, AREA) == 0);
}

static void mode_flash(struct fuzz_in *in)
{
    static struct ks_state st, st2, next;
    struct ks_boot_report rep, rep2;
    uint8_t flags = fuzz_u8(in);
    uint16_t cut_n = fuzz_u16(in);
    uint8_t torn_seed = fuzz_u8(in);
    uint16_t len_a = fuzz_u16(in);
    const uint8_t *pa, *pb;
    size_t na, nb;
    int rc, rc_again, had_old, cut_mode;
    uint32_t old_gen;

    if (in->short_read) {
        return;
    }
    na = fuzz_take(in, &pa, len_a > AREA ? AREA : len_a);
    nb = fuzz_take(in, &pb, fuzz_in_left(in) > AREA ? AREA : fuzz_in_left(in));

    host_flash_reset();
    host_flash_set_torn_seed(1u + torn_seed);
    plant(0, pa, na, flags & F_FIX_A);
    plant(1, pb, nb, flags & F_FIX_B);

    rc = check_load(&st, &rep);
    if (rc == 0) {
        check_reencode(&st, 0);
    }
    /* A second boot finds the state the first one left: same record, nothing more to scrub. */
    rc_again = check_load(&st2, &rep2);
    FUZZ_CHECK(rc_again == rc && rep2.scrubbed == 0 && rep2.active_area == rep.active_area);
    FUZZ_CHECK(fuzz_state_equal(&st, &st2, 1));

    if (!(flags & F_COMMIT)) {
        return;
    }
    had_old = rc == 0;
    old_gen = had_old ? st.generation : 0;
    if (had_old) {
        next = st;
    } else {
        default_state(&next);
    }
    if (flags & F_PROVISION) {
        next.has_pk = 0;
        memset(next.pk, 0, sizeof next.pk);
        next.has_ak = 1;
        next.ak_version = 1u + cut_n;
        memset(next.ak, 0x5A ^ torn_seed, sizeof next.ak);
    }
    if (flags & F_CLOUD) {
        next.has_cloud = 1;
        memset(&next.cloud, 0, sizeof next.cloud);
        next.cloud.version = 1u + torn_seed;
        next.cloud.platform = 1u + (cut_n & 1u);
        next.cloud.endpoint_len = 21;
        memcpy(next.cloud.endpoint, "mqtt://127.0.0.1:1883", 21);
        next.cloud.client_id_len = 4;
        memcpy(next.cloud.client_id, "fuzz", 4);
        next.cloud.secret_len = (uint16_t)(cut_n % (KS_SECRET_MAX + 1u));
        memset(next.cloud.secret, 0x33, next.cloud.secret_len);
    }
    cut_mode = (flags >> F_CUT_SHIFT) & 3;
    host_flash_log_clear();
    if (cut_mode != HOST_FLASH_CUT_NONE) {
        host_flash_cut_at(1u + cut_n % 1200u, cut_mode);
    }
    rc = ks_commit(&next);

    if (!host_flash_cut_fired()) {
        host_flash_cut_at(0, HOST_FLASH_CUT_NONE);
        if (had_old && old_gen == UINT32_MAX) {
            FUZZ_CHECK(rc == KS_ETOOBIG);
            return;
        }
        FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(next.generation == old_gen + 1u);
        FUZZ_CHECK(check_load(&st2, &rep2) == 0);
        FUZZ_CHECK(fuzz_state_equal(&st2, &next, 1));
        FUZZ_CHECK(rep2.active_area == (had_old && rep.active_area == 0 ? 1 : 0));
        if (had_old && st.has_pk && !next.has_pk) {
            FUZZ_CHECK(host_flash_raw_is_blank(rep.active_area)); /* §3 step 6: the PK area is erased */
        }
        return;
    }
    /* Power back on: the old state or the new one, never neither (flash-layout §4). */
    FUZZ_CHECK(rc != 0);
    host_flash_power_on();
    rc = check_load(&st2, &rep2);
    if (had_old) {
        FUZZ_CHECK(rc == 0);
        next.generation = old_gen + 1u;
        FUZZ_CHECK(fuzz_state_equal(&st2, &st, 1) || fuzz_state_equal(&st2, &next, 1));
    } else {
        next.generation = 1;
        FUZZ_CHECK(rc == KS_ENOVALID || (rc == 0 && fuzz_state_equal(&st2, &next, 1)));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in;
    if (size == 0) {
        return 0;
    }
    fuzz_in_init(&in, data + 1, size - 1);
    switch (data[0] % 4) {
    case 0:
        check_decode(data + 1, size - 1);
        break;
    case 1: {
        static uint8_t rec[AREA];
        uint32_t gen = fuzz_u32(&in);
        const uint8_t *payload;
        size_t n = fuzz_take(&in, &payload, fuzz_in_left(&in));
        size_t len = fuzz_build_record(gen, payload, n, rec, sizeof rec);
        if (len != 0) {
            check_decode(rec, len);
        }
        break;
    }
    case 2: {
        uint8_t *copy = malloc(size);
        FUZZ_CHECK(copy != NULL);
        memcpy(copy, data + 1, size - 1);
        (void)fuzz_fix_record_hash(copy, size - 1);
        check_decode(copy, size - 1);
        free(copy);
        break;
    }
    default:
        mode_flash(&in);
        break;
    }
    return 0;
}
