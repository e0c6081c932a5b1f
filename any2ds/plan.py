"""``any2ds plan``: what a download would do, without fetching or writing anything.

It checks the config and the plugins as ``download`` does, reads the input
(streaming; a parquet input only its footers), and tells the rows, the
shards (done by an earlier run, and to run), an estimate of the output's
size with the assumption behind it, and the command that runs or resumes
the job.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

from any2ds.output import RUN_DIR, TMP_DIR
from any2ds.run import Run
from any2ds.sharding import ShardCutter, counted_shards
from any2ds.types import shard_name


@attrs.frozen
class Plan:
    """What ``any2ds plan`` found; :meth:`lines` shows it."""

    input_files: int
    input_format: str
    rows: int | None  # None: samples are read in the workers (archives)
    shards_to_run: list[str]  # their names
    shards_done: int
    rows_per_shard: int
    output: str
    output_format: str
    estimated_bytes: int | None
    size_assumption: str
    command: str

    def lines(self) -> list[str]:
        rows = "unknown (the workers read the samples from the archives)" if self.rows is None else f"{self.rows:,}"
        to_run = self.shards_to_run
        span = f" ({to_run[0]}..{to_run[-1]})" if len(to_run) > 1 else f" ({to_run[0]})" if to_run else ""
        size = "size unknown" if self.estimated_bytes is None else f"about {_size(self.estimated_bytes)}"
        return [
            f"input    {self.input_files} {self.input_format} file(s)",
            f"rows     {rows} to run",
            f"shards   {len(to_run)} to run{span}, {self.shards_done} already done",
            f"output   {self.output} ({self.output_format}): {size}; {self.size_assumption}",
            f"command  {self.command}",
        ]


def plan(run: Run, argv: Sequence[str]) -> Plan:
    """Plan ``run`` (built from ``argv``, the flags given to ``any2ds plan``)."""
    run.check_resume()
    core = run.config.core
    skip, first_id = run.output.resume_point(core.incremental_mode)
    counted = counted_shards(run.pipeline.samples.reader, run.sources, core.number_sample_per_shard, skip, first_id)
    if counted is None:  # no row count without reading the rows: read them (streaming)
        shards = [(shard.shard_id, shard.rows.num_rows) for shard in _cut(run, skip, first_id)]
        counted = sum(rows for _, rows in shards), [shard_id for shard_id, _ in shards]
    rows, shard_ids = counted
    done = len(run.output.done_shards()) if core.incremental_mode != "overwrite" else 0
    estimated, assumption = _estimate(run, done, rows, len(shard_ids))
    return Plan(input_files=len(run.sources), input_format=core.input_format, rows=rows,
                shards_to_run=[shard_name(shard_id, core.oom_shard_count) for shard_id in shard_ids],
                shards_done=done, rows_per_shard=core.number_sample_per_shard, output=core.output_folder,
                output_format=core.output_format, estimated_bytes=estimated, size_assumption=assumption,
                command=resume_command(argv, core.incremental_mode))


def _cut(run: Run, skip: set[int], first_id: int) -> ShardCutter:
    samples = run.pipeline.samples
    return ShardCutter(samples.reader, run.sources, samples.input_columns()[:1], run.config.core.number_sample_per_shard,
                       skip, first_id)


def _estimate(run: Run, done: int, rows: int | None, shards: int) -> tuple[int | None, str]:
    """The output's size, and how it was estimated: from the shards already done when there are
    some, else from the processors' estimates per sample (every sample a success: an upper bound)."""
    output = run.output
    if done:
        stored = sum(size for path, size in output.fs.du(output.root, total=False).items()
                     if not path[len(output.root) + 1:].startswith((TMP_DIR, RUN_DIR)))
        done_rows = sum(int(stats.get("count", 0)) for stats in output.shard_stats().values())
        if rows is not None and done_rows:
            return rows * stored // done_rows, f"{_size(stored / done_rows)} per row in the {done} shard(s) done"
        return shards * stored // done, f"{_size(stored / done)} per shard in the {done} shard(s) done"
    estimates = [(p.name, p.estimate_bytes()) for p in run.pipeline.samples.processors]
    unknown = [name for name, estimate in estimates if estimate is None]
    if unknown:
        return None, f"processor(s) {', '.join(unknown)} cannot tell what they store before seeing the data"
    if rows is None:
        return None, "the number of samples is known only once the archives are read"
    per_sample = sum(estimate[0] for _, estimate in estimates)
    described = "; ".join(f"{name}: {estimate[1]}" for name, estimate in estimates) or "no processor stores media"
    return rows * per_sample, (f"assuming every sample succeeds and stores {_size(per_sample)} ({described}); "
                               "metadata not counted")


def resume_command(argv: Sequence[str], mode: str) -> str:
    """The download command for the same flags, which also resumes the job when interrupted;
    with ``incremental_mode overwrite`` (which would start afresh every time) the command runs
    it in ``incremental`` mode."""
    command = ["any2ds", "download"]
    args = iter(argv)
    for arg in args:
        if mode == "overwrite" and arg.split("=", 1)[0] == "--incremental_mode":
            if "=" not in arg:
                next(args, None)
            continue
        command.append(arg)
    if mode == "overwrite":  # also overrides a config file's
        command += ["--incremental_mode", "incremental"]
    return shlex.join(command)


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
