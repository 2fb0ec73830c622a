"""Everything that talks to Redis: the bus, connections, the embedded server."""
