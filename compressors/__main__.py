"""`python -m compressors`: the command line (see `compressors.cli`)."""

import sys

from compressors.cli import main

sys.exit(main())
