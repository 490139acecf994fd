"""Layers shared by the backbones, initialised and configured as OKDDip's PyTorch reference.

PyTorch conventions reproduced here:
  * nn.Conv2d with `padding=k//2` pads symmetrically; Flax's 'SAME' pads (0, 1) for a stride-2 3x3 conv on an
    even input, which shifts every window by one pixel. Convolutions here always pad explicitly.
  * nn.BatchNorm2d(momentum=0.1, eps=1e-5) is Flax's BatchNorm(momentum=0.9, epsilon=1e-5). One difference is
    left: PyTorch's running variance uses the unbiased batch variance, Flax's the biased one (a factor
    n / (n - 1) with n = batch * height * width, i.e. < 0.01% at batch 128 on an 8x8 map).
  * nn.Linear's default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated normal with variance 2 / fan_out.
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# kaiming_normal_() with its defaults (fan_in, leaky_relu with slope 0): variance 2 / fan_in.
kaiming_normal_fan_in: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_uniform(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for nn.Linear weights and biases."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    use_bias: bool = False,
    kernel_init: Initializer = kaiming_normal_fan_out,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A square convolution padded like PyTorch's `padding=kernel_size // 2` (symmetric)."""
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, *, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm as PyTorch's default BatchNorm2d (gamma 1, beta 0, momentum 0.1, eps 1e-5).

    Statistics are always kept in float32, whatever the compute dtype.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        param_dtype=jnp.float32,
        name=name,
    )


def linear(
    features: int,
    fan_in: int,
    *,
    kernel_init: Initializer | None = None,
    bias_init: Initializer | None = None,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with PyTorch's nn.Linear default init unless an initializer is given."""
    return nn.Dense(
        features,
        kernel_init=kernel_init or torch_uniform(fan_in),
        bias_init=bias_init or torch_uniform(fan_in),
        dtype=dtype,
        name=name,
    )


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0), written so that XLA keeps it as one materialised array. Same values and gradient as nn.relu.

    Why not nn.relu: XLA counts max(x, broadcast(0)) as a unary op, which it duplicates into every consumer
    for free. In a residual network the weight-gradient convolutions read each block output through a
    transposed copy, so XLA:CPU recomputed the whole chain of blocks (BN, add, ReLU of every earlier block)
    inside each transpose (the MBDE step ran 153 images/s with nn.relu, 191 with this; README, Performance).
    A select with a full-size predicate is not unary, so XLA materialises the result once and the transposes
    read it.
    Forward: x <= 0 gives +0.0 (nn.relu may keep -0.0), NaN stays NaN, -inf gives 0.
    """
    return jnp.where(x <= 0, jnp.zeros_like(x), x)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    y = relu(x)
    # The mask is read from the output, which is materialised anyway (y > 0 exactly where x > 0; NaN in
    # neither), so the backward pass does not recompute x. nn.relu's derivative at 0 is 0 too.
    return y, jnp.where(y > 0, x_dot, jnp.zeros_like(x_dot))


def global_average_pool(feature_map: jax.Array) -> jax.Array:
    """[batch, height, width, channels] -> [batch, channels]."""
    return jnp.mean(feature_map, axis=(1, 2))
