"""``python -m fastbind``: the fastbind command line."""

from .cli import main

raise SystemExit(main())
