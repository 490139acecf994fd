"""Batch parallel vs branch parallel over the CPU devices: one forward + backward of the multi-branch network.

    python3 benchmarks/branch_parallel.py [--devices 2] [--arch resnet32] [--branches 4] [--batch 128]

Three ways to spread the trunk and m branches (ResNet-32: the trunk is stages 1-2, a branch is stage 3 and
its classifier) over d devices, each timed as the gradient of one loss under jit:
  batch:            what the train step does: each device runs the trunk and every branch on 1/d of the batch.
  branch:           each device runs the trunk on the whole batch (every device the same), then its own m/d
                    branches on the whole batch; the trunk's gradient is summed over the devices.
  branch_split_trunk: each device runs the trunk on 1/d of the batch, the trunk features are gathered, then
                    each device runs its own m/d branches on the whole batch. Its trunk batch norm sees 1/d of
                    the batch (the train step's sees all of it): the timing leaves out those small reductions, and its
                    gradient differs from the others' unless --check runs that batch norm on running averages.
The loss is MBDE-shaped: each branch's cross-entropy plus its KL divergence (T = 3) to the detached mean of
every branch's logits, so the branch arrangements gather the logits as the real objective would. The README's
Performance section records the figures and why the train step keeps `batch`.
"""

import argparse
import functools
import statistics
import time

import jax

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--devices", type=int, default=2, help="JAX CPU devices the host is split into")
parser.add_argument("--arch", default="resnet32")
parser.add_argument("--branches", type=int, default=4, help="m, a multiple of --devices")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--classes", type=int, default=100)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--arrangements", default="batch,branch,branch_split_trunk")
parser.add_argument("--check", action="store_true",
                    help="run the trunk's batch norm on its running averages, so that every arrangement computes "
                         "the same gradient (the relative differences printed should be ~1e-6)")
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

import flax.linen as nn  # noqa: E402  (after the device count is set)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mbde_jax.models import backbones, multibranch  # noqa: E402

TEMPERATURE = 3.0


class Network(nn.Module):
    """The trunk, then `num_branches` branches (stacked variables, unrolled as the CPU train step runs them)."""

    arch: str
    num_classes: int
    num_branches: int
    train_trunk: bool = True

    def setup(self):
        self.trunk = backbones.get_backbone(self.arch).make_trunk(self.train_trunk, jnp.float32, None)
        self.branches = nn.scan(
            multibranch.BranchNet, length=self.num_branches, out_axes=0, unroll=self.num_branches,
            variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True},
        )(arch=self.arch, num_classes=self.num_classes, as_scan_body=True)

    def features(self, images):
        """[batch, 32, 32, 3] -> the trunk's feature map [batch, h, w, c]."""
        return self.trunk(images)

    def logits(self, features):
        """[batch, h, w, c] -> [num_branches, batch, classes]."""
        return self.branches(features)[1][2]

    def __call__(self, images):
        return self.logits(self.features(images))


def loss_of(own_logits, every_logits, labels):
    """own_logits [k, batch, classes] (the branches this device trains); every_logits [m, batch, classes]."""
    target = jax.nn.softmax(jax.lax.stop_gradient(every_logits.mean(0)) / TEMPERATURE)
    labels = jnp.broadcast_to(labels, own_logits.shape[:-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(own_logits, labels).mean(-1).sum()
    log_p = jax.nn.log_softmax(own_logits / TEMPERATURE)
    kl = (target * (jnp.log(target) - log_p)).sum(-1).mean(-1).sum()
    return ce + TEMPERATURE ** 2 * kl


def make_steps(mesh, whole, local, batch_stats, batch_stats_local):
    """{arrangement: jitted (params, images, labels) -> (loss, grads)} over `mesh` (axis 'd')."""

    def batch_parallel(params, images, labels):
        def loss_fn(params):
            logits, _ = whole.apply({"params": params, "batch_stats": batch_stats}, images, mutable=["batch_stats"])
            return loss_of(logits, logits, labels)
        return jax.value_and_grad(loss_fn)(params)

    def branch_parallel(split_trunk, params, images, labels):
        def loss_fn(params):
            variables = {"params": params, "batch_stats": batch_stats_local}
            features, _ = local.apply(variables, images, method=Network.features, mutable=["batch_stats"])
            if split_trunk:
                features = jax.lax.all_gather(features, "d", axis=0, tiled=True)
            logits, _ = local.apply(variables, features, method=Network.logits, mutable=["batch_stats"])
            every = jax.lax.all_gather(jax.lax.stop_gradient(logits), "d", axis=0, tiled=True)
            return loss_of(logits, every, labels)
        # The trunk's parameters are the same on every device, so shard_map's autodiff sums their gradient over
        # the devices itself (the transpose of the implicit broadcast); the branches' stay per device.
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.lax.psum(loss, "d"), grads

    branch_specs = {"trunk": P(), "branches": P("d")}
    steps = {"batch": jax.jit(batch_parallel)}
    for name, split_trunk in (("branch", False), ("branch_split_trunk", True)):
        body = functools.partial(branch_parallel, split_trunk)
        sharded = jax.shard_map(body, mesh=mesh, in_specs=(branch_specs, P("d") if split_trunk else P(), P()),
                                out_specs=(P(), branch_specs))
        steps[name] = jax.jit(sharded)
    return steps


def main():
    devices = jax.devices()
    mesh = jax.sharding.Mesh(devices, ("d",))
    m, d = args.branches, len(devices)
    if m % d:
        raise SystemExit(f"--branches {m} is not a multiple of --devices {d}")
    whole = Network(args.arch, args.classes, m, train_trunk=not args.check)
    local = Network(args.arch, args.classes, m // d, train_trunk=not args.check)
    images = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(1), (args.batch,), 0, args.classes)
    variables = whole.init(jax.random.key(2), images)
    params = variables["params"]
    stats = variables["batch_stats"]
    stats_local = {"trunk": stats["trunk"], "branches": jax.tree.map(lambda x: x[: m // d], stats["branches"])}
    steps = make_steps(mesh, whole, local, stats, stats_local)
    print(f"{d} x {devices[0].platform}, {args.arch}, {m} branches, batch {args.batch}, gradient of the loss, "
          f"median of {args.steps} taken in turn")
    placed = {}
    for name in args.arrangements.split(","):
        if name == "batch":  # the train step's shardings: parameters replicated, the batch split
            placed[name] = (jax.device_put(params, NamedSharding(mesh, P())),
                            jax.device_put(images, NamedSharding(mesh, P("d"))), labels)
        else:
            placed[name] = (params, images, labels)
    first_call, results = {}, {}
    for name, inputs in placed.items():
        start = time.perf_counter()
        results[name] = jax.block_until_ready(steps[name](*inputs))
        first_call[name] = time.perf_counter() - start
    # Round-robin, one step of each arrangement in turn, so that a shared VM's drift hits them all alike.
    times = {name: [] for name in placed}
    for _ in range(args.steps):
        for name, inputs in placed.items():
            start = time.perf_counter()
            jax.block_until_ready(steps[name](*inputs))
            times[name].append(time.perf_counter() - start)
    reference = None
    for name in placed:
        loss, grads = results[name]
        ms = statistics.median(times[name]) * 1e3
        flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
        reference = flat if reference is None else reference
        difference = float(jnp.linalg.norm(flat - reference) / jnp.linalg.norm(reference))
        print(f"  {name:>18}: {ms:7.1f} ms = {args.batch / ms * 1e3:6.1f} images/s (first call "
              f"{first_call[name]:.1f} s); loss {float(loss):.4f}; gradient vs the first: rel. diff {difference:.1e}")

if __name__ == "__main__":
    main()
