"""``python -m keras_mgc.export --run DIR --formats all`` (and ``python -m export`` from a checkout): see cli.py."""

from keras_mgc.export.cli import main

raise SystemExit(main())
