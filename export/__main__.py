"""``python -m export --run DIR --formats all``: see export.cli."""

from export.cli import main

raise SystemExit(main())
