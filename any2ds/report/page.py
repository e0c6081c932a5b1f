"""The report as one self-contained HTML page: plotly.js inlined, no request to any server.

plotly (an optional dependency: ``pip install 'any2ds[report]'``) is used because it inlines its
whole JavaScript bundle in the page, its charts are interactive (hover shows each bar's numbers, a
drag zooms into a stretch of the throughput) and it draws them as SVG, which a browser test can
count. The price is the page's size: about 5 MB, most of it plotly.js.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from rich.filesize import decimal

from any2ds.errors import ConfigError
from any2ds.storage import Storage

# Colours of the page and its charts.
SUCCESS_COLOUR = "#2a9d8f"
FAILURE_COLOUR = "#e76f51"
NEUTRAL_COLOUR = "#457b9d"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.numbers { display: flex; gap: 2rem; flex-wrap: wrap; }
.numbers div { font-size: 0.9rem; color: #555; } .numbers b { display: block; font-size: 1.5rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { padding: 0.2rem 0.8rem; text-align: right; }
td:first-child, th:first-child { text-align: left; max-width: 40rem; overflow-wrap: anywhere; }
tr:nth-child(even) { background: #f4f4f4; } .warning { color: #b5651d; }
"""


def write_html(report: Mapping[str, Any], path: str, storage: Storage = Storage()) -> None:
    """Write ``report`` as an HTML page to ``path`` (a local path or any fsspec URL, reached with
    ``storage``'s options)."""
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise ConfigError(f"--html needs plotly ({exc}); install it with: pip install 'any2ds[report]'") from exc
    figures = _figures(go, report)
    charts = "\n".join(
        f"<h2>{html.escape(title)}</h2>\n"
        + figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)
        for div_id, title, figure in figures)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>any2ds report: {html.escape(report['output_folder'])}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head>\n<body>\n"
            f"{_summary(report)}\n{charts}\n{_tables(report)}\n</body></html>\n")
    fs, local_path = storage.url_to_fs(path)
    with fs.open(local_path, "w", encoding="utf-8") as f:
        f.write(page)


def _figures(go: Any, report: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(div id, title, figure) of every chart the report has data for."""
    figures = []
    throughput = report["throughput"]
    if throughput:
        series = throughput["series"]
        times = [datetime.datetime.fromtimestamp(t + throughput["bin_seconds"] / 2) for t in series["start_time"]]
        figure = go.Figure([
            go.Scatter(x=times, y=series["samples_per_sec"], name="samples/s", mode="lines+markers",
                       line={"color": NEUTRAL_COLOUR}),
            go.Scatter(x=times, y=series["successes_per_sec"], name="successes/s", mode="lines+markers",
                       line={"color": SUCCESS_COLOUR}),
        ])
        figures.append(("throughput", "Throughput over time", _layout(figure, "time", "per second")))
    if report["error_types"]:
        classes = report["error_types"]
        figure = go.Figure(go.Bar(x=list(classes.values()), y=list(classes), orientation="h",
                                  marker_color=FAILURE_COLOUR))
        figures.append(("error-classes", "Errors by class", _layout(figure, "failed samples", "", bars=len(classes))))
    hosts = report["hosts"]["top_failing"]
    if hosts:
        figure = go.Figure(go.Bar(
            x=[host["failures"] for host in hosts], y=[host["host"] for host in hosts], orientation="h",
            marker_color=FAILURE_COLOUR,
            customdata=[[host["count"], host["failure_rate"], _classes_text(host["error_types"])] for host in hosts],
            hovertemplate="%{y}: %{x} failures of %{customdata[0]} samples (%{customdata[1]:.1%})"
                          "<br>%{customdata[2]}<extra></extra>"))
        figures.append(("host-failures", "Failures by host (top failing hosts)",
                        _layout(figure, "failed samples", "", bars=len(hosts))))
    for name, dist in report["distributions"].items():
        edges, counts = dist["histogram"]["edges"], dist["histogram"]["counts"]
        figure = go.Figure(go.Bar(x=[(a + b) / 2 for a, b in pairwise(edges)], y=counts,
                                  width=[b - a for a, b in pairwise(edges)], marker_color=NEUTRAL_COLOUR,
                                  marker_line={"color": "white", "width": 1}))
        figures.append((f"distribution-{name}", f"Distribution of {name} (successes)",
                        _layout(figure, name, "samples")))
    return figures


def _layout(figure: Any, x_title: str, y_title: str, bars: int = 0) -> Any:
    figure.update_layout(xaxis_title=x_title, yaxis_title=y_title, margin={"t": 10, "b": 40},
                         height=max(280, 60 + 24 * bars), template="plotly_white")
    if bars:
        figure.update_yaxes(autorange="reversed", automargin=True)  # the largest first, as in the JSON
    return figure


def _classes_text(classes: Mapping[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in classes.items())


def _summary(report: Mapping[str, Any]) -> str:
    samples, shards, output = report["samples"], report["shards"], report["output_bytes"]
    rate = "-" if samples["success_rate"] is None else f"{samples['success_rate']:.1%}"
    numbers = [("state", report["state"]), ("shards done", f"{shards['done']:,}"),
               ("shards in progress", f"{shards['in_progress']:,}"), ("samples", f"{samples['count']:,}"),
               ("successes", f"{samples['successes']:,}"), ("success rate", rate),
               ("output", decimal(output["total"]))]
    if report["throughput"]:
        numbers.append(("samples/s", f"{report['throughput']['samples_per_sec']:,.1f}"))
    cells = "".join(f"<div><b>{html.escape(str(value))}</b>{html.escape(label)}</div>" for label, value in numbers)
    warnings = "".join(f"<p class=\"warning\">warning: {html.escape(w)}</p>" for w in report["warnings"])
    return (f"<h1>any2ds report: {html.escape(report['output_folder'])}</h1>\n"
            f"<div class=\"numbers\" id=\"numbers\">{cells}</div>{warnings}")


def _tables(report: Mapping[str, Any]) -> str:
    messages = report["error_messages"]
    hosts = report["hosts"]
    parts = [
        _table("statuses", "Statuses", ("status", "samples"), report["statuses"].items()),
        _table("error-messages", f"Errors by message ({messages['distinct']:,} distinct)", ("message", "samples"),
               messages["top"].items()),
        _table("hosts", f"Top failing hosts ({hosts['failing']:,} of {hosts['distinct']:,} hosts have failures)",
               ("host", "samples", "failures", "failure rate", "error classes"),
               [(h["host"], h["count"], h["failures"], f"{h['failure_rate']:.1%}", _classes_text(h["error_types"]))
                for h in hosts["top_failing"]]),
        _table("output-bytes", "Output bytes", ("files", "bytes"),
               [(kind, decimal(size)) for kind, size in report["output_bytes"]["by_kind"].items()]),
    ]
    return "\n".join(part for part in parts if part)


def _table(table_id: str, title: str, header: tuple[str, ...], rows: Any) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    if not body:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<h2>{html.escape(title)}</h2>\n<table id=\"{table_id}\"><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)
