"""`python -m egresskit` is the `egresskit` command."""

import sys

from egresskit.cli import main

sys.exit(main())
