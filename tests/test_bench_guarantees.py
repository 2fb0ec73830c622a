"""bench/guarantees.py reaches into the dispatcher: it must keep running as the router changes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_variant_gives_a_figure_for_both_routes() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "guarantees.py"), "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "µs" in line]
    names = [re.split(r"\s{2,}", row)[0] for row in rows]
    assert names == [
        "as shipped (log level WARNING)",
        "without history",
        "without run metrics",
        "without the derived-event record",
        "with the INFO line per run",
    ]
    for row in rows:
        emit, run = (float(figure) for figure in re.findall(r"(\d+\.\d) µs", row))
        assert emit > 0 and run > 0
