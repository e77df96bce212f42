/*
 * Vector table and reset code, placed in flash sector 0 (stm32f429.ld, DESIGN §2.1).
 *
 * The firmware is polling-only: unicorn (our CI emulator) runs no exception at all, so only the
 * initial SP and the reset vector are used. The other system vectors point at a handler that
 * parks the core, so a fault on a real board stops in a known place a debugger can show; no IRQ
 * vector exists because no interrupt is ever enabled (TICKINT, IE bits all 0).
 *
 * Reset_Handler, in this order:
 *  1. FPU on (CPACR CP10/CP11 full access, PM0214 §4.6.1) before any code that could use it: the
 *     image is built with -mfloat-abi=hard, so any function may touch s0-s31.
 *  2. VTOR = our table: Renode maps nothing at the 0x0 boot alias.
 *  3. .data copied from flash, .bss zeroed: Renode keeps RAM over `machine Reset`, so nothing may
 *     rely on RAM being zero at power-on.
 *  4. The stack below the current frame painted with a pattern, so a debugger or the emulator can
 *     read the high-water mark (first unpainted word above __stack_bottom).
 *  5. main(), which never returns.
 * This file is compiled with -fno-tree-loop-distribute-patterns so the loops stay loops and do not
 * become calls to memcpy/memset in the application sectors.
 */
#include <stdint.h>

#include "regs.h"

#define STACK_PAINT 0xC5ACCE55u

/* Linker-script symbols (stm32f429.ld). */
extern uint32_t _sidata[];
extern uint32_t _sdata[];
extern uint32_t _edata[];
extern uint32_t _sbss[];
extern uint32_t _ebss[];
extern uint32_t __stack_bottom[];
extern uint32_t _estack[];

int main(void);
void Reset_Handler(void) __attribute__((noreturn));
void Fault_Handler(void) __attribute__((noreturn));

/* ARMv7-M vector table (ARMv7-M ARM B1.5.3): initial SP, then the 15 system exception vectors. */
struct vector_table {
    const void *initial_sp;
    void (*handlers[15])(void);
};

__attribute__((section(".isr_vector"), used)) const struct vector_table vector_table = {
    .initial_sp = _estack,
    .handlers = {
        Reset_Handler, /* 1 Reset */
        Fault_Handler, /* 2 NMI */
        Fault_Handler, /* 3 HardFault */
        Fault_Handler, /* 4 MemManage */
        Fault_Handler, /* 5 BusFault */
        Fault_Handler, /* 6 UsageFault */
        0, 0, 0, 0,    /* 7-10 reserved */
        Fault_Handler, /* 11 SVCall */
        Fault_Handler, /* 12 DebugMonitor */
        0,             /* 13 reserved */
        Fault_Handler, /* 14 PendSV */
        Fault_Handler, /* 15 SysTick (TICKINT is never set) */
    },
};

__attribute__((section(".boot"))) void Fault_Handler(void)
{
    for (;;) {
    }
}

__attribute__((section(".boot"))) void Reset_Handler(void)
{
    SCB_CPACR |= SCB_CPACR_CP10_CP11_FULL;
    barrier_dsb();
    barrier_isb();

    SCB_VTOR = (uint32_t)(uintptr_t)&vector_table;

    for (uint32_t *src = _sidata, *dst = _sdata; dst < _edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = _sbss; dst < _ebss;) {
        *dst++ = 0u;
    }

    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = __stack_bottom; p < sp - 16; p++) {
        *p = STACK_PAINT;
    }

    (void)main();
    for (;;) {
    }
}
