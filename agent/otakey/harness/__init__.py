"""Test and fleet harness: devices that run the real firmware image behind one backend interface
(:mod:`.backend`, with the built-in emulator in :mod:`.emu_backend`), each with its gateway
(:mod:`.linked`), fleets of them over worker processes (:mod:`.fleet`), the real servers they talk to
(:mod:`.servers`), and protocol-level simulated devices (:mod:`.protocol_device`)."""
