"""``python -m visionlens.apps.demo --out report``: write the demo report (see :mod:`visionlens.apps.demo.report`)."""

import sys

from .report import main

if __name__ == "__main__":
    sys.exit(main())
