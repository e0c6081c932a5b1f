"""The ``any2ds`` command line: ``any2ds download`` (img2dataset's flags) and ``any2ds plugins``.

The parser is built from the registries, so every plugin's options are flags
(``--image_size 256``) and YAML keys (``--config laion.yaml``); unknown keys
are rejected. The same parser type-checks ``any2ds.download(**kwargs)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from any2ds.config import CoreOptions, declared_options, option_key, options_fields, reject_unknown
from any2ds.errors import Any2dsError, ConfigError
from any2ds.manager import AUTOLOAD_DISABLED, BLOCK_ENV, BLOCKED, BROKEN, DISABLE_AUTOLOAD_ENV, PluginHost

DOWNLOAD_HELP = "Download a URL list into a sharded dataset (img2dataset's flags; see --help)."
PLUGINS_HELP = "List installed plugins: distribution, version, registered names, hooks and errors (see --help)."


def _add_field(group: Any, field: attrs.Attribute) -> None:
    kwargs: dict[str, Any] = {"type": field.type, "default": _field_default(field), "help": field.metadata.get("help", "")}
    if field.type is bool:
        # fire (img2dataset's CLI) accepts a bare --flag as True; keep that working.
        kwargs.update(nargs="?", const=True)
    group.add_argument(f"--{option_key(field)}", **kwargs)


def _field_default(field: attrs.Attribute) -> Any:
    default = field.default
    return default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]


def download_parser(host: PluginHost) -> ArgumentParser:
    parser = ArgumentParser(prog="any2ds download", description=DOWNLOAD_HELP, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of options (same keys as the flags).")
    core = parser.add_argument_group("core", description="Input, output, sharding and execution.")
    for field in options_fields(CoreOptions):
        _add_field(core, field)
    groups: dict[type, Any] = {}
    owners = declared_options(host)
    for registration in host.component_classes():
        cls = registration.cls
        for field in options_fields(cls.Options):
            if owners[option_key(field)][0] is not cls.Options:
                continue
            if cls.Options not in groups:
                groups[cls.Options] = parser.add_argument_group(
                    f"{cls.kind} {cls.name}", description=f"Options of {cls.kind} {cls.name!r} (plugin {registration.plugin!r}).")
            else:
                if any(a.dest == option_key(field) for a in groups[cls.Options]._group_actions):
                    continue
            _add_field(groups[cls.Options], field)
    return parser


def values_from_namespace(namespace: Namespace) -> dict[str, Any]:
    values = namespace.as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    return values


def parse_kwargs(host: PluginHost, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check Python keyword arguments exactly as the CLI checks flags."""
    reject_unknown(host, kwargs)
    parser = download_parser(host)
    try:
        namespace = parser.parse_object(dict(kwargs))
    except Exception as exc:  # jsonargparse reports bad values as ArgumentError
        raise ConfigError(_one_line(exc)) from exc
    return values_from_namespace(namespace)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("tip:"))


def plugin_specs(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The one-off plugins ``argv`` names, read ahead of parsing (plugins add options to the
    parser): ``--plugins a.py,b.py``, ``--plugins '[a.py, b.py]'`` or the ``plugins`` key of
    ``--config``, the last one winning. Also returns ``argv`` with every ``--plugins`` value
    written as the list the parser expects."""
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
            try:
                with open(value) as f:
                    content = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"--config {value}: {exc}") from exc
            if isinstance(content, dict) and content.get("plugins"):
                specs = plugin_list(content["plugins"])
        normalized += [name, value]
    return specs, normalized


def plugin_list(value: Any) -> list[str]:
    """The ``plugins`` option's value as a list: a list, a JSON/YAML list, or comma-separated."""
    if isinstance(value, list):
        return [str(v) for v in value]
    value = str(value).strip()
    if value.startswith("["):
        return [str(v) for v in yaml.safe_load(value)]
    return [v for v in value.split(",") if v]


def run_download(argv: Sequence[str]) -> int:
    from any2ds.run import run

    specs, argv = plugin_specs(argv)
    host = PluginHost.load(local_plugins=specs)
    flags = [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]
    reject_unknown(host, [f for f in flags if f not in ("config", "help", "print_config")])
    parser = download_parser(host)
    try:
        namespace = parser.parse_args(argv)
    except Exception as exc:
        raise ConfigError(_one_line(exc)) from exc
    summary = run(host, values_from_namespace(namespace))
    return 1 if summary["shards_failed"] else 0


def run_plugins(argv: Sequence[str]) -> int:
    """List every plugin found, loaded or not; a broken one is listed with its error, not raised."""
    parser = argparse.ArgumentParser(prog="any2ds plugins", description=PLUGINS_HELP)
    parser.add_argument("--json", action="store_true", help="Print a JSON list of plugins instead of text.")
    parser.add_argument("--plugins", help="One-off plugins to load too (.py files or module names), as for download.")
    parser.add_argument("--config", help="A download YAML file whose plugins key to load too.")
    as_json = parser.parse_args(list(argv)).json  # argparse for --help and unknown flags; plugins as download reads them
    report = PluginHost.load(local_plugins=plugin_specs(argv)[0], strict=False).report()
    print(json.dumps(report, indent=2) if as_json else "\n".join(_describe_plugin(p) for p in report))
    return 0


PLUGIN_STATE_NOTES = {BLOCKED: f" [blocked by {BLOCK_ENV}]", AUTOLOAD_DISABLED: f" [not loaded: {DISABLE_AUTOLOAD_ENV}]",
                      BROKEN: " [broken]"}


def _describe_plugin(plugin: Mapping[str, Any]) -> str:
    """A plugin of ``PluginHost.report()`` as text: origin and state, then what it registers."""
    origin = plugin["source"]
    if plugin["distribution"]:
        origin = f"{plugin['distribution']} {plugin['version']} ({origin})"
    lines = [f"{plugin['name']}: {origin}{PLUGIN_STATE_NOTES.get(plugin['state'], '')}"]
    lines += [f"    {kind}: {', '.join(names)}" for kind, names in plugin["registers"].items()]
    if plugin["hooks"]:
        lines.append(f"    hooks: {', '.join(plugin['hooks'])}")
    if plugin["error"]:
        lines.append(f"    error: {plugin['error']}")
    return "\n".join(lines)


COMMANDS = {"download": run_download, "plugins": run_plugins}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: any2ds {download,plugins} [options]\n\n"
              f"  download  {DOWNLOAD_HELP}\n  plugins   {PLUGINS_HELP}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Any2dsError as exc:
        print(f"any2ds: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("any2ds: interrupted; finished shards are kept. Run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
