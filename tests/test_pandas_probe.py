"""pyarrow's pandas probe in the processes any2ds runs alone (metadata.settle_pandas_probe).

pyarrow's first conversion of Python values imports pandas when it is installed (44 MB and
0.3 s per process). The CLI's process and multiprocessing workers let the probe find pandas
absent, unless a plugin imported it; a shared process (the caller's, with download()) is left
alone. Each run is a fresh interpreter: this test process may have imported pandas already.

The same runs check which heavy libraries each process imports: the main process, which only
plans, never imports Pillow (2.2 MB, 10 ms), OpenCV (16 MB, 30 ms), exifread (2.1 MB, 31 ms),
requests or urllib3 (13 MB, 90 ms); the workers import Pillow and OpenCV with their first image,
exifread with the first that may carry EXIF (none here: a JPEG without an EXIF segment skips it),
and fetching with fast_http (the default) they import neither requests nor urllib3. Reading a txt
list and writing shards, no process imports pyarrow.compute (9 MB; the report's), and without a
terminal none imports rich (the bar's); the workers, given their options parsed, import neither
jsonargparse nor yaml, also under the ``any2ds`` command (multiprocessing runs its script again in
each worker). Pillow's plugins for formats it only meets by name (PDF, ... : Image.init) load in
no process of a JPEG run, nor libsndfile and soxr (the audio processor's) in a run without audio.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pandas")

# A processor and an observer that record, per process, whether pandas is imported and the type
# pyarrow gives a categorical pandas Series, when the plugin itself imported pandas.
RECORDER = '''
import json, os, sys
from pathlib import Path
import pyarrow as pa
from any2ds import Observer, Processor, hookimpl
{import_pandas}
LOG = Path(os.environ["ANY2DS_TEST_LOG"])
HEAVY = ("cv2", "PIL.Image", "exifread", "requests", "urllib3", "pyarrow.compute", "rich", "jsonargparse", "yaml",
         "PIL.PdfImagePlugin", "soundfile", "soxr")

def seen(where):
    entry = {{"where": where, "pid": os.getpid(), "pandas": "pandas" in sys.modules,
             "heavy": sorted(m for m in HEAVY if m in sys.modules)}}
    if "pandas" in sys.modules:
        pd = sys.modules["pandas"]
        entry["categorical"] = str(pa.array(pd.Series(pd.Categorical(["a", "b", "a"]))).type)
    with LOG.open("a") as f:
        f.write(json.dumps(entry) + "\\n")

class Recorder(Processor):
    name = "recorder"
    def process(self, fetched, result):
        seen(f"worker shard {{result.sample.shard_id}}")

class MainRecorder(Observer):
    name = "main_recorder"
    def run_completed(self, summary):
        seen("main")

@hookimpl
def any2ds_register_processors(register):
    register(Recorder)

@hookimpl
def any2ds_register_observers(register):
    register(MainRecorder)
'''


def _run(tmp_path, http_server, import_pandas: bool, command: list[str], host: str = "127.0.0.1") -> list[dict]:
    plugin = tmp_path / "recorder.py"
    plugin.write_text(RECORDER.format(import_pandas="import pandas" if import_pandas else ""))
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(http_server.url(f"/allowed/{n}").replace("127.0.0.1", host) + "\n"
                            for n in ("64_64.jpg", "128_96.png") * 2))
    log = tmp_path / "log.jsonl"
    args = dict(url_list=str(urls), output_folder=str(tmp_path / "out"), allow_private_networks=True,
                number_sample_per_shard=2, processes_count=1, thread_count=2, plugins=[str(plugin)],
                processors=["image", "recorder"], observers=["main_recorder"], output_format="dummy")
    subprocess.run([*command, json.dumps(args)], check=True, env={**os.environ, "ANY2DS_TEST_LOG": str(log)}, timeout=300)
    return [json.loads(line) for line in log.read_text().splitlines()]


CLI = [sys.executable, "-c", textwrap.dedent("""
    import json, sys
    from any2ds.cli import main
    args = json.loads(sys.argv[1])
    flags = ["download"]
    for name, value in args.items():
        flags += [f"--{name}", json.dumps(value) if isinstance(value, (list, bool)) else str(value)]
    sys.exit(main(flags))
""")]
LIBRARY = [sys.executable, "-c", textwrap.dedent("""
    import json, sys
    import any2ds
    if __name__ == "__main__":
        any2ds.download(**json.loads(sys.argv[1]), distributor="inprocess")
""")]


def test_cli_and_its_workers_never_import_pandas(tmp_path, http_server):
    log = _run(tmp_path, http_server, import_pandas=False, command=CLI)
    # Without the settled probe, the first shard's metadata table imported pandas in the worker,
    # and the second shard's samples saw it.
    assert {entry["where"] for entry in log} == {"worker shard 0", "worker shard 1", "main"}
    assert not any(entry["pandas"] for entry in log), log


def test_a_plugin_that_imports_pandas_keeps_pyarrows_pandas_support(tmp_path, http_server):
    log = _run(tmp_path, http_server, import_pandas=True, command=CLI)
    assert {entry["where"] for entry in log} == {"worker shard 0", "worker shard 1", "main"}
    assert all(entry["categorical"].startswith("dictionary<") for entry in log), log


def test_a_callers_process_is_left_alone(tmp_path, http_server):
    """download() runs in the caller's process, which may use pandas later: pyarrow's probe is not
    touched there (the in-process distributor runs shards in that process too)."""
    log = _run(tmp_path, http_server, import_pandas=False, command=LIBRARY)
    assert log and all(entry["pandas"] for entry in log if entry["where"] != "worker shard 0"), log


def test_each_process_imports_only_the_libraries_it_uses(tmp_path, http_server):
    # By name: resolving a name is what once imported urllib3 (an IP literal needs no resolver).
    log = _run(tmp_path, http_server, import_pandas=False, command=CLI, host="localhost")
    assert {entry["where"]: entry["heavy"] for entry in log} == {
        "worker shard 0": ["PIL.Image", "cv2"], "worker shard 1": ["PIL.Image", "cv2"], "main": ["jsonargparse", "yaml"]}, log


def test_the_commands_workers_do_not_import_the_cli(tmp_path, http_server):
    """The ``any2ds`` command is a script that imports its entry point; multiprocessing's spawn runs
    that script again in every worker (as ``__mp_main__``). Its entry point imports the CLI (and
    with it jsonargparse and yaml: 4 MB and 60 ms per worker) only when called."""
    entry_point = importlib.metadata.entry_points(group="console_scripts")["any2ds"]
    module, function = entry_point.value.split(":")
    script = tmp_path / "any2ds-command"  # pip's script imports the entry point, then calls it under the guard
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from {module} import {function}
        if __name__ == "__main__":
            flags = ["download"]
            for name, value in json.loads(sys.argv[1]).items():
                flags += [f"--{{name}}", json.dumps(value) if isinstance(value, (list, bool)) else str(value)]
            sys.argv[1:] = flags
            sys.exit({function}())
    """))
    log = _run(tmp_path, http_server, import_pandas=False, command=[sys.executable, str(script)], host="localhost")
    assert {entry["where"]: entry["heavy"] for entry in log} == {
        "worker shard 0": ["PIL.Image", "cv2"], "worker shard 1": ["PIL.Image", "cv2"], "main": ["jsonargparse", "yaml"]}, log
