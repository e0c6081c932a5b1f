"""The ``any2ds`` command line: ``any2ds download`` (img2dataset's flags), ``any2ds plan`` (the same
flags: what the download would do), ``any2ds plugins``, ``any2ds report`` and ``any2ds verify``.

Options are parsed by :mod:`any2ds.options`; this module only dispatches commands
and turns startup errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from any2ds.errors import Any2dsError, Terminated
from any2ds.manager import AUTOLOAD_DISABLED, BLOCK_ENV, BLOCKED, BROKEN, DISABLE_AUTOLOAD_ENV, PluginHost
from any2ds.metadata import settle_pandas_probe
from any2ds.options import DOWNLOAD_DESCRIPTION, OptionSchema, read_plugins
from any2ds.plan import plan
from any2ds.report import REPORT_HELP, run_report
from any2ds.run import Run
from any2ds.verify import VERIFY_HELP
from any2ds.verify import main as verify

PLUGINS_HELP = "List installed plugins: distribution, version, registered names, hooks and errors (see --help)."
PLAN_HELP = ("Check a download's flags and plugins and read its input, fetching nothing: rows, shards, "
             "estimated output size, the command that runs and resumes it.")


def _run(argv: Sequence[str]) -> Run:
    """The run the download flags ``argv`` describe, checked: config, plugins, input files."""
    specs, argv = read_plugins(argv)
    host = PluginHost.load(local_plugins=specs)
    settle_pandas_probe()  # the CLI's process runs any2ds alone
    return Run(host, OptionSchema(host).parse_args(argv))


def run_download(argv: Sequence[str]) -> int:
    summary = _run(argv).execute()
    return 1 if summary["shards_failed"] else 0


def run_plan(argv: Sequence[str]) -> int:
    print("\n".join(plan(_run(argv), argv).lines()))
    return 0


def run_plugins(argv: Sequence[str]) -> int:
    """List every plugin found, loaded or not; a broken one is listed with its error, not raised."""
    parser = argparse.ArgumentParser(prog="any2ds plugins", description=PLUGINS_HELP)
    parser.add_argument("--json", action="store_true", help="Print a JSON list of plugins instead of text.")
    parser.add_argument("--plugins", help="One-off plugins to load too (.py files or module names), as for download.")
    parser.add_argument("--config", help="A download YAML file whose plugins key to load too.")
    # argparse answers --help and refuses unknown flags; the plugins to load are read as download reads them.
    as_json = parser.parse_args(list(argv)).json
    report = PluginHost.load(local_plugins=read_plugins(argv)[0], strict=False).report()
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


COMMANDS = {"download": run_download, "plan": run_plan, "plugins": run_plugins, "report": run_report,
            "verify": verify}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: any2ds {download,plan,plugins,report,verify} [options]\n\n"
              f"  download  {DOWNLOAD_DESCRIPTION}\n  plan      {PLAN_HELP}\n  plugins   {PLUGINS_HELP}\n"
              f"  report    {REPORT_HELP}\n  verify    {VERIFY_HELP}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    previous = _on_sigterm(_raise_terminated)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Any2dsError as exc:
        print(f"any2ds: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("any2ds: interrupted; finished shards are kept. Run the same command again to resume.", file=sys.stderr)
        return 130
    except Terminated:
        print("any2ds: terminated; finished shards are kept. Run the same command again to resume.", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        _on_sigterm(previous)


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated()


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM; return the one it replaces (None off the main thread,
    where Python cannot set handlers: the caller's own handling stays)."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
