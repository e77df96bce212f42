/**
 * @file keystore.h
 * @brief The dual-area keystore (docs/flash-layout.md): record codec, boot rule, atomic commit.
 *
 * One record per area; the committed, valid area with the higher generation is active. A commit
 * writes the whole new state into the other area, commit word last, so a power cut at any point
 * leaves the old or the new state and never neither. Records are streamed to and from flash word by
 * word (no record-sized buffer), so a device keeps exactly one struct ks_state in RAM.
 */
#ifndef OTAKEY_KEYSTORE_H
#define OTAKEY_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

#define KS_COMMIT_MAGIC 0x3CC3A55Au
#define KS_COMMIT_BLANK 0xFFFFFFFFu
#define KS_COMMIT_INVALID 0x00000000u
#define KS_RECORD_MAGIC 0x534B4B4Fu /* "OKKS" little-endian */
#define KS_FORMAT 1u
#define KS_HEADER_LEN 16u
#define KS_MAX_PAYLOAD 4096u

#define KS_TAG_PRODUCT 0x01u
#define KS_TAG_PK 0x02u
#define KS_TAG_AK 0x03u
#define KS_TAG_CLOUD 0x04u

#define KS_KEY_LEN 32u
#define KS_PO_NAME_MAX 32u
#define KS_ENDPOINT_MAX 128u
#define KS_CLIENT_ID_MAX 128u
#define KS_USERNAME_MAX 128u
#define KS_SECRET_MAX 3200u

#define KS_PLATFORM_NONE 0u
#define KS_PLATFORM_MOSQUITTO 1u
#define KS_PLATFORM_AWS_IOT 2u

/** A cloud credential (protocol §3.5). Lengths are the used bytes of each array. */
struct ks_cloud {
    uint32_t version;
    uint8_t platform;
    uint16_t endpoint_len;
    uint16_t client_id_len;
    uint16_t username_len;
    uint16_t secret_len;
    uint8_t endpoint[KS_ENDPOINT_MAX];
    uint8_t client_id[KS_CLIENT_ID_MAX];
    uint8_t username[KS_USERNAME_MAX];
    uint8_t secret[KS_SECRET_MAX];
};

/** Everything a record holds. */
struct ks_state {
    uint32_t generation;       /**< generation of the record this state was loaded from/committed as */
    uint32_t po_id;
    uint8_t po_name_len;       /**< 1..32 */
    uint8_t po_name[KS_PO_NAME_MAX];
    uint8_t has_pk;
    uint8_t pk[KS_KEY_LEN];
    uint8_t has_ak;
    uint32_t ak_version;
    uint8_t ak[KS_KEY_LEN];
    uint8_t has_cloud;
    struct ks_cloud cloud;
};

/** What the boot rule found, for the banner and the check-in (area_* as found, before a scrub). */
struct ks_boot_report {
    int active_area;           /**< PORT_FLASH_AREA_A/B, or -1 when none is valid */
    uint8_t area_valid[2];     /**< 1 if that area held a valid record */
    uint8_t area_blank[2];     /**< 1 if that area was fully erased */
    uint8_t scrubbed;          /**< 1 if the boot rule erased the spare area (PK scrub / garbage) */
};

/**
 * @brief Apply the boot rule (flash-layout §2): pick the active area, complete an interrupted PK
 *        scrub, load its record into *st. report may be NULL.
 * @return 0, KS_ENOVALID (no valid area; *st zeroed) or KS_EFLASH. KS_EFLASH with
 *         report->active_area >= 0 means the record was loaded into *st but the scrub erase of the
 *         other area failed (the next boot retries it); otherwise *st is zeroed.
 */
int ks_load(struct ks_state *st, struct ks_boot_report *report);

/**
 * @brief Commit *st as a new record (flash-layout §3) in the area that is not active, with
 *        generation = active generation + 1 (1 when none is active); then, when *st has no PK
 *        and the previous active record has one, erase the previous area (PK scrub).
 *        The active area is re-evaluated from flash, so no earlier ks_load is needed.
 *        On success st->generation is the new generation. On failure the previous record stays
 *        active (reload with ks_load to drop the unsaved changes), except when only the final
 *        scrub erase failed: then the new record is committed and the next ks_load finishes it.
 * @return 0, KS_EBADRECORD (a field of *st out of range; flash untouched), KS_ETOOBIG (does not fit
 *         the area, or the generation cannot grow), KS_EFLASH or KS_EVERIFY
 */
int ks_commit(struct ks_state *st);

/**
 * @brief Invalidate the active record by programming its commit word to 0 (no erase); the other
 *        area's record becomes active again (reload it with ks_load). Used when the cloud refuses
 *        a new credential. The invalidated area is erased by the next ks_load (boot rule 3).
 * @return 0, KS_ENOVALID (no other valid record to fall back to; nothing is changed), KS_EFLASH or
 *         KS_EVERIFY (the commit word did not read back as 0)
 */
int ks_invalidate_active(void);

/** @brief Area currently active (after ks_load/ks_commit), or -1. */
int ks_active_area(void);

/**
 * @brief Encode a record image (commit word = KS_COMMIT_MAGIC, generation = st->generation, TLVs in
 *        tag order, erased padding) into buf. Used by tests and tools; the device streams instead.
 * @return 0, KS_EBADRECORD (a field out of range), KS_ETOOBIG or CODEC_ENOSPACE
 */
int ks_encode(const struct ks_state *st, uint8_t erased_val, uint8_t *buf, size_t cap, size_t *out_len);

/**
 * @brief Decode and validate a record image from buf (an area's bytes from offset 0), with the
 *        validity rules of the boot rule (commit word included). *st is zeroed on failure.
 * @return 0 or KS_EBADRECORD
 */
int ks_decode(const uint8_t *buf, size_t len, struct ks_state *st);

/**
 * @brief Encode a cloud credential in the wire form of protocol §3.5 (also the CLOUD TLV value).
 * @return 0 and *out_len, or CODEC_ENOSPACE / CODEC_EBADFIELD
 */
int ks_cloud_encode(const struct ks_cloud *c, uint8_t *out, size_t cap, size_t *out_len);
/**
 * @brief Decode protocol §3.5; every length checked against its maximum and the buffer, nothing may
 *        follow the last field, version >= 1, platform 1 or 2. *c is unchanged on failure.
 * @return 0 or CODEC_EBADLEN / CODEC_EBADFIELD
 */
int ks_cloud_decode(const uint8_t *buf, size_t len, struct ks_cloud *c);

#endif /* OTAKEY_KEYSTORE_H */
