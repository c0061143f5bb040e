"""`python -m pvgen`: the same entry point as the `pvgen` console script."""

import sys

from pvgen.cli import main

sys.exit(main())
