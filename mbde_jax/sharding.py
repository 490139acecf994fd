"""The device mesh and the two shardings the project uses.

Data parallelism only: one mesh axis, 'data', over every device of every process. A batch is split on its
leading axis over that axis; the train state is replicated. Batch-norm statistics computed under jit are then
over the global batch, so results do not depend on the device count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Returns a one-axis mesh named 'data' over `devices` (default: all devices of all processes).

    The order is jax.devices()' order, which groups each process's devices together; that is what
    jax.make_array_from_process_local_data expects when every process feeds a contiguous slice of the batch.
    """
    if devices is None:
        devices = jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batched array: the leading (batch) axis split over 'data', the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of an array every device holds whole (parameters, optimizer state, step)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, *, field: str = "config.batch_size") -> None:
    """Raises a ValueError unless `global_batch_size` splits evenly over the mesh's devices.

    Args:
        global_batch_size: examples per step summed over all devices.
        mesh: the data mesh.
        field: the config field the number came from, named in the message.
    """
    num_devices = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % num_devices:
        nearest = sorted({max(num_devices, global_batch_size // num_devices * num_devices),
                          (max(global_batch_size, 0) // num_devices + 1) * num_devices})
        raise ValueError(
                f"{field}={global_batch_size} is not a positive multiple of the device count "
                f"({num_devices} devices on the 'data' mesh axis). Set {field} to a multiple of {num_devices} "
                f"(for example {' or '.join(map(str, nearest))}), or run on a device count that divides it.")


HOST_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def auto_cpu_devices(config: ml_collections.ConfigDict) -> int:
    """config.cpu_devices, or for 0 (auto): 2 on a host with 2+ cores when both batch sizes are even, else 1.

    Why 2: XLA:CPU runs each YNNPACK convolution on one core, and a ResNet trunk is a chain of them, so one
    device leaves a core idle for half the step; two devices each run half the batch. More devices only add
    collectives (the figures are in the README, Performance).
    """
    if config.cpu_devices:
        return config.cpu_devices
    even = config.batch_size % 2 == 0 and config.eval_batch_size % 2 == 0
    return 2 if (os.cpu_count() or 1) >= 2 and even else 1


def configure_host_devices(config: ml_collections.ConfigDict) -> bool:
    """Splits the host CPU into auto_cpu_devices(config) JAX devices; call before JAX starts its backends.

    Only the CPU backend is affected, so this is harmless where a GPU or TPU is the default backend. Nothing
    is changed (and False returned) when JAX has already started, when XLA_FLAGS sets
    --xla_force_host_platform_device_count (the caller chose, as the tests do), or when jax_num_cpu_devices was
    set explicitly. In a multi-process run each process gets config.cpu_devices, or 1 for auto: processes that
    share a host already use its cores.
    """
    if HOST_DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    if jax.config.jax_num_cpu_devices >= 0:
        return False
    count = (config.cpu_devices or 1) if jax.distributed.is_initialized() else auto_cpu_devices(config)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised: keep whatever devices exist
        return False
    return True
