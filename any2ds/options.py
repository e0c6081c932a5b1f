"""Parsing a run's options from flags, a YAML file and keyword arguments, in one pass.

The schema is built from the core's :class:`~any2ds.config.CoreOptions` and the
``Options`` class of every registered component. Each component's options live
under its name, so two plugins may declare the same option name:

- flags: ``--audio.sample_rate 48000``;
- YAML: an ``audio:`` section holding ``sample_rate: 48000``;
- ``download(audio={"sample_rate": 48000})`` or ``download(**{"audio.sample_rate": 48000})``.

The built-in plugins' options also answer to a flat name, img2dataset's flags
(``--image_size``, ``image_size:``, ``download(image_size=...)``): the field's
name, or the ``flat`` name given to :func:`~any2ds.option`. A component whose
name is taken (by a core option, a flat name or a same-named component of
another kind with options) gets the namespace ``<name>_<kind>`` instead.

Options of components the run does not select are accepted (type-checked)
and ignored: only selected components build their ``Options``, so their
validators alone can fail a run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from any2ds.config import (
    CORE_OPTION_NAMES,
    OPTION_ERRORS,
    CoreOptions,
    RunConfig,
    field_default,
    options_fields,
)
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost, Registration

DOWNLOAD_DESCRIPTION = "Download a URL list into a sharded dataset (img2dataset's flags; see --help)."
# Keys of a parsed namespace that are not options.
_PARSER_KEYS = ("config", "__path__", "print_config", "help")


@attrs.frozen
class OptionSpec:
    """One option: its field, the key it is stored under and the flat name it also answers to."""

    field: attrs.Attribute
    namespace: str | None  # None: a core option
    flat: str | None

    @property
    def key(self) -> str:
        """``url_list`` for a core option, ``audio.sample_rate`` for a component's."""
        return self.field.name if self.namespace is None else f"{self.namespace}.{self.field.name}"


@attrs.frozen
class OptionGroup:
    """The options of one component (or the core's), as --help shows them."""

    title: str
    description: str
    specs: tuple[OptionSpec, ...]


class OptionSchema:
    """Every option a run can be given, built once from a plugin host."""

    def __init__(self, host: PluginHost) -> None:
        self.namespaces: dict[tuple[str, str], str] = {}
        core = OptionGroup("core", "Input, output, sharding and execution.",
                           tuple(OptionSpec(f, None, None) for f in options_fields(CoreOptions)))
        self.groups = [core, *self._component_groups(host)]
        self.specs = [spec for group in self.groups for spec in group.specs]
        # A flat name may be shared: --timeout sets the timeout of every built-in fetcher declaring one.
        self._by_flat: dict[str, list[OptionSpec]] = {}
        for spec in self.specs:
            if spec.flat:
                self._by_flat.setdefault(spec.flat, []).append(spec)

    def shared(self, spec: OptionSpec) -> list[OptionSpec]:
        """Every option ``spec``'s flat name sets when that name is shared (``--timeout``:
        ``http.timeout`` and ``fast_http.timeout``), in --help's order; [] if it is not."""
        return self.shared_flats().get(spec.flat, []) if spec.flat else []

    def _flat_specs(self, name: str) -> list[OptionSpec]:
        """The component options the flat name ``name`` sets (a core option's name sets none)."""
        return self._by_flat.get(name, []) if name not in CORE_OPTION_NAMES else []

    def shared_flats(self) -> dict[str, list[OptionSpec]]:
        """Each flat name several options share (``timeout``), with the options it sets."""
        return {flat: specs for flat, specs in self._by_flat.items()
                if len(specs) > 1 and flat not in CORE_OPTION_NAMES}

    def _component_groups(self, host: PluginHost) -> list[OptionGroup]:
        registrations = [r for r in host.component_classes() if options_fields(r.cls.Options)]
        # Built-ins first: their names and flat names are taken before any third party's.
        registrations.sort(key=lambda r: not host.is_builtin(r.plugin))
        flat_names = {_flat_name(f) for r in registrations if host.is_builtin(r.plugin)
                      for f in options_fields(r.cls.Options)}
        taken = set(CORE_OPTION_NAMES) | flat_names
        groups = []
        for registration in registrations:
            cls = registration.cls
            namespace = cls.name if cls.name not in taken else f"{cls.name}_{cls.kind}"
            if namespace in taken:
                raise ConfigError(f"{host.label(registration.plugin)}: {cls.kind} {cls.name!r} has no free option "
                                  f"namespace ({cls.name!r} and {namespace!r} are taken)")
            taken.add(namespace)
            self.namespaces[(cls.kind, cls.name)] = namespace
            builtin = host.is_builtin(registration.plugin)
            specs = tuple(OptionSpec(f, namespace, _flat_name(f) if builtin else None)
                          for f in options_fields(cls.Options))
            groups.append(OptionGroup(f"{cls.kind} {cls.name}", _group_description(host, registration, namespace),
                                      specs))
        return groups

    # -- the parser ----------------------------------------------------------

    def parser(self) -> ArgumentParser:
        """The jsonargparse parser of ``any2ds download`` (also used for YAML and keywords)."""
        parser = ArgumentParser(prog="any2ds download", description=DOWNLOAD_DESCRIPTION, exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of options (same keys as the flags).")
        for group in self.groups:
            arguments = parser.add_argument_group(group.title, description=group.description)
            for spec in group.specs:
                aliased = spec.flat and spec.flat != spec.key and len(self._by_flat[spec.flat]) == 1
                names = [f"--{spec.key}", *([f"--{spec.flat}"] if aliased else [])]
                kwargs: dict[str, Any] = {"type": spec.field.type, "default": field_default(spec.field),
                                          "help": spec.field.metadata.get("help", "")}
                if spec.field.type is bool:
                    # fire (img2dataset's CLI) accepts a bare --flag as True; keep that working.
                    kwargs.update(nargs="?", const=True)
                arguments.add_argument(*names, **kwargs)
            if group is self.groups[0] and (shared := self.shared_flats()):
                self._add_shared_flags(parser, shared)
        return parser

    @staticmethod
    def _add_shared_flags(parser: ArgumentParser, shared: Mapping[str, Sequence[OptionSpec]]) -> None:
        """List each shared flat name in --help, right after the core options. Parsing never
        meets them (:meth:`_expand_shared` and :meth:`nest` give their value to each option they
        set), and their default is SUPPRESS: they add no key to a parsed namespace."""
        arguments = parser.add_argument_group(
            "shared flags", description="img2dataset's flags that several built-in components declare: each sets "
                                        "the option of every one of them.")
        for flat, specs in shared.items():
            field = specs[0].field
            text = f"Sets {' and '.join(spec.key for spec in specs)}: {field.metadata.get('help', '')}"
            kwargs: dict[str, Any] = {
                "type": field.type, "default": argparse.SUPPRESS,  # hence the default written in the help
                "help": f"{text.replace('%', '%%')} (type: %(type)s, default: {_yaml_text(field_default(field))})"}
            if field.type is bool:
                kwargs.update(nargs="?", const=True)
            arguments.add_argument(f"--{flat}", **kwargs)

    def known_names(self) -> set[str]:
        """Every name an option may be given by: keys, flat names and namespaces."""
        return ({spec.key for spec in self.specs} | set(self._by_flat)
                | {spec.namespace for spec in self.specs if spec.namespace})

    def reject_unknown(self, names: Iterable[str]) -> None:
        """One ConfigError naming every unknown option, with the closest known name."""
        known = self.known_names()
        unknown = sorted({name for name in names if name not in known and name not in _PARSER_KEYS})
        if unknown:
            hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, known, n=1)) else repr(u)
                     for u in unknown]
            raise ConfigError(f"unknown option(s): {', '.join(hints)}")

    # -- parsing -------------------------------------------------------------

    def parse_args(self, argv: Sequence[str]) -> RunConfig:
        """The ``any2ds download`` command line (``--config`` already read, see :func:`read_plugins`)."""
        self.reject_unknown(arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--"))
        argv = self._expand_shared(_none_as_null(argv))
        for i, arg in enumerate(argv[:-1]):
            if arg == "--config":
                content = yaml.safe_load(argv[i + 1])
                if isinstance(content, Mapping):
                    self.reject_unknown(_names(content, set(self.namespaces.values())))
                    argv[i + 1] = yaml.safe_dump(self.nest(content))
        try:
            namespace = self.parser().parse_args(argv)
        except Exception as exc:  # jsonargparse reports every bad value as an ArgumentError
            raise ConfigError(_one_line(exc)) from exc
        return self.run_config(namespace)

    def _expand_shared(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with each flat name that several options share (``--timeout 5``) given to
        each of them (``--http.timeout=5 --fast_http.timeout=5``)."""
        expanded: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            name, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
            specs = self._flat_specs(name)
            if len(specs) < 2:
                expanded.append(arg)
                continue
            if not equals and i < len(argv) and not argv[i].startswith("--"):  # else a bare boolean flag
                equals, value = "=", argv[i]
                i += 1
            expanded += [f"--{spec.key}{equals}{value}" for spec in specs]
        return expanded

    def parse_kwargs(self, kwargs: Mapping[str, Any], needs_url_list: bool = True) -> RunConfig:
        """``any2ds.download(**kwargs)``, type-checked exactly as the flags are; ``needs_url_list``
        is False for what reads no input list (``any2ds.Pipeline``, reading an output back).
        A ``config`` keyword names a YAML file of options, read as ``--config`` is (flat names
        shared by several components set each of them), or holds its options once read (see
        :func:`read_keyword_plugins`); the other keywords win over it."""
        kwargs = dict(kwargs)
        file_values = kwargs.pop("config", None) or {}
        if not isinstance(file_values, Mapping):  # a path
            file_values = _read_config(file_values, "config")
        namespaces = set(self.namespaces.values())
        self.reject_unknown(_names(file_values, namespaces))
        self.reject_unknown(_names(kwargs, namespaces))
        nested = self.nest(file_values)
        for name, value in self.nest(kwargs).items():
            section = nested.get(name)
            if name in namespaces and isinstance(section, Mapping) and isinstance(value, Mapping):
                nested[name] = {**section, **value}  # a keyword replaces one option of the file's section
            else:
                nested[name] = value
        try:
            namespace = self.parser().parse_object(nested)
        except Exception as exc:
            raise ConfigError(_one_line(exc)) from exc
        return self.run_config(namespace, needs_url_list)

    def nest(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (YAML or keyword arguments) with every component option moved into its
        namespace's section: flat names and dotted keys alike (jsonargparse mishandles a flat
        alias given before its section). ConfigError when one option is given two values."""
        nested: dict[str, Any] = {}
        given: dict[str, str] = {}

        def put(spec: OptionSpec, value: Any, name: str) -> None:
            section = nested.setdefault(spec.namespace, {})
            if spec.field.name in section and section[spec.field.name] != value:
                raise ConfigError(f"option {spec.key!r} is given twice ({given[spec.key]!r} and {name!r}) "
                                  "with different values")
            section[spec.field.name] = value
            given[spec.key] = name

        by_key = {spec.key: spec for spec in self.specs if spec.namespace is not None}
        namespaces = set(self.namespaces.values())
        for name, value in values.items():
            specs = [by_key[name]] if name in by_key else self._flat_specs(name)
            for spec in specs:
                put(spec, value, name)
            if specs:
                continue
            if name in namespaces and value is not None and not isinstance(value, Mapping):
                raise ConfigError(self._not_a_section(name, value))
            if name in namespaces and isinstance(value, Mapping):
                for field_name, field_value in value.items():
                    key = f"{name}.{field_name}"
                    if key in by_key:
                        put(by_key[key], field_value, key)
            else:
                nested[name] = value
        return nested

    def _not_a_section(self, namespace: str, value: Any) -> str:
        """Why ``value`` cannot be the section of options of ``namespace`` (an example says what can)."""
        kind, name = next(k for k, ns in self.namespaces.items() if ns == namespace)
        spec = next(spec for spec in self.specs if spec.namespace == namespace)
        example = f"{namespace}: {{{spec.field.name}: {_yaml_text(field_default(spec.field))}}}"
        return (f"option section {namespace!r} must map option names of {kind} {name!r} to values "
                f"({example}), not {_yaml_text(value)}")

    def flat_values(self, config: RunConfig) -> dict[str, Any]:
        """Every option of ``config`` under the name users give it: its flat name where it has one
        (core options, img2dataset's flags), else its namespaced key (``audio.sample_rate``)."""
        core = attrs.asdict(config.core)
        values = {}
        for spec in self.specs:
            if spec.namespace is None:
                values[spec.key] = core[spec.key]
            else:
                section = config.component_values.get(spec.namespace, {})
                values[spec.flat or spec.key] = section.get(spec.field.name, field_default(spec.field))
        return values

    def run_config(self, namespace: Namespace, needs_url_list: bool = True) -> RunConfig:
        """Validate the core options and gather each component's values under its namespace."""
        values = namespace.as_dict()
        core_values = {name: values[name] for name in CORE_OPTION_NAMES if name in values}
        if needs_url_list and core_values.get("url_list") in (None, ""):
            raise ConfigError("url_list is required: a file, a folder of input files, or an fsspec URL")
        try:
            core = CoreOptions(**core_values)
        except OPTION_ERRORS as exc:
            raise ConfigError(str(exc)) from exc
        component_values = {ns: dict(values.get(ns) or {}) for ns in sorted(set(self.namespaces.values()))}
        return RunConfig(core=core, component_values=component_values, namespaces=dict(self.namespaces))


def _names(values: Mapping[str, Any], namespaces: set[str]) -> list[str]:
    """The option names ``values`` gives, a namespace's section giving ``<namespace>.<option>``
    (a mapping given to a core option, storage_options, is that option's value)."""
    names = []
    for name, value in values.items():
        if isinstance(value, Mapping) and name in namespaces:
            names += [f"{name}.{key}" for key in value]
        else:
            names.append(name)
    return names


def _none_as_null(argv: Sequence[str]) -> list[str]:
    """``argv`` with each flag's value ``None`` written ``null``: img2dataset's command line
    (python-fire) reads ``--caption_col None`` as no caption column, and so does this one."""
    normalized = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and not arg.startswith("--config=") and arg.endswith("=None"):
            arg = arg.removesuffix("None") + "null"
        elif arg == "None" and i and argv[i - 1].startswith("--") and "=" not in argv[i - 1] and argv[i - 1] != "--config":
            arg = "null"
        normalized.append(arg)
    return normalized


def _yaml_text(value: Any) -> str:
    """``value`` as YAML writes it inline (``null``, ``.inf``, ``[a, b]``), as --help shows defaults."""
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()


def _flat_name(field: attrs.Attribute) -> str:
    return field.metadata.get("flat") or field.name


def _group_description(host: PluginHost, registration: Registration, namespace: str) -> str:
    cls = registration.cls
    return (f"Options of {cls.kind} {cls.name!r} ({host.label(registration.plugin)}): "
            f"--{namespace}.<option>, or <option> in the YAML section {namespace}:.")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("tip:"))


# -- what must be known before the schema: the one-off plugins ----------------


def read_plugins(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The one-off plugins ``argv`` names, read before parsing (plugins add options to the
    schema): ``--plugins a.py,b.py``, ``--plugins '[a.py, b.py]'`` or the ``plugins`` key of
    ``--config``, the last one winning.

    Also returns ``argv`` with every ``--plugins`` value written as the list the
    parser expects and every ``--config`` path replaced by the file's content
    (jsonargparse takes either), so that the YAML file is read once.
    """
    specs: list[str] = []
    normalized: list[str] = []
    args = iter(argv)
    for arg in args:
        name, equals, inline = arg.partition("=")
        if name not in ("--plugins", "--config"):
            normalized.append(arg)
            continue
        value = inline if equals else next(args, "")
        if name == "--plugins":
            specs = plugin_list(value)
            value = json.dumps(specs)
        elif value:
            content = _read_config(value)
            if content.get("plugins"):
                specs = plugin_list(content["plugins"])
            value = yaml.safe_dump(content)
        normalized += [name, value]
    return specs, normalized


def read_keyword_plugins(kwargs: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """:func:`read_plugins` for ``any2ds.download`` or ``Pipeline`` keywords: the one-off plugins
    they name (``plugins``, else the ``plugins`` key of their ``config`` file), and the keywords
    with the ``config`` file's path replaced by its options, so that the file is read once."""
    kwargs = dict(kwargs)
    if kwargs.get("config") is not None and not isinstance(kwargs["config"], Mapping):
        kwargs["config"] = _read_config(kwargs["config"], "config")
    return plugin_list(kwargs.get("plugins") or (kwargs.get("config") or {}).get("plugins") or []), kwargs


def _read_config(path: str | os.PathLike, name: str = "--config") -> dict[str, Any]:
    """The options of YAML file ``path``, given by option ``name`` (named in errors)."""
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{name} {path}: {_one_line(exc)}") from exc
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{name} {path}: expected a mapping of options, got {type(content).__name__}")
    return content


def plugin_list(value: Any) -> list[str]:
    """The ``plugins`` option's value as a list: a list, a JSON/YAML list, or comma-separated."""
    if isinstance(value, list):
        return [str(v) for v in value]
    value = str(value).strip()
    if value.startswith("["):
        return [str(v) for v in yaml.safe_load(value)]
    return [v for v in value.split(",") if v]
