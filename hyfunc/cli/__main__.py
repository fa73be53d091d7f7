"""`python -m hyfunc.cli …`: the same as the `hyfunc` console script."""

import sys

from hyfunc.cli import main

sys.exit(main())
