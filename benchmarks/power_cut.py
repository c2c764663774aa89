#!/usr/bin/env python3
"""Power cuts at hundreds of random points for the outbox and the model store, on LazyFS.

The harness is `tests/powercut.py` (the suite runs it at 10 cuts per store); this runs the larger
count and prints, per store, the cuts made, the points they fell on (operation and kind of file)
and every problem found after a cut. Needs fuse3 (`scripts/_setup.sh dev` installs it) and root or
/dev/fuse access.

    python benchmarks/power_cut.py --cuts 300
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.powercut import main

if __name__ == "__main__":
    sys.exit(main())
