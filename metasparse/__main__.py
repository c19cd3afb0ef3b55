"""``python -m metasparse …``: the same commands as the ``metasparse`` console script."""

import sys

from metasparse.cli import main

sys.exit(main())
