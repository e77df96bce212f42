/* Boot-time flash scenario for power-cut tests: report whether SRAM survived, then erase flash
 * sector 1 (SNB 1) and bank-2 sector 13 (SNB 17), program PATTERN_WORDS words into each, lock,
 * print "done" and wait for input. The erase and program order is fixed, so flash operation k
 * is the same on every run. */
#include "rt.h"

#define RAM_MAGIC 0x5AFEC0DEu
#define PATTERN_WORDS 16u
#define SECTOR1 0x08004000u
#define SECTOR13 0x08104000u

__attribute__((section(".noinit"))) volatile uint32_t ram_marker;
volatile uint32_t boots;
volatile uint32_t initialised = 0x1234ABCDu; /* .data: copied from flash by the startup code */

static uint32_t pattern(uint32_t i)
{
    return (i * 0x01010101u) ^ 0xA5A5A5A5u;
}

int main(void)
{
    rt_uart_init();
    rt_puts(ram_marker == RAM_MAGIC ? "ram=kept\n" : "ram=lost\n");
    if (initialised != 0x1234ABCDu) {
        rt_puts("data=bad\n");
    }
    ram_marker = RAM_MAGIC;
    boots++;
    rt_flash_unlock();
    uint32_t errors = rt_flash_erase(1) & FLASH_SR_ERRORS;
    for (uint32_t i = 0; i < PATTERN_WORDS; i++) {
        errors |= rt_flash_program_word(SECTOR1 + 4u * i, pattern(i)) & FLASH_SR_ERRORS;
    }
    errors |= rt_flash_erase(17) & FLASH_SR_ERRORS;
    for (uint32_t i = 0; i < PATTERN_WORDS; i++) {
        errors |= rt_flash_program_word(SECTOR13 + 4u * i, ~pattern(i)) & FLASH_SR_ERRORS;
    }
    FLASH_CR |= FLASH_CR_LOCK;
    rt_puts("done ");
    rt_put_hex(errors);
    rt_putc('\n');
    for (;;) {
        rt_putc((char)rt_getc());
    }
}
