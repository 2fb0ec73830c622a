"""Tests of channel patterns (Redis glob syntax plus {name} captures) and the route index.

Where Redis's behaviour is the question, a real server is the reference: the router
PSUBSCRIBEs to each pattern's glob and then matches the channel itself, so the two must agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis

from eventrouter.analysis.loops import overlap, pattern_glob
from eventrouter.config.loader import load_file_routes
from eventrouter.config.patterns import ChannelPattern, PatternError, RouteIndex
from eventrouter.config.templates import Text
from eventrouter.config.valuetemplates import Value
from eventrouter.model import EmitAction, Route


def matches(pattern: str, channel: str) -> bool:
    """Return whether ``pattern`` matches ``channel``."""
    return ChannelPattern.parse(pattern).match(channel) is not None


# --- Redis glob semantics ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        # `*` crosses `/`, as in Redis
        ("*", "cluster/event/module-added", True),
        ("*", "", True),
        ("*/event/module-added", "module/traefik1/event/module-added", True),
        ("*/event/module-added", "a/b/c/event/module-added", True),
        ("cluster/*", "cluster/event/x", True),
        ("cluster/*", "cluster", False),
        ("cluster/event/*", "node/1/event/x", False),
        ("*added", "cluster/event/module-added", True),
        ("*added", "cluster/event/module-added/x", False),
        # `?` is exactly one character, `/` included
        ("node/?/event/x", "node/1/event/x", True),
        ("node/?/event/x", "node/12/event/x", False),
        ("node/?/event/x", "node//event/x", False),
        ("a?c", "a/c", True),
        # classes
        ("node/[123]/event/x", "node/2/event/x", True),
        ("node/[123]/event/x", "node/4/event/x", False),
        ("node/[^1]/event/x", "node/2/event/x", True),
        ("node/[^1]/event/x", "node/1/event/x", False),
        ("module/mail[a-c]/event/x", "module/mailb/event/x", True),
        ("module/mail[a-c]/event/x", "module/maild/event/x", False),
        ("module/mail[c-a]/event/x", "module/mailb/event/x", True),  # Redis takes reversed ranges
        ("[-a]x", "-x", True),
        ("[\\]]x", "]x", True),
        # escapes
        ("cluster/event/a\\*b", "cluster/event/a*b", True),
        ("cluster/event/a\\*b", "cluster/event/axb", False),
        ("a\\?b", "a?b", True),
        ("a\\?b", "axb", False),
        ("\\[x\\]", "[x]", True),
        ("\\{x\\}", "{x}", True),
        # regex metacharacters are literal
        ("a.b", "a.b", True),
        ("a.b", "axb", False),
        ("a+b(c)|d$", "a+b(c)|d$", True),
        # case matters
        ("cluster/*", "Cluster/x", False),
        # the whole channel must match
        ("cluster/event/module", "cluster/event/module-added", False),
        ("event/module-added", "cluster/event/module-added", False),
    ],
)
def test_glob_semantics(pattern: str, channel: str, expected: bool) -> None:
    assert matches(pattern, channel) is expected


def test_star_and_question_mark_cross_newlines() -> None:
    assert matches("a*", "a\nb")
    assert matches("a?b", "a\nb")


# --- captures ------------------------------------------------------------------------------


def test_capture_matches_one_segment() -> None:
    pattern = ChannelPattern.parse("module/{module}/event/backup-*")

    assert pattern.match("module/mail1/event/backup-done") == {"module": "mail1"}
    assert pattern.captures == ("module",)


@pytest.mark.parametrize(
    "channel",
    [
        "module//event/backup-done",  # empty segment
        "module/a/b/event/backup-done",  # two segments
        "module/mail1/event/restore-done",
    ],
)
def test_capture_refuses_empty_or_several_segments(channel: str) -> None:
    assert ChannelPattern.parse("module/{module}/event/backup-*").match(channel) is None


def test_two_captures() -> None:
    pattern = ChannelPattern.parse("{kind}/{id}/event/{name}")

    assert pattern.match("module/traefik1/event/certificate-changed") == {
        "kind": "module",
        "id": "traefik1",
        "name": "certificate-changed",
    }
    assert pattern.match("cluster/event/module-added") is None
    assert pattern.match("module/traefik1/event/a/b") is None
    assert pattern.captures == ("kind", "id", "name")


def test_pattern_without_captures_gives_empty_captures() -> None:
    assert ChannelPattern.parse("cluster/event/*").match("cluster/event/x") == {}


def test_capture_with_glob_inside_the_same_segment() -> None:
    pattern = ChannelPattern.parse("module/traefik{n}/event/*")

    assert pattern.match("module/traefik12/event/x") == {"n": "12"}
    assert pattern.match("module/traefik/event/x") is None


# --- glob translation and literals ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "glob"),
    [
        ("cluster/event/module-added", "cluster/event/module-added"),
        ("module/{module}/event/backup-*", "module/*/event/backup-*"),
        ("{a}/{b}", "*/*"),
        ("node/[12]/event/?", "node/[12]/event/?"),
        ("node/[^1]/x", "node/[^1]/x"),
        ("a\\*b\\{c\\}", "a\\*b\\{c\\}"),
    ],
)
def test_glob_translation(text: str, glob: str) -> None:
    pattern = ChannelPattern.parse(text)

    assert pattern.glob == glob
    assert pattern.text == text


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("cluster/event/module-added", True),
        ("cluster/event/*", False),
        ("node/?/x", False),
        ("node/[1]/x", False),
        ("module/{m}/x", False),
        ("a\\*b", False),  # an escape makes the glob non-literal text
    ],
)
def test_literal(text: str, literal: bool) -> None:
    assert ChannelPattern.parse(text).literal is literal


# --- malformed patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("node/[12/event/x", "unclosed '['"),
        ("node/[", "unclosed '['"),
        ("module/{module/event/x", "unclosed '{'"),
        ("module/{}/event/x", "capture name"),
        ("module/{1abc}/event/x", "capture name"),
        ("module/{a-b}/event/x", "capture name"),
        ("module/{a/b}/event/x", "capture name"),
        ("{x}/event/{x}", "twice"),
        ("module/x}/event", "unmatched '}'"),
        ("cluster/event\\", "lone '\\'"),
        ("node/[]/x", "empty character class"),
    ],
)
def test_malformed_patterns_raise_pattern_error(text: str, words: str) -> None:
    with pytest.raises(PatternError) as info:
        ChannelPattern.parse(text)
    assert words in str(info.value)


def test_pattern_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unclosed"):
        ChannelPattern.parse("[abc")


# --- real Redis as the reference -----------------------------------------------------------

PLAIN_PATTERNS = [
    "*",
    "cluster/event/*",
    "*/event/*",
    "*/event/module-added",
    "*added",
    "a*b*c",
    "node/?/event/*",
    "node/??/event/fqdn-changed",
    "module/traefik[0-9]/event/*",
    "module/[^t]*",
    "[a-c]luster/event/*",
    "[c-a]luster/*",
    "cluster/event/module-\\*",
    "cluster/event/a\\?c",
    "*\\[x\\]",
    "[\\]]x",
    "[-a]x",
    "cluster/event/module-added",
    "a.b",
]
CAPTURE_PATTERNS = [
    "module/{module}/event/{event}",
    "{source}/event/*",
    "node/{id}/event/fqdn-changed",
    "module/traefik{n}/event/*",
]
CHANNELS = [
    "cluster/event/module-added",
    "cluster/event/module-removed",
    "cluster/event/module-*",
    "cluster/event/a?c",
    "cluster/event/abc",
    "node/1/event/fqdn-changed",
    "node/12/event/fqdn-changed",
    "node//event/fqdn-changed",
    "module/traefik1/event/backup-done",
    "module/traefik12/event/x",
    "module/traefik/event/x",
    "module/mail1/event/certificate-changed",
    "module/a/b/event/module-added",
    "Cluster/event/x",
    "bluster/event/x",
    "[x]",
    "y[x]",
    "]x",
    "-x",
    "ax",
    "aXbYc",
    "a/b/c",
    "a.b",
    "axb",
    "a\nb",
]


def redis_deliveries(
    url: str, globs: Iterable[str], channels: Iterable[str]
) -> dict[str, set[str]]:
    """PSUBSCRIBE to ``globs``, PUBLISH each channel; return channel -> globs that got it."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    sentinel = "\x00sentinel"  # plain SUBSCRIBE: its message closes each channel's batch
    try:
        globs = list(dict.fromkeys(globs))
        pubsub.psubscribe(*globs)
        pubsub.subscribe(sentinel)
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(globs) + 1 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] in ("psubscribe", "subscribe"):
                confirmed += 1
        assert confirmed == len(globs) + 1, "the server did not confirm every subscription"
        delivered: dict[str, set[str]] = {}
        for channel in channels:
            got = delivered.setdefault(channel, set())
            client.publish(channel, "x")
            client.publish(sentinel, "end")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=1)
                if message is None:
                    continue
                if message["type"] == "message":
                    break
                if message["type"] == "pmessage" and message["channel"].decode() == channel:
                    got.add(message["pattern"].decode())
            else:
                pytest.fail(f"no sentinel after publishing {channel!r}")
        return delivered
    finally:
        pubsub.close()
        client.close()


def disagreements(url: str, patterns: list[str], channels: list[str]) -> list[str]:
    """Return every (pattern, channel) pair on which Redis and ChannelPattern disagree."""
    parsed = [ChannelPattern.parse(text) for text in patterns]
    delivered = redis_deliveries(url, [pattern.glob for pattern in parsed], channels)
    found = []
    for channel in channels:
        for pattern in parsed:
            by_redis = pattern.glob in delivered[channel]
            by_us = pattern.match(channel) is not None
            if by_redis != by_us:
                found.append(f"{pattern.text!r} on {channel!r}: redis {by_redis}, ours {by_us}")
    return found


def test_plain_patterns_agree_with_a_real_redis_server(redis_url: str) -> None:
    assert disagreements(redis_url, PLAIN_PATTERNS, CHANNELS) == []


def test_capture_patterns_never_ask_for_less_than_redis_delivers(redis_url: str) -> None:
    parsed = [ChannelPattern.parse(text) for text in CAPTURE_PATTERNS]
    delivered = redis_deliveries(redis_url, [pattern.glob for pattern in parsed], CHANNELS)
    missed = [
        f"{pattern.text!r} on {channel!r}"
        for channel in CHANNELS
        for pattern in parsed
        if pattern.match(channel) is not None and pattern.glob not in delivered[channel]
    ]

    assert missed == []  # a channel we would route must reach us through the glob
    # ...and the capture narrows what the glob lets through to single segments
    assert "module/{module}/event/{event}" in CAPTURE_PATTERNS
    assert "module/*/event/*" in delivered["module/a/b/event/module-added"]
    assert not matches("module/{module}/event/{event}", "module/a/b/event/module-added")


def test_range_ending_in_a_dash_is_refused_as_ambiguous() -> None:
    # Redis reads `a-]` as the range a..']' (reversed, so ']'..'a') and the class then runs to
    # the end of the pattern: `[a-]x` never delivers "ax" or "-x", surprising whoever wrote
    # it. The router refuses the pattern and says how to write a dash.
    with pytest.raises(PatternError, match=r"ambiguous 'a-\]'.*put '-' first"):
        ChannelPattern.parse("[a-]x")
    assert ChannelPattern.parse("[-a]x").match("-x") == {}


def test_non_ascii_channels_agree_with_redis(redis_url: str) -> None:
    # Redis matches bytes: `?` is one byte and `[é]` is a class of the two UTF-8 bytes of é.
    patterns = ["node/?/event/x", "node/??/event/x", "node/[é]/event/x"]

    assert disagreements(redis_url, patterns, ["node/é/event/x"]) == []


# --- the route index -----------------------------------------------------------------------

EMIT = EmitAction(Text("cluster/event/derived"), Value({}), line=1)


def route(name: str, *patterns: str, enabled: bool = True) -> Route:
    """Return a route with ``patterns`` and one emit action."""
    return Route(
        name=name,
        patterns=tuple(ChannelPattern.parse(text) for text in patterns),
        actions=(EMIT,),
        file="routes.yml",
        line=1,
        enabled=enabled,
    )


def names(index: RouteIndex, channel: str) -> list[str]:
    """Return the names of the routes ``index`` finds for ``channel``, in order."""
    return [found.name for found, _ in index.match(channel)]


def test_index_returns_matches_in_route_order_across_buckets() -> None:
    index = RouteIndex(
        [
            route("anywhere-first", "*/event/module-added"),
            route("by-head", "cluster/event/*"),
            route("literal", "cluster/event/module-added"),
            route("other", "node/*"),
            route("anywhere-last", "*"),
        ]
    )

    assert names(index, "cluster/event/module-added") == [
        "anywhere-first",
        "by-head",
        "literal",
        "anywhere-last",
    ]
    assert names(index, "node/1/event/module-added") == ["anywhere-first", "other", "anywhere-last"]
    assert names(index, "nothing") == ["anywhere-last"]


def test_index_order_is_route_order_not_bucket_order() -> None:
    index = RouteIndex(
        [
            route("z-literal", "cluster/event/a"),
            route("a-anywhere", "*"),
            route("m-by-head", "cluster/*"),
        ]
    )

    assert names(index, "cluster/event/a") == ["z-literal", "a-anywhere", "m-by-head"]


def test_index_returns_each_route_once_when_two_of_its_patterns_match() -> None:
    index = RouteIndex(
        [route("twice", "cluster/event/*", "*/event/module-added", "cluster/event/module-added")]
    )

    found = index.match("cluster/event/module-added")
    assert [item.name for item, _ in found] == ["twice"]


def test_index_returns_the_captures_of_the_first_matching_pattern() -> None:
    index = RouteIndex([route("r", "module/{module}/event/*", "{source}/event/{name}")])

    [(found, captures)] = index.match("module/mail1/event/x")
    assert found.name == "r"
    assert captures == {"module": "mail1"}
    [(_, captures)] = index.match("cluster/event/x")
    assert captures == {"source": "cluster", "name": "x"}


def test_index_never_matches_disabled_routes() -> None:
    index = RouteIndex(
        [
            route("off", "cluster/event/a", "*", "cluster/*", enabled=False),
            route("on", "cluster/event/a"),
        ]
    )

    assert names(index, "cluster/event/a") == ["on"]
    assert names(index, "node/1/event/x") == []
    assert index.globs() == {"cluster/event/a"}


def test_index_head_bucket_needs_the_same_first_segment() -> None:
    index = RouteIndex([route("head", "cluster/event/*"), route("esc", "cluster/a\\*")])

    assert names(index, "cluster/event/x") == ["head"]
    assert names(index, "clusterx/event/x") == []
    assert names(index, "cluster") == []
    assert names(index, "cluster/a*") == ["esc"]
    assert names(index, "cluster/ab") == []


def test_index_finds_patterns_whose_first_segment_is_a_glob() -> None:
    index = RouteIndex(
        [
            route("q", "?luster/event/*"),
            route("class", "[cn]*/event/x"),
            route("capture", "{source}/event/x"),
            route("escaped-head", "\\*/event/x"),
        ]
    )

    assert names(index, "cluster/event/x") == ["q", "class", "capture"]
    assert names(index, "node/event/x") == ["class", "capture"]
    assert names(index, "*/event/x") == ["capture", "escaped-head"]


def test_index_finds_nothing_for_an_empty_table() -> None:
    index = RouteIndex([])

    assert index.match("cluster/event/x") == []
    assert index.globs() == set()


def test_globs_are_what_to_psubscribe() -> None:
    index = RouteIndex(
        [
            route("a", "module/{module}/event/backup-*", "cluster/event/x"),
            route("b", "cluster/event/x", "node/[12]/event/?"),
        ]
    )

    assert index.globs() == {"module/*/event/backup-*", "cluster/event/x", "node/[12]/event/?"}


def test_index_over_routes_loaded_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "routes.yml"
    path.write_text(
        """\
routes:
  - name: backups
    on: module/{module}/event/backup-*
    do:
      - emit: {channel: "cluster/event/seen"}
  - name: every-event
    on: ["*/event/*", "cluster/event/module-added"]
    do:
      - emit: {channel: "cluster/event/seen"}
  - name: off
    enabled: false
    on: "*"
    do:
      - emit: {channel: "cluster/event/seen"}
"""
    )
    routes, diagnostics = load_file_routes(path)
    assert diagnostics == []
    index = RouteIndex(routes)

    found = index.match("module/mail1/event/backup-done")
    assert [(item.name, captures) for item, captures in found] == [
        ("backups", {"module": "mail1"}),
        ("every-event", {}),
    ]
    assert names(index, "cluster/event/module-added") == ["every-event"]
    assert names(index, "no-event-here") == []
    assert index.globs() == {"module/*/event/backup-*", "*/event/*", "cluster/event/module-added"}


# --- one tokenizer for matching and for the loop analysis ------------------------------------


@pytest.mark.parametrize("pattern", ["a[b-]c", "x\\", "a[bc", "a[]b", "{x}/{x}", "a}b"])
def test_loop_analysis_refuses_what_matching_refuses(pattern: str) -> None:
    with pytest.raises(PatternError) as matching:
        ChannelPattern.parse(pattern)
    with pytest.raises(PatternError) as analysis:
        pattern_glob(pattern)
    assert str(analysis.value) == str(matching.value)


@pytest.mark.parametrize(
    "pattern",
    ["a\\*b", "[\\]]x", "n/[^1-3]/e", "m/{m}/event/x", "a?c", "[c-a]x", "\\a", "*/event/*"],
)
@pytest.mark.parametrize(
    "channel", ["a*b", "axb", "]x", "n/4/e", "n/2/e", "m/k/event/x", "m/k/l/event/x", "a/c", "a"]
)
def test_loop_analysis_reads_a_pattern_as_matching_does(pattern: str, channel: str) -> None:
    literal = pattern_glob("".join("\\" + char for char in channel))
    assert overlap(pattern_glob(pattern), literal) is matches(pattern, channel)
