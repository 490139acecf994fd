"""Tables and plots of finished runs: mean and spread over seeds, one row (or panel) per method.

    python -m mbde_jax.report <sweep root or workdirs...> [--out <dir>]

Every directory below the given paths that holds a config.json is a run (a sweep root, see mbde_jax.sweep,
holds one per method and seed). The report reads each run's config.json, results.json and history.json and
writes into --out (default <path>/report when one path is given):
  results.md, results.csv  one row per method: top-1 error (%) of the deployed head at the final epoch, then the
                           peer ensemble, the peer mean and the diversity, each as mean +- sample std (ddof=1)
                           over seeds with the number of seeds; best-epoch numbers only in their own, labelled
                           columns (the best epoch is picked on the test set, so it is for reference only).
  accuracy.png, diversity.png, attention.png, schedule.png
                           the figures of mbde_jax.report_plots (accuracy of every head per method on one shared
                           y axis, diversity, final attention or gate, learning rate and w(e)), mean over seeds
                           with +- one sample std bands clipped to each metric's range; attention.png is not
                           written when no method has attention or a gate. Epochs are 1-based everywhere, as in
                           history.json and config.lr_boundaries_epochs.

A run is left out, and named with the reason in results.md, when it is incomplete (no results.json, or its final
epoch is not the config's num_epochs), when one of its JSON files cannot be read, when its config differs from
that of the runs the report uses in a field that shapes the result (any but method, seed and the bookkeeping
fields, mbde_jax.runs.BOOKKEEPING_FIELDS: data_dir, checkpoint and logging intervals), when it was made with other
jax/jaxlib/flax versions than the others, or when it repeats a method and seed already counted (mbde_jax.runs).
A used run whose bookkeeping fields differ from the others' has the differences listed beside it. Nothing is
averaged in silently.

The notebook-friendly pieces: load_runs, summarize, plot_accuracy, plot_diversity, plot_attention,
plot_schedule (each returns a matplotlib Figure; they live in mbde_jax.report_plots) and write_report.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m mbde_jax.report`, mbde-report: its flags answer before the imports below
    from mbde_jax import report_flags

    _COMMAND_LINE = report_flags.parse(sys.argv)

import csv
import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from mbde_jax import cli_errors, command_line, report_flags
from mbde_jax.report_plots import (
    DPI, lr_schedule_text, no_runs_error, plot_accuracy, plot_attention, plot_diversity, plot_schedule)
from mbde_jax.runs import Run, by_method, find_workdirs, included, load_runs, method_order

__all__ = [  # the notebook API (the plots re-exported from mbde_jax.report_plots, the runs from mbde_jax.runs)
    "Run", "MethodSummary", "Stat", "find_workdirs", "load_runs", "summarize", "markdown_table", "results_markdown",
    "write_csv", "plot_accuracy", "plot_diversity", "plot_attention", "plot_schedule", "write_report", "main"]


# --- Tables ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) of one number over seeds; std is NaN for one seed."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

    def format(self, decimals: int) -> str:
        """'mean ± std (n=k)', or 'mean (n=1)' for a single seed."""
        spread = f" ± {self.std:.{decimals}f}" if self.n > 1 else ""
        return f"{self.mean:.{decimals}f}{spread} (n={self.n})"


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """One table row: a method over its seeds. Errors are top-1 test errors in % (100 - accuracy)."""

    method: str
    deployed_head: str
    seeds: tuple[int, ...]
    deployed_error: Stat
    peer_ensemble_error: Stat
    peer_mean_error: Stat
    diversity: Stat
    best_deployed_error: Stat  # at the epoch of the best deployed test accuracy: selected on the test set
    best_epochs: tuple[int, ...]


def summarize(runs: Sequence[Run]) -> list[MethodSummary]:
    """One MethodSummary per method, over the runs the report uses, final epoch first and foremost."""
    rows = []
    for method, group in by_method(runs).items():
        def stat(metric: str, entry: str = "final", error: bool = True) -> Stat:
            values = [run.results[entry]["metrics"][metric] for run in group]
            return Stat(tuple(100.0 - v if error else v for v in values))

        heads = {run.final_metrics["deployed_head"] for run in group}
        rows.append(MethodSummary(
            method=method, deployed_head="/".join(sorted(heads)), seeds=tuple(run.seed for run in group),
            deployed_error=stat("top1/deployed"), peer_ensemble_error=stat("top1/peer_ensemble"),
            peer_mean_error=stat("top1/peer_mean"), diversity=stat("diversity", error=False),
            best_deployed_error=stat("top1/deployed", entry="best"),
            best_epochs=tuple(run.results["best"]["epoch"] for run in group)))
    return rows


_COLUMNS = (  # (markdown header, csv stem, MethodSummary field, decimals)
    ("**error: deployed, final epoch**", "deployed_error_final", "deployed_error", 2),
    ("error: peer ensemble, final", "peer_ensemble_error_final", "peer_ensemble_error", 2),
    ("error: peer mean, final", "peer_mean_error_final", "peer_mean_error", 2),
    ("diversity, final", "diversity_final", "diversity", 4),
    ("error: deployed, best epoch (picked on test: reference only)", "deployed_error_best_epoch_test_selected",
     "best_deployed_error", 2),
)


def _describe_config(config: dict, num_branches: int | None) -> str:
    branches = f", {num_branches} branches" if num_branches else ""
    return (f"{config['dataset']}, {config['arch']}{branches}, {config['num_epochs']} epochs of batch "
            f"{config['batch_size']}, {lr_schedule_text(config)}, ramp-up {config['rampup_epochs']} epochs, "
            f"T {config['temperature']}")


def markdown_table(rows: Sequence[MethodSummary]) -> str:
    headers = ["method", "deployed head"] + [header for header, *_ in _COLUMNS] + ["best epochs", "seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row.method, row.deployed_head]
        cells += [getattr(row, field).format(decimals) for _, _, field, decimals in _COLUMNS]
        cells += [", ".join(str(e) for e in row.best_epochs), ", ".join(str(s) for s in row.seeds)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(runs: Sequence[Run], plots: Sequence[str] = ()) -> str:
    """results.md: the table, what its numbers are, the runs used and the runs left out."""
    rows = summarize(runs)
    used = included(runs)
    branches = sorted({run.results.get("num_branches") for run in used if run.method != "vanilla"} - {None})
    lines = [
        "# Results",
        "",
        f"Setting: {_describe_config(used[0].config, branches[0] if len(branches) == 1 else None)}.",
        "",
        "Top-1 test error (%), mean ± sample standard deviation (ddof=1) over seeds, n = the number of seeds in "
        "the cell. The headline is the **deployed head at the final epoch** (the model a method keeps: the group "
        "leader for mbde/okddip, branch 0 otherwise). Peer ensemble: argmax of the mean of the peers' logits; "
        "peer mean: the mean of the peers' errors; diversity: mean pairwise L2 distance of the peers' softmax "
        "outputs (not an error). The best-epoch column takes, per seed, the epoch of the best deployed test "
        "accuracy: it is selected on the test set and is for reference only.",
        "",
        markdown_table(rows),
        "",
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.splitext(name)[0]}]({name})" for name in plots] + [""]
    lines += ["## Runs used", ""]
    lines += [f"- {run.method} seed {run.seed}: `{run.workdir}`" + (
        f" (differs only in fields that cannot change its numbers: {run.bookkeeping_differences})"
        if run.bookkeeping_differences else "") for run in sorted(used, key=lambda run: (method_order(run.method),
                                                                                          run.seed))]
    left_out = [run for run in runs if run.left_out is not None]
    lines += ["", "## Runs left out", ""]
    lines += [f"- `{run.workdir}` ({run.method} seed {run.seed}): {run.left_out}" for run in left_out] or ["None."]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[MethodSummary], path: str) -> None:
    """results.csv: one row per method; every statistic as <stem>_mean and <stem>_std (empty for n=1)."""
    header = ["method", "deployed_head", "n_seeds", "seeds"]
    for _, stem, _, _ in _COLUMNS:
        header += [f"{stem}_mean", f"{stem}_std"]
    header += ["best_epochs"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [row.method, row.deployed_head, len(row.seeds), " ".join(str(s) for s in row.seeds)]
            for _, _, field, _ in _COLUMNS:
                value = getattr(row, field)
                cells += [repr(value.mean), "" if value.n < 2 else repr(value.std)]
            cells.append(" ".join(str(e) for e in row.best_epochs))
            writer.writerow(cells)


# --- The report --------------------------------------------------------------------------------------------------

def write_report(paths: Sequence[str], out_dir: str) -> dict[str, str]:
    """Loads the runs under `paths` and writes results.md, results.csv and the PNGs into `out_dir`.

    Returns:
      {file name: path} of every file written ('attention.png' only when some method has attention or a gate).
    Raises:
      ValueError: every run was left out (the message says why for each).
    """
    runs = load_runs(paths)
    if not included(runs):
        raise no_runs_error(runs)
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    figures = {"accuracy.png": plot_accuracy(runs), "diversity.png": plot_diversity(runs),
               "attention.png": plot_attention(runs), "schedule.png": plot_schedule(runs)}
    for name, fig in figures.items():
        if fig is not None:
            written[name] = os.path.join(out_dir, name)
            fig.savefig(written[name], dpi=DPI)
    written["results.csv"] = os.path.join(out_dir, "results.csv")
    write_csv(summarize(runs), written["results.csv"])
    written["results.md"] = os.path.join(out_dir, "results.md")
    with open(written["results.md"], "w") as f:
        f.write(results_markdown(runs, plots=[name for name in figures if name in written]))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    run(**report_flags.parse(command_line.program_argv(argv)))


def run(paths: list[str], out_dir: str) -> None:
    """The report command once report_flags parsed it: writes the report and prints results.md."""
    with cli_errors.one_line_errors("mbde_jax.report"):
        written = write_report(paths, out_dir)
    with open(written["results.md"]) as f:
        print(f.read())
    print("written:\n" + "\n".join(f"  {path}" for path in written.values()))


if __name__ == "__main__":
    run(**_COMMAND_LINE)
