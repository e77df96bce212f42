"""Bare-metal programs that exercise the STM32F429 model (built by :mod:`emu_programs.build`)."""
