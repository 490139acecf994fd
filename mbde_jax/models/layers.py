"""Layers shared by the backbones, initialised and configured as OKDDip's PyTorch reference.

PyTorch conventions reproduced here:
  * nn.Conv2d with `padding=k//2` pads symmetrically; Flax's 'SAME' pads (0, 1) for a stride-2 3x3 conv on an
    even input, which shifts every window by one pixel. Convolutions here always pad explicitly.
  * nn.BatchNorm2d/1d(momentum=0.1, eps=1e-5) exactly, by our own `BatchNorm` rather than Flax's: the batch is
    normalised with its biased variance and the running variance is updated with the unbiased one,
    var * n / (n - 1) with n = batch x height x width, as PyTorch does (Flax's updates it with the biased one).
    The variance is computed as mean((x - mean)^2), not as E[x^2] - E[x]^2 (Flax's fast form), which loses
    most of its digits in float32 where |mean| >> std (ONE's gate inputs).
  * nn.Linear's default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import initializers

Dtype = Any
Initializer = initializers.Initializer

# Every variable comes from an mbde_jax.models.initializers Initializer, so that training can draw them all in
# one program (see that module).
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated normal with variance 2 / fan_out.
kaiming_normal_fan_out: Initializer = initializers.kaiming_normal("fan_out")
# kaiming_normal_() with its defaults (fan_in, leaky_relu with slope 0): variance 2 / fan_in.
kaiming_normal_fan_in: Initializer = initializers.kaiming_normal("fan_in")


def torch_uniform(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for nn.Linear weights and biases."""
    return initializers.uniform(1.0 / float(fan_in) ** 0.5)


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
        bias_init=initializers.zeros,
        dtype=dtype,
        name=name,
    )


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last, as PyTorch's nn.BatchNorm2d (NHWC maps) and
    nn.BatchNorm1d ([batch, features]).

    x [..., features] -> same shape. The statistics, the normalisation and the output are float32 whatever the
    compute dtype of x (bfloat16 activations come out float32, as from Flax's BatchNorm with float32 params);
    the next convolution or matmul casts back to its compute dtype.

    Variables, named as Flax's nn.BatchNorm's so that the tree keeps its layout: params 'scale' (1) and
    'bias' (0), batch_stats 'mean' (0) and 'var' (1), all [features] and float32.

    Training (`use_running_average=False`): normalises with the batch mean and the biased batch variance over
    the n = prod(x.shape[:-1]) elements of each channel; under jit on a data mesh x is the global batch, so
    the statistics and n are global. The running statistics move by
    running = momentum * running + (1 - momentum) * batch_stat, the variance's batch_stat being the unbiased
    var * n / (n - 1) (PyTorch's update; Flax's momentum 0.9 is PyTorch's 0.1). They are not moved while the
    model is being initialised. Eval: normalises with the running statistics.

    Attributes:
      use_running_average: eval mode (running statistics, no update).
      momentum: weight of the old running statistic in the update.
      epsilon: added to the variance before the square root.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", initializers.ones, features, jnp.float32)
        bias = self.param("bias", initializers.zeros, features, jnp.float32)
        running_mean = self.variable("batch_stats", "mean", initializers.zeros, None, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", initializers.ones, None, features, jnp.float32)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
            centred = x - mean
        else:
            reduction_axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=reduction_axes)
            centred = x - mean
            var = jnp.mean(jnp.square(centred), axis=reduction_axes)  # biased, as PyTorch normalises
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                if count < 2:
                    # PyTorch refuses this too: the unbiased variance of one value is undefined.
                    raise ValueError(f"BatchNorm in training mode needs more than one value per channel; got "
                                     f"input shape {tuple(x.shape)}. Use a batch of at least 2.")
                unbiased_var = var * (count / (count - 1))
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased_var
        return centred * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


def batch_norm(train: bool, *, name: str | None = None) -> BatchNorm:
    """BatchNorm as PyTorch's default BatchNorm2d/1d (gamma 1, beta 0, momentum 0.1, eps 1e-5)."""
    return BatchNorm(use_running_average=not train, name=name)


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
    inside each transpose (README, Performance, has the effect on the step time).
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
