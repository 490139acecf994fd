"""Offline demo: MBDE on ResNet-32 (3 peers + 1 leader) on scikit-learn's handwritten digits.

    python train.py --config configs/demo.py --workdir workdirs/demo

No network needed: the digits ship inside scikit-learn and are built into a tfds dataset on first use
(1,442 train / 355 test images, 8x8 grey resized to 32x32x3). Same pipeline, model, losses and loop as the
paper configs, only shorter: 10 epochs of batch 32 (450 steps), lr 0.1 divided by 10 from epochs 6 and 9
(1-based), 3-epoch ramp-up. Seed 0 ends at a group-leader test top-1 of 94.9% (Python 3.11, jax 0.10.2; 10 epochs
are too few for every seed to converge, and the figure moves with the CPU and the library versions); how long it
takes on which machine is in the README ("Three commands").
"""

from mbde_jax import config_utils


def get_config():
    config = config_utils.load_sibling(__file__, "default").get_config()
    config.dataset = "digits"
    config.arch = "resnet32"
    config.method = "mbde"
    config.num_branches = 4
    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_epochs = 10
    config.lr_boundaries_epochs = (6, 9)
    config.rampup_epochs = 3
    config.eval_every_epochs = 1
    config.checkpoint_every_epochs = 2
    config.log_every_steps = 45
    return config
