# Post-build check of otakey-fw.elf (cmake -P): the application's flash and RAM against their
# budgets, and no C-library stdio or heap linked in. Sizes come from the linker-script symbols, so
# the keystore sectors (32 KB of 0xFF and the factory record) never count against the application.
#   -DELF=... -DNM=... -DFLASH_BUDGET=bytes -DRAM_BUDGET=bytes [-DSTALE="files to remove on failure"]
cmake_minimum_required(VERSION 3.20)
foreach(var ELF NM FLASH_BUDGET RAM_BUDGET)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_image.cmake: -D${var}= is required")
  endif()
endforeach()

execute_process(COMMAND ${NM} ${ELF} OUTPUT_VARIABLE nm_out RESULT_VARIABLE nm_rc)
if(NOT nm_rc EQUAL 0)
  message(FATAL_ERROR "check_image: ${NM} ${ELF} failed")
endif()
string(REPLACE "\n" ";" nm_lines "${nm_out}")

set(names "")
foreach(line IN LISTS nm_lines)
  if(line MATCHES "^([0-9a-fA-F]+) ([A-Za-z]) (.+)$")
    set(sym "${CMAKE_MATCH_3}")
    list(APPEND names "${sym}")
    math(EXPR "S_${sym}" "0x${CMAKE_MATCH_1}" OUTPUT_FORMAT DECIMAL)
  elseif(line MATCHES "^ +U (.+)$")
    list(APPEND names "${CMAKE_MATCH_1}")
  endif()
endforeach()

foreach(sym __boot_start __boot_end __app_start __app_end _sidata _sdata _edata _sbss _ebss
            __stack_bottom _estack __keystore_size)
  if(NOT DEFINED S_${sym})
    message(FATAL_ERROR "check_image: symbol ${sym} missing from ${ELF}")
  endif()
endforeach()

math(EXPR boot "${S___boot_end} - ${S___boot_start}")
math(EXPR text "${S__sidata} - ${S___app_start}")
math(EXPR data "${S__edata} - ${S__sdata}")
math(EXPR bss "${S__ebss} - ${S__sbss}")
math(EXPR stack "${S__estack} - ${S___stack_bottom}")
math(EXPR flash "${boot} + ${text} + ${data}")
math(EXPR ram "${data} + ${bss} + ${stack}")
math(EXPR flash_pct "${flash} * 100 / ${FLASH_BUDGET}")
math(EXPR ram_pct "${ram} * 100 / ${RAM_BUDGET}")

message("otakey-fw: app text ${text} (+ sector-0 boot ${boot}), data ${data}, bss ${bss}, stack ${stack}")
message("otakey-fw: app flash ${flash} / ${FLASH_BUDGET} B (${flash_pct}%), "
        "RAM ${ram} / ${RAM_BUDGET} B (${ram_pct}%); keystore 2 x ${S___keystore_size} B not counted")

# No stdio, no heap: their presence means something pulled in newlib's printf/malloc machinery.
set(forbidden printf iprintf vprintf sprintf siprintf snprintf vsnprintf fprintf puts fputs putchar
    _write _write_r _sbrk _sbrk_r malloc _malloc_r free _free_r calloc realloc __sinit _fflush_r)
set(found "")
foreach(sym IN LISTS forbidden)
  if(sym IN_LIST names)
    list(APPEND found ${sym})
  endif()
endforeach()

set(failed "")
if(found)
  list(APPEND failed "stdio/heap symbols linked: ${found}")
endif()
if(flash GREATER FLASH_BUDGET)
  list(APPEND failed "application flash ${flash} B exceeds the ${FLASH_BUDGET} B budget")
endif()
if(ram GREATER RAM_BUDGET)
  list(APPEND failed "application RAM ${ram} B (data + bss + stack) exceeds the ${RAM_BUDGET} B budget")
endif()
if(failed)
  # Removed so that no over-budget image is flashed by mistake and the next build links again.
  file(REMOVE ${ELF} ${STALE})
  message(FATAL_ERROR "otakey-fw: ${failed} (image removed)")
endif()
message("otakey-fw: budget check passed; no stdio or heap linked")
