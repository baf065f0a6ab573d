"""`python3 -m egresskit ...`: the same as the `egresskit` command."""

import sys

from egresskit.cli import main

sys.exit(main())
