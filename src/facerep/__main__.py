"""``python -m facerep`` (and ``torchrun -m facerep``) runs the command line."""

import sys

from facerep.commands.cli import main

sys.exit(main())
