"""``eventrouter schema``: the JSON Schema of route files or route test files, for editors.

Only argparse at import: `--help` of every command builds this parser.
"""

from __future__ import annotations

import argparse
import sys

KINDS = ("routes", "tests")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``schema`` subcommand."""
    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of route files or route test files, for editors",
        description="Print the JSON Schema (draft-07) of route files (routes, the default) or "
        "of route test files (tests). An editor with the YAML language server completes "
        "keys, shows their documentation on hover and underlines mistakes with it: name it "
        "in a '# yaml-language-server: $schema=PATH' line of the file, or map routes.d/*.yml "
        "to it in the editor's settings. What a schema cannot express across files (unique "
        "route names, handler folders, templates, cycles) is checked by `eventrouter check`.",
    )
    schema.add_argument(
        "kind",
        nargs="?",
        choices=KINDS,
        default="routes",
        help="routes: route files (default); tests: route test files",
    )
    schema.add_argument(
        "--path",
        action="store_true",
        help="print where the schema file is installed instead, for editor settings",
    )
    schema.set_defaults(handler="schema:cmd_schema")


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a kind of file, or where its file is."""
    from eventrouter.config.editor_schema import schema_path, schema_text

    if args.path:
        print(schema_path(args.kind))
    else:
        sys.stdout.write(schema_text(args.kind))
    return 0
