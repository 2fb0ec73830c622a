"""Event names in the past tense (NS8 convention): ``module-added``, not ``module-add``."""

from __future__ import annotations

import re

from eventrouter.analysis.refs import NOT_LITERAL, warning
from eventrouter.errors import Diagnostic
from eventrouter.model import EVENT_MARK, EmitAction, Route

_IRREGULAR = {
    "begin": "begun", "bind": "bound", "break": "broken", "bring": "brought", "build": "built",
    "buy": "bought", "catch": "caught", "choose": "chosen", "do": "done", "draw": "drawn",
    "drive": "driven", "fall": "fallen", "feel": "felt", "find": "found", "fly": "flown",
    "forget": "forgotten", "freeze": "frozen", "get": "got", "give": "given", "go": "gone",
    "grow": "grown", "hang": "hung", "hide": "hidden", "hold": "held", "keep": "kept",
    "know": "known", "lay": "laid", "lead": "led", "leave": "left", "lose": "lost",
    "make": "made", "meet": "met", "pay": "paid", "rebuild": "rebuilt", "redo": "redone",
    "resend": "resent", "rewrite": "rewritten", "ride": "ridden", "rise": "risen", "say": "said",
    "see": "seen", "sell": "sold", "send": "sent", "shake": "shaken", "show": "shown",
    "sleep": "slept", "speak": "spoken", "spend": "spent", "stand": "stood", "steal": "stolen",
    "stick": "stuck", "strike": "struck", "take": "taken", "teach": "taught", "tear": "torn",
    "tell": "told", "think": "thought", "throw": "thrown", "unbind": "unbound", "undo": "undone",
    "wake": "woken", "wear": "worn", "win": "won", "withdraw": "withdrawn", "write": "written",
    "overwrite": "overwritten",
}  # fmt: skip


_UNCHANGED = {
    "set", "reset", "preset", "upset", "offset", "run", "rerun", "cut", "put", "shut", "split",
    "spread", "read", "hit", "let", "quit", "cast", "broadcast", "cost", "hurt", "burst",
}  # fmt: skip


_PAST = frozenset(_IRREGULAR.values()) | _UNCHANGED | {"gotten"}


_DOUBLING = {
    "commit", "submit", "permit", "admit", "omit", "refer", "prefer", "occur", "recur",
    "control", "patrol", "transfer", "compel", "expel", "propel", "regret", "equip", "deter",
}  # fmt: skip


_VOWELS = "aeiou"


#: Words that end event names as nouns: adding -ed to them makes up a verb (backup-alerted).
_NOUNS = {
    "acl", "alarm", "alert", "backup", "cert", "certificate", "cleanup", "config", "data",
    "deadline", "digest", "domain", "error", "event", "expiry", "failover", "failure", "group",
    "health", "heartbeat", "incident", "info", "issue", "job", "key", "leader", "log", "login",
    "logout", "message", "metric", "module", "node", "notice", "outage", "password", "policy",
    "problem", "progress", "quota", "release", "reminder", "result", "rule", "setup", "snapshot",
    "state", "status", "success", "summary", "task", "threshold", "timeout", "token", "user",
    "version", "warning",
}  # fmt: skip
_NOUN_ENDINGS = ("tion", "sion", "ment", "ness", "ity", "ance", "ence", "ship")


def _doubles(word: str) -> bool:
    """Return True when ``word`` doubles its last consonant: stop -> stopped."""
    if word in _DOUBLING:
        return True
    if len(word) < 3 or word[-1] in _VOWELS + "wxy" or word[-2] not in _VOWELS:
        return False
    return word[-3] not in _VOWELS and len(re.findall(f"[{_VOWELS}]+", word)) == 1


def _base(word: str) -> str:
    """Return the base form of ``starting``/``stopping``/``updates``."""
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        return stem[:-1] if stem[-1] == stem[-2] and _doubles(stem[:-1]) else stem
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def past_tense(word: str) -> str:
    """Return the past participle of an English verb by simple rules: add -> added."""
    base = _base(word.lower())
    if base in _IRREGULAR:
        return _IRREGULAR[base]
    if base in _PAST or base.endswith("ed"):
        return base
    if base.endswith("e"):
        return base + "d"
    if len(base) > 1 and base.endswith("y") and base[-2] not in _VOWELS:
        return base[:-1] + "ied"
    return base + (base[-1] if _doubles(base) else "") + "ed"


def _is_noun(word: str) -> bool:
    """Return True for a word that ends event names as a noun (alert, status, expiration)."""
    return any(w in _NOUNS or w.endswith(_NOUN_ENDINGS) for w in (word, _base(word)))


def _tense_problem(name: str, where: str) -> str | None:
    """Return what to say when the last word of ``name`` is not in the past tense."""
    word = re.split(r"[-_.]", name)[-1].lower()
    if not word.isalpha() or word.endswith("ed") or word in _PAST:
        return None
    if _is_noun(word):
        return (
            f"event name {name!r} ({where}) does not say what happened: event names end in "
            "the past tense; end it with what happened to it, as in backup-status-changed"
        )
    suggestion = name[: len(name) - len(word)] + past_tense(word)
    return (
        f"event name {name!r} ({where}) is not in the past tense; event names say what "
        f"happened: did you mean {suggestion!r}?"
    )


def _literal_name(channel: str) -> str | None:
    _, sep, name = channel.partition(EVENT_MARK)
    return name if sep and name and not NOT_LITERAL.intersection(name) else None


def tense_findings(route: Route) -> list[Diagnostic]:
    """Report literal event names, in patterns and emitted channels, not in the past tense."""
    places = [(route.line, f"pattern {p.text}", p.text) for p in route.patterns]
    places += [
        (a.line, f"emitted channel {a.channel.source}", a.channel.source)
        for a in route.actions
        if isinstance(a, EmitAction)
    ]
    findings = []
    for line, where, channel in places:
        name = _literal_name(channel)
        message = _tense_problem(name, where) if name else None
        if message is not None:
            findings.append(warning(route, line, message))
    return findings
