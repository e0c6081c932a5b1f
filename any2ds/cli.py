"""The ``any2ds`` command line: ``any2ds download`` (img2dataset's flags) and ``any2ds plugins``.

The parser is built from the registries, so every plugin's options are flags
(``--image_size 256``) and YAML keys (``--config laion.yaml``); unknown keys
are rejected. The same parser type-checks ``any2ds.download(**kwargs)``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from any2ds.config import CoreOptions, declared_options, options_fields, reject_unknown
from any2ds.errors import Any2dsError, ConfigError
from any2ds.manager import PluginHost

DOWNLOAD_HELP = "Download a URL list into a sharded dataset (img2dataset's flags; see --help)."


def _add_field(group: Any, field: attrs.Attribute) -> None:
    kwargs: dict[str, Any] = {"type": field.type, "default": _field_default(field), "help": field.metadata.get("help", "")}
    if field.type is bool:
        # fire (img2dataset's CLI) accepts a bare --flag as True; keep that working.
        kwargs.update(nargs="?", const=True)
    group.add_argument(f"--{field.name}", **kwargs)


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
            if owners[field.name][0] is not cls.Options:
                continue
            if cls.Options not in groups:
                groups[cls.Options] = parser.add_argument_group(
                    f"{cls.kind} {cls.name}", description=f"Options of {cls.kind} {cls.name!r} (plugin {registration.plugin!r}).")
            else:
                if any(a.dest == field.name for a in groups[cls.Options]._group_actions):
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


def local_plugins_in(argv: Sequence[str]) -> list[str]:
    """The ``plugins`` option, read ahead of parsing: plugins add options to the parser."""
    specs: list[str] = []
    for index, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        if name not in ("--plugins", "--config"):
            continue
        value = inline if inline else (argv[index + 1] if index + 1 < len(argv) else "")
        if name == "--plugins":
            specs = _as_list(value)
        elif value:
            try:
                with open(value) as f:
                    content = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"--config {value}: {exc}") from exc
            if isinstance(content, dict) and content.get("plugins"):
                specs = _as_list(content["plugins"])
    return specs


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    value = str(value).strip()
    if value.startswith("["):
        return [str(v) for v in yaml.safe_load(value)]
    return [v for v in value.split(",") if v]


def run_download(argv: Sequence[str]) -> int:
    from any2ds.run import run

    host = PluginHost.load(local_plugins=local_plugins_in(argv))
    flags = [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]
    reject_unknown(host, [f for f in flags if f not in ("config", "help")])
    parser = download_parser(host)
    try:
        namespace = parser.parse_args(list(argv))
    except Exception as exc:
        raise ConfigError(_one_line(exc)) from exc
    summary = run(host, values_from_namespace(namespace))
    return 1 if summary["shards_failed"] else 0


def run_plugins(argv: Sequence[str]) -> int:
    host = PluginHost.load()
    for plugin in host.plugin_names():
        hooks = ", ".join(host.hooks_of(plugin))
        registered = [f"{r.cls.kind} {r.cls.name}" for r in host.component_classes() if r.plugin == plugin]
        print(f"{plugin}: {', '.join(registered) or '-'} (hooks: {hooks or '-'})")
    return 0


COMMANDS = {"download": run_download, "plugins": run_plugins}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: any2ds {download,plugins} [options]\n\n"
              f"  download  {DOWNLOAD_HELP}\n  plugins   List installed plugins and what they register.",
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
