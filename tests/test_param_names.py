"""Every layer of every backbone and head has an explicit name (conv1, bn1, downsample_conv, classifier, ...),
never Flax's call-order names (Conv_0, BatchNorm_1, Dense_0), so a checkpoint reads like the model."""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from mbde_jax import config_utils, experiment, methods
from mbde_jax.models import BACKBONES
from mbde_jax.models.online_kd import OnlineKDModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLLECTIONS = ("params", "batch_stats")
FLAX_AUTO_NAME = re.compile(r"[A-Z]\w*_\d+")  # Conv_0, BatchNorm_1, Dense_0, DenseLayer_2, ...

# Every key a variable path may hold, whole-key regexes. Module nesting: network/{trunk, branches/branch}.
CONTAINERS = r"network|trunk|branches|branch"
LEAVES = r"kernel|bias|scale|mean|var"
RESNET = r"stem_conv|stem_bn|stage[1-3]|block\d+|conv[1-3]|bn[1-3]|downsample_conv|downsample_bn|classifier"
VGG = r"stage[1-5]_conv[0-2]|stage[1-5]_bn[0-2]|classifier_hidden[01]|classifier"
DENSENET = (r"stem_conv|block[1-3]_layer[0-5]|norm[12]|conv[12]|transition[12]_bn|transition[12]_conv|final_bn"
            r"|classifier")
HEADS = r"ffm|depthwise_conv|depthwise_bn|pointwise_conv|pointwise_bn|peer_attention|query|key|gate|linear|bn"
ARCH_NAMES = {"resnet8": RESNET, "resnet32": RESNET, "resnet110": RESNET, "wrn20_8": RESNET, "vgg16": VGG,
              "densenet40_12": DENSENET}


@functools.lru_cache(maxsize=None)
def _variables(model: OnlineKDModel):
    """The variables' shapes (no computation)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))


def _arch_variables(arch):
    return _variables(OnlineKDModel(arch, 10, num_branches=2))


def _keys(tree):
    """The key names of every leaf's path."""
    return [tuple(entry.key for entry in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _assert_explicit(variables, allowed: str):
    pattern = re.compile(rf"(?:{CONTAINERS}|{LEAVES}|{allowed})")
    for collection in COLLECTIONS:
        for path in _keys(variables[collection]):
            for key in path:
                assert not FLAX_AUTO_NAME.fullmatch(key), f"{collection}/{'/'.join(path)}: Flax's call-order name"
                assert pattern.fullmatch(key), f"{collection}/{'/'.join(path)}: {key!r} is not a known layer name"


def _children(tree):
    return set(tree)


def _layer(variables, *path):
    """{collection: the sub-tree at `path`} for params and batch_stats (a conv has no batch_stats)."""
    out = {}
    for collection in COLLECTIONS:
        node = variables[collection]
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        out[collection] = node
    return out


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_architecture_has_only_explicit_names(arch):
    assert arch in ARCH_NAMES, f"add {arch}'s layer names to ARCH_NAMES"
    _assert_explicit(_arch_variables(arch), ARCH_NAMES[arch])


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_has_only_explicit_names(method):
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.method = method
    _assert_explicit(_variables(experiment.resolve(config).model), RESNET + "|" + HEADS)


def test_resnet_basic_block_names():
    """OKDDip's BasicBlock: conv1, bn1, conv2, bn2, and the `downsample` projection where the shape changes."""
    stage3 = _layer(_arch_variables("resnet32"), "network", "branches", "branch", "stage3")
    assert _children(stage3["params"]) == {f"block{i}" for i in range(5)}
    first, second = stage3["params"]["block0"], stage3["params"]["block1"]
    assert _children(first) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
    assert _children(second) == {"conv1", "bn1", "conv2", "bn2"}
    assert _children(first["conv1"]) == {"kernel"} and first["conv1"]["kernel"].shape == (2, 3, 3, 32, 64)
    assert first["downsample_conv"]["kernel"].shape == (2, 1, 1, 32, 64)
    assert _children(first["bn1"]) == {"scale", "bias"}
    assert _children(stage3["batch_stats"]["block0"]) == {"bn1", "bn2", "downsample_bn"}
    assert _children(stage3["batch_stats"]["block0"]["bn1"]) == {"mean", "var"}
    trunk = _arch_variables("resnet32")["params"]["network"]["trunk"]
    assert _children(trunk) == {"stem_conv", "stem_bn", "stage1", "stage2"}


def test_resnet_bottleneck_names():
    """torchvision's Bottleneck, as OKDDip's resnet110 and wrn20_8 use it: conv1-3, bn1-3, downsample."""
    block = _arch_variables("resnet110")["params"]["network"]["branches"]["branch"]["stage3"]["block0"]
    assert _children(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv",
                                "downsample_bn"}
    assert [block[f"conv{i}"]["kernel"].shape[1:3] for i in (1, 2, 3)] == [(1, 1), (3, 3), (1, 1)]


def test_densenet_layer_and_transition_names():
    """The reference's BC layer (_DenseLayer: norm1, conv1 1x1, norm2, conv2 3x3) and transition (BN, 1x1 conv)."""
    variables = _arch_variables("densenet40_12")
    trunk = variables["params"]["network"]["trunk"]
    assert _children(trunk) == ({"stem_conv", "transition1_bn", "transition1_conv", "transition2_bn",
                                 "transition2_conv"}
                                | {f"block{b}_layer{i}" for b in (1, 2) for i in range(6)})
    layer = trunk["block1_layer0"]
    assert _children(layer) == {"norm1", "conv1", "norm2", "conv2"}
    assert layer["conv1"]["kernel"].shape == (1, 1, 24, 48) and layer["conv2"]["kernel"].shape == (3, 3, 48, 12)
    assert trunk["transition1_conv"]["kernel"].shape == (1, 1, 96, 48)
    assert _children(variables["batch_stats"]["network"]["trunk"]["block1_layer0"]) == {"norm1", "norm2"}
    branch = variables["params"]["network"]["branches"]["branch"]
    assert _children(branch) == {f"block3_layer{i}" for i in range(6)} | {"final_bn", "classifier"}


def test_vgg_names():
    """Conv stage k's i-th conv and its BN are stage{k}_conv{i} / stage{k}_bn{i}; then the MLP head."""
    variables = _arch_variables("vgg16")
    convs_per_stage = {1: 2, 2: 2, 3: 3, 4: 3}
    assert _children(variables["params"]["network"]["trunk"]) == {
        f"stage{k}_{layer}{i}" for k, count in convs_per_stage.items() for i in range(count)
        for layer in ("conv", "bn")}
    branch = variables["params"]["network"]["branches"]["branch"]
    assert _children(branch) == ({f"stage5_{layer}{i}" for i in range(3) for layer in ("conv", "bn")}
                                 | {"classifier_hidden0", "classifier_hidden1", "classifier"})
    assert _children(branch["stage5_conv0"]) == {"kernel", "bias"}


ATTENTION = {"peer_attention/query/kernel", "peer_attention/key/kernel"}


@pytest.mark.parametrize("heads,expected_params,expected_stats", [
    ("attention", ATTENTION, set()),
    ("ffm_attention",
     ATTENTION | {"ffm/depthwise_conv/kernel", "ffm/depthwise_bn/scale", "ffm/depthwise_bn/bias",
                  "ffm/pointwise_conv/kernel", "ffm/pointwise_bn/scale", "ffm/pointwise_bn/bias"},
     {"ffm/depthwise_bn/mean", "ffm/depthwise_bn/var", "ffm/pointwise_bn/mean", "ffm/pointwise_bn/var"}),
    ("gate", {"gate/linear/kernel", "gate/linear/bias", "gate/bn/scale", "gate/bn/bias"},
     {"gate/bn/mean", "gate/bn/var"}),
])
def test_head_names(heads, expected_params, expected_stats):
    """OKDDip's W_L / W_E (query, key), the FFM's convs and BNs, ONE's gate (linear, BN)."""
    variables = _variables(OnlineKDModel("resnet8", 10, num_branches=3, heads=heads))
    for collection, expected in (("params", expected_params), ("batch_stats", expected_stats)):
        paths = {"/".join(path) for path in _keys(variables[collection]) if path[0] != "network"}
        assert paths == expected, collection
