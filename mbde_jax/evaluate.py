"""Evaluates the latest checkpoint of a run on a split and prints the metrics of every head.

    mbde-evaluate --workdir <dir> [--split test] [--step N]     (or python -m mbde_jax.evaluate)
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m mbde_jax.evaluate`, mbde-evaluate: its flags answer before the imports below
    from mbde_jax import evaluate_flags

    _COMMAND_LINE = evaluate_flags.parse(sys.argv)

import json
from collections.abc import Sequence

from mbde_jax import cli_errors, command_line, evaluate_flags, logs, provenance, training, workdir as run_files
from mbde_jax.data.eval_input import EvalInput


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None) -> dict:
    """Restores a run's checkpoint and evaluates every head on `split`; returns the metrics."""
    trainer, state, meta = training.restore_latest(workdir, step)
    experiment = trainer.experiment
    config = experiment.config
    eval_input = EvalInput(config.dataset, split=split, global_batch_size=config.eval_batch_size,
                           mesh=experiment.mesh, data_dir=config.data_dir, download=config.download)
    metrics = trainer.evaluate(state, eval_input.batches())
    metrics["step"] = int(state.step)
    metrics["split"] = split or "test"
    # A checkpoint is written before its epoch is evaluated, so that of a run's first evaluation holds no
    # history yet; the workdir's history.json then does.
    history = meta.get("history") or run_files.read_if_present(workdir, run_files.HISTORY_FILE) or [{}]
    metrics["provenance"] = {"run": history[-1].get("provenance"), "evaluation": provenance.collect()}
    return metrics


def format_metrics(metrics: dict) -> str:
    lines = [f"run made with: {provenance.format_provenance(metrics['provenance']['run'])}",
             f"evaluated with: {provenance.format_provenance(metrics['provenance']['evaluation'])}",
             f"step {metrics['step']}, split {metrics['split']}, {metrics['num_examples']} examples, deployed head: "
             f"{metrics['deployed_head']}", f"{'head':<18} {'top-1 %':>8} {'top-5 %':>8}"]
    heads = [k.split("/", 1)[1] for k in metrics if k.startswith("top1/")]
    for head in heads:
        lines.append(f"{head:<18} {metrics['top1/' + head]:>8.2f} {metrics['top5/' + head]:>8.2f}")
    lines.append(f"diversity {metrics['diversity']:.4f}, deployed CE {metrics['ce/deployed']:.4f}")
    for name in ("attention", "gate"):
        if name in metrics:
            lines.append(f"mean {name}: " + json.dumps([[round(v, 3) for v in row] if isinstance(row, list)
                                                        else round(row, 3) for row in metrics[name]]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    run(**evaluate_flags.parse(command_line.program_argv(argv)))


def run(workdir: str, split: str | None, step: int | None, json_path: str | None) -> None:
    """The evaluate command once evaluate_flags parsed it."""
    logs.quiet_library_info_logs()
    with cli_errors.one_line_errors("mbde_jax.evaluate"):
        metrics = evaluate_workdir(workdir, split, step)
        print(format_metrics(metrics))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    run(**_COMMAND_LINE)
