"""One download run, from validated options to a summary: the orchestration.

Startup is loud (every option and plugin is checked before any work); the
run itself contains failures: a sample's becomes its metadata row, a shard's
is retried ``max_shard_retry`` times and then reported in the summary.
"""

from __future__ import annotations

import functools
import inspect
import posixpath
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from any2ds.config import RunConfig
from any2ds.errors import ConfigError, Terminated, clean_message, error_message_of
from any2ds.manager import PluginHost
from any2ds.output import SUMMARY_FILE, OutputFolder, check_output_url
from any2ds.pipeline import RunPipeline, SamplePipeline
from any2ds.preflight import check_workers
from any2ds.components import Distributor, Observer, SampleReader
from any2ds.progress import ProgressTicker, ProgressTracker, RunProgress
from any2ds.sharding import ShardCutter, check_input_columns, counted_shards, planned_shards
from any2ds.types import Shard, ShardFailure, ShardStats
from any2ds.worker import ShardTask, close_runners, top_hosts

# img2dataset's download() parameters in its order, for positional calls.
IMG2DATASET_ARGUMENTS = (
    "url_list", "image_size", "output_folder", "processes_count", "resize_mode", "resize_only_if_bigger",
    "upscale_interpolation", "downscale_interpolation", "encode_quality", "encode_format", "skip_reencode",
    "output_format", "input_format", "url_col", "caption_col", "bbox_col", "thread_count",
    "number_sample_per_shard", "extract_exif", "save_additional_columns", "timeout", "enable_wandb",
    "wandb_project", "oom_shard_count", "compute_hash", "verify_hash", "distributor", "subjob_size", "retries",
    "disable_all_reencoding", "min_image_size", "max_image_area", "max_aspect_ratio", "incremental_mode",
    "max_shard_retry", "user_agent_token", "disallowed_header_directives", "ignore_ssl_certificate",
)
# Changing these between runs changes which rows land in which shard.
SHARDING_OPTIONS = ("url_list", "input_format", "number_sample_per_shard", "oom_shard_count")
# run_summary.json: each input file's name and size (a resume refuses an input that changed).
INPUTS_KEY = "input_files"
# run_summary.json: the hosts with the most failures.
TOP_FAILED_HOSTS = 50


def download(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``any2ds.download``: type-check the arguments like CLI flags, then run."""
    if len(args) > len(IMG2DATASET_ARGUMENTS):
        raise TypeError(f"download() takes at most {len(IMG2DATASET_ARGUMENTS)} positional arguments")
    for name, value in zip(IMG2DATASET_ARGUMENTS, args):
        if name in kwargs:
            raise TypeError(f"download() got multiple values for argument {name!r}")
        kwargs[name] = value

    # Imported here: jsonargparse (20 ms, 3.7 MB) stays out of the workers, which import this module.
    from any2ds.options import OptionSchema, read_keyword_plugins

    plugins, kwargs = read_keyword_plugins(kwargs)
    host = PluginHost.load(local_plugins=plugins)
    return Run(host, OptionSchema(host).parse_kwargs(kwargs)).execute()


class Run:
    """One run in the main process: checks at construction, then :meth:`execute`."""

    def __init__(self, host: PluginHost, config: RunConfig) -> None:
        self.host = host
        self.config = config
        check_output_url(config.core.output_folder, config.core.storage())
        self.pipeline = RunPipeline.build(host, config)
        try:
            self.output = OutputFolder(config.core.output_folder, config.core.oom_shard_count, config.core.storage())
            self.output.check_usable()
            samples = self.pipeline.samples
            self.sources = samples.reader.input_files(config.core.url_list, config.core.input_format)
            if config.core.incremental_mode == "overwrite" and any(map(self.output.holds, self.sources)):
                raise ConfigError(f"url_list {config.core.url_list!r} is inside output_folder "
                                  f"{config.core.output_folder!r}, which incremental_mode overwrite deletes first: "
                                  "move the input out of it")
            if not isinstance(samples.reader, SampleReader):
                check_input_columns(samples.reader, self.sources, samples.input_columns())
            check_workers(self.pipeline.distributor, host, config)
        except BaseException:
            self.pipeline.close()  # its plugins, and an engine the distributor may have started for the preflight
            raise
        self.tracker = ProgressTracker(live=_takes_progress(self.pipeline.distributor),
                                       rows=not isinstance(self.pipeline.samples.reader, SampleReader))
        # Observers are called from the run's thread and from the progress ticker's, one at a time.
        self._observers_lock = threading.Lock()
        self._progress_failed: list[Observer] = []

    def execute(self) -> dict[str, Any]:
        core = self.config.core
        self.check_resume()
        skip, first_id = self.output.prepare(core.incremental_mode)
        start = time.time()
        self._write_unfinished_summary("running", start)
        task = ShardTask(self.config, self.pipeline.distributor.dedicated_workers)
        totals = RunTotals()
        self._notify("run_started", self.config)
        self._count_totals(skip, first_id)
        ticker = ProgressTicker(self.tracker, self._progress).start()
        try:
            failed = self._run_round(self._read(self._shards(skip, first_id)), task, totals)
            for _round in range(core.max_shard_retry):
                if not failed:
                    break
                failed = self._run_round(list(failed.values()), task, totals)
            ticker.stop()
            summary = finish_output(self.pipeline.samples, self.config, self.output, totals, start, skipped=len(skip),
                                    failed=failed, inputs=self.input_sizes)
            self._notify("run_completed", summary)
        except BaseException as stop:
            self._record_stop(start, stop)
            raise
        finally:
            ticker.stop()
            close_runners()
            self.pipeline.close()
        return summary

    def _record_stop(self, start: float, stop: BaseException) -> None:
        """The summary of a run that ended early (Ctrl-C, SIGTERM, an error): state ``stopped`` and
        why, not ``running`` for ever. Its committed shards are kept; a rerun resumes."""
        reason = ("interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated" if isinstance(stop, Terminated)
                  else clean_message(error_message_of(stop)))
        try:
            self._write_unfinished_summary("stopped", start, stop_reason=reason, stop_time=time.time())
        except Exception:  # the storage may be what failed: the stop's own error is the one to raise
            pass

    def _write_unfinished_summary(self, state: str, start: float, **why: Any) -> None:
        """The run summary before the run's totals are known: its state, start, config and input
        files (what a resume checks)."""
        self.output.write_json(SUMMARY_FILE, {"state": state, **why, "start_time": start,
                                              "config": self.config.as_dict(), INPUTS_KEY: self.input_sizes})

    def _shards(self, skip: set[int], first_id: int) -> Iterable[Shard]:
        """The run's shards, read lazily: cut from the rows, or planned by a SampleReader."""
        samples = self.pipeline.samples
        if isinstance(samples.reader, SampleReader):
            return planned_shards(samples.reader, self.sources, samples.sample_columns(), skip, first_id)
        return ShardCutter(samples.reader, self.sources, samples.input_columns(),
                           self.config.core.number_sample_per_shard, skip, first_id)

    def _read(self, shards: Iterable[Shard]) -> Iterator[Shard]:
        """``shards``, counted by the progress tracker as they are read, one ahead: the total is
        known as the last shard goes out, not once it is done."""
        source = iter(shards)
        shard = next(source, None)
        while shard is not None:
            self.tracker.shard_read(shard.rows.num_rows if shard.rows is not None else 0)
            following = next(source, None)
            if following is None:
                self.tracker.input_read()
            yield shard
            shard = following

    def _count_totals(self, skip: set[int], first_id: int) -> None:
        """Count the run's rows and shards before reading them, where the reader can (parquet
        footers; a SampleReader's plan), on a thread: the first shards need not wait."""
        reader, core = self.pipeline.samples.reader, self.config.core

        def count() -> None:
            try:
                counted = counted_shards(reader, self.sources, core.number_sample_per_shard, skip, first_id)
            except Exception:  # noqa: BLE001 - the totals are then counted as the input is read
                return
            if counted is not None:
                self.tracker.set_totals(counted[0], len(counted[1]))

        threading.Thread(target=count, name="any2ds-count-rows", daemon=True).start()

    def _run_round(self, shards: Iterable[Shard], task: ShardTask, totals: RunTotals) -> dict[int, Shard]:
        """Run ``shards``; return the ones that failed, by id, for the next round."""
        in_flight: dict[int, Shard] = {}
        failed: dict[int, Shard] = {}

        def tracked() -> Iterator[Shard]:
            for shard in shards:
                in_flight[shard.shard_id] = shard
                yield shard

        distributor = self.pipeline.distributor
        if self.tracker.live:
            outcomes = distributor.run(tracked(), task, self.config, progress=self.tracker.report)
        else:
            outcomes = distributor.run(tracked(), task, self.config)
        for outcome in outcomes:
            shard = in_flight.pop(outcome.shard_id)
            if isinstance(outcome, ShardFailure):
                failed[outcome.shard_id] = shard
                self.tracker.shard_failed(outcome.shard_id)
                self._notify("shard_failed", outcome)
            else:
                totals.add(outcome)
                self.tracker.shard_completed(outcome)
                self._notify("shard_completed", outcome)
        self.tracker.round_ended()
        return failed

    def _notify(self, method: str, *args: Any) -> None:
        with self._observers_lock:
            for observer in self.pipeline.observers:
                getattr(observer, method)(*args)

    def _progress(self, progress: RunProgress) -> None:
        """The ticker's call: an observer failing to show progress is told once and not asked
        again; the run and the other observers go on."""
        with self._observers_lock:
            for observer in self.pipeline.observers:
                if observer in self._progress_failed:
                    continue
                try:
                    observer.progress(progress)
                except Exception as exc:  # noqa: BLE001 - progress is not worth a run
                    self._progress_failed.append(observer)
                    print(f"any2ds: observer {observer.name!r} failed to show progress, no longer asked: "
                          f"{type(exc).__name__}: {exc}", file=sys.stderr)

    def check_resume(self) -> None:
        """Refuse to resume into an output made with other sharding options (rows would move)."""
        if self.config.core.incremental_mode != "incremental":
            return
        previous = self.output.read_json(SUMMARY_FILE)
        if not previous or not self.output.done_shards():
            return
        before = previous.get("config", {})
        now = self.config.as_dict()
        changed = [k for k in SHARDING_OPTIONS if k in before and before[k] != now[k]]
        if changed:
            raise ConfigError(
                f"output_folder {self.config.core.output_folder!r} was made with other "
                + ", ".join(f"{k} ({before[k]!r}, now {now[k]!r})" for k in changed)
                + "; resuming would shift rows between shards. Use the same options, "
                "incremental_mode=overwrite, or another output_folder."
            )
        change = _input_change(previous.get(INPUTS_KEY) or {}, self.input_sizes)
        if change is not None:
            raise ConfigError(
                f"url_list {self.config.core.url_list!r} changed since output_folder "
                f"{self.config.core.output_folder!r} was made from it ({change}); resuming would shift rows "
                "between shards. Use the same input, incremental_mode=overwrite, or another output_folder."
            )

    @functools.cached_property
    def input_sizes(self) -> dict[str, int]:
        """Each input file's name and size, in input order: what a resume checks its input against.
        Rows are cut into shards by their place in the files; a SampleReader plans its own shards
        (an archive's are the archive's), and lists files that may be missing: nothing to record."""
        if isinstance(self.pipeline.samples.reader, SampleReader):
            return {}
        return {posixpath.basename(source.path): source.fs.size(source.path) for source in self.sources}


def _input_change(recorded: Mapping[str, int], current: Mapping[str, int]) -> str | None:
    """How the input files differ from those an output was made from, or None. Files may be added
    after the recorded ones (their rows make new shards); none may change, go, or come before."""
    names = list(current)
    for index, (name, size) in enumerate(recorded.items()):
        if name not in current:
            return f"{name} is missing"
        if current[name] != size:
            return f"{name}: {size:,} bytes, now {current[name]:,}"
        if names[index] != name:
            return f"{names[index]} now comes before {name}"
    return None


def finish_output(pipeline: SamplePipeline, config: RunConfig, output: OutputFolder, totals: RunTotals, start: float,
                  skipped: int, failed: Mapping[int, Shard], inputs: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A run's last writes, once its shards are committed: the writer's ``finalize``, then the run
    summary (``config``, the ``inputs`` a resume checks, and the manifest of every committed
    shard); returns the summary."""
    pipeline.writer.finalize(output)
    summary = totals.summary(start, time.time(), skipped=skipped, failed=failed, config=config)
    if inputs is not None:
        summary[INPUTS_KEY] = dict(inputs)
    summary["manifest"] = output.manifest()
    output.write_json(SUMMARY_FILE, summary)
    output.finish()
    return summary


def _takes_progress(distributor: Distributor) -> bool:
    """Whether the distributor's ``run`` accepts ``progress`` (hook spec 1.2; older ones do not)."""
    return "progress" in inspect.signature(distributor.run).parameters


class RunTotals:
    """A run's counts over its committed shards, and the summary made of them."""

    def __init__(self) -> None:
        self.count = 0
        self.successes = 0
        self.shards = 0
        self.statuses: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()
        self.hosts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def add(self, stats: ShardStats) -> None:
        self.shards += 1
        self.count += stats.count
        self.successes += stats.successes
        self.statuses.update(stats.statuses)
        self.error_types.update(stats.error_types)
        for host, types in stats.failed_hosts.items():
            self.hosts[host].update(types)

    def summary(self, start: float, end: float, skipped: int, failed: Mapping[int, Shard],
                config: RunConfig) -> dict[str, Any]:
        return {
            "state": "failed_shards" if failed else "done",
            "count": self.count,
            "successes": self.successes,
            "statuses": dict(self.statuses),
            "error_types": dict(self.error_types.most_common()),
            "failed_hosts": top_hosts(self.hosts, TOP_FAILED_HOSTS),
            "shards_done": self.shards,
            "shards_skipped": skipped,
            "shards_failed": sorted(failed),
            "start_time": start,
            "end_time": end,
            "duration": end - start,
            "samples_per_sec": self.count / max(end - start, 1e-9),
            "config": config.as_dict(),
        }
