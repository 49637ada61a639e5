"""A binding round trip beside a direct await and the HTTP peers: ``fastbind bench`` as a script.

    python bench/bench_binding.py [--quick] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import sys

from fastbind.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
