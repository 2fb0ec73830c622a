"""eventrouter: a declarative, YAML-configured event router for Redis pub/sub."""

__version__ = "0.1.0"
