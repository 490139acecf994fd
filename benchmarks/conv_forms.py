"""Three ways to write a 3x3 stride-1 convolution, timed forward + backward under jit on the current backend.

    python3 benchmarks/conv_forms.py [--batch 64]

lax: jax.lax.conv_general_dilated (what the backbones use; XLA:CPU runs it in YNNPACK).
im2col: the nine shifted inputs concatenated on the channel axis, then one matmul with the [9*C, C] kernel.
taps: nine matmuls, one per shifted input, summed (no 9x buffer).
The README's Performance section records why the backbones keep `lax` on CPU.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def conv_lax(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x):
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)]


def conv_im2col(x, w):
    columns = jnp.concatenate(_shifted(x), axis=-1)
    return jnp.einsum("bhwk,ko->bhwo", columns, w.reshape(-1, w.shape[-1]))


def conv_taps(x, w):
    taps = w.reshape(9, *w.shape[2:])
    return sum(jnp.einsum("bhwc,co->bhwo", shifted, tap) for shifted, tap in zip(_shifted(x), taps))


def time_ms(conv, x, w, steps: int) -> tuple[float, jax.Array]:
    """Median ms of value_and_grad (w.r.t. input and kernel) of sum(sin(conv(x, w))), and the kernel gradient."""
    step = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1)))
    result = jax.block_until_ready(step(x, w))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(step(x, w))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result[1][1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="batch (64 = one of two CPU devices at batch 128)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"{jax.devices()[0].platform}, batch {args.batch}, forward + backward, median of {args.steps}")
    for size, channels in ((32, 16), (16, 32), (8, 64)):  # ResNet-32's three stages
        x = jax.random.normal(jax.random.key(0), (args.batch, size, size, channels))
        w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.1
        reference_ms, reference_grad = time_ms(conv_lax, x, w, args.steps)
        line = f"  {size}x{size}x{channels}: lax {reference_ms:.2f} ms"
        for name, conv in (("im2col", conv_im2col), ("taps", conv_taps)):
            ms, grad = time_ms(conv, x, w, args.steps)
            error = float(jnp.max(jnp.abs(grad - reference_grad)) / jnp.max(jnp.abs(reference_grad)))
            line += f"; {name} {ms:.2f} ms ({ms / reference_ms:.2f}x, kernel-gradient rel. diff {error:.0e})"
        print(line)


if __name__ == "__main__":
    main()
