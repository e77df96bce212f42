/*
 * Host flash simulator: the port_flash_* implementation of the host build, with an operation log
 * and power-cut injection (see host_flash.h). The rules follow the STM32F429 (RM0090 §3.5/§3.6):
 * an erase sets a whole sector to 0xFF, a program can only clear bits (the result is old AND new).
 */
#include "host_flash.h"

#include <errno.h>
#include <string.h>

#include "port/port_flash.h"

#define WORDS_PER_AREA (HOST_FLASH_AREA_SIZE / HOST_FLASH_ALIGN)

struct host_flash_op {
    uint8_t kind;
    uint8_t area;
    uint32_t off;
};

static uint8_t mem[HOST_FLASH_AREAS][HOST_FLASH_AREA_SIZE];
static struct host_flash_op op_log[HOST_FLASH_LOG_MAX];
static uint32_t op_count;
static uint32_t cut_target; /* op_count value at which the cut fires; 0 = none */
static int cut_mode;
static int powered = 1;
static int cut_fired;
static uint32_t torn_seed = 1;
static int stuck_area = -1;
static uint32_t stuck_off;
static uint8_t stuck_mask;

/* xorshift32: a tiny deterministic generator for the torn patterns (never 0 from a non-0 state). */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

static uint32_t rng_init(uint32_t op)
{
    /* Mix seed and operation number so neighbouring cut points get unrelated patterns. */
    uint32_t s = torn_seed * 0x9E3779B1u ^ (op + 0x7F4A7C15u) * 0x85EBCA77u;
    if (s == 0) {
        s = 0xA5A5A5A5u;
    }
    (void)rng_next(&s);
    return s;
}

static int area_ok(int area)
{
    return area >= 0 && (unsigned)area < HOST_FLASH_AREAS;
}

static int range_ok(int area, uint32_t off, size_t len)
{
    return area_ok(area) && off <= HOST_FLASH_AREA_SIZE && len <= HOST_FLASH_AREA_SIZE - off;
}

static void apply_stuck(int area)
{
    if (stuck_area == area) {
        mem[area][stuck_off] &= (uint8_t)~stuck_mask;
    }
}

static void log_op(int kind, int area, uint32_t off)
{
    if (op_count < HOST_FLASH_LOG_MAX) {
        op_log[op_count].kind = (uint8_t)kind;
        op_log[op_count].area = (uint8_t)area;
        op_log[op_count].off = off;
    }
    op_count++;
}

/* Returns the cut mode that hits the operation just counted, or NONE. */
static int cut_now(void)
{
    if (cut_target != 0 && op_count == cut_target) {
        int m = cut_mode;
        cut_target = 0;
        cut_mode = HOST_FLASH_CUT_NONE;
        powered = 0;
        cut_fired = 1;
        return m;
    }
    return HOST_FLASH_CUT_NONE;
}

static void erase_torn(int area, uint32_t op)
{
    uint32_t s = rng_init(op);
    if ((rng_next(&s) & 1u) == 0) {
        /* Prefix variant: the erase ran through the first k words (1 <= k < all). */
        uint32_t k = 1u + rng_next(&s) % (WORDS_PER_AREA - 1u);
        memset(mem[area], HOST_FLASH_ERASED, (size_t)k * HOST_FLASH_ALIGN);
    } else {
        /* Scattered variant: cells drift to erased independently, word by word. */
        for (uint32_t w = 0; w < WORDS_PER_AREA; w++) {
            if ((rng_next(&s) & 1u) != 0) {
                memset(&mem[area][w * HOST_FLASH_ALIGN], HOST_FLASH_ERASED, HOST_FLASH_ALIGN);
            }
        }
    }
    apply_stuck(area);
}

static void program_word(int area, uint32_t off, const uint8_t *src, int mode, uint32_t op)
{
    uint8_t *w = &mem[area][off];
    if (mode == HOST_FLASH_CUT_TORN) {
        /* Only some of the bits this program would clear take effect: a proper subset when the
         * word clears any bit, so a torn word never equals the completed one. */
        uint32_t s = rng_init(op);
        uint8_t clear[HOST_FLASH_ALIGN];
        int any = 0;
        size_t first = 0;
        for (size_t i = 0; i < HOST_FLASH_ALIGN; i++) {
            clear[i] = (uint8_t)(w[i] & (uint8_t)~src[i]);
            if (clear[i] != 0 && !any) {
                any = 1;
                first = i;
            }
        }
        if (!any) {
            return;
        }
        uint8_t keep[HOST_FLASH_ALIGN];
        for (size_t i = 0; i < HOST_FLASH_ALIGN; i++) {
            keep[i] = (uint8_t)(clear[i] & (uint8_t)rng_next(&s));
        }
        if (memcmp(keep, clear, HOST_FLASH_ALIGN) == 0) {
            /* Leave the lowest bit to clear of the first affected byte unprogrammed. */
            keep[first] &= (uint8_t)~(clear[first] & (uint8_t)-clear[first]);
        }
        for (size_t i = 0; i < HOST_FLASH_ALIGN; i++) {
            w[i] &= (uint8_t)~keep[i];
        }
        return;
    }
    for (size_t i = 0; i < HOST_FLASH_ALIGN; i++) {
        w[i] &= src[i];
    }
}

int port_flash_read(int area, uint32_t off, void *dst, size_t len)
{
    if (!range_ok(area, off, len)) {
        return -EINVAL;
    }
    if (!powered) {
        return -EIO;
    }
    if (len != 0) {
        memcpy(dst, &mem[area][off], len);
    }
    return 0;
}

int port_flash_write(int area, uint32_t off, const void *src, size_t len)
{
    const uint8_t *p = (const uint8_t *)src;
    if (!range_ok(area, off, len) || off % HOST_FLASH_ALIGN != 0 || len % HOST_FLASH_ALIGN != 0) {
        return -EINVAL;
    }
    for (size_t done = 0; done < len; done += HOST_FLASH_ALIGN) {
        uint32_t woff = off + (uint32_t)done;
        int mode;
        if (!powered) {
            return -EIO;
        }
        log_op(HOST_FLASH_OP_PROGRAM, area, woff);
        mode = cut_now();
        if (mode == HOST_FLASH_CUT_BEFORE) {
            return -EIO;
        }
        program_word(area, woff, p + done, mode, op_count);
        if (mode != HOST_FLASH_CUT_NONE) {
            return -EIO;
        }
    }
    return 0;
}

int port_flash_erase(int area)
{
    int mode;
    if (!area_ok(area)) {
        return -EINVAL;
    }
    if (!powered) {
        return -EIO;
    }
    log_op(HOST_FLASH_OP_ERASE, area, 0);
    mode = cut_now();
    switch (mode) {
    case HOST_FLASH_CUT_BEFORE:
        return -EIO;
    case HOST_FLASH_CUT_TORN:
        erase_torn(area, op_count);
        return -EIO;
    default:
        memset(mem[area], HOST_FLASH_ERASED, HOST_FLASH_AREA_SIZE);
        apply_stuck(area);
        return mode == HOST_FLASH_CUT_NONE ? 0 : -EIO;
    }
}

uint32_t port_flash_area_size(int area)
{
    return area_ok(area) ? HOST_FLASH_AREA_SIZE : 0u;
}

uint32_t port_flash_align(void)
{
    return HOST_FLASH_ALIGN;
}

uint8_t port_flash_erased_val(void)
{
    return HOST_FLASH_ERASED;
}

void host_flash_reset(void)
{
    memset(mem, HOST_FLASH_ERASED, sizeof mem);
    op_count = 0;
    cut_target = 0;
    cut_mode = HOST_FLASH_CUT_NONE;
    powered = 1;
    cut_fired = 0;
    torn_seed = 1;
    stuck_area = -1;
    stuck_mask = 0;
}

void host_flash_cut_at(uint32_t n, int mode)
{
    if (n == 0 || mode == HOST_FLASH_CUT_NONE || mode < 0 || mode > HOST_FLASH_CUT_AFTER) {
        cut_target = 0;
        cut_mode = HOST_FLASH_CUT_NONE;
        return;
    }
    cut_target = op_count + n;
    cut_mode = mode;
}

void host_flash_set_torn_seed(uint32_t seed)
{
    torn_seed = seed;
}

void host_flash_power_on(void)
{
    powered = 1;
    cut_fired = 0;
    cut_target = 0;
    cut_mode = HOST_FLASH_CUT_NONE;
}

int host_flash_is_powered(void)
{
    return powered;
}

int host_flash_cut_fired(void)
{
    return cut_fired;
}

uint32_t host_flash_op_count(void)
{
    return op_count;
}

void host_flash_log_clear(void)
{
    /* A pending cut keeps its distance from now. */
    if (cut_target != 0) {
        cut_target -= op_count;
    }
    op_count = 0;
}

int host_flash_op_at(uint32_t i, int *kind, int *area, uint32_t *off)
{
    if (i >= op_count || i >= HOST_FLASH_LOG_MAX) {
        return -1;
    }
    if (kind != NULL) {
        *kind = op_log[i].kind;
    }
    if (area != NULL) {
        *area = op_log[i].area;
    }
    if (off != NULL) {
        *off = op_log[i].off;
    }
    return 0;
}

int host_flash_raw_read(int area, uint32_t off, void *dst, size_t len)
{
    if (!range_ok(area, off, len)) {
        return -EINVAL;
    }
    if (len != 0) {
        memcpy(dst, &mem[area][off], len);
    }
    return 0;
}

int host_flash_raw_write(int area, uint32_t off, const void *src, size_t len)
{
    if (!range_ok(area, off, len)) {
        return -EINVAL;
    }
    if (len != 0) {
        memcpy(&mem[area][off], src, len);
    }
    return 0;
}

int host_flash_raw_fill(int area, uint8_t val)
{
    if (!area_ok(area)) {
        return -EINVAL;
    }
    memset(mem[area], val, HOST_FLASH_AREA_SIZE);
    return 0;
}

int host_flash_raw_is_blank(int area)
{
    if (!area_ok(area)) {
        return 0;
    }
    for (uint32_t i = 0; i < HOST_FLASH_AREA_SIZE; i++) {
        if (mem[area][i] != HOST_FLASH_ERASED) {
            return 0;
        }
    }
    return 1;
}

size_t host_flash_snapshot_size(void)
{
    return sizeof mem;
}

int host_flash_snapshot(void *buf, size_t cap)
{
    if (buf == NULL || cap < sizeof mem) {
        return -EINVAL;
    }
    memcpy(buf, mem, sizeof mem);
    return 0;
}

int host_flash_restore(const void *buf, size_t len)
{
    if (buf == NULL || len != sizeof mem) {
        return -EINVAL;
    }
    memcpy(mem, buf, sizeof mem);
    return 0;
}

int host_flash_set_stuck_zero(int area, uint32_t off, uint8_t mask)
{
    if (mask == 0) {
        stuck_area = -1;
        stuck_mask = 0;
        return 0;
    }
    if (!range_ok(area, off, 1) || off >= HOST_FLASH_AREA_SIZE) {
        return -EINVAL;
    }
    stuck_area = area;
    stuck_off = off;
    stuck_mask = mask;
    return 0;
}
