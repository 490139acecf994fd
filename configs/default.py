"""Every config field, with its default and what it means. Other configs import this and override.

    python train.py --config configs/default.py --workdir workdirs/cifar100_resnet32_mbde

The defaults are the paper's main setting (METHOD.md): MBDE on CIFAR-100 with a ResNet-32 backbone,
3 peers + 1 group leader, 300 epochs of batch 128, SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at
epochs 150 and 225, weight decay 5e-4 (coupled), T = 3, 80-epoch ramp-up of the distillation weight.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()

    # --- Data -------------------------------------------------------------------------------------
    # One of: cifar10, cifar100, cinic10, digits (the offline demo data). Fixes the number of classes.
    config.dataset = "cifar100"
    # tfds data directory; unset: $TFDS_DATA_DIR or ~/tensorflow_datasets.
    config.data_dir = config_dict.placeholder(str)
    # CINIC-10 only: train on 'train' (90k) or 'train+validation' (180k). Tested on 'test' either way.
    config.cinic10_train_splits = "train"
    # Train on the first this many examples of the training split, in its fixed prepared order; 0: all of them.
    # For smoke tests and data-size studies. Fewer examples mean fewer steps per epoch; the test split is
    # always evaluated whole.
    config.train_examples = 0
    # Whether a dataset that is not prepared may be downloaded (needs network). False fails at once.
    config.download = True

    # --- Model ------------------------------------------------------------------------------------
    # Backbone: resnet32, resnet110, wrn20_8, vgg16, densenet40_12 (OKDDip's CIFAR family).
    config.arch = "resnet32"
    # m, the number of branches. For mbde/okddip: m - 1 peers and one group leader (the last branch).
    config.num_branches = 4
    # Whether the branches share the low-level trunk. Unset (None): the method decides (dml: False,
    # every other method: True). Set it to override, e.g. `individual` with False = m separate networks.
    config.shared_trunk = config_dict.placeholder(bool)
    # How the stacked branches are computed: vmap (one program over a branch axis: grouped convolutions),
    # unrolled (one branch after another), scan (a loop), or auto: unrolled on CPU, vmap elsewhere.
    # Same parameters and results either way; only speed differs.
    config.branch_execution = "auto"
    # Compute dtype of convolutions and matmuls: float32, or bfloat16 (mixed precision for GPUs and TPUs:
    # parameters, batch-norm statistics, logits and losses stay float32). No faster on XLA:CPU.
    config.compute_dtype = "float32"
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


    # --- Optimisation (INFERRED: OKDDip's defaults) ------------------------------------------------
    # Seed of the run: the initial parameters, the dropout keys, the order of the training examples and their
    # crops and flips. Runs that differ only in seed share one compiled program.
    config.seed = 0
    # Global batch over all devices; must be a multiple of the device count.
    config.batch_size = 128
    # Length of training in epochs (passes over the training split).
    config.num_epochs = 300
    # Initial SGD learning rate, for the global batch_size.
    config.learning_rate = 0.1
    # The lr is multiplied by lr_decay_factor from each of these epochs on (counted from 1: the 150th epoch is
    # the first at 0.01, as OKDDip's scheduler.step()-at-epoch-start code behaves).
    config.lr_boundaries_epochs = (150, 225)
    # What the lr is multiplied by at each of lr_boundaries_epochs.
    config.lr_decay_factor = 0.1
    # SGD momentum.
    config.momentum = 0.9
    # Nesterov momentum instead of heavy-ball momentum.
    config.nesterov = True
    # Coupled L2 weight decay on every parameter (added to the gradient before momentum, as PyTorch's SGD).
    config.weight_decay = 5e-4

    # Train this many seeds (seed, seed + 1, ...) together in one program, seed s in <workdir>/seed_<s>: each
    # seed computes exactly what its separate run computes and leaves an ordinary run there
    # (docs/guides/sweeps.md, Several seeds in one program). 1: one run in <workdir> itself.
    config.num_seeds = 1
    # How the seeds of num_seeds > 1 run: vmap (stacked on a leading seed axis, one program steps them all),
    # loop (the one compiled step called once per seed), or auto: loop on CPU, vmap on GPU and TPU.
    config.seed_execution = "auto"

    # --- Devices and input -------------------------------------------------------------------------
    # On a host without an accelerator, split the CPU into this many JAX devices (data parallel over the batch;
    # results as on one device, batch-norm statistics over the global batch). XLA:CPU runs most convolutions on
    # one core each, so two devices keep both cores of a 2-core machine busy (docs/guides/devices.md).
    # 0: auto (2 when the host has 2+ cores and both batch sizes are even, else 1; in a multi-process run 1 per
    # process, since processes sharing a host already use its cores). Takes effect only if JAX has
    # not started yet and XLA_FLAGS does not set --xla_force_host_platform_device_count.
    config.cpu_devices = 0
    # Keep the uint8 training set on the devices and crop, flip and normalise there, so that a small host
    # does not starve a GPU or TPU; the batches are bit-identical to the host pipeline's. Unset (None): on
    # when the default backend is a GPU or TPU; True/False force it.
    config.input_on_device = config_dict.placeholder(bool)

    # --- Evaluation, checkpoints, logging --------------------------------------------------------
    # Batch of the evaluation passes (padded and masked: every test example counts exactly once).
    config.eval_batch_size = 500
    # Evaluate on the test split every this many epochs, and always after the last one.
    config.eval_every_epochs = 1
    # Checkpoint every this many epochs, and always after the last one.
    config.checkpoint_every_epochs = 10
    # Also checkpoint every this many steps inside an epoch (0: off); the run resumes mid-epoch exactly.
    config.checkpoint_every_steps = 0
    # Also checkpoint when this many minutes have passed since the last checkpoint (0: off), so that a run
    # killed without warning (a Colab disconnect, the OOM killer) loses at most that much.
    config.checkpoint_every_minutes = 10.0
    # How many of the latest checkpoints are kept.
    config.keep_checkpoints = 3
    # Training metrics are averaged and written (TensorBoard) every this many steps, and at every epoch's end.
    config.log_every_steps = 50
    # The console's progress line (epoch, step, images/s, ETA) every this many seconds.
    config.log_every_seconds = 30.0

    return config
