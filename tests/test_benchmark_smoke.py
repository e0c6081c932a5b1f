"""The benchmark's machinery still works: a tiny corpus, any2ds only (no img2dataset, no virtualenv)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from benchmarks import corpus
from benchmarks.run import main
from benchmarks.serving import find_nginx, serve

ROWS = 24


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    corpus.ensure_corpus(folder, ROWS, processes=1)
    return folder


def test_one_command_runs_any2ds_measures_the_ceiling_memory_and_psnr(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "figures.json"
    main(["--tools", "any2ds", "--rows", str(ROWS), "--repeats", "1", "--threads", "4", "--processes", "1",
          "--corpus-dir", str(tiny_corpus), "--work-dir", str(tmp_path / "work"), "--json", str(out),
          "--memory-rows", str(2 * ROWS), "--memory-files", "3"])

    figures = json.loads(out.read_text())
    run, memory_run = figures["runs"]
    assert (memory_run["label"], memory_run["successes"], memory_run["rows"]) == ("memory", 2 * ROWS, 2 * ROWS)
    (memory,) = figures["memory"]["runs"]
    assert memory["peak_rss_bytes"] > 0 and len(memory["rss_at_fractions"]) == len(figures["memory"]["fractions"])
    assert (run["tool"], run["exit_code"], run["successes"], run["thread_count"]) == ("any2ds", 0, ROWS, 4)
    assert run["cpu_seconds"] > 0 and run["peak_rss_bytes"] > 50_000_000 and run["output_bytes"] > 0
    assert figures["best"]["any2ds"]["thread_count"] == 4
    assert figures["ratios"] is None  # only one tool ran
    assert figures["ceiling"]["images"] == ROWS and figures["ceiling"]["failures"] == 0
    assert len(figures["ceiling"]["measures"]) == 1  # one per repeat
    assert figures["ceiling"]["images_per_second_range"] == [figures["ceiling"]["images_per_second"]] * 2
    assert figures["ceiling"]["any2ds_share"] > 0
    assert figures["psnr"]["compared"] == ROWS and figures["psnr"]["passed"]
    assert all(worst["db"] is not None for worst in figures["psnr"]["worst"])  # only images that differ
    assert figures["corpus"]["images"] == ROWS
    printed = capsys.readouterr().out
    assert "| any2ds 0.1.0" in printed and "Compute ceiling" in printed and "**pass**" in printed
    assert not list((tmp_path / "work").glob("out-*")), "run outputs are removed once measured"


def test_corpus_images_depend_only_on_seed_and_index(tiny_corpus, tmp_path):
    assert (tiny_corpus / corpus.image_name(5)).read_bytes() == corpus.make_image(0, 5)
    assert corpus.make_image(1, 5) != corpus.make_image(0, 5)
    with Image.open(tiny_corpus / corpus.image_name(0)) as image:
        assert image.format == "JPEG"


def test_url_lists_repeat_images_or_cycle_over_a_few_files():
    names = [corpus.image_name(i) for i in range(10)]
    rows = corpus.url_rows(names, 20, duplicates=5)
    assert len(rows) == 20 and sorted(set(rows)) == names[:4] and all(rows.count(n) == 5 for n in names[:4])
    assert rows != sorted(rows)  # shuffled, not in runs of five
    cycled = corpus.cycled_rows(names[:3], 10, missing_share=0.5)
    assert len(set(cycled)) == 10  # every row's URL is distinct
    assert [Path(urlsplit(r).path).name for r in cycled[:4]] == [names[0], "missing.jpg", names[2], "missing.jpg"]
    with pytest.raises(ValueError):
        corpus.url_rows(names, 100, duplicates=2)


@pytest.mark.parametrize("kind", ["nginx", "python"])
def test_server_keeps_connections_alive(kind, tiny_corpus, tmp_path):
    if kind == "nginx" and find_nginx() is None:
        pytest.skip("nginx is not installed")
    name = corpus.image_name(0)
    with serve(tiny_corpus, tmp_path, prefer_nginx=kind == "nginx") as server:
        assert server.kind.startswith(kind)
        connection = http.client.HTTPConnection(urlsplit(server.base_url).netloc, timeout=5)
        sockets = []
        for row in (1, 2):
            connection.request("GET", f"/{name}?row={row}")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, (tiny_corpus / name).read_bytes())
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets[0] is sockets[1]  # one connection served both
        connection.request("GET", "/missing.jpg")
        assert connection.getresponse().status == 404
        connection.close()
