"""Entry point for ``python -m keysvc``."""

from keysvc.cli import main

raise SystemExit(main())
