"""``python -m goalkit``: the ``goalkit`` command."""

from goalkit.cli import main

raise SystemExit(main())
