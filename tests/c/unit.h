/*
 * A minimal unit-test harness: each case is `UNIT_TEST(name) { ... }` at the start of a line;
 * CMake registers one ctest per case (`test_x name`), and `test_x` alone runs them all.
 * CHECK* report file:line and fail the case without stopping the others.
 */
#ifndef OTAKEY_UNIT_H
#define OTAKEY_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*unit_fn)(void);
struct unit_case {
    const char *name;
    unit_fn fn;
};

#define UNIT_MAX_CASES 256
static struct unit_case unit_cases[UNIT_MAX_CASES];
static int unit_ncases;
static int unit_failed;

#define UNIT_TEST(case_id)                                                         \
    static void unit_##case_id(void);                                              \
    __attribute__((constructor)) static void unit_reg_##case_id(void)              \
    {                                                                              \
        unit_cases[unit_ncases].name = #case_id;                                   \
        unit_cases[unit_ncases++].fn = unit_##case_id;                             \
    }                                                                              \
    static void unit_##case_id(void)

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            unit_failed = 1;                                                       \
        }                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                         \
    do {                                                                           \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);              \
        if (unit_a_ != unit_b_) {                                                  \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, \
                    __LINE__, #a, unit_a_, #b, unit_b_);                           \
            unit_failed = 1;                                                       \
        }                                                                          \
    } while (0)

#define CHECK_MEM(a, b, n)                                                         \
    do {                                                                           \
        if (memcmp((a), (b), (n)) != 0) {                                          \
            fprintf(stderr, "%s:%d: bytes differ: %s vs %s\n", __FILE__, __LINE__, \
                    #a, #b);                                                       \
            unit_failed = 1;                                                       \
        }                                                                          \
    } while (0)

/* Parse a hex string into buf; returns the byte count. Test-only helper. */
static inline size_t unit_hex(const char *hex, unsigned char *buf, size_t cap)
{
    size_t n = 0;
    while (hex[0] && hex[1] && n < cap) {
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1) {
            break;
        }
        buf[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

int main(int argc, char **argv)
{
    int ran = 0, failed = 0;
    for (int i = 0; i < unit_ncases; i++) {
        if (argc > 1 && strcmp(argv[1], unit_cases[i].name) != 0) {
            continue;
        }
        unit_failed = 0;
        unit_cases[i].fn();
        ran++;
        if (unit_failed) {
            failed++;
            fprintf(stderr, "FAIL %s\n", unit_cases[i].name);
        }
    }
    if (ran == 0) {
        fprintf(stderr, "no such test case\n");
        return 2;
    }
    return failed ? 1 : 0;
}

#endif /* OTAKEY_UNIT_H */
