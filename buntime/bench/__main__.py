"""C{python -m buntime.bench}."""

import sys

from buntime.bench.cli import main

sys.exit(main())
