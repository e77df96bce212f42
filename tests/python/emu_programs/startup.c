/* Vector table and reset handler for the emulator's test programs.
 * RT_ENABLE_FPU (default 1) grants CP10/CP11 full access before any C code runs (PM0214 §4.6.1);
 * the monitor is built with 0 so that tests can check the model's CPACR enforcement. */
#include <stdint.h>

#ifndef RT_ENABLE_FPU
#define RT_ENABLE_FPU 1
#endif

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);

void Default_Handler(void)
{
    for (;;) {
        __asm__ volatile("bkpt #0");
    }
}

__attribute__((section(".isr_vector"), used)) void (*const vector_table[16])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, Default_Handler,
};

void Reset_Handler(void)
{
#if RT_ENABLE_FPU
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb");
#endif
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    main();
    for (;;) {
        __asm__ volatile("wfi");
    }
}
