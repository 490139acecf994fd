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
    # T: every KL term softens both sides by T and is multiplied by T^2 (INFERRED, OKDDip: 3).
    config.temperature = 3.0
    # alpha: weight of the distillation terms (INFERRED, OKDDip: 1).
    config.kd_weight = 1.0
    # The distillation weight is alpha * exp(-5 (1 - min(e, R)/R)^2) at 0-based epoch e, R this field
    # (INFERRED, OKDDip: 80). 0 turns the ramp-up off. DML is never ramped.
    config.rampup_epochs = 80
    # lambda: weight of the Classifier Diversification loss (OUR CHOICE; 5e-8 in two third-party
    # reimplementations). Only mbde and mbde_no_ffm use it.
    config.cd_weight = 5e-8
    # Form of the CD loss over peer pairs (i<j) of classifier kernels W [features, classes] (OUR CHOICE):
    # classes (||W_i^T W_j||_F), features (||W_i W_j^T||_F), classes_squared, features_squared,
    # cosine (mean |cos| of matching class vectors).
    config.cd_variant = "classes"
    # Added to the teacher probabilities inside every KL term, as OKDDip's KL_Loss (INFERRED); 0 = exact KL.
    config.kl_teacher_epsilon = 1e-7
    # Stop gradients through every distillation target. OKDDip's code detaches nothing (INFERRED default);
    # True freezes W_L, W_E and the FFM, which learn only through the first-level targets.
    config.detach_targets = False
    # W_L, W_E map d peer features to d / this (INFERRED, OKDDip: 8).
    config.attention_reduction = 8
    # FFM feature of peer a = GAP(s_a) + fused_a instead of fused_a (OUR CHOICE: off).
    config.ffm_residual = False

    return config
