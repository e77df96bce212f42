#!/usr/bin/env python3
"""Moved to ``otakey bench dynsec`` (agent/otakey/bench/dynsec.py, one implementation); this script
stays so that references to it keep working and passes its arguments on.

Usage: python3 bench/dynsec_scale.py [--sizes 0,1000,5000] [--count N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from otakey.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "dynsec", *sys.argv[1:]]))
