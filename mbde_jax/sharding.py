"""The device mesh and the two shardings the project uses.

Data parallelism only: one mesh axis, 'data', over every device of every process. A batch is split on its
leading axis over that axis; the train state is replicated. Batch-norm statistics computed under jit are then
over the global batch, so results do not depend on the device count.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
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
