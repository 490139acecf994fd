"""The report's figures (mbde_jax.report writes them next to its tables; each function returns a Figure).

  plot_accuracy   test top-1 accuracy (%) of every head against epoch, one panel per method, every panel on ONE
                  y range (the same accuracy is at the same height in every panel); lines are the mean over
                  seeds, shaded bands +- one sample std (ddof=1) over seeds, clipped to [0, 100], of the deployed
                  head and the ensembles only (a band per peer would hide the curves). A line with a band has a
                  legend entry "<line> +-1 std" whose swatch is the line on its band, in the line's colour.
  plot_diversity  peer diversity against epoch, one line (and band, clipped at 0) per method.
  plot_attention  the final epoch's mean peer attention [peer, peer] or ONE's gate [branch], one heat map per
                  method that has one, all on one colour scale [0, 1] (None when no method has either).
  plot_schedule   the config's learning rate and ramp-up weight w(e) at every epoch, with the values recorded
                  in history.json as markers.

Epochs are 1-based everywhere, as history.json's `epoch` and config.lr_boundaries_epochs count them: accuracy
and diversity are drawn at the epoch after which they were evaluated; on the schedule, the value of epoch e
(what epoch e trains with) holds over [e, e + 1), so with lr_boundaries_epochs (6, 9) the rate drops at x = 6
and x = 9, where a dotted line says "x0.1 from epoch 6". The accuracy and diversity plots mark those epochs too.

Figures are drawn without pyplot (rendered by Agg; no display needed). Their sizes are fixed, in pixels at
DPI 100: accuracy and attention 480 x 360 per panel (at most 3 panels a row), diversity 640 x 400, schedule
960 x 360. This module does not import mbde_jax.report (report imports it).
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
# Figures are made without pyplot and saved through Agg: no display is needed, and importing this module in a
# notebook leaves its backend (inline plots) alone.
from matplotlib.figure import Figure

from mbde_jax.runs import Run, by_method

DPI = 100
PANEL_INCHES = (4.8, 3.6)
MAX_COLUMNS = 3
DIVERSITY_INCHES = (6.4, 4.0)
SCHEDULE_INCHES = (9.6, 3.6)
ACCURACY_RANGE = (0.0, 100.0)  # %: bands and y limits stay inside
DIVERSITY_RANGE = (0.0, math.inf)  # a distance
UNRAMPED_METHODS = ("dml", "individual", "vanilla")  # their loss does not use w(e)
BAND_SUFFIX = " ±1 std"
DROP_STYLE = dict(color="0.55", linestyle=":", linewidth=1.0, zorder=0)


def _epochs_text(epochs: Sequence[int]) -> str:
    """'epoch 6', 'epochs 6 and 9', 'epochs 3, 6 and 9'."""
    numbers = [str(e) for e in epochs]
    if len(numbers) == 1:
        return f"epoch {numbers[0]}"
    return f"epochs {', '.join(numbers[:-1])} and {numbers[-1]}"


def lr_schedule_text(config: dict) -> str:
    """The learning rate schedule in words, epochs counted from 1: 'lr 0.1, x0.1 from epochs 6 and 9', or
    'constant lr 0.1' without boundaries."""
    boundaries = list(config["lr_boundaries_epochs"])
    if not boundaries:
        return f"constant lr {config['learning_rate']:g}"
    return f"lr {config['learning_rate']:g}, x{config['lr_decay_factor']:g} from {_epochs_text(boundaries)}"


def _curves(group: Sequence[Run], read) -> tuple[np.ndarray, np.ndarray]:
    """Epochs [evals] and values [seeds, evals] of `read(history entry)` over the runs of one method."""
    epochs = [tuple(entry["epoch"] for entry in run.history) for run in group]
    if len(set(epochs)) != 1:
        raise ValueError(f"runs of {group[0].method} were evaluated at different epochs: "
                         f"{[run.workdir for run in group]}")
    values = np.array([[read(entry) for entry in run.history] for run in group], np.float64)
    return np.array(epochs[0]), values


def _mean_and_band(ax, epochs: np.ndarray, values: np.ndarray, band: bool = True,
                   valid: tuple[float, float] = (-math.inf, math.inf), **style) -> tuple:
    """Plots the mean over seeds [seeds, evals] and, with two or more seeds, a +- one sample std band clipped to
    `valid`; returns (legend handle, legend label): the line, or the band and the line as one entry."""
    mean = values.mean(axis=0)
    (line,) = ax.plot(epochs, mean, **style)
    if not (band and values.shape[0] > 1):
        return line, line.get_label()
    std = values.std(axis=0, ddof=1)
    shade = ax.fill_between(epochs, np.clip(mean - std, *valid), np.clip(mean + std, *valid), color=line.get_color(),
                            alpha=0.15, linewidth=0, label=f"±1 std over seeds ({line.get_label()})")
    return (shade, line), line.get_label() + BAND_SUFFIX


def _panel_grid(num_panels: int, sharey: bool = False) -> tuple[Figure, list]:
    columns = min(num_panels, MAX_COLUMNS)
    rows = math.ceil(num_panels / columns)
    fig = Figure(figsize=(columns * PANEL_INCHES[0], rows * PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[num_panels:]:
        fig.delaxes(ax)
    return fig, axes[:num_panels]


def _epoch_axis(ax, label: str = "epoch (1-based)") -> None:
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _mark_lr_drops(ax, config: dict) -> None:
    """A dotted vertical line at each epoch from which the learning rate is decayed, named in the x label."""
    for boundary in config["lr_boundaries_epochs"]:
        ax.axvline(boundary, **DROP_STYLE)
    dotted = f"; dotted: {lr_schedule_text(config)}" if config["lr_boundaries_epochs"] else ""
    _epoch_axis(ax, f"epoch (1-based{dotted})")


def _seeds_label(group: Sequence[Run]) -> str:
    return f"n={len(group)} seed{'s' if len(group) > 1 else ''}"


def _branch_heads(metrics: dict) -> list[str]:
    """The per-branch heads in branch order: peer_0.. then leader, or branch_0.."""
    heads = [key.split("/", 1)[1] for key in metrics if key.startswith("top1/")]
    numbered = sorted((h for h in heads if h.startswith(("peer_", "branch_")) and h.split("_")[-1].isdigit()),
                      key=lambda h: (h.split("_")[0], int(h.split("_")[-1])))
    return numbered + (["leader"] if "leader" in heads else [])


def no_runs_error(runs: Sequence[Run]) -> ValueError:
    reasons = "\n  ".join(f"{run.workdir}: {run.left_out}" for run in runs)
    return ValueError(f"no run can be reported; every run was left out:\n  {reasons}")


def _used_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """by_method(runs), which must not be empty."""
    groups = by_method(runs)
    if not groups:
        raise no_runs_error(runs)
    return groups


def _accuracy_panel(ax, group: Sequence[Run]) -> None:
    final = group[0].final_metrics
    branch_heads = _branch_heads(final)
    peers = [h for h in branch_heads if h != "leader"]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.15, 0.85, max(len(peers), 1)))
    entries = []
    for head in branch_heads:
        deployed = head == final["deployed_head"]
        style = dict(color="black", linewidth=2.2, zorder=3) if deployed else \
            dict(color=colours[peers.index(head)], linewidth=1.0)
        epochs, values = _curves(group, lambda e, h=head: e["metrics"][f"top1/{h}"])
        entries.append(_mean_and_band(ax, epochs, values, band=deployed, valid=ACCURACY_RANGE,
                                      label=f"{head} (deployed)" if deployed else head, **style))
    if len(peers) > 1:
        for head, style in (("peer_ensemble", dict(color="tab:red", linestyle="--")),
                            ("gated_ensemble", dict(color="tab:orange", linestyle="-.")),
                            ("peer_mean", dict(color="tab:blue", linestyle=":", band=False))):
            if f"top1/{head}" in final:
                epochs, values = _curves(group, lambda e, h=head: e["metrics"][f"top1/{h}"])
                entries.append(_mean_and_band(ax, epochs, values, valid=ACCURACY_RANGE,
                                              label=head.replace("_", " "), linewidth=1.4, **style))
    _mark_lr_drops(ax, group[0].config)
    handles, labels = zip(*entries)
    ax.legend(handles, labels, fontsize=7, loc="lower right", framealpha=0.8)


def plot_accuracy(runs: Sequence[Run]) -> Figure:
    """Test top-1 accuracy (%) of every head against epoch, one panel per method on one shared y range, mean
    over seeds and a +- one sample std band (clipped to [0, 100]) for the deployed head and the ensembles."""
    groups = _used_groups(runs)
    fig, axes = _panel_grid(len(groups), sharey=True)
    for column, (ax, (method, group)) in enumerate(zip(axes, groups.items())):
        _accuracy_panel(ax, group)
        bands = "; shaded: ±1 std over seeds" if len(group) > 1 else ""
        ax.set_title(f"{method} (mean of {_seeds_label(group)}{bands})", fontsize=10)
        if column % MAX_COLUMNS == 0:
            ax.set_ylabel("test top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    # One y range for every panel (they share it): the data of all of them, a small margin, never past [0, 100].
    low = min(ax.dataLim.y0 for ax in axes)
    high = max(ax.dataLim.y1 for ax in axes)
    margin = 0.04 * max(high - low, 1.0)
    for ax in axes:
        ax.set_ylim(max(low - margin, ACCURACY_RANGE[0]), min(high + margin, ACCURACY_RANGE[1]))
    return fig


def plot_diversity(runs: Sequence[Run]) -> Figure:
    """Peer diversity (mean pairwise L2 distance of the peers' softmax outputs) against epoch, per method, with
    a +- one sample std band clipped at 0."""
    groups = _used_groups(runs)
    fig = Figure(figsize=DIVERSITY_INCHES, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    entries, single = [], []
    for method, group in groups.items():
        if len([h for h in _branch_heads(group[0].final_metrics) if h != "leader"]) < 2:
            single.append(method)  # one peer: its diversity is 0 by definition, not a finding
            continue
        epochs, values = _curves(group, lambda e: e["metrics"]["diversity"])
        entries.append(_mean_and_band(ax, epochs, values, valid=DIVERSITY_RANGE,
                                      label=f"{method} ({_seeds_label(group)})", marker="o", markersize=3))
    _mark_lr_drops(ax, next(iter(groups.values()))[0].config)
    ax.set_ylim(bottom=0.0)
    ax.set_title("diversity of the peers' predictions (test set; shaded: ±1 std over seeds)", fontsize=10)
    ax.set_ylabel("mean pairwise L2 distance of softmax")
    ax.grid(alpha=0.3)
    if entries:
        handles, labels = zip(*entries)
        ax.legend(handles, labels, fontsize=8)
    if single:
        ax.text(0.01, 0.99, f"not drawn (fewer than 2 peers): {', '.join(single)}", transform=ax.transAxes,
                ha="left", va="top", fontsize=8, color="0.35")
    return fig


def plot_attention(runs: Sequence[Run]) -> Figure | None:
    """Heat maps of the final epoch's mean attention [peer a, peer b] (row a: the weights peer a's target gives
    each peer b) or ONE's gate [branch], averaged over test examples and seeds, on one colour scale [0, 1];
    None if no method has either."""
    groups = {method: group for method, group in by_method(runs).items()
              if "attention" in group[0].final_metrics or "gate" in group[0].final_metrics}
    if not groups:
        return None
    fig, axes = _panel_grid(len(groups))
    for ax, (method, group) in zip(axes, groups.items()):
        kind = "attention" if "attention" in group[0].final_metrics else "gate"
        matrix = np.mean([np.atleast_2d(run.final_metrics[kind]) for run in group], axis=0)
        # Weights in [0, 1] (each row sums to 1): one colour scale, so one colour is one weight in every panel.
        image = ax.imshow(matrix, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if value > 0.6 else "white")
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
        fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
    return fig


def schedule_of_config(config: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based epochs [num_epochs] and the learning rate and w(e) each trains with.

    In numpy, so that drawing a report never starts a JAX backend (on a GPU host it would take the GPU's
    memory); tests/test_report.py checks it against optim.learning_rate_at_epoch and losses.rampup_weight.
    """
    epochs = np.arange(1, config["num_epochs"] + 1)
    decays = sum((epochs >= boundary).astype(np.int64) for boundary in config["lr_boundaries_epochs"])
    rates = config["learning_rate"] * float(config["lr_decay_factor"]) ** np.asarray(decays, np.float64)
    ramp_epochs = config["rampup_epochs"]
    progress = np.minimum(epochs - 1, ramp_epochs) / ramp_epochs if ramp_epochs > 0 else np.ones(epochs.shape)
    return epochs, np.broadcast_to(rates, epochs.shape), np.exp(-5.0 * (1.0 - progress) ** 2)


def _epoch_steps(ax, epochs: np.ndarray, values: np.ndarray, recorded: tuple[list, list], **style) -> None:
    """The value of each epoch e over [e, e + 1) (a step, drawn first) and the recorded values as markers."""
    ax.step(np.append(epochs, epochs[-1] + 1), np.append(values, values[-1]), where="post",
            label="config", **style)
    ax.plot(*recorded, linestyle="none", marker="o", markersize=3.5, color=style.get("color"), clip_on=False,
            label="history.json (evaluated epochs)")
    ax.set_xlim(epochs[0], epochs[-1] + 1)


def plot_schedule(runs: Sequence[Run]) -> Figure:
    """Learning rate and ramp-up weight w(e) of every epoch against the 1-based epoch: the value of epoch e
    holds over [e, e + 1), so a decay from epoch 6 is a drop at x = 6, marked by a labelled dotted line."""
    groups = _used_groups(runs)
    fig = Figure(figsize=SCHEDULE_INCHES, dpi=DPI, layout="constrained")
    lr_ax, ramp_ax = fig.subplots(1, 2)
    # The schedule is a function of the config, which the used runs share: one curve says it for all of them.
    run = next(iter(groups.values()))[0]
    config = run.config
    epochs, rates, ramp = schedule_of_config(config)
    evaluated = [entry["epoch"] for entry in run.history]
    _epoch_steps(lr_ax, epochs, rates, (evaluated, [entry["learning_rate"] for entry in run.history]),
                 color="tab:blue")
    lr_ax.set_yscale("log")
    lr_ax.set_title(f"learning rate: {lr_schedule_text(config)}", fontsize=10)
    lr_ax.set_ylabel("learning rate (log scale)")
    for boundary in config["lr_boundaries_epochs"]:
        lr_ax.axvline(boundary, **DROP_STYLE)
        lr_ax.text(boundary, 0.97, f" x{config['lr_decay_factor']:g} from epoch {boundary}", rotation=90,
                   ha="left", va="top", fontsize=8, color="0.35", transform=lr_ax.get_xaxis_transform())
    _epoch_steps(ramp_ax, epochs, ramp, (evaluated, [entry["ramp_weight"] for entry in run.history]),
                 color="tab:green")
    ramp_ax.set_ylim(-0.03, 1.03)
    unramped = [method for method in groups if method in UNRAMPED_METHODS]
    note = f"\n({', '.join(unramped)} do{'es' if len(unramped) == 1 else ''} not use it)" if unramped else ""
    ramp_ax.set_title(f"ramp-up weight w(e) of the distillation terms ({config['rampup_epochs']} epochs){note}",
                      fontsize=10)
    ramp_ax.set_ylabel("w(e)")
    for ax in (lr_ax, ramp_ax):
        _epoch_axis(ax, "epoch (1-based; epoch e's value holds over [e, e+1))")
        # The axis ends where the last epoch does (x = num_epochs + 1): no tick names an epoch that is not run.
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda x, _: f"{x:g}" if x <= config["num_epochs"] else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is ramp_ax else "lower left")
    fig.suptitle(f"schedule of every run ({config['num_epochs']} epochs, the same config)", fontsize=10)
    return fig
