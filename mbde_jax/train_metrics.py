"""Per-step training metrics: kept on the device until the next log, then checked for finiteness and averaged."""

from __future__ import annotations

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class PendingMetrics:
    """Per-step training metrics kept on the device until the next log, then checked and averaged."""

    def __init__(self):
        self._steps: list[tuple[int, dict[str, jax.Array], int | None]] = []
        self._epoch_sums: dict[str, float] = {}
        self._epoch_steps = 0

    def add(self, step: int, metrics: dict[str, jax.Array], index: int | None = None) -> None:
        """Keeps `step`'s metrics; with `index`, the step's metrics are metrics[name][index] (one seed of a
        seed group's stacked [k] metrics, mbde_jax.seed_group), taken once they are on the host."""
        self._steps.append((step, metrics, index))

    def flush(self, last_good_checkpoint: int | None) -> dict[str, float]:
        """Averages the pending metrics; raises NonFiniteLossError naming the first step whose loss is not
        finite. Returns {} when nothing is pending. The epoch's running means are updated too."""
        if not self._steps:
            return {}
        steps, values, indices = zip(*self._steps)
        values = [metrics if index is None else {name: value[index] for name, value in metrics.items()}
                  for metrics, index in zip(jax.device_get(values), indices)]
        self._steps = []
        for step, metrics in zip(steps, values):
            if not np.isfinite(metrics["loss"]):
                where = (f"the last good checkpoint (step {last_good_checkpoint}) is kept"
                         if last_good_checkpoint is not None else "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"training loss is {metrics['loss']} at step {step + 1} (1-based); stopping. {where}. "
                    f"Lower config.learning_rate or the loss weights, or check the data.")
        for metrics in values:
            for name, value in metrics.items():
                self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + float(value)
        self._epoch_steps += len(values)
        return {name: float(np.mean([m[name] for m in values])) for name in values[0]}

    def running_sums(self) -> dict:
        """The epoch's running sums, saved in checkpoints so a resumed epoch reports the same means."""
        return {"sums": dict(self._epoch_sums), "steps": self._epoch_steps}

    def load_running_sums(self, saved: dict | None) -> None:
        if saved:
            self._epoch_sums, self._epoch_steps = dict(saved["sums"]), int(saved["steps"])

    def epoch_means(self) -> dict[str, float]:
        """Means over the steps flushed since the last call (the epoch's training metrics), then resets."""
        means = {name: total / self._epoch_steps for name, total in self._epoch_sums.items()}
        self._epoch_sums, self._epoch_steps = {}, 0
        return means
