"""The hook reference of docs/plugins.md, generated from the hookspec docstrings.

``python -m any2ds.docs [docs/plugins.md]`` rewrites the section between the
markers; with ``--check`` it changes nothing and exits 1 if the section is out
of date. The docstrings are the single source: write them, then regenerate.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from any2ds import hookspecs

BEGIN = "<!-- hook-reference: generated from any2ds/hookspecs.py by `python -m any2ds.docs`; do not edit -->"
END = "<!-- end of hook-reference -->"
DEFAULT_PATH = "docs/plugins.md"

_PARAM = re.compile(r":param (\w+): ?(.*)")
_RETURNS = re.compile(r":returns: ?(.*)")
_VERSION_ADDED = re.compile(r"\.\. versionadded:: (.+)")
_VERSION_CHANGED = re.compile(r"\.\. versionchanged:: (\S+) (.+)")
_ROLE = re.compile(r":\w+:`([^`]+)`")  # :class:`any2ds.Reader`
_LITERAL = re.compile(r"``([^`]+)``")


def hook_specs(module: ModuleType = hookspecs) -> list[Callable]:
    """The hook specifications of ``module``, in the order they are written."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # what pluggy's HookspecMarker sets on a function
    specs = [f for f in vars(module).values() if inspect.isfunction(f) and hasattr(f, marker)]
    return sorted(specs, key=lambda f: f.__code__.co_firstlineno)


def hook_reference(module: ModuleType = hookspecs) -> str:
    """The Markdown reference of every hook; ValueError names a hook without a docstring."""
    parts = [f"Hook spec version **{module.HOOKSPEC_VERSION}** (`any2ds.hookspecs.HOOKSPEC_VERSION`)."]
    for spec in hook_specs(module):
        doc = inspect.getdoc(spec)
        if not doc:
            raise ValueError(f"hook {spec.__name__} has no docstring; document it in {module.__name__}")
        arguments = ", ".join(inspect.signature(spec).parameters)
        parts.append(f"### `{spec.__name__}({arguments})`\n\n{_markdown(doc)}")
    return "\n\n".join(parts)


def _markdown(doc: str) -> str:
    """A hookspec docstring (reST fields and roles) as Markdown."""
    lines: list[str] = []
    for line in doc.splitlines():
        if match := _PARAM.fullmatch(line):
            lines.append(f"- `{match[1]}`: {match[2]}")
        elif match := _RETURNS.fullmatch(line):
            lines.append(f"- returns: {match[1]}")
        elif match := _VERSION_ADDED.fullmatch(line):
            lines.append(f"*Added in hook spec {match[1]}.*")
        elif match := _VERSION_CHANGED.fullmatch(line):
            lines.append(f"*Changed in hook spec {match[1]}: {match[2]}*")
        elif line.startswith(" ") and lines and lines[-1].startswith("- "):
            lines[-1] += " " + line.strip()  # a field's continuation line
        else:
            lines.append(line)
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", "\n".join(lines)))


def with_reference(text: str, reference: str) -> str:
    """``text`` with the part between the markers replaced by ``reference``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the hook reference markers are missing; add these two lines:\n{BEGIN}\n{END}")
    return f"{text[:start]}{BEGIN}\n\n{reference}\n\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m any2ds.docs", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=DEFAULT_PATH, help=f"The Markdown file (default {DEFAULT_PATH}).")
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 if the reference is out of date.")
    args = parser.parse_args(argv)
    path = Path(args.path)
    text = path.read_text()
    updated = with_reference(text, hook_reference())
    if updated == text:
        return 0
    if args.check:
        print(f"{path}: the hook reference is out of date; run python -m any2ds.docs {path}", file=sys.stderr)
        return 1
    path.write_text(updated)
    print(f"{path}: hook reference updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
