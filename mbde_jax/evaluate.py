"""Evaluates the latest checkpoint of a run on a split and prints the metrics of every head.

    python -m mbde_jax.evaluate --workdir <dir> [--split test] [--step N]
"""

from __future__ import annotations

import json

from absl import app, flags

from mbde_jax import cli_errors, logs, provenance, sharding, workdir as workdir_lib
from mbde_jax.data.eval_input import EvalInput


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None) -> dict:
    """Restores a run's checkpoint and evaluates every head on `split`; returns the metrics."""
    mesh = sharding.make_data_mesh()
    trainer, state, meta = workdir_lib.restore_latest(workdir, mesh, step)
    config = trainer.config
    eval_input = EvalInput(config.dataset, split=split, global_batch_size=config.eval_batch_size, mesh=mesh,
                           data_dir=config.data_dir, download=config.download)
    metrics = trainer.evaluate(state, eval_input.batches())
    metrics["step"] = int(state.step)
    metrics["split"] = split or "test"
    history = meta.get("history") or [{}]
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


def _run_cli() -> None:
    # Flags are defined here, not at import, so the library functions can be imported next to other CLIs.
    workdir = flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).")
    split = flags.DEFINE_string("split", None, "tfds split to evaluate; default the dataset's test split.")
    step = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
    json_path = flags.DEFINE_string("json", None, "Also write the metrics to this JSON file.")
    flags.mark_flags_as_required(["workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logs.quiet_library_info_logs()
        with cli_errors.one_line_errors("mbde_jax.evaluate"):
            metrics = evaluate_workdir(workdir.value, split.value, step.value)
            print(format_metrics(metrics))
            if json_path.value:
                with open(json_path.value, "w") as f:
                    json.dump(metrics, f, indent=2)

    app.run(main)


if __name__ == "__main__":
    _run_cli()
