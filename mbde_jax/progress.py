"""The training console: a progress line every few seconds, one line per evaluation, a closing block.

    epoch 3/10  step 122/450 (27%)  38.4 images/s  loss 4.012  ETA 0:02:41
    epoch 3/10  test top-1 leader 69.86% (best 69.86%, epoch 3)  peer ensemble 63.94%  diversity 0.3060  eval 1.5 s

Scalars go to TensorBoard and metrics.csv (mbde_jax.tensorboard_scalars, mbde_jax.workdir), not to the console.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from absl import logging


def hours_minutes_seconds(seconds: float) -> str:
    """'h:mm:ss' of a non-negative duration, rounded to the second."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ConsoleProgress:
    """Times this session's training and evaluations and logs the progress and evaluation lines.

    The images/s of a progress line are those since the previous line; the ETA adds the remaining steps at the
    session's mean step rate (evaluations and the first step, which compiles, excluded) to the remaining
    evaluations at their mean duration.
    """

    def __init__(self, *, total_steps: int, steps_per_epoch: int, num_epochs: int, global_batch: int,
                 every_seconds: float, start_step: int, evaluations_left: Callable[[int], int],
                 num_seeds: int = 1, clock: Callable[[], float] = time.monotonic):
        self.total_steps, self.steps_per_epoch, self.num_epochs = total_steps, steps_per_epoch, num_epochs
        self.global_batch, self.every_seconds = global_batch, every_seconds
        self._evaluations_left, self._clock = evaluations_left, clock
        self._timed_from_step: int | None = None  # the step after this session's first (compiling) one
        self._timed_seconds = 0.0  # training time since then, evaluations excluded
        self._segment_start = clock()
        self._line_step, self._line_time = start_step, clock()
        self._eval_seconds: list[float] = []
        self._eval_seconds_since_line = 0.0
        self.num_seeds = num_seeds

    def _close_segment(self, now: float) -> None:
        if self._timed_from_step is not None:
            self._timed_seconds += now - self._segment_start
        self._segment_start = now

    def line_due(self) -> bool:
        """A progress line is due at the next step_done (the caller should wait for the step to be computed:
        JAX dispatches steps ahead of the device, and a line timed on dispatch would overstate the rate)."""
        return self._timed_from_step is None or self._clock() - self._line_time >= self.every_seconds

    def step_done(self, step: int, loss: float | None) -> float | None:
        """Call after every train step (`step` counts the steps done); logs a line when one is due and returns
        its images/s (else None)."""
        now = self._clock()
        if self._timed_from_step is None:
            logging.info("first step done in %.1f s (it compiles the train step or reads it from the cache); "
                         "next line in %g s", now - self._line_time, self.every_seconds)
            self._timed_from_step, self._segment_start = step, now
            self._line_step, self._line_time, self._eval_seconds_since_line = step, now, 0.0
            return None
        if now - self._line_time < self.every_seconds:
            return None
        self._close_segment(now)
        train_seconds = now - self._line_time - self._eval_seconds_since_line
        rate = (step - self._line_step) * self.global_batch / max(train_seconds, 1e-9)
        self._line_step, self._line_time, self._eval_seconds_since_line = step, now, 0.0
        epoch = (step - 1) // self.steps_per_epoch + 1  # the epoch the last step belonged to
        loss_text = f"  loss {loss:.4g}" if loss is not None else ""
        seeds_text = f" ({self.num_seeds} seeds; loss: their mean)" if self.num_seeds > 1 else ""
        logging.info("epoch %d/%d  step %d/%d (%d%%)  %.1f images/s%s%s  ETA %s", epoch, self.num_epochs, step,
                     self.total_steps, 100 * step // self.total_steps, rate, seeds_text, loss_text,
                     hours_minutes_seconds(self.eta_seconds(step)))
        return rate

    def eta_seconds(self, step: int) -> float:
        """Seconds left: the remaining steps at the mean step rate plus the remaining evaluations."""
        timed_steps = step - (self._timed_from_step or step)
        seconds_per_step = self._timed_seconds / timed_steps if timed_steps and self._timed_seconds else 0.0
        mean_eval = sum(self._eval_seconds) / len(self._eval_seconds) if self._eval_seconds else 0.0
        return (self.total_steps - step) * seconds_per_step + self._evaluations_left(step) * mean_eval

    def evaluation_started(self) -> float:
        now = self._clock()
        self._close_segment(now)
        return now

    def evaluation_done(self, started: float, epoch: int, per_seed: Sequence[tuple[int, dict, dict]]) -> None:
        """Logs the evaluation line of 1-based `epoch`: one line per (seed, metrics, best history entry so far);
        the seed is named when there are several."""
        now = self._clock()
        seconds = now - started
        self._eval_seconds.append(seconds)
        self._segment_start = now
        self._eval_seconds_since_line += seconds  # a progress line's images/s do not count evaluations
        for seed, metrics, best in per_seed:
            gated = (f"  gated ensemble {metrics['top1/gated_ensemble']:.2f}%"
                     if "top1/gated_ensemble" in metrics else "")
            logging.info("epoch %d/%d  %stest top-1 %s %.2f%% (best %.2f%%, epoch %d)  peer ensemble %.2f%%%s  "
                         "diversity %.4f  eval %.1f s", epoch, self.num_epochs,
                         f"seed {seed}: " if len(per_seed) > 1 else "", metrics["deployed_head"],
                         metrics["top1/deployed"], best["metrics"]["top1/deployed"], best["epoch"],
                         metrics["top1/peer_ensemble"], gated, metrics["diversity"], seconds)

    def train_images_per_second(self, step: int) -> float | None:
        """This session's mean training images/s (evaluations and the compiling first step excluded)."""
        self._close_segment(self._clock())
        timed_steps = step - (self._timed_from_step or step)
        if not timed_steps or not self._timed_seconds:
            return None
        return timed_steps * self.global_batch / self._timed_seconds


def log_final_block(results: dict, results_path: str, wall_seconds: float, runs_together: int = 1) -> None:
    """The closing lines of a finished run: where its results are, final and best, time and throughput.

    runs_together: how many seeds trained in lockstep with this one (config.num_seeds); its images/s are then
    its share of the group's, and the line says so.
    """
    final, best = results["final"], results["best"]
    head = results["deployed_head"]
    rate = results.get("train_images_per_second")
    lines = [
        f"finished {results['method']} on {results['dataset']} ({results['arch']}, {results['num_branches']} "
        f"branches): {results['num_epochs']} epochs, {results['steps']} steps",
        f"  final (epoch {final['epoch']}): {head} top-1 {final['metrics']['top1/deployed']:.2f}%, peer ensemble "
        f"{final['metrics']['top1/peer_ensemble']:.2f}%   <- the headline",
        f"  best  (epoch {best['epoch']}): {head} top-1 {best['metrics']['top1/deployed']:.2f}%   (picked on the "
        f"test set: for reference only)",
        f"  wall time {hours_minutes_seconds(wall_seconds)} this session (data, compilation, training, evaluation)"
        + (f", training at {rate:.1f} images/s on average" if rate else "")
        + (f" (this seed's share: {runs_together} seeds trained together)" if rate and runs_together > 1 else "")
        + f"; {hours_minutes_seconds(results['train_seconds'])} over every session",
        f"  results: {results_path} (and metrics.csv, history.json, TensorBoard events beside it)",
    ]
    for line in lines:
        logging.info("%s", line)
