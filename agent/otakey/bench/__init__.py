"""Benchmarks that print numbers (``otakey bench …``): key-update throughput through a real agent,
cloud-key rotation through real brokers, idle connections, the emulated STM32F429 fleet, agent
replicas with one killed, and the paper's baselines beside our measurements.

Each benchmark module exposes ``run(spec) -> Report``; :mod:`otakey.cli.bench` is the command
line. The servers are real and local (:mod:`.stack`), the devices protocol-level
(:mod:`.loadgen`) or emulated (:mod:`.emu`).
"""
