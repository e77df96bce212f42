/*
 * port_flash.h for the STM32F429: keystore area A = sector 1, area B = sector 2 (DESIGN §2.1),
 * driven through the FLASH interface (RM0090 §3.6, §3.9).
 *
 * Shape of every operation (Zephyr flash_stm32_write): check arguments first (-EINVAL, len 0 -> 0),
 * wait for BSY clear, clear stale error flags, unlock, operate, check, clear the operation bits,
 * lock again whatever happened, and return the first error.
 *
 * Renode compatibility (its STM32F4_FlashController): SR always reads 0 (no BSY, no EOP, no error
 * flag), so we never wait for EOP, poll only BSY (bounded) and read SR==0 as success; a key written
 * while already unlocked locks CR until reset there, so the keys are written only when LOCK is set;
 * its SNB has 4 bits, so the keystore stays in bank 1 (sectors 1 and 2).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "port/port_flash.h"
#include "port_stm32.h"
#include "regs.h"

/* Linker-script symbols (stm32f429.ld); __keystore_size is an absolute symbol (its address is
   the value). */
extern const uint8_t __keystore_a_start[];
extern const uint8_t __keystore_b_start[];
extern const uint8_t __keystore_size[];

#define FLASH_PROGRAM_UNIT 4u   /* PSIZE x32 (2.7..3.6 V, RM0090 §3.6.2 Table 16) */
#define FLASH_ERASED 0xFFu
#define TIMEOUT_PROGRAM_MS 10u  /* word program: 16 us typ., 100 us max (DS9405) */
#define TIMEOUT_ERASE_MS 2000u  /* 16 KB sector: 500 ms max at x32, 800 ms at x8 */

struct flash_sector {
    uint32_t addr;
    uint32_t size;
    uint8_t snb;  /* FLASH_CR.SNB value */
};

/* RM0090 §3.3 Table 6, 2 MB dual-bank part (DB1M = 0). From sector 12 on, SNB is the sector number
   + 4 (bit 4 selects bank 2; RM0090 §3.9.8). */
static const struct flash_sector f429_sectors[] = {
    {0x08000000u, 0x4000u, 0u},   {0x08004000u, 0x4000u, 1u},   {0x08008000u, 0x4000u, 2u},
    {0x0800C000u, 0x4000u, 3u},   {0x08010000u, 0x10000u, 4u},  {0x08020000u, 0x20000u, 5u},
    {0x08040000u, 0x20000u, 6u},  {0x08060000u, 0x20000u, 7u},  {0x08080000u, 0x20000u, 8u},
    {0x080A0000u, 0x20000u, 9u},  {0x080C0000u, 0x20000u, 10u}, {0x080E0000u, 0x20000u, 11u},
    {0x08100000u, 0x4000u, 16u},  {0x08104000u, 0x4000u, 17u},  {0x08108000u, 0x4000u, 18u},
    {0x0810C000u, 0x4000u, 19u},  {0x08110000u, 0x10000u, 20u}, {0x08120000u, 0x20000u, 21u},
    {0x08140000u, 0x20000u, 22u}, {0x08160000u, 0x20000u, 23u}, {0x08180000u, 0x20000u, 24u},
    {0x081A0000u, 0x20000u, 25u}, {0x081C0000u, 0x20000u, 26u}, {0x081E0000u, 0x20000u, 27u},
};

/* The sector an area occupies: the linker script places each area on exactly one sector; if it
   ever stops doing so, every operation refuses (-EINVAL) rather than erasing a neighbour. */
static const struct flash_sector *area_sector(int area)
{
    uintptr_t start;
    if (area == PORT_FLASH_AREA_A) {
        start = (uintptr_t)__keystore_a_start;
    } else if (area == PORT_FLASH_AREA_B) {
        start = (uintptr_t)__keystore_b_start;
    } else {
        return NULL;
    }
    for (size_t i = 0; i < sizeof f429_sectors / sizeof f429_sectors[0]; i++) {
        if (f429_sectors[i].addr == start && f429_sectors[i].size == (uint32_t)(uintptr_t)__keystore_size) {
            return &f429_sectors[i];
        }
    }
    return NULL;
}

static int range_ok(const struct flash_sector *s, uint32_t off, size_t len)
{
    return s != NULL && off <= s->size && len <= (size_t)(s->size - off);
}

uint32_t port_flash_area_size(int area)
{
    const struct flash_sector *s = area_sector(area);
    return s != NULL ? s->size : 0u;
}

uint32_t port_flash_align(void)
{
    return FLASH_PROGRAM_UNIT;
}

uint8_t port_flash_erased_val(void)
{
    return FLASH_ERASED;
}

/* Wait for BSY to clear, then look at the error flags (RM0090 §3.9.4). EOP is not looked at: it is
   only set with EOPIE (and never in Renode). Sticky flags are cleared (write 1) before -EIO. */
static int flash_wait_done(uint32_t timeout_ms)
{
    int rc = tick_wait_reg(&FLASH_SR, FLASH_SR_BSY, 0u, timeout_ms);
    uint32_t sr = FLASH_SR;
    if ((sr & FLASH_SR_ERRORS) != 0u) {
        FLASH_SR = sr & (FLASH_SR_ERRORS | FLASH_SR_EOP);
        return -EIO;
    }
    return rc;
}

/* Start of every operation: nothing running, no stale flags (F4 parts often show PGPERR/PGSERR
   after reset or debugger activity), CR unlocked by the §3.6.1 key sequence. */
static int flash_begin(void)
{
    int rc = tick_wait_reg(&FLASH_SR, FLASH_SR_BSY, 0u, TIMEOUT_ERASE_MS);
    if (rc != 0) {
        return rc;
    }
    FLASH_SR = FLASH_SR_ERRORS | FLASH_SR_EOP;
    if ((FLASH_CR & FLASH_CR_LOCK) != 0u) {
        FLASH_KEYR = FLASH_KEY1;
        FLASH_KEYR = FLASH_KEY2;
    }
    return (FLASH_CR & FLASH_CR_LOCK) != 0u ? -EIO : 0;
}

static int flash_end(void)
{
    if ((FLASH_CR & FLASH_CR_LOCK) != 0u) {
        return 0; /* the unlock failed: CR cannot be written, and nothing was started */
    }
    FLASH_CR &= ~(FLASH_CR_PG | FLASH_CR_SER | FLASH_CR_SNB_MASK);
    FLASH_CR |= FLASH_CR_LOCK;
    return (FLASH_CR & FLASH_CR_LOCK) != 0u ? 0 : -EIO;
}

/* The ART data cache may hold lines read before the erase/program (RM0090 §3.5.2): reset it, which
   is allowed only while it is disabled. */
static void flash_dcache_reset(void)
{
    uint32_t acr = FLASH_ACR;
    if ((acr & FLASH_ACR_DCEN) != 0u) {
        FLASH_ACR = acr & ~FLASH_ACR_DCEN;
        FLASH_ACR = (acr & ~FLASH_ACR_DCEN) | FLASH_ACR_DCRST;
        FLASH_ACR = acr & ~(FLASH_ACR_DCEN | FLASH_ACR_DCRST);
        FLASH_ACR = acr;
    }
}

int port_flash_read(int area, uint32_t off, void *dst, size_t len)
{
    const struct flash_sector *s = area_sector(area);
    if (!range_ok(s, off, len) || (dst == NULL && len != 0u)) {
        return -EINVAL;
    }
    if (len == 0u) {
        return 0;
    }
    memcpy(dst, (const void *)(uintptr_t)(s->addr + off), len);
    return 0;
}

int port_flash_write(int area, uint32_t off, const void *src, size_t len)
{
    const struct flash_sector *s = area_sector(area);
    if (!range_ok(s, off, len) || (off % FLASH_PROGRAM_UNIT) != 0u || (len % FLASH_PROGRAM_UNIT) != 0u ||
        (src == NULL && len != 0u)) {
        return -EINVAL;
    }
    if (len == 0u) {
        return 0;
    }

    int rc = flash_begin();
    if (rc == 0) {
        /* §3.6.4: PSIZE x32 + PG, then one 32-bit store per word, each followed by a BSY wait. */
        FLASH_CR = (FLASH_CR & ~(FLASH_CR_PSIZE_MASK | FLASH_CR_SNB_MASK | FLASH_CR_SER | FLASH_CR_MER |
                                 FLASH_CR_MER1)) |
                   FLASH_CR_PSIZE_X32 | FLASH_CR_PG;
        const uint8_t *p = src;
        for (size_t i = 0; i < len && rc == 0; i += FLASH_PROGRAM_UNIT) {
            uint32_t word;
            memcpy(&word, p + i, sizeof word); /* src need not be aligned */
            *(volatile uint32_t *)(uintptr_t)(s->addr + off + i) = word;
            barrier_dsb(); /* the store reaches the flash interface before SR is read */
            rc = flash_wait_done(TIMEOUT_PROGRAM_MS);
        }
    }
    int rc2 = flash_end();
    flash_dcache_reset();
    return rc != 0 ? rc : rc2;
}

int port_flash_erase(int area)
{
    const struct flash_sector *s = area_sector(area);
    if (s == NULL) {
        return -EINVAL;
    }

    int rc = flash_begin();
    if (rc == 0) {
        /* §3.6.3 sector erase: PSIZE x32 + SER + SNB, then STRT; MER bits must stay clear (with SER
           and MER together nothing is erased). */
        FLASH_CR = (FLASH_CR & ~(FLASH_CR_PSIZE_MASK | FLASH_CR_SNB_MASK | FLASH_CR_PG | FLASH_CR_MER |
                                 FLASH_CR_MER1)) |
                   FLASH_CR_PSIZE_X32 | FLASH_CR_SER | ((uint32_t)s->snb << FLASH_CR_SNB_POS);
        FLASH_CR |= FLASH_CR_STRT;
        barrier_dsb();
        rc = flash_wait_done(TIMEOUT_ERASE_MS);
    }
    int rc2 = flash_end();
    flash_dcache_reset();
    return rc != 0 ? rc : rc2;
}
