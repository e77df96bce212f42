import sys

from otakey.cli import main

sys.exit(main())
