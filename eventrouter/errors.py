"""Errors and diagnostics that carry a file and a line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One finding about a configuration file, printed as ``FILE:LINE: severity: message``."""

    file: str
    line: int
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message}"


class TemplateRenderError(Exception):
    """A template failed at run time (undefined variable, sandbox violation, bad value)."""


class PayloadError(ValueError):
    """An event payload is refused (not JSON, not an object, missing fields)."""


class TaskError(Exception):
    """An NS8 task could not be submitted or followed (not a non-zero exit code)."""
