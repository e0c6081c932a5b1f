"""img2dataset's wandb logging, as an observer: on only with ``enable_wandb``.

wandb is an optional dependency (``pip install 'any2ds[wandb]'``), imported
only when enabled; a run that enables it without wandb installed fails at
startup instead of running unlogged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from any2ds import ConfigError, Observer, RunConfig, ShardStats, hookimpl, option


@attrs.frozen
class WandbOptions:
    enable_wandb: bool = option(False, "Log progress to Weights & Biases (needs any2ds[wandb]).")
    wandb_project: str = option("img2dataset", "The wandb project to log to.")


class WandbObserver(Observer):
    """Logs worker and total ratios and counts, like img2dataset's logger."""

    name = "wandb"
    Options = WandbOptions

    def check(self) -> None:
        if self.options.enable_wandb:
            try:
                import wandb  # noqa: F401
            except ImportError as exc:
                raise ConfigError("enable_wandb needs wandb: pip install 'any2ds[wandb]'") from exc

    def run_started(self, config: RunConfig) -> None:
        self._run = None
        if not self.options.enable_wandb:
            return
        import wandb

        self._run = wandb.init(project=self.options.wandb_project, config=config.as_dict(), anonymous="allow")
        self._totals: dict[str, float] = {"count": 0, "success": 0, "failed_to_download": 0, "failed_to_resize": 0}
        self._first_start: float | None = None

    def shard_completed(self, stats: ShardStats) -> None:
        if self._run is None:
            return
        count = max(stats.count, 1)
        self._first_start = min(self._first_start or stats.start_time, stats.start_time)
        self._totals["count"] += stats.count
        self._totals["success"] += stats.successes
        for status in ("failed_to_download", "failed_to_resize"):
            self._totals[status] += stats.statuses.get(status, 0)
        total = max(self._totals["count"], 1)
        self._run.log({
            "worker/success": stats.successes / count,
            "worker/failed_to_download": stats.statuses.get("failed_to_download", 0) / count,
            "worker/failed_to_resize": stats.statuses.get("failed_to_resize", 0) / count,
            "worker/count": stats.count,
            "worker/img_per_sec": stats.count / max(stats.duration, 1e-9),
            "total/success": self._totals["success"] / total,
            "total/failed_to_download": self._totals["failed_to_download"] / total,
            "total/failed_to_resize": self._totals["failed_to_resize"] / total,
            "total/count": self._totals["count"],
            "total/img_per_sec": self._totals["count"] / max(stats.end_time - self._first_start, 1e-9),
        })

    def run_completed(self, summary: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.finish()


@hookimpl
def any2ds_register_observers(register):
    register(WandbObserver)
