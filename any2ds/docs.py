"""The generated parts of the documentation, each kept between two markers in a Markdown file:

- the hook reference of docs/plugins.md, from the hookspec docstrings;
- the option reference of docs/options.md, from :class:`~any2ds.config.CoreOptions` and the
  ``Options`` class of every component the built-in plugins register.

``python -m any2ds.docs [FILE ...]`` rewrites every generated section of the files (default:
both); with ``--check`` it changes nothing and exits 1 if one is out of date. The docstrings
and the option declarations are the single source: change them, then regenerate. The
documentation site's build (mkdocs.yml) refuses stale sections too.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import yaml

from any2ds import hookspecs
from any2ds.config import field_default
from any2ds.manager import PluginHost
from any2ds.options import OptionSchema, OptionSpec


@attrs.frozen
class Reference:
    """A generated section: its name (in its markers), default file, source and renderer."""

    name: str
    path: str
    source: str
    render: Callable[[], str]

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}: generated from {self.source} by `python -m any2ds.docs`; do not edit -->"

    @property
    def end(self) -> str:
        return f"<!-- end of {self.name} -->"

    def holds(self, text: str) -> bool:
        """Whether ``text`` has this section's opening marker."""
        return self.begin in text

    def insert(self, text: str, rendered: str) -> str:
        """``text`` with the part between the markers replaced by ``rendered``."""
        start, end = text.find(self.begin), text.find(self.end)
        if start < 0 or end < start:
            raise ValueError(f"the {self.name} markers are missing; add these two lines:\n{self.begin}\n{self.end}")
        return f"{text[:start]}{self.begin}\n\n{rendered}\n\n{text[end:]}"


# -- the hook reference -------------------------------------------------------

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
        elif line.startswith(" ") and lines and lines[-1].startswith("*Changed in hook spec "):
            lines[-1] = f"{lines[-1][:-1]}\n{line.strip()}*"  # a version note's continuation line
        else:
            lines.append(line)
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", "\n".join(lines)))


# -- the option reference -----------------------------------------------------


def documented_options(host: PluginHost | None = None) -> list[tuple[str, list[OptionSpec]]]:
    """The options the reference documents, grouped: ``("core", ...)`` first, then
    ``("<kind> <name>", ...)`` for each component of a built-in plugin, in ``--help``'s
    order. Third-party plugins document their own options."""
    host = host or PluginHost.load(strict=False)  # a broken third-party plugin is not ours to document
    schema = OptionSchema(host)
    builtin = {schema.namespaces[(r.cls.kind, r.cls.name)] for r in host.component_classes()
               if host.is_builtin(r.plugin) and (r.cls.kind, r.cls.name) in schema.namespaces}
    return [(group.title, list(group.specs)) for group in schema.groups
            if group.specs[0].namespace is None or group.specs[0].namespace in builtin]


OPTIONS_INTRODUCTION = """\
One table per component: the core's options, then each built-in plugin's. A component's
option `x` is given as `--<component>.x` on the command line, as `x` in the YAML section
`<component>:`, or as `download(<component>={"x": ...})`; the built-in plugins' options also
answer to the flat name listed second (img2dataset's flags: `--image_size`, `image_size:`,
`download(image_size=...)`); a flat name several of them share, such as `--timeout`, sets each
of them. Defaults are written as in YAML, which is also how flags read
their values: `null` for none (on the command line `None` too, as img2dataset reads it), `.inf` for
infinity, `[a, b]` for a list."""


def option_reference(host: PluginHost | None = None) -> str:
    """The Markdown reference of every option :func:`documented_options` returns."""
    host = host or PluginHost.load(strict=False)
    schema = OptionSchema(host)
    parts = [OPTIONS_INTRODUCTION]
    for title, specs in documented_options(host):
        kind, _, name = title.partition(" ")
        heading = "Core" if not name else f"{kind.capitalize()} `{name}`"
        rows = "\n".join(_option_row(spec, schema.shared(spec)) for spec in specs)
        parts.append(f"## {heading}\n\n| option | type | default | description |\n|---|---|---|---|\n{rows}")
    return "\n\n".join(parts)


def _option_row(spec: OptionSpec, shared: Sequence[OptionSpec] = ()) -> str:
    """A table row; ``shared``: the options ``spec``'s flat name sets, if several (``--timeout``)."""
    flags = [f"`--{spec.key}`", *([f"`--{spec.flat}`"] if spec.flat and spec.flat != spec.key else [])]
    if others := [other for other in shared if other.key != spec.key]:
        flags[-1] += " (also sets " + ", ".join(f"[`{other.key}`](#{other.key})" for other in others) + ")"
    names = "<br>".join(flags)
    cells = [f'<a id="{spec.key}"></a>{names}', _type_text(spec.field.type),
             _default_text(spec.field.name, field_default(spec.field)), _cell(spec.field.metadata.get("help", ""))]
    return f"| {' | '.join(cells)} |"


def _type_text(tp: Any) -> str:
    """``int``, ``list[str]``, ``a``, ``b`` or ``c`` (a Literal), ``int`` or null (Optional)."""
    alternatives = _type_alternatives(tp)
    return alternatives[0] if len(alternatives) == 1 else f"{', '.join(alternatives[:-1])} or {alternatives[-1]}"


def _type_alternatives(tp: Any) -> list[str]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return [f"`{value}`" for value in args]
    if typing.get_origin(tp) is typing.Union:
        return [text for arg in args for text in (["null"] if arg is type(None) else _type_alternatives(arg))]
    return [f"`{tp.__name__ if isinstance(tp, type) and not args else str(tp).replace('typing.', '')}`"]


def _default_text(name: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()
    size = f" ({_binary_size(value)})" if "bytes" in name and isinstance(value, int) and value >= 1024 else ""
    return f"`{text}`{size}"


def _binary_size(count: int) -> str:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if count % 1024**power == 0:
            return f"{count // 1024**power} {unit}"
    return f"{count:,} bytes"


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell, on GitHub and in the site."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


# -- the generated sections ---------------------------------------------------

HOOKS = Reference("hook-reference", "docs/plugins.md", "any2ds/hookspecs.py", hook_reference)
OPTIONS = Reference("option-reference", "docs/options.md", "the options of the core and the built-in plugins",
                    option_reference)
REFERENCES = (HOOKS, OPTIONS)


def regenerate(text: str, references: Sequence[Reference] = REFERENCES) -> str:
    """``text`` with each generated section it holds rendered afresh; ValueError if it holds none."""
    held = [reference for reference in references if reference.holds(text)]
    if not held:
        raise ValueError("no generated section; expected the opening marker of one of: "
                         + ", ".join(reference.name for reference in references))
    for reference in held:
        text = reference.insert(text, reference.render())
    return text


def stale(paths: Sequence[str | Path]) -> dict[Path, str]:
    """The files among ``paths`` whose generated sections are out of date, with their new text."""
    updates = {}
    for path in map(Path, paths):
        text = path.read_text()
        if (updated := regenerate(text)) != text:
            updates[path] = updated
    return updates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m any2ds.docs", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[r.path for r in REFERENCES],
                        help=f"Markdown files (default: {', '.join(r.path for r in REFERENCES)}).")
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 if a section is out of date.")
    args = parser.parse_args(argv)
    updates = stale(args.paths)
    for path, updated in updates.items():
        if args.check:
            print(f"{path}: generated documentation is out of date; run python -m any2ds.docs {path}",
                  file=sys.stderr)
        else:
            path.write_text(updated)
            print(f"{path}: generated documentation updated", file=sys.stderr)
    return 1 if args.check and updates else 0


if __name__ == "__main__":
    sys.exit(main())
