"""One ResNet stage written in two tensor layouts, timed forward + backward under jit on the current backend.

    python3 benchmarks/conv_layouts.py [--batch 64] [--blocks 5]

NHWC/HWIO is what Flax (and so the backbones) use; NCHW/OIHW is PyTorch's. The stage is `--blocks` basic
blocks (conv3x3, batch norm on batch statistics, ReLU, conv3x3, batch norm, residual add, ReLU) at ResNet-32's
three widths. Besides the time, each line counts the copy and transpose instructions in XLA's optimised
program: the layout work XLA adds around the convolutions. The README's Performance section records the
figures and why the backbones keep NHWC.
"""

import argparse
import functools
import re
import statistics
import time

import jax
import jax.numpy as jnp

LAYOUTS = {"NHWC": ("NHWC", "HWIO", "NHWC"), "NCHW": ("NCHW", "OIHW", "NCHW")}


def stage(layout: str, x, kernels):
    """x [batch, h, w, c] in NHWC or [batch, c, h, w] in NCHW; kernels [2 * blocks, ...] in HWIO or OIHW."""
    numbers = LAYOUTS[layout]
    reduce_axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)

    def conv_bn(y, kernel):
        y = jax.lax.conv_general_dilated(y, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)
        mean = y.mean(reduce_axes, keepdims=True)
        variance = jnp.square(y - mean).mean(reduce_axes, keepdims=True)
        return (y - mean) * jax.lax.rsqrt(variance + 1e-5)

    for block in range(kernels.shape[0] // 2):
        residual = x
        y = jax.nn.relu(conv_bn(x, kernels[2 * block]))
        x = jax.nn.relu(conv_bn(y, kernels[2 * block + 1]) + residual)
    return x


def compile_step(layout: str, x, kernels):
    """(compiled value_and_grad of sum(sin(stage)), its copy count, its transpose count in XLA's optimised HLO)."""
    loss = lambda x, kernels: jnp.sum(jnp.sin(stage(layout, x, kernels)))  # noqa: E731
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernels).compile()
    opcodes = re.findall(r"= \S+ (copy|transpose)\(", step.as_text())
    return step, opcodes.count("copy"), opcodes.count("transpose")


def median_ms_in_turn(calls, steps: int) -> list[float]:
    """Median ms of each call (each blocks on its result), the calls made one after another in turn."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(steps):
        for call, its_times in zip(calls, times):
            start = time.perf_counter()
            jax.block_until_ready(call())
            its_times.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="batch (64 = one of two CPU devices at batch 128)")
    parser.add_argument("--blocks", type=int, default=5, help="basic blocks in the stage (ResNet-32: 5)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"{jax.devices()[0].platform}, batch {args.batch}, {args.blocks} basic blocks, forward + backward, "
          f"median of {args.steps}, the two layouts timed in turn")
    for size, channels in ((32, 16), (16, 32), (8, 64)):  # ResNet-32's three stages
        x = jax.random.normal(jax.random.key(0), (args.batch, size, size, channels))
        kernels = jax.random.normal(jax.random.key(1), (2 * args.blocks, 3, 3, channels, channels)) * 0.1
        inputs = {"NHWC": (x, kernels), "NCHW": (x.transpose(0, 3, 1, 2), kernels.transpose(0, 4, 3, 1, 2))}
        compiled = {layout: compile_step(layout, *inputs[layout]) for layout in LAYOUTS}
        nhwc_ms, nchw_ms = median_ms_in_turn(
            [functools.partial(compiled[layout][0], *inputs[layout]) for layout in LAYOUTS], args.steps)
        reference = compiled["NHWC"][0](*inputs["NHWC"])[1][1]
        grad = compiled["NCHW"][0](*inputs["NCHW"])[1][1].transpose(0, 3, 4, 2, 1)  # OIHW -> HWIO
        error = float(jnp.max(jnp.abs(grad - reference)) / jnp.max(jnp.abs(reference)))
        (_, copies, transposes), (_, nchw_copies, nchw_transposes) = compiled["NHWC"], compiled["NCHW"]
        print(f"  {size}x{size}x{channels}: NHWC {nhwc_ms:.1f} ms ({copies} copies, {transposes} transposes); "
              f"NCHW {nchw_ms:.1f} ms = {nchw_ms / nhwc_ms:.2f}x ({nchw_copies} copies, {nchw_transposes} "
              f"transposes); kernel-gradient rel. diff {error:.0e}")

if __name__ == "__main__":
    main()
