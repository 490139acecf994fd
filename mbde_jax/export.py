"""Exports the deployed model of a run (trunk + the deployed branch: no peers, no FFM, no attention, no gate)
as a small orbax checkpoint, and loads it back for inference.

    python -m mbde_jax.export --workdir <dir> --out <dir>

    from mbde_jax.export import load_deployed
    model = load_deployed("<out dir>")
    logits = model.predict_uint8(images)       # images uint8 [batch, 32, 32, 3] -> logits [batch, classes]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m mbde_jax.export`, mbde-export: its flags answer before the imports below
    from mbde_jax import export_flags

    _COMMAND_LINE = export_flags.parse(sys.argv)

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mbde_jax import cli_errors, command_line, export_flags, logs, training
from mbde_jax.models import MultiBranchNet

SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"


def _take_branch(tree: Any, index: int) -> Any:
    """Keeps branch `index` of every stacked leaf, as a branch axis of size 1."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[index:index + 1], tree)


def deployed_variables(variables: dict, branch: int) -> dict:
    """{'params', 'batch_stats'} of a trained OnlineKDModel -> those of a one-branch MultiBranchNet."""
    result = {}
    for collection in ("params", "batch_stats"):
        network = variables[collection]["network"]
        kept = {"branches": _take_branch(network["branches"], branch)}
        if "trunk" in network:
            kept["trunk"] = jax.tree_util.tree_map(np.asarray, network["trunk"])
        result[collection] = kept
    return result


def export_deployed(workdir: str, out_dir: str, step: int | None = None) -> dict:
    """Writes <out_dir>/model.json (what the model is) and <out_dir>/variables (orbax). Returns the spec."""
    trainer, state, meta = training.restore_latest(workdir, step)
    experiment = trainer.experiment
    config = experiment.config
    branch = experiment.deployed_branch
    variables = deployed_variables({"params": state.params, "batch_stats": state.batch_stats}, branch)
    info = experiment.dataset
    last_eval = meta["history"][-1]["metrics"] if meta.get("history") else {}
    spec = {
        "arch": config.arch,
        "num_classes": info.num_classes,
        "shared_trunk": experiment.model.shared_trunk,
        "dropout_rate": config.dropout_rate,
        "dataset": config.dataset,
        "image_shape": list(info.image_shape),
        "mean": list(info.mean),
        "std": list(info.std),
        "method": config.method,
        "deployed_head": experiment.head_names[branch],
        "source_workdir": os.path.abspath(workdir),
        "source_step": int(state.step),
        "test_top1_at_source_step": last_eval.get("top1/deployed"),
    }
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(os.path.abspath(out_dir), VARIABLES_DIR), variables, force=True)
    with open(os.path.join(out_dir, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=2)
    return spec


@dataclasses.dataclass
class DeployedModel:
    """A loaded export: `predict` takes normalised images, `predict_uint8` raw uint8 pixels."""

    spec: dict
    variables: dict
    network: MultiBranchNet

    def __post_init__(self):
        self._apply = jax.jit(lambda variables, images: self.network.apply(variables, images, train=False).logits[0])

    def predict(self, images: jax.Array) -> jax.Array:
        """Normalised float images [batch, 32, 32, 3] -> logits [batch, classes]."""
        return self._apply(self.variables, jnp.asarray(images, jnp.float32))

    def predict_uint8(self, images: np.ndarray) -> jax.Array:
        """uint8 images [batch, 32, 32, 3] (0..255) -> logits [batch, classes], normalised as in training."""
        mean = np.asarray(self.spec["mean"], np.float32)
        std = np.asarray(self.spec["std"], np.float32)
        return self.predict((np.asarray(images, np.float32) / 255.0 - mean) / std)


def load_deployed(export_dir: str) -> DeployedModel:
    """Loads what export_deployed wrote."""
    spec_path = os.path.join(export_dir, SPEC_FILE)
    if not os.path.exists(spec_path):
        raise FileNotFoundError(f"{spec_path} does not exist: {export_dir} is not an export made by "
                                f"`python -m mbde_jax.export`.")
    with open(spec_path) as f:
        spec = json.load(f)
    network = MultiBranchNet(arch=spec["arch"], num_classes=spec["num_classes"], num_branches=1,
                             shared_trunk=spec["shared_trunk"], dropout_rate=spec["dropout_rate"])
    abstract = jax.eval_shape(lambda: network.init(
        jax.random.key(0), jnp.zeros((1, *spec["image_shape"]), jnp.float32)))
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(os.path.join(os.path.abspath(export_dir), VARIABLES_DIR), abstract)
    return DeployedModel(spec=spec, variables=variables, network=network)


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    run(**export_flags.parse(command_line.program_argv(argv)))


def run(workdir: str, out: str, step: int | None) -> None:
    """The export command once export_flags parsed it."""
    logs.quiet_library_info_logs()
    with cli_errors.one_line_errors("mbde_jax.export"):
        spec = export_deployed(workdir, out, step)
        count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(load_deployed(out).variables["params"]))
    print(f"exported the {spec['deployed_head']} of {spec['method']} ({spec['arch']}, {count:,} parameters, "
          f"step {spec['source_step']}) to {os.path.abspath(out)}")


if __name__ == "__main__":
    run(**_COMMAND_LINE)
