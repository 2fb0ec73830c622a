"""Where to subscribe and publish: flags, then the NS8 environment, then the embedded server.

The password can stay off the command line (where any local user sees it in ``ps``): NS8's
``REDIS_PASSWORD``, a password file (``--redis-password-file`` or ``$REDIS_PASSWORD_FILE``) or
a systemd credential (``LoadCredential=redis-password:…`` makes
``$CREDENTIALS_DIRECTORY/redis-password``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

#: The systemd credential holding the password, in ``$CREDENTIALS_DIRECTORY``.
CREDENTIAL = "redis-password"


def password_file(flag: str | None, env: Mapping[str, str]) -> Path | None:
    """Return --redis-password-file, else $REDIS_PASSWORD_FILE, else the systemd credential."""
    if flag:
        return Path(flag)
    if env.get("REDIS_PASSWORD_FILE"):
        return Path(env["REDIS_PASSWORD_FILE"])
    if env.get("CREDENTIALS_DIRECTORY"):
        credential = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL
        if credential.is_file():
            return credential
    return None


def read_password(path: Path) -> str:
    """Return the password in ``path`` (its first line); raise ValueError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the Redis password file {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"the Redis password file {path} is empty")
    return lines[0]


def with_password(url: str, password: str, user: str = "") -> str:
    """Return ``url`` authenticating with ``password`` unless it already carries one."""
    parts = urlsplit(url)
    if parts.password is not None or "password=" in parts.query:
        return url
    if parts.scheme == "unix":
        query = f"password={quote(password, safe='')}"
        if user and "username=" not in parts.query:
            query = f"username={quote(user, safe='')}&{query}"
        return f"{url}{'&' if parts.query else '?'}{query}"  # geturl() would drop the //
    userinfo, _, host = parts.netloc.rpartition("@")
    name = userinfo or quote(user, safe="")
    return parts._replace(netloc=f"{name}:{quote(password, safe='')}@{host}").geturl()


def _file_password(env: Mapping[str, str], flag: str | None) -> str | None:
    path = password_file(flag, env)
    return read_password(path) if path is not None else None


def address_url(address: str, env: Mapping[str, str], password_flag: str | None = None) -> str:
    """Return a redis:// URL for an NS8 ``host:port`` address with REDIS_USER/REDIS_PASSWORD.

    A password file or systemd credential, when given, wins over ``REDIS_PASSWORD``.
    """
    if "://" in address:
        return _authenticated(address, env, password_flag)
    user = env.get("REDIS_USER", "")
    password = _file_password(env, password_flag) or env.get("REDIS_PASSWORD", "")
    credentials = ""
    if user or password:
        credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        credentials += "@"
    return f"redis://{credentials}{address}"


def _authenticated(url: str, env: Mapping[str, str], password_flag: str | None) -> str:
    """Return ``url`` with the password of a file or credential, when one is given."""
    password = _file_password(env, password_flag)
    return with_password(url, password, env.get("REDIS_USER", "")) if password else url


def subscribe_url(
    flag: str | None, env: Mapping[str, str], password_flag: str | None = None
) -> str | None:
    """Return --redis, else REDIS_REPLICA_ADDRESS, else REDIS_ADDRESS; None: use embedded."""
    if flag:
        return _authenticated(flag, env, password_flag)
    for name in ("REDIS_REPLICA_ADDRESS", "REDIS_ADDRESS"):
        if env.get(name):
            return address_url(env[name], env, password_flag)
    return None


def publish_url(
    flag: str | None,
    env: Mapping[str, str],
    fallback: str | None,
    password_flag: str | None = None,
) -> str | None:
    """Return --publish-redis, else REDIS_ADDRESS, else ``fallback`` (the subscribe URL)."""
    if flag:
        return _authenticated(flag, env, password_flag)
    if env.get("REDIS_ADDRESS"):
        return address_url(env["REDIS_ADDRESS"], env, password_flag)
    return fallback
