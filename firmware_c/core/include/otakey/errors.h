/**
 * @file errors.h
 * @brief The one error enum of the portable core.
 *
 * Every core function returns 0 on success or one of these negative codes. Port errors are
 * translated at the call site (any non-zero port return becomes the module's E*FLASH/E*RNG code).
 */
#ifndef OTAKEY_ERRORS_H
#define OTAKEY_ERRORS_H

enum ok_err {
    OK_OK = 0,
    /* crypto_* */
    CRYPTO_EBADLEN = -1,       /**< length not allowed (CBC not a block multiple, HKDF too long) */
    CRYPTO_EBADPAD = -2,       /**< PKCS#7 padding invalid */
    CRYPTO_EBADPOINT = -3,     /**< X25519 gave the all-zero shared secret */
    /* codec_* (frames, envelopes, messages) */
    CODEC_EBADLEN = -10,       /**< truncated, oversized or wrong body length */
    CODEC_EBADCOBS = -11,      /**< COBS encoding invalid */
    CODEC_EBADCRC = -12,       /**< frame CRC mismatch */
    CODEC_EBADCHAN = -13,      /**< unknown link channel */
    CODEC_EBADVER = -14,       /**< protocol version not 1, or reserved byte set */
    CODEC_EBADTYPE = -15,      /**< unknown message type or key kind not allowed for it */
    CODEC_EBADMAC = -16,       /**< HMAC tag mismatch */
    CODEC_EBADNONCE = -17,     /**< nonce not those of the current exchange */
    CODEC_ENOSPACE = -18,      /**< output buffer too small */
    CODEC_EBADFIELD = -19,     /**< a field inside a body is out of range */
    /* ks_* (keystore) */
    KS_EFLASH = -30,           /**< the port's flash operation failed */
    KS_ENOVALID = -31,         /**< no valid keystore area */
    KS_ETOOBIG = -32,          /**< record does not fit the area */
    KS_EVERIFY = -33,          /**< read-back after programming differed */
    KS_EBADRECORD = -34,       /**< record invalid (used internally by the boot rule) */
    /* dev_* (device state machine) */
    DEV_ERNG = -50,            /**< the port's RNG failed */
    DEV_ESTATE = -51,          /**< message not expected in this state */
    DEV_ENOKEY = -52,          /**< no key for this operation */
    DEV_EREFUSED = -53,        /**< agent answered ERROR */
    DEV_ETIMEOUT = -54,        /**< exchange timed out */
    DEV_ECLOUD = -55,          /**< cloud session with the new credential failed */
};

#endif /* OTAKEY_ERRORS_H */
