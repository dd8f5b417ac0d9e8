"""`python -m chalicelib.cli`: the same as the `readmit` console script."""

import sys

from chalicelib.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
