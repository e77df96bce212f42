/**
 * @file host_flash.h
 * @brief Host flash simulator behind port_flash.h: two 16 KB keystore areas that behave like the
 *        STM32F429's sectors 1 and 2 (erased value 0xFF, 4-byte program unit, programming only
 *        clears bits), with an operation log and power-cut injection.
 *
 * Counted operations are each erase of an area and each program of one 4-byte word (a write of
 * several words counts one operation per word, as the chip programs them one by one). Reads are
 * never counted. A power cut makes operation n fail:
 *   - HOST_FLASH_CUT_BEFORE: the operation does not happen;
 *   - HOST_FLASH_CUT_TORN:   it happens only in part (erase: some words erased, program: some of the
 *                            bits it would clear are cleared), chosen deterministically from the
 *                            torn seed and the operation's number;
 *   - HOST_FLASH_CUT_AFTER:  it completes, but the CPU dies before it sees the result.
 * From the cut on every flash call (reads included) returns -EIO and changes nothing, until
 * host_flash_power_on().
 *
 * Plain C with scalar arguments only, so tests in C and Python (ctypes on libotakey_hostdev.so)
 * drive it the same way. A singleton, like the chip.
 */
#ifndef OTAKEY_HOST_FLASH_H
#define OTAKEY_HOST_FLASH_H

#include <stddef.h>
#include <stdint.h>

#define HOST_FLASH_AREAS 2u
#define HOST_FLASH_AREA_SIZE 16384u /* RM0090 table 6: sectors 1 and 2 are 16 KB */
#define HOST_FLASH_ALIGN 4u         /* PSIZE x32 */
#define HOST_FLASH_ERASED 0xFFu
#define HOST_FLASH_LOG_MAX 65536u   /* operations kept in the log; later ones are counted only */

enum host_flash_cut_mode {
    HOST_FLASH_CUT_NONE = 0,
    HOST_FLASH_CUT_BEFORE = 1,
    HOST_FLASH_CUT_TORN = 2,
    HOST_FLASH_CUT_AFTER = 3,
};

enum host_flash_op_kind {
    HOST_FLASH_OP_ERASE = 1,
    HOST_FLASH_OP_PROGRAM = 2,
};

/** @brief Erase both areas, clear the log and the counter, cancel any cut, power on, torn seed 1,
 *         no stuck bits. */
void host_flash_reset(void);

/**
 * @brief Cut the power at the n-th counted operation from now (1 = the next one), in mode
 *        (enum host_flash_cut_mode). n == 0 or mode NONE cancels a pending cut.
 */
void host_flash_cut_at(uint32_t n, int mode);
/** @brief Seed for the torn variants (the same seed and cut point give the same flash content). */
void host_flash_set_torn_seed(uint32_t seed);
/** @brief Power comes back: flash calls work again; a pending cut that did not fire is cancelled. */
void host_flash_power_on(void);
/** @brief 1 while powered, 0 after a cut fired. */
int host_flash_is_powered(void);
/** @brief 1 if a cut fired since the last host_flash_power_on/reset. */
int host_flash_cut_fired(void);

/** @brief Operations counted since the last reset or host_flash_log_clear(). */
uint32_t host_flash_op_count(void);
/** @brief Clear the log and set the counter to 0 (flash content unchanged). */
void host_flash_log_clear(void);
/**
 * @brief The i-th logged operation (0-based).
 * @return 0 and *kind (enum host_flash_op_kind), *area, *off; or -1 if i is not in the log
 */
int host_flash_op_at(uint32_t i, int *kind, int *area, uint32_t *off);

/** @brief Copy raw bytes out of an area (no power, no counting). @return 0 or -EINVAL */
int host_flash_raw_read(int area, uint32_t off, void *dst, size_t len);
/** @brief Overwrite raw bytes of an area, bypassing the flash rules (to plant images or garbage).
 *  @return 0 or -EINVAL */
int host_flash_raw_write(int area, uint32_t off, const void *src, size_t len);
/** @brief Fill a whole area with one byte value (raw). @return 0 or -EINVAL */
int host_flash_raw_fill(int area, uint8_t val);
/** @brief 1 if the area holds only the erased value. */
int host_flash_raw_is_blank(int area);

/** @brief Bytes a snapshot of both areas takes. */
size_t host_flash_snapshot_size(void);
/** @brief Copy both areas into buf (cap >= host_flash_snapshot_size()). @return 0 or -EINVAL */
int host_flash_snapshot(void *buf, size_t cap);
/** @brief Put both areas back from a snapshot (content only: log, counter and power untouched).
 *  @return 0 or -EINVAL */
int host_flash_restore(const void *buf, size_t len);

/**
 * @brief Make bits of one byte stuck at 0 (a worn cell): an erase leaves them 0. mask 0 clears
 *        the fault. One stuck byte at a time. @return 0 or -EINVAL
 */
int host_flash_set_stuck_zero(int area, uint32_t off, uint8_t mask);

#endif /* OTAKEY_HOST_FLASH_H */
