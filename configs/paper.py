"""The paper's experiments: one dataset x architecture cell of METHOD.md's tables, for any method.

    python train.py --config configs/paper.py:cifar100,resnet32 --workdir workdirs/cifar100_resnet32_mbde \\
        --config.method=mbde

The text after ':' is the cell, "<dataset>,<arch>" (ml_collections passes it to get_config):
  dataset: cifar10 | cifar100 | cinic10
  arch:    resnet32 | resnet110 | wrn20_8 | vgg16 | densenet40_12
Other methods: --config.method=okddip | mbde_no_cd | mbde_no_ffm | one | clilr | dml | individual | vanilla.

Every cell trains with the setup of METHOD.md (INFERRED from OKDDip's defaults, all in configs/default.py):
300 epochs, batch 128, SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at epochs 150 and 225, weight decay
5e-4 (coupled), T = 3, distillation weight ramped up over 80 epochs, m = 4 branches (3 peers + 1 group leader
for MBDE/OKDDip); a cell sets only `dataset` and `arch` (CELLS). The headline number is the deployed head's
(MBDE/OKDDip: the group leader's) test top-1 error at the final epoch, in results.json under "final".

CINIC-10 trains on its 90,000-image train split by default; add --config.cinic10_train_splits=train+validation
to train on 180,000 images. It is tested on the 90,000-image test split either way. Prepare the data first:
python -m mbde_jax.data prepare cinic10
"""

from mbde_jax import config_utils

DATASETS = ("cifar10", "cifar100", "cinic10")
ARCHS = ("resnet32", "resnet110", "wrn20_8", "vgg16", "densenet40_12")

# The fields each cell sets on top of default.py, keyed by its argument "<dataset>,<arch>". The paper trains
# every cell with one recipe, so a cell is only its data and its backbone; a cell that ever needs its own
# schedule or batch gets its extra fields here, in this one table.
CELLS = {f"{dataset},{arch}": {"dataset": dataset, "arch": arch} for dataset in DATASETS for arch in ARCHS}

_USAGE = (f"write configs/paper.py:<dataset>,<arch>, e.g. configs/paper.py:cifar100,resnet32; "
          f"datasets: {', '.join(DATASETS)}; architectures: {', '.join(ARCHS)}")


def parse_cell(arg: str | None) -> dict:
    """The fields of cell `arg` ("<dataset>,<arch>"); a ValueError of one line for anything else."""
    if arg is None:
        raise ValueError(f"no dataset and architecture given: {_USAGE}")
    parts = [part.strip() for part in arg.split(",")]
    if len(parts) != 2:
        raise ValueError(f"{arg!r} is not '<dataset>,<arch>': {_USAGE}")
    dataset, arch = parts
    unknown = [f"{kind} {name!r}" for kind, name, valid in (("dataset", dataset, DATASETS), ("arch", arch, ARCHS))
               if name not in valid]
    if unknown:
        raise ValueError(f"unknown {' and '.join(unknown)}: {_USAGE}")
    return CELLS[f"{dataset},{arch}"]


def get_config(arg: str | None = None):
    # arg defaults to None because ml_collections calls get_config() without one for a plain configs/paper.py.
    cell = parse_cell(arg)
    config = config_utils.load_sibling(__file__, "default").get_config()
    config.update_from_flattened_dict(cell)
    return config
