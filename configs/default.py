"""Every config field, with its default and what it means. Other configs import this and override.

Run:  python -m mbde_jax.summary --config configs/default.py [--config.<field>=<value> ...]
The defaults describe the paper's main setting: MBDE on CIFAR-100 with a ResNet-32 backbone,
3 peers + 1 group leader (METHOD.md).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()

    # --- Data -------------------------------------------------------------------------------------
    # One of: cifar10, cifar100, cinic10, digits (the offline demo data). Fixes the number of classes.
    config.dataset = "cifar100"

    # --- Model ------------------------------------------------------------------------------------
    # Backbone: resnet32, resnet110, wrn20_8, vgg16, densenet40_12 (OKDDip's CIFAR family).
    config.arch = "resnet32"
    # m, the number of branches. For mbde/okddip: m - 1 peers and one group leader (the last branch).
    config.num_branches = 4
    # Whether the branches share the low-level trunk. Unset (None): the method decides (dml: False,
    # every other method: True). Set it to override, e.g. `individual` with False = m separate networks.
    config.shared_trunk = config_dict.placeholder(bool)
    # Dropout of VGG-16's MLP head (OKDDip's default 0.5); no other backbone has dropout.
    config.dropout_rate = 0.5

    # --- Method -----------------------------------------------------------------------------------
    # One of: mbde, okddip, mbde_no_cd, mbde_no_ffm, one, clilr, dml, individual, vanilla.
    config.method = "mbde"

    return config
