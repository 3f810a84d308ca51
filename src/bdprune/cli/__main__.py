"""`python -m bdprune.cli` runs the command line, as the `bdprune` script does."""

import sys

from . import main

sys.exit(main())
