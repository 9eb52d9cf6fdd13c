"""`python -m autoresearch_tui`, the same as the `autoresearch-tui` command."""

import sys

from .cli import main

sys.exit(main())
