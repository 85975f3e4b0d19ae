"""`python -m flexserve` is `flexserve`."""

import sys

from flexserve.cli import main

sys.exit(main())
