/*
 * Contents of the two keystore sectors. The factory keystore record is placed at the start of
 * area B (sector 2) by stm32f429.ld, which fills the rest of both sectors with 0xFF. The bytes
 * come from the file named by the OTAKEY_FACTORY_RECORD cache variable (default: a development
 * record made at configure time by dev_factory_record.py); CMake passes its path as
 * OTAKEY_FACTORY_RECORD_FILE, a string literal.
 */
#ifndef OTAKEY_FACTORY_RECORD_FILE
#error "OTAKEY_FACTORY_RECORD_FILE must name the factory record file"
#endif

/* One erased byte gives area A's output section its contents and read-only flags; the linker fills
   the rest of the sector with 0xFF. */
__asm__(".section .keystore_a_fill,\"a\",%progbits\n"
        ".byte 0xFF\n"
        ".previous\n");

__asm__(".section .keystore_b_record,\"a\",%progbits\n"
        ".global __factory_record_start\n"
        "__factory_record_start:\n"
        ".incbin \"" OTAKEY_FACTORY_RECORD_FILE "\"\n"
        ".global __factory_record_end\n"
        "__factory_record_end:\n"
        ".previous\n");
