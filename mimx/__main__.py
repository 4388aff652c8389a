"""``python -m mimx`` (and ``torchrun -m mimx``) run the CLI."""

import sys

from mimx.cli import main

sys.exit(main())
