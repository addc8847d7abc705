"""``python -m llmesr`` (and ``torchrun -m llmesr train ...``): the command line."""

import sys

from llmesr.cli import main

sys.exit(main())
