"""``python -m capalloc.cli``: the command line."""

from capalloc.cli.main import main

raise SystemExit(main())
