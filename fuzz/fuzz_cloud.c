/*
 * fuzz_cloud: the cloud credential of protocol §3.5 (ks_cloud_decode / ks_cloud_encode), which
 * the device parses from an authenticated CLOUD_UPDATE body and from its keystore's CLOUD TLV.
 *
 * Properties: never a crash or a read past the input (an exact-size heap copy); the verdict equals
 * an oracle written from §3.5; a refused input leaves *c untouched (keystore.h, and the device
 * relies on it to keep its old credential); an accepted input re-encodes to exactly the same bytes
 * (the encoding is canonical: nothing may follow the last field), and the encoder refuses an
 * output buffer one byte short without writing past it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "otakey/errors.h"
#include "otakey/keystore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ks_cloud c, canary;
    uint8_t *copy = malloc(size ? size : 1);
    int rc, ok;

    FUZZ_CHECK(copy != NULL);
    if (size != 0) {
        memcpy(copy, data, size);
    }
    ok = fuzz_oracle_cloud_ok(copy, size);
    memset(&c, 0xC5, sizeof c);
    memset(&canary, 0xC5, sizeof canary);
    rc = ks_cloud_decode(copy, size, &c);
    FUZZ_CHECK(rc == 0 || rc == CODEC_EBADLEN || rc == CODEC_EBADFIELD);
    FUZZ_CHECK((rc == 0) == (ok != 0));
    if (rc != 0) {
        FUZZ_CHECK(memcmp(&c, &canary, sizeof c) == 0);
    } else {
        uint8_t *out = malloc(size), *tight = malloc(size - 1);
        size_t out_len = 0, tight_len = 4242;
        static struct ks_cloud again;
        FUZZ_CHECK(out != NULL && tight != NULL);
        FUZZ_CHECK(c.version == fuzz_le32(copy) && c.platform == copy[4]);
        FUZZ_CHECK(ks_cloud_encode(&c, out, size, &out_len) == 0);
        FUZZ_CHECK(out_len == size && memcmp(out, copy, size) == 0);
        FUZZ_CHECK(ks_cloud_encode(&c, tight, size - 1, &tight_len) == CODEC_ENOSPACE && tight_len == 4242);
        FUZZ_CHECK(ks_cloud_decode(out, out_len, &again) == 0 && fuzz_cloud_equal(&c, &again));
        /* One byte missing, or one byte more after the last field: both refused (§3.5). */
        FUZZ_CHECK(ks_cloud_decode(copy, size - 1, &again) != 0);
        {
            uint8_t *longer = malloc(size + 1);
            FUZZ_CHECK(longer != NULL);
            memcpy(longer, copy, size);
            longer[size] = copy[0];
            FUZZ_CHECK(ks_cloud_decode(longer, size + 1, &again) != 0);
            free(longer);
        }
        free(out);
        free(tight);
    }
    free(copy);
    return 0;
}
