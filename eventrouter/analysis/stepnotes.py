"""What `check` says of handler folder entries that will not run, and of events folders merged.

In words that are true of each file: a non-executable file with no ``#!`` line is a
placeholder (NS8 ships such files on purpose), and a symlink into another folder is not
worth a ``chmod +x``, which would change the other folder's file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from eventrouter.config.handlers import (
    SkippedEntry,
    is_text_without_shebang,
    read_head,
    scan,
)
from eventrouter.errors import Diagnostic

_SKIPPED = {
    "is a directory": "is a directory, not a step",
    "dangling symlink": "is a dangling symlink; it is skipped",
}


def skipped_note(folder: Path, entry: SkippedEntry) -> str:
    """Return what `check` says of an entry of ``folder`` that will not run."""
    path = folder / entry.name
    if entry.passed_over:
        return f"{path} is {entry.reason}: it is never run (rename it to make it a step)"
    if entry.reason == "not executable":
        return f"{path} {_not_executable(folder, path)}"
    if entry.reason.startswith("cannot be started: "):
        return f"{path} {entry.reason}; it is skipped and the next steps run"
    why = _SKIPPED.get(entry.reason, f"cannot run ({entry.reason}); it is skipped")
    return f"{path} {why}"


def _not_executable(folder: Path, path: Path) -> str:
    if path.is_symlink():
        target = os.path.realpath(path)
        if os.path.dirname(target) != os.path.realpath(folder):
            return (
                f"is a symlink to {target}, which is not executable: it is skipped "
                f"(chmod +x on the link would change {target} itself)"
            )
    head = read_head(path)
    if head is not None and is_text_without_shebang(head):
        return "is not executable and has no #! line: a placeholder, never run"
    return "is not executable; it is skipped (chmod +x to run it)"


def merge_findings(folders: Iterable[Path]) -> list[Diagnostic]:
    """Note each events folder of an event that an earlier events folder also has.

    Here each runs as a handler of its own; NS8's agent merges them into one handler, in
    which a later folder's step replaces an earlier folder's step of the same name.
    """
    first: dict[str, Path] = {}
    findings = []
    for folder in folders:
        earlier = first.setdefault(folder.name, folder)
        if earlier is folder:
            continue
        message = (
            f"runs as a handler of its own, besides {earlier} for the same event: the two "
            "run independently (a failing step in one does not stop the other); NS8's agent "
            f"would merge them into one handler{_replaced(earlier, folder)}"
        )
        findings.append(Diagnostic(str(folder), 0, "warning", message))
    return findings


def _replaced(earlier: Path, later: Path) -> str:
    """Return the clause naming the steps of ``earlier`` that a merge would replace."""
    try:
        mine = {step.name for step in scan(later).steps}
        shadowed = sorted(mine & {step.name for step in scan(earlier).steps}, key=os.fsencode)
    except OSError:
        return ""
    if not shadowed:
        return ""
    return f", where this folder's {', '.join(shadowed)} would replace {earlier}'s"
