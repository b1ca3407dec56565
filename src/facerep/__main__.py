"""``python -m facerep`` (and ``torchrun -m facerep``) runs the command line."""

import sys

from facerep.cli import main

sys.exit(main())
