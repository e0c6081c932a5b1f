"""The flow's thread and the fetch loop give way to the processing threads (any2ds.scheduling)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import any2ds
from tests.test_download import read_metadata

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")

# Records, from a processing thread, the policy of the three threads a sample passes through.
POLICY_PROBE_PLUGIN = '''
import json
import os
import threading

import pyarrow as pa
from any2ds import Processor, hookimpl


class PolicyProbe(Processor):
    name = "policy_probe"

    def metadata_fields(self):
        return [pa.field("policies", pa.string())]

    def process(self, fetched, result):
        fetch_loop = next(t for t in threading.enumerate() if t.name == "any2ds-fetch-loop")
        result.metadata["policies"] = json.dumps({
            "processing": os.sched_getscheduler(0),
            "flow": os.sched_getscheduler(threading.main_thread().native_id),
            "fetch_loop": os.sched_getscheduler(fetch_loop.native_id),
        })


@hookimpl
def any2ds_register_processors(register):
    register(PolicyProbe)
'''


def _download_with_probe(tmp_path, server, **options) -> list[dict]:
    plugin = tmp_path / "policy_probe.py"
    plugin.write_text(POLICY_PROBE_PLUGIN)
    urls = tmp_path / "urls.csv"
    pcsv.write_csv(pa.table({"url": [server.url(f"/allowed/{name}") for name in ("123_456.jpg", "64_64.jpg",
                                                                                  "800_600.jpg", "300_500.jpg")]}), urls)
    out = tmp_path / "out"
    any2ds.download(url_list=str(urls), input_format="csv", output_folder=str(out), allow_private_networks=True,
                    number_sample_per_shard=2, thread_count=2, plugins=[str(plugin)],
                    processors=["image", "policy_probe"], **options)
    rows = read_metadata(out)
    assert [row["status"] for row in rows] == ["success"] * 4
    return [json.loads(row["policies"]) for row in rows]


def test_in_a_worker_process_the_flow_and_the_fetch_loop_give_way_to_processing(tmp_path, http_server):
    policies = _download_with_probe(tmp_path, http_server, processes_count=2)
    assert policies == [{"processing": os.SCHED_OTHER, "flow": os.SCHED_BATCH, "fetch_loop": os.SCHED_BATCH}] * 4


def test_in_the_callers_process_its_thread_keeps_its_policy(tmp_path, http_server):
    policies = _download_with_probe(tmp_path, http_server, distributor="inprocess")
    # The flow runs on the caller's thread (here the main thread), which is the caller's to schedule.
    assert threading.current_thread() is threading.main_thread()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert policies == [{"processing": os.SCHED_OTHER, "flow": os.SCHED_OTHER, "fetch_loop": os.SCHED_BATCH}] * 4


def _policies_in_a_fresh_process(start_as_batch: bool) -> dict:
    """give_way on the main thread, then a thread it starts: as inherited, and after restoring."""
    script = textwrap.dedent(f"""
        import json, os, threading
        from any2ds.scheduling import give_way, restore_default_policy
        if {start_as_batch}:  # as under `chrt --batch`: the process's own choice
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        seen = {{}}
        give_way()
        seen["gave_way"] = os.sched_getscheduler(0)

        def started():
            seen["inherited"] = os.sched_getscheduler(0)
            restore_default_policy()
            seen["restored"] = os.sched_getscheduler(0)

        thread = threading.Thread(target=started)
        thread.start()
        thread.join()
        print(json.dumps(seen))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_a_thread_started_by_one_that_gave_way_can_take_the_default_policy_back():
    assert _policies_in_a_fresh_process(start_as_batch=False) == {
        "gave_way": os.SCHED_BATCH, "inherited": os.SCHED_BATCH, "restored": os.SCHED_OTHER}


def test_a_process_started_under_batch_keeps_it_everywhere():
    assert _policies_in_a_fresh_process(start_as_batch=True) == {
        "gave_way": os.SCHED_BATCH, "inherited": os.SCHED_BATCH, "restored": os.SCHED_BATCH}
