"""Allow ``python -m eventrouter``."""

from eventrouter.cli.main import main

raise SystemExit(main())
