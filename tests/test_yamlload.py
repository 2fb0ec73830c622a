"""Tests of the YAML loader: YAML 1.2 booleans, line numbers, bounded aliases, clean errors."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from eventrouter.config.stable import being_written
from eventrouter.config.yamlload import (
    LineDict,
    LineList,
    YamlError,
    line_of,
    load_file,
    loads,
    read_text,
)


def yaml_error(text: str) -> YamlError:
    """Return the YamlError that parsing ``text`` raises."""
    with pytest.raises(YamlError) as info:
        loads(text)
    return info.value


# --- booleans and keys -------------------------------------------------------------------


def test_on_yes_off_keys_stay_the_strings_written() -> None:
    data = loads("on: a\nyes: b\noff: c\nno: d\nOn: e\n")

    assert data == {"on": "a", "yes": "b", "off": "c", "no": "d", "On": "e"}
    assert all(isinstance(key, str) for key in data)


def test_true_and_false_are_booleans_in_every_spelling() -> None:
    data = loads("a: true\nb: false\nc: True\nd: FALSE\n")

    assert data == {"a": True, "b": False, "c": True, "d": False}
    assert all(isinstance(value, bool) for value in data.values())


def test_yes_no_on_off_values_are_strings() -> None:
    data = loads("enabled: yes\nb: no\nc: on\nd: off\n")

    assert data == {"enabled": "yes", "b": "no", "c": "on", "d": "off"}


def test_numbers_and_null_still_resolve() -> None:
    assert loads("a: 5\nb: 1.5\nc: ~\nd: null\n") == {"a": 5, "b": 1.5, "c": None, "d": None}


def test_python_tags_are_refused() -> None:
    error = yaml_error("a: !!python/object/apply:os.system ['true']\n")

    assert error.line == 1
    assert "python/object/apply" in error.message


def test_a_mapping_key_must_be_a_plain_value() -> None:
    error = yaml_error("x: 1\n? [a, b]\n: 1\n")

    assert error.line == 2
    assert "plain value" in error.message


# --- line numbers --------------------------------------------------------------------------


ROUTES = """\
# a comment
routes:
  - name: first
    on: cluster/event/a

  - name: second
    on:
      - node/1/event/b
      - node/2/event/c
"""


def test_containers_know_their_lines() -> None:
    data = loads(ROUTES)

    assert isinstance(data, LineDict)
    assert isinstance(data["routes"], LineList)
    assert data.key_lines["routes"] == 2
    assert data["routes"].item_lines == [3, 6]
    assert data["routes"][1].key_lines == {"name": 6, "on": 7}


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (["routes"], 2),
        (["routes", 0], 3),
        (["routes", 0, "on"], 4),
        (["routes", 1], 6),
        (["routes", 1, "name"], 6),
        (["routes", 1, "on"], 7),
        (["routes", 1, "on", 0], 8),
        (["routes", 1, "on", 1], 9),
    ],
)
def test_line_of_keys_and_list_items(path: list[object], line: int) -> None:
    assert line_of(loads(ROUTES), path, 0) == line


def test_line_of_stops_at_the_deepest_existing_node() -> None:
    data = loads(ROUTES)

    assert line_of(data, ["routes", 1, "missing"], 0) == 6  # the route that lacks the key
    assert line_of(data, ["routes", 7], 0) == 2  # no such item: the list's key
    assert line_of(data, ["routes", 0, "on", 0], 0) == 4  # a string has no items
    assert line_of(None, ["routes"], 42) == 42


# --- duplicate keys ------------------------------------------------------------------------


def test_duplicate_key_is_an_error_with_its_line() -> None:
    error = yaml_error("routes:\n  - name: a\n    on: x\n    name: b\n")

    assert error.line == 4
    assert "duplicate key 'name'" in error.message


def test_duplicate_top_level_key_is_an_error() -> None:
    error = yaml_error("routes: []\nother: 1\nroutes: []\n")

    assert error.line == 3
    assert "duplicate key 'routes'" in error.message


# --- aliases -------------------------------------------------------------------------------


def billion_laughs(levels: int) -> str:
    """Return the classic alias bomb: each level repeats the previous one nine times."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly() -> None:
    started = time.monotonic()
    error = yaml_error(billion_laughs(9))  # 9**9 = 387 million strings once expanded

    assert time.monotonic() - started < 2.0
    assert "aliases" in error.message


def test_alias_bomb_hidden_in_a_route_is_refused_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(billion_laughs(9) + "routes: []\n")
    started = time.monotonic()

    with pytest.raises(YamlError):
        load_file(path)
    assert time.monotonic() - started < 2.0


def test_ordinary_anchors_and_aliases_work() -> None:
    data = loads("common: &env {A: 1, B: two}\nfirst: *env\nsecond: *env\nlist: [*env, *env]\n")

    assert data["first"] == {"A": 1, "B": "two"}
    assert data["second"] == data["first"]
    assert data["list"] == [data["first"], data["first"]]


def test_merge_key_brings_in_the_base_mapping() -> None:
    data = loads("base: &base\n  timeout: 30s\n  env: {A: 1}\nchild:\n  <<: *base\n  run: h\n")

    assert data["child"] == {"timeout": "30s", "env": {"A": 1}, "run": "h"}
    assert "<<" not in data["child"]


def test_merge_key_with_a_list_of_bases() -> None:
    data = loads("a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n")

    assert data["c"] == {"x": 1, "y": 2, "z": 3}


def test_merge_key_overridden_by_an_explicit_key() -> None:
    # YAML merge semantics: keys written in the mapping win over merged ones. This is the
    # very reason to use `<<:` (share defaults, override one), so it is not a duplicate key.
    data = loads("base: &base\n  timeout: 30s\n  run: h\nchild:\n  <<: *base\n  timeout: 2m\n")

    assert data["child"] == {"timeout": "2m", "run": "h"}


def test_recursive_alias_is_a_yaml_error() -> None:
    error = yaml_error("a: &a [*a]\n")

    assert error.line == 1


def test_undefined_alias_is_a_yaml_error_with_its_line() -> None:
    error = yaml_error("a: 1\nb: *nope\n")

    assert error.line == 2
    assert "nope" in error.message


# --- invalid YAML --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("routes:\n  - name: a\n    on: x\n   do: y\n", 4),  # bad indentation
        ("a: 1\nb: c: d\n", 2),  # mapping value inside a plain scalar
        ("a: 1\nb: 2\n\tc: 3\n", 3),  # a tab cannot start a token
        ("a: 1\n---\nb: 2\n", 2),  # a second document
    ],
)
def test_invalid_yaml_is_a_yaml_error_with_the_line(text: str, line: int) -> None:
    error = yaml_error(text)

    assert error.line == line
    assert error.message.startswith("invalid YAML: ")
    assert str(error) == error.message


def test_unterminated_quote_is_reported_where_it_opens() -> None:
    # PyYAML's problem mark is the end of the stream, here line 5 of a 4-line file; the line
    # an operator must fix is the one where the quote opens (PyYAML's context mark).
    error = yaml_error("a: 1\nb: 'open\nc: 2\n\n")

    assert error.line == 2, error.message


def test_deep_nesting_is_a_yaml_error_not_a_recursion_crash() -> None:
    error = yaml_error("[" * 5000)

    assert "invalid YAML" in error.message


# --- files ---------------------------------------------------------------------------------


def test_load_file_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text("description: café ✓\n", encoding="utf-8")

    assert load_file(path) == {"description": "café ✓"}


def test_load_file_accepts_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_bytes(b"\xef\xbb\xbfon: x\n")

    assert load_file(path) == {"on": "x"}


def test_non_utf8_file_is_an_error_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes("a: 1\nb: 2\nc: café\n".encode("latin-1"))

    with pytest.raises(YamlError) as info:
        load_file(path)
    assert info.value.line == 3
    assert "UTF-8" in info.value.message


def test_a_directory_is_a_yaml_error(tmp_path: Path) -> None:
    folder = tmp_path / "routes.yml"
    folder.mkdir()

    with pytest.raises(YamlError) as info:
        load_file(folder)
    assert info.value.line == 1
    assert "cannot read file" in info.value.message


def test_a_missing_file_is_a_yaml_error(tmp_path: Path) -> None:
    with pytest.raises(YamlError) as info:
        load_file(tmp_path / "gone.yml")
    assert "cannot read file" in info.value.message


def test_a_symlink_loop_is_a_yaml_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yml"
    loop.symlink_to(loop)

    with pytest.raises(YamlError) as info:
        load_file(loop)
    assert "cannot read file" in info.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.yml"
    path.write_text("routes: []\n")
    path.chmod(0)

    with pytest.raises(YamlError) as info:
        load_file(path)
    assert "cannot read file" in info.value.message


def test_a_huge_file_is_refused_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("eventrouter.config.yamlload.MAX_FILE_SIZE", 100)
    path = tmp_path / "big.yml"
    path.write_text("a: " + "x" * 200 + "\n")

    with pytest.raises(YamlError) as info:
        load_file(path)
    assert "larger than 100 bytes" in info.value.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "--- \n...\n"])
def test_an_empty_document_is_none(text: str, tmp_path: Path) -> None:
    assert loads(text) is None
    path = tmp_path / "empty.yml"
    path.write_text(text)
    assert load_file(path) is None


# --- reading a file that is being written -------------------------------------------------------

#: A modification time well past any quiet rule: what ext4 shows for a while after a
#: truncating open (size 0, time not yet updated).
LONG_AGO = time.time() - 3600


@pytest.fixture(params=["lease", "proc"])
def writers_seen_by(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Recognise writers by a read lease (SIGIO taken in hand, as the daemon does), or
    without one by the scan of /proc."""
    if request.param == "proc":
        yield "proc"
        return
    previous = signal.signal(signal.SIGIO, lambda *_: None)
    try:
        probe = tmp_path / "probe"
        probe.write_text("")
        with probe.open("rb") as handle:  # leases work here: the case is what it says
            fcntl.fcntl(handle.fileno(), fcntl.F_SETLEASE, fcntl.F_RDLCK)
            fcntl.fcntl(handle.fileno(), fcntl.F_SETLEASE, fcntl.F_UNLCK)
        yield "lease"
    finally:
        signal.signal(signal.SIGIO, previous)


def _cut_open(path: Path, whole: bytes) -> BinaryIO:
    """Rewrite ``path`` in place, stop a third of the way, and date it long ago."""
    writer = path.open("r+b")
    writer.truncate(0)
    writer.write(whole[: len(whole) // 3])
    writer.flush()
    os.utime(path, (LONG_AGO, LONG_AGO))
    return writer


def test_a_file_open_for_writing_is_not_read_however_old_it_looks(
    tmp_path: Path, writers_seen_by: str
) -> None:
    path = tmp_path / "r.yml"
    whole = b"# a long comment\n" * 20 + b"routes: []\n"
    path.write_bytes(whole)
    with _cut_open(path, whole), pytest.raises(YamlError) as caught:
        read_text(path, settle=0.25, patience=0.3)

    assert caught.value.message == (
        "file still open for writing after 0.3s; not loaded: reload once its writer has closed it"
    )
    assert caught.value.line == 1


def test_a_file_open_for_writing_is_read_once_closed(tmp_path: Path, writers_seen_by: str) -> None:
    path = tmp_path / "r.yml"
    whole = b"# a long comment\n" * 20 + b"routes: []\n"
    path.write_bytes(whole)
    writer = _cut_open(path, whole)

    def finish() -> None:
        time.sleep(0.1)
        writer.write(whole[len(whole) // 3 :])
        os.utime(writer.fileno(), (LONG_AGO, LONG_AGO))  # not the quiet rule at work, then
        writer.close()

    finishing = threading.Thread(target=finish)
    finishing.start()
    text = read_text(path, settle=0.25)
    finishing.join()

    assert text == whole.decode()


def test_a_file_emptied_on_purpose_is_read_empty(tmp_path: Path, writers_seen_by: str) -> None:
    path = tmp_path / "r.yml"
    path.write_text("routes: []\n")
    with path.open("r+b") as writer:  # the author empties it, and closes it
        writer.truncate(0)
    os.utime(path, (LONG_AGO, LONG_AGO))

    assert read_text(path, settle=0.25) == ""


def test_being_written_is_true_while_a_writer_holds_the_file(
    tmp_path: Path, writers_seen_by: str
) -> None:
    path = tmp_path / "r.yml"
    path.write_text("routes: []\n")

    assert not being_written(path)
    with path.open("rb"):
        assert not being_written(path)  # a reader is no writer
    with path.open("ab"):
        assert being_written(path)
    assert not being_written(path)
    assert not being_written(tmp_path / "gone.yml")


def _write_later(path: Path, chunks: list[bytes], pause: float) -> threading.Thread:
    """Append ``chunks`` to ``path`` in place, ``pause`` seconds apart, in a thread."""

    def write() -> None:
        with path.open("ab") as handle:
            for chunk in chunks:
                time.sleep(pause)
                handle.write(chunk)
                handle.flush()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_file_written_in_place_is_read_once_quiet(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_bytes(b"# a comment, cut")
    writer = _write_later(path, [b" here\nroutes: []\n"], pause=0.1)

    text = read_text(path, settle=0.25)

    writer.join()
    assert text == "# a comment, cut here\nroutes: []\n"


def test_a_file_that_keeps_changing_is_an_error_after_a_bound(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_bytes(b"routes: []\n")
    stop = threading.Event()

    def touch() -> None:  # modified again and again, by writers that each close it
        while not stop.wait(0.02):
            os.utime(path)

    toucher = threading.Thread(target=touch)
    toucher.start()
    started = time.monotonic()
    try:
        with pytest.raises(YamlError, match="kept changing while it was read") as caught:
            read_text(path, settle=0.1, patience=0.3)
    finally:
        stop.set()
        toucher.join()

    assert time.monotonic() - started < 0.6
    assert caught.value.line == 1


def test_without_settle_a_fresh_file_is_read_at_once(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text("routes: []\n")
    started = time.monotonic()

    assert read_text(path) == "routes: []\n"
    assert time.monotonic() - started < 0.05


def test_a_number_too_long_to_convert_is_an_error_not_a_crash() -> None:
    error = yaml_error("routes: []\nbig: " + "7" * 5000 + "\n")

    assert "number" in error.message and "7777" not in error.message
