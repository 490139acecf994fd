"""CIFAR-100, DenseNet-BC 40-12: the paper's training setup, for any method.

    python train.py --config configs/cifar100_densenet40_12.py --workdir workdirs/cifar100_densenet40_12_mbde --config.method=mbde

Other methods: --config.method=okddip | mbde_no_cd | mbde_no_ffm | one | clilr | dml | individual | vanilla.
Reproduces the setup of METHOD.md (INFERRED from OKDDip's defaults): 300 epochs, batch 128, SGD with Nesterov
momentum 0.9, lr 0.1 divided by 10 at epochs 150 and 225, weight decay 5e-4 (coupled), T = 3, distillation
weight ramped up over 80 epochs, m = 4 branches (3 peers + 1 group leader for MBDE/OKDDip).
The headline number is the deployed head's (MBDE/OKDDip: the group leader's) test top-1 error at the final
epoch, in results.json under "final".
"""

from mbde_jax import config_utils


def get_config():
    config = config_utils.load_sibling(__file__, "default").get_config()
    config.dataset = "cifar100"
    config.arch = "densenet40_12"
    return config
