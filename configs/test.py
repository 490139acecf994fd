"""A tiny configuration for the test suite and smoke tests: seconds per epoch on a CPU.

    python train.py --config configs/test.py --workdir /tmp/mbde_test --config.method=okddip

ResNet-8 (not a paper model), 3 branches, batch 8, 2 epochs, on whatever data the caller provides
(the tests mock CIFAR-10 through tfds.testing.mock_data; on a machine without data use dataset=digits).
"""

from mbde_jax import config_utils


def get_config():
    config = config_utils.load_sibling(__file__, "default").get_config()
    config.dataset = "cifar10"
    config.arch = "resnet8"
    config.num_branches = 3
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 2
    config.lr_boundaries_epochs = (2,)
    config.rampup_epochs = 2
    config.eval_every_epochs = 1
    config.checkpoint_every_epochs = 1
    config.log_every_steps = 2
    config.download = False
    return config
