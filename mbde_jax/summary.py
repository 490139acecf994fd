"""Prints the parameter counts of the model a config describes.

    mbde-summary --config configs/default.py [--config.<field>=<value> ...]     (or python -m mbde_jax.summary)

Counts come from abstract shapes (jax.eval_shape): nothing is allocated or compiled.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m mbde_jax.summary`, mbde-summary: its flags answer before the imports below
    from mbde_jax import summary_flags

    _COMMAND_LINE = summary_flags.parse(sys.argv)

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mbde_jax import cli_errors, command_line, experiment as experiment_lib, summary_flags
from mbde_jax.models.online_kd import OnlineKDModel


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of one model, split the way a multi-branch method is reasoned about."""

    trunk: int
    one_branch: int
    all_branches: int
    method_heads: int
    num_branches: int

    @property
    def total_trained(self) -> int:
        return self.trunk + self.all_branches + self.method_heads

    @property
    def deployed(self) -> int:
        """Trunk + one branch: what is kept for inference (MBDE/OKDDip's group leader)."""
        return self.trunk + self.one_branch


def _count(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def count_parameters(model: OnlineKDModel, image_shape: tuple[int, int, int]) -> ParameterCounts:
    """Counts a model's params: the network's 'trunk' and 'branches' (stacked), and the method's heads."""
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, *image_shape), jnp.float32)))
    params = dict(variables["params"])
    network = dict(params.pop("network"))
    trunk = _count(network.pop("trunk", {}))
    all_branches = _count(network.pop("branches"))
    num_branches = model.num_branches
    return ParameterCounts(
        trunk=trunk,
        one_branch=all_branches // num_branches,
        all_branches=all_branches,
        method_heads=_count(params),
        num_branches=num_branches,
    )


def format_summary(experiment: experiment_lib.Experiment, counts: ParameterCounts) -> str:
    config, model, info = experiment.config, experiment.model, experiment.dataset
    m = counts.num_branches
    trunk_label = ("trunk" if m == 1 else "trunk (shared by all branches)" if model.shared_trunk
                   else "trunk (none: independent networks)")
    rows = [
        (trunk_label, counts.trunk),
        ("one branch", counts.one_branch),
        (f"all branches ({m})", counts.all_branches),
        (f"method heads ({model.heads})", counts.method_heads),
        ("total trained", counts.total_trained),
        ("deployed model (trunk + one branch)", counts.deployed),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"{config.arch} on {config.dataset} ({info.num_classes} classes), method {config.method}, "
        f"{m} branch{'es' if m != 1 else ''}",
        f"{'part':<{width}}  {'parameters':>12}",
    ]
    lines += [f"{label:<{width}}  {value:>12,}" for label, value in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    run(**summary_flags.parse(command_line.program_argv(argv)))


def run(config: ml_collections.ConfigDict) -> None:
    """The summary command once summary_flags parsed it."""
    with cli_errors.one_line_errors("mbde_jax.summary"):
        experiment = experiment_lib.resolve(config)
        counts = count_parameters(experiment.model, experiment.dataset.image_shape)
    print(format_summary(experiment, counts))


if __name__ == "__main__":
    run(**_COMMAND_LINE)
