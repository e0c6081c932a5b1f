"""One download run, from validated options to a summary: the orchestration.

Startup is loud (every option and plugin is checked before any work); the
run itself contains failures: a sample's becomes its metadata row, a shard's
is retried ``max_shard_retry`` times and then reported in the summary.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from any2ds.config import RunConfig
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.options import OptionSchema, plugin_list
from any2ds.output import SUMMARY_FILE, OutputFolder, check_output_url
from any2ds.pipeline import RunPipeline, SamplePipeline
from any2ds.preflight import check_workers
from any2ds.components import SampleReader
from any2ds.sharding import ShardCutter, planned_shards
from any2ds.types import Shard, ShardFailure, ShardStats
from any2ds.worker import ShardTask, close_runners

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


def download(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``any2ds.download``: type-check the arguments like CLI flags, then run."""
    if len(args) > len(IMG2DATASET_ARGUMENTS):
        raise TypeError(f"download() takes at most {len(IMG2DATASET_ARGUMENTS)} positional arguments")
    for name, value in zip(IMG2DATASET_ARGUMENTS, args):
        if name in kwargs:
            raise TypeError(f"download() got multiple values for argument {name!r}")
        kwargs[name] = value

    host = PluginHost.load(local_plugins=plugin_list(kwargs.get("plugins") or []))
    return Run(host, OptionSchema(host).parse_kwargs(kwargs)).execute()


class Run:
    """One run in the main process: checks at construction, then :meth:`execute`."""

    def __init__(self, host: PluginHost, config: RunConfig) -> None:
        self.host = host
        self.config = config
        check_output_url(config.core.output_folder, config.core.storage())
        self.pipeline = RunPipeline.build(host, config)
        self.output = OutputFolder(config.core.output_folder, config.core.oom_shard_count, config.core.storage())
        self.sources = self.pipeline.samples.reader.input_files(config.core.url_list, config.core.input_format)
        try:
            check_workers(self.pipeline.distributor, host, config)
        except BaseException:
            self.pipeline.close()  # the distributor may have started an engine for the preflight
            raise

    def execute(self) -> dict[str, Any]:
        core = self.config.core
        self._check_resume()
        skip, first_id = self.output.prepare(core.incremental_mode)
        start = time.time()
        self.output.write_json(SUMMARY_FILE, {"state": "running", "start_time": start, "config": self.config.as_dict()})
        task = ShardTask(self.config)
        totals = RunTotals()
        for observer in self.pipeline.observers:
            observer.run_started(self.config)
        try:
            failed = self._run_round(self._shards(skip, first_id), task, totals)
            for _round in range(core.max_shard_retry):
                if not failed:
                    break
                failed = self._run_round(list(failed.values()), task, totals)
            summary = finish_output(self.pipeline.samples, self.output, totals, start, skipped=len(skip),
                                    failed=failed)
            for observer in self.pipeline.observers:
                observer.run_completed(summary)
        finally:
            close_runners()
            self.pipeline.close()
        return summary

    def _shards(self, skip: set[int], first_id: int) -> Iterable[Shard]:
        """The run's shards, read lazily: cut from the rows, or planned by a SampleReader."""
        samples = self.pipeline.samples
        if isinstance(samples.reader, SampleReader):
            return planned_shards(samples.reader, self.sources, samples.sample_columns(), skip, first_id)
        return ShardCutter(samples.reader, self.sources, samples.input_columns(),
                           self.config.core.number_sample_per_shard, skip, first_id)

    def _run_round(self, shards: Iterable[Shard], task: ShardTask, totals: RunTotals) -> dict[int, Shard]:
        """Run ``shards``; return the ones that failed, by id, for the next round."""
        in_flight: dict[int, Shard] = {}
        failed: dict[int, Shard] = {}

        def tracked() -> Iterator[Shard]:
            for shard in shards:
                in_flight[shard.shard_id] = shard
                yield shard

        for outcome in self.pipeline.distributor.run(tracked(), task, self.config):
            shard = in_flight.pop(outcome.shard_id)
            if isinstance(outcome, ShardFailure):
                failed[outcome.shard_id] = shard
                for observer in self.pipeline.observers:
                    observer.shard_failed(outcome)
            else:
                totals.add(outcome)
                for observer in self.pipeline.observers:
                    observer.shard_completed(outcome)
        return failed

    def _check_resume(self) -> None:
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


def finish_output(pipeline: SamplePipeline, output: OutputFolder, totals: RunTotals, start: float, skipped: int,
                  failed: Mapping[int, Shard]) -> dict[str, Any]:
    """A run's last writes, once its shards are committed: the writer's ``finalize``, then the run
    summary (with the manifest of every committed shard); returns the summary."""
    pipeline.writer.finalize(output)
    summary = totals.summary(start, time.time(), skipped=skipped, failed=failed, config=pipeline.config)
    summary["manifest"] = output.manifest()
    output.write_json(SUMMARY_FILE, summary)
    output.finish()
    return summary


class RunTotals:
    """A run's counts over its committed shards, and the summary made of them."""

    def __init__(self) -> None:
        self.count = 0
        self.successes = 0
        self.shards = 0
        self.statuses: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()

    def add(self, stats: ShardStats) -> None:
        self.shards += 1
        self.count += stats.count
        self.successes += stats.successes
        self.statuses.update(stats.statuses)
        self.error_types.update(stats.error_types)

    def summary(self, start: float, end: float, skipped: int, failed: Mapping[int, Shard],
                config: RunConfig) -> dict[str, Any]:
        return {
            "state": "failed_shards" if failed else "done",
            "count": self.count,
            "successes": self.successes,
            "statuses": dict(self.statuses),
            "error_types": dict(self.error_types.most_common()),
            "shards_done": self.shards,
            "shards_skipped": skipped,
            "shards_failed": sorted(failed),
            "start_time": start,
            "end_time": end,
            "duration": end - start,
            "samples_per_sec": self.count / max(end - start, 1e-9),
            "config": config.as_dict(),
        }
