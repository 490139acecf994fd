"""Initializers that say what they draw, so that a training run initialises a whole model in one small program.

Every initializer of the models is `scale * draw`, the draw being N(0, 1) ('normal'), U[-1, 1) ('uniform') or
the constant 1 ('constant'), the scale a number or a function of the variable's shape (Kaiming's fan).
Called by Flax (`model.init`), an Initializer draws from the key Flax gives it, as any initializer does.

Why not let training call model.init under jit: each variable's initializer is its own few random-number
programs (a key fold-in, a shaped threefry, the normal transform), and XLA:CPU compiles ~1,000 of those for a
four-branch ResNet-32 more slowly than the whole train step. Training instead traces the model under
`describing()` (no compilation: jax.eval_shape), where every initializer returns a `Described` box (its kind
and scale, which Flax carries through nn.scan and nn.vmap like any boxed metadata), and `draw_standard`
computes every variable's standard draws as one flat elementwise program; `assemble` scales and reshapes
them on the host. Element j (row-major) of the variable at path p gets
    scale * D(fold_in(fold_in(key(seed), crc32(p)), j)),
D the kind's standard draw, the key threefry whatever JAX's default implementation (an elementwise hash is
what keeps the program small). So a variable's initial values depend on the seed, its path and its shape
only: not on the other variables, the heads of the method (methods with the same network start from the same
network), nor how the branches are executed; a stacked branch variable's branch i is the same for any
num_branches > i.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import zlib
from typing import Any, Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core import meta

KINDS = ("normal", "uniform", "constant")
RANDOM_KINDS = ("normal", "uniform")
_DESCRIBING = contextvars.ContextVar("describing_initializers", default=False)


class Described(struct.PyTreeNode, meta.AxisMetadata):
    """What an Initializer returns under describing(): a placeholder value (zeros, for the forward pass's
    shapes) and the description. A stacked (nn.scan, nn.vmap) variable keeps one description for all its
    slices: the scale is computed from one slice's shape, as each slice's initializer would."""

    value: Any
    kind: str = struct.field(pytree_node=False)
    scale: float = struct.field(pytree_node=False)

    def unbox(self) -> Any:
        return self.value

    def replace_boxed(self, val: Any) -> "Described":
        return self.replace(value=val)

    def add_axis(self, index: int, params: dict) -> "Described":
        return self

    def remove_axis(self, index: int, params: dict) -> "Described":
        return self


@dataclasses.dataclass(frozen=True)
class Initializer:
    """scale * draw (see the module docstring); scale may be a function of the shape."""

    kind: str
    scale: Union[float, Callable[[tuple[int, ...]], float]]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Initializer kind {self.kind!r}; valid: {list(KINDS)}.")

    def __call__(self, key: jax.Array | None, shape, dtype=jnp.float32) -> jax.Array:
        shape = tuple(shape)
        scale = float(self.scale(shape) if callable(self.scale) else self.scale)
        if _DESCRIBING.get():
            return Described(jnp.zeros(shape, dtype), self.kind, scale)
        if self.kind == "constant":
            return jnp.full(shape, scale, dtype)
        if self.kind == "normal":
            standard = jax.random.normal(key, shape, jnp.float32)
        else:
            standard = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
        return (standard * np.float32(scale)).astype(dtype)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel [..., in, out], as flax.linen.initializers.variance_scaling counts them."""
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def kaiming_normal(mode: str) -> Initializer:
    """An untruncated normal of variance 2 / fan (variance_scaling(2.0, mode, 'normal'))."""
    index = {"fan_in": 0, "fan_out": 1}[mode]
    return Initializer("normal", lambda shape: math.sqrt(2.0 / _fans(shape)[index]))


def normal(stddev: float) -> Initializer:
    return Initializer("normal", stddev)


def uniform(bound: float) -> Initializer:
    """U[-bound, bound)."""
    return Initializer("uniform", bound)


zeros = Initializer("constant", 0.0)
ones = Initializer("constant", 1.0)


@contextlib.contextmanager
def describing():
    token = _DESCRIBING.set(True)
    try:
        yield
    finally:
        _DESCRIBING.reset(token)


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: str  # jax.tree_util.keystr of the variables tree
    shape: tuple[int, ...]
    dtype: Any
    kind: str
    scale: float


def describe(init_fn: Callable[[], Any]) -> tuple[Any, tuple[Leaf, ...]]:
    """(the tree structure, its leaves' descriptions) of the variables init_fn (e.g. a model.init) makes,
    traced, not computed. Every variable must come from an Initializer: one that does not is named."""
    with describing():
        boxed = jax.eval_shape(init_fn)
    flat, treedef = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=meta.is_axis_metadata)
    leaves = []
    for path, box in flat:
        name = jax.tree_util.keystr(path)
        if not isinstance(box, Described):
            raise TypeError(f"the model variable {name} was not made by an mbde_jax.models.initializers "
                            f"Initializer, so the training's initialisation cannot draw it; give its layer one "
                            f"(layers.py shows how).")
        leaves.append(Leaf(name, tuple(box.value.shape), box.value.dtype, box.kind, box.scale))
    hashes = [zlib.crc32(leaf.path.encode()) for leaf in leaves]
    if len(set(hashes)) != len(hashes):  # two paths would draw the same values
        raise ValueError("two variable paths have the same crc32; rename one of them.")
    return treedef, tuple(leaves)


def draw_standard(leaves: tuple[Leaf, ...], seed: jax.Array) -> dict[str, jax.Array]:
    """{kind: the standard draws of every variable of that random kind, concatenated in leaf order} (traceable;
    `seed` an int32 scalar)."""
    root = jax.random.key(seed, impl="threefry2x32")
    draws = {}
    for kind in RANDOM_KINDS:
        chosen = [leaf for leaf in leaves if leaf.kind == kind]
        sizes = [math.prod(leaf.shape) for leaf in chosen]
        total = sum(sizes)
        if not total:
            continue
        hashes = jnp.asarray([zlib.crc32(leaf.path.encode()) for leaf in chosen], jnp.uint32)
        starts = jnp.asarray(np.cumsum([0] + sizes[:-1]), jnp.int32)
        leaf_keys = jax.vmap(jax.random.fold_in, (None, 0))(root, hashes)
        index = jnp.arange(total, dtype=jnp.int32)
        # which variable each element belongs to: a log2(#variables)-step loop, not a table of `total` entries
        # baked into the program (nor one XLA would constant-fold at compile time)
        owner = jnp.searchsorted(starts, index, side="right", method="scan") - 1
        keys = jax.vmap(jax.random.fold_in)(leaf_keys[owner], (index - starts[owner]).astype(jnp.uint32))
        if kind == "normal":
            draws[kind] = jax.vmap(lambda key: jax.random.normal(key, (), jnp.float32))(keys)
        else:
            draws[kind] = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32, -1.0, 1.0))(keys)
    return draws


def assemble(treedef: Any, leaves: tuple[Leaf, ...], draws: dict[str, Any]) -> Any:
    """The variables tree from draw_standard's output: numpy arrays for numpy draws, traced ones under jit
    (the same float32 products up to rounding: XLA may fuse the scaling into the draw's program)."""
    offsets = dict.fromkeys(RANDOM_KINDS, 0)
    values = []
    for leaf in leaves:
        size = math.prod(leaf.shape)
        if leaf.kind == "constant":
            values.append(np.full(leaf.shape, leaf.scale, leaf.dtype))
            continue
        start = offsets[leaf.kind]
        offsets[leaf.kind] = start + size
        standard = draws[leaf.kind][start:start + size].reshape(leaf.shape)
        values.append((standard * np.float32(leaf.scale)).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)
