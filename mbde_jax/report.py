"""Tables and plots of finished runs: mean and spread over seeds, one row (or panel) per method.

    python -m mbde_jax.report <sweep root or workdirs...> [--out <dir>]

Every directory below the given paths that holds a config.json is a run (a sweep root, see mbde_jax.sweep,
holds one per method and seed). The report reads each run's config.json, results.json and history.json and
writes into --out (default <path>/report when one path is given):
  results.md, results.csv  one row per method: top-1 error (%) of the deployed head at the final epoch, then the
                           peer ensemble, the peer mean and the diversity, each as mean +- sample std (ddof=1)
                           over seeds with the number of seeds; best-epoch numbers only in their own, labelled
                           columns (the best epoch is picked on the test set, so it is for reference only).
  accuracy.png             test top-1 accuracy of every head against epoch, one panel per method; lines are the
                           mean over seeds, bands +- one sample std (of the deployed head and the ensembles only:
                           a band per peer would hide the curves).
  diversity.png            peer diversity against epoch, one line (and band) per method.
  attention.png            mean peer attention [peer, peer] or ONE's gate [branch] of the final epoch, one heat
                           map per method that has one (not written when no method has either).
  schedule.png             learning rate and ramp-up weight w(e) against epoch.
Figures are drawn without pyplot (rendered by Agg; no display needed). Their sizes are fixed, in pixels at DPI 100: accuracy and attention 480 x 360 per panel (at most 3 panels a row),
diversity 640 x 400, schedule 960 x 360.

A run is left out, and named with the reason in results.md, when it is incomplete (no results.json, or its final
epoch is not the config's num_epochs), when one of its JSON files cannot be read, when its config differs from
that of the runs the report uses (fields other than method, seed and data_dir), when it was made with other
jax/jaxlib/flax versions than the others, or when it repeats a method and seed already counted (mbde_jax.runs).
Nothing is averaged in silently.

The notebook-friendly pieces: load_runs, summarize, plot_accuracy, plot_diversity, plot_attention,
plot_schedule (each returns a matplotlib Figure) and write_report.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m mbde_jax.report`: the command line answers before the imports below
    from mbde_jax import cli

    cli.mbde_report()

import csv
import dataclasses
import math
import os
from typing import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
# Figures are made without pyplot and saved through Agg: no display is needed, and importing this module in a
# notebook leaves its backend (inline plots) alone.
from matplotlib.figure import Figure

from mbde_jax import cli_errors
from mbde_jax.runs import Run, by_method, find_workdirs, included, load_runs, method_order  # noqa: F401 (notebook API)

DPI = 100
PANEL_INCHES = (4.8, 3.6)
MAX_COLUMNS = 3
DIVERSITY_INCHES = (6.4, 4.0)
SCHEDULE_INCHES = (9.6, 3.6)
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
            f"{config['batch_size']}, lr {config['learning_rate']} (x{config['lr_decay_factor']} at epochs "
            f"{', '.join(str(e) for e in config['lr_boundaries_epochs'])}), ramp-up {config['rampup_epochs']} "
            f"epochs, T {config['temperature']}")


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
    lines += [f"- {run.method} seed {run.seed}: `{run.workdir}`" for run in sorted(
        used, key=lambda run: (method_order(run.method), run.seed))]
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


# --- Plots -------------------------------------------------------------------------------------------------------

def _curves(group: Sequence[Run], read) -> tuple[np.ndarray, np.ndarray]:
    """Epochs [evals] and values [seeds, evals] of `read(history entry)` over the runs of one method."""
    epochs = [tuple(entry["epoch"] for entry in run.history) for run in group]
    if len(set(epochs)) != 1:
        raise ValueError(f"runs of {group[0].method} were evaluated at different epochs: "
                         f"{[run.workdir for run in group]}")
    values = np.array([[read(entry) for entry in run.history] for run in group], np.float64)
    return np.array(epochs[0]), values


def _mean_and_band(ax, epochs: np.ndarray, values: np.ndarray, band: bool = True, **style) -> None:
    """Plots the mean over seeds [seeds, evals] and, with two or more seeds, a +- one sample std band."""
    mean = values.mean(axis=0)
    (line,) = ax.plot(epochs, mean, **style)
    if band and values.shape[0] > 1:
        std = values.std(axis=0, ddof=1)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)


def _panel_grid(num_panels: int, panel_inches=PANEL_INCHES) -> tuple[Figure, list]:
    columns = min(num_panels, MAX_COLUMNS)
    rows = math.ceil(num_panels / columns)
    fig = Figure(figsize=(columns * panel_inches[0], rows * panel_inches[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return fig, axes[:num_panels]


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _seeds_label(group: Sequence[Run]) -> str:
    return f"n={len(group)} seed{'s' if len(group) > 1 else ''}"


def _branch_heads(metrics: dict) -> list[str]:
    """The per-branch heads in branch order: peer_0.. then leader, or branch_0.."""
    heads = [key.split("/", 1)[1] for key in metrics if key.startswith("top1/")]
    numbered = sorted((h for h in heads if h.startswith(("peer_", "branch_")) and h.split("_")[-1].isdigit()),
                      key=lambda h: (h.split("_")[0], int(h.split("_")[-1])))
    return numbered + (["leader"] if "leader" in heads else [])


def _no_runs_error(runs: Sequence[Run]) -> ValueError:
    reasons = "\n  ".join(f"{run.workdir}: {run.left_out}" for run in runs)
    return ValueError(f"no run can be reported; every run was left out:\n  {reasons}")


def _used_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """by_method(runs), which must not be empty."""
    groups = by_method(runs)
    if not groups:
        raise _no_runs_error(runs)
    return groups


def plot_accuracy(runs: Sequence[Run]) -> Figure:
    """Test top-1 accuracy (%) of every head against epoch, one panel per method, mean and +- std band."""
    groups = _used_groups(runs)
    fig, axes = _panel_grid(len(groups))
    for ax, (method, group) in zip(axes, groups.items()):
        final = group[0].final_metrics
        branch_heads = _branch_heads(final)
        peers = [h for h in branch_heads if h != "leader"]
        colours = matplotlib.colormaps["viridis"](np.linspace(0.15, 0.85, max(len(peers), 1)))
        for head in branch_heads:
            deployed = head == final["deployed_head"]
            label = f"{head} (deployed)" if deployed else head
            style = dict(color="black", linewidth=2.2, zorder=3) if deployed else \
                dict(color=colours[peers.index(head)], linewidth=1.0)
            epochs, values = _curves(group, lambda e, h=head: e["metrics"][f"top1/{h}"])
            _mean_and_band(ax, epochs, values, band=deployed, label=label, **style)
        if len(peers) > 1:
            for head, style in (("peer_ensemble", dict(color="tab:red", linestyle="--")),
                                ("gated_ensemble", dict(color="tab:orange", linestyle="-.")),
                                ("peer_mean", dict(color="tab:blue", linestyle=":", band=False))):
                if f"top1/{head}" in final:
                    epochs, values = _curves(group, lambda e, h=head: e["metrics"][f"top1/{h}"])
                    _mean_and_band(ax, epochs, values, label=head.replace("_", " "), linewidth=1.4, **style)
        ax.set_title(f"{method} ({_seeds_label(group)}; bands: deployed and ensembles)", fontsize=10)
        _epoch_axis(ax)
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_diversity(runs: Sequence[Run]) -> Figure:
    """Peer diversity (mean pairwise L2 distance of the peers' softmax outputs) against epoch, per method."""
    groups = _used_groups(runs)
    fig = Figure(figsize=DIVERSITY_INCHES, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for method, group in groups.items():
        epochs, values = _curves(group, lambda e: e["metrics"]["diversity"])
        _mean_and_band(ax, epochs, values, label=f"{method} ({_seeds_label(group)})", marker="o", markersize=3)
    ax.set_title("diversity of the peers' predictions (test set)")
    _epoch_axis(ax)
    ax.set_ylabel("mean pairwise L2 distance of softmax")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_attention(runs: Sequence[Run]) -> Figure | None:
    """Heat maps of the final epoch's mean attention [peer a, peer b] (row a: the weights peer a's target gives
    each peer b) or ONE's gate [branch], averaged over test examples and seeds; None if no method has either."""
    groups = {method: group for method, group in by_method(runs).items()
              if "attention" in group[0].final_metrics or "gate" in group[0].final_metrics}
    if not groups:
        return None
    fig, axes = _panel_grid(len(groups))
    for ax, (method, group) in zip(axes, groups.items()):
        kind = "attention" if "attention" in group[0].final_metrics else "gate"
        matrix = np.mean([np.atleast_2d(run.final_metrics[kind]) for run in group], axis=0)
        image = ax.imshow(matrix, cmap="magma", vmin=0.0, vmax=max(float(matrix.max()), 1e-6), aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if value > 0.6 * matrix.max() else "white")
        size = matrix.shape[1]
        if kind == "attention":
            ax.set_xticks(range(size), [f"peer {b}" for b in range(size)])
            ax.set_yticks(range(size), [f"peer {a}" for a in range(size)])
            ax.set_xlabel("peer b (whose logits are mixed in)")
            ax.set_ylabel("peer a (whose target)")
        else:
            ax.set_xticks(range(size), [f"branch {b}" for b in range(size)])
            ax.set_yticks([])
            ax.set_xlabel("branch")
        ax.set_title(f"{method}: mean {kind}, final epoch ({_seeds_label(group)})", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_schedule(runs: Sequence[Run]) -> Figure:
    """Learning rate (at each evaluated epoch's last step) and ramp-up weight w(e) against epoch."""
    groups = _used_groups(runs)
    fig = Figure(figsize=SCHEDULE_INCHES, dpi=DPI, layout="constrained")
    lr_ax, ramp_ax = fig.subplots(1, 2)
    # The schedule is a function of the config, which the used runs share: one curve says it for all of them.
    run = next(iter(groups.values()))[0]
    epochs = [entry["epoch"] for entry in run.history]
    # Both are constant over an epoch: the value at epoch e holds over (e - 1, e].
    lr_ax.step(epochs, [entry["learning_rate"] for entry in run.history], where="pre", marker="o", markersize=3)
    lr_ax.set_yscale("log")
    lr_ax.set_title("learning rate (last step of the epoch)")
    lr_ax.set_ylabel("learning rate")
    ramp_ax.step(epochs, [entry["ramp_weight"] for entry in run.history], where="pre", marker="o", markersize=3,
                 color="tab:green")
    ramp_ax.set_ylim(-0.03, 1.03)
    title = "ramp-up weight w(e) of the distillation terms"
    ramp_ax.set_title(title + ("\n(dml does not use it)" if "dml" in groups else ""), fontsize=10)
    ramp_ax.set_ylabel("w(e)")
    for ax in (lr_ax, ramp_ax):
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(f"schedule of every run ({run.config['num_epochs']} epochs, the same config)", fontsize=10)
    return fig


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
        raise _no_runs_error(runs)
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


def main(paths: list[str], out_dir: str) -> None:
    """The report command (mbde_jax.cli.report parses the flags): writes the report and prints results.md."""
    with cli_errors.one_line_errors("mbde_jax.report"):
        written = write_report(paths, out_dir)
    with open(written["results.md"]) as f:
        print(f.read())
    print("written:\n" + "\n".join(f"  {path}" for path in written.values()))
