"""Allow ``python -m eventrouter``."""

from eventrouter.cli import main

raise SystemExit(main())
