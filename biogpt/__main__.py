"""`python -m biogpt ...` runs the command line (also what torchrun launches)."""

import sys

from biogpt.cli import main

sys.exit(main())
