"""Where to subscribe and publish: flags, then the NS8 environment, then the embedded server."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote


def address_url(address: str, env: Mapping[str, str]) -> str:
    """Return a redis:// URL for an NS8 ``host:port`` address with REDIS_USER/REDIS_PASSWORD."""
    if "://" in address:
        return address
    user, password = env.get("REDIS_USER", ""), env.get("REDIS_PASSWORD", "")
    credentials = ""
    if user or password:
        credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        credentials += "@"
    return f"redis://{credentials}{address}"


def subscribe_url(flag: str | None, env: Mapping[str, str]) -> str | None:
    """Return --redis, else REDIS_REPLICA_ADDRESS, else REDIS_ADDRESS; None: use embedded."""
    if flag:
        return flag
    for name in ("REDIS_REPLICA_ADDRESS", "REDIS_ADDRESS"):
        if env.get(name):
            return address_url(env[name], env)
    return None


def publish_url(flag: str | None, env: Mapping[str, str], fallback: str | None) -> str | None:
    """Return --publish-redis, else REDIS_ADDRESS, else ``fallback`` (the subscribe URL)."""
    if flag:
        return flag
    if env.get("REDIS_ADDRESS"):
        return address_url(env["REDIS_ADDRESS"], env)
    return fallback
