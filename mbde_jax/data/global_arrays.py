"""From host data to global jax.Arrays sharded on the batch axis of the data mesh.

Every process holds the whole pool of examples and builds only its own rows of each global batch (`process_rows`:
the rows its devices hold), so a global batch, and with it every result, is the same for any number of processes
and devices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import jax
import numpy as np

from mbde_jax import sharding


def process_rows(global_batch_size: int, mesh: jax.sharding.Mesh) -> slice:
    """The rows of every global batch that this process's devices hold (and so this process builds).

    Every process has the same number of devices and the mesh lists each process's devices together, so the
    rows are one contiguous block; which block is decided by the mesh, not by the process index.
    """
    index_map = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = sorted({index[0].start or 0 for index in index_map.values()})
    size = global_batch_size // mesh.devices.size
    if starts != list(range(starts[0], starts[0] + size * len(starts), size)):
        raise ValueError(f"this process's devices hold rows {starts} (each {size} long) of a batch, not one "
                         f"contiguous block; build the mesh with sharding.make_data_mesh().")
    return slice(starts[0], starts[0] + size * len(starts))


def row_positions(batch_starts: np.ndarray, rows: slice) -> np.ndarray:
    """int64 [len(batch_starts) * (rows.stop - rows.start)]: the positions (in the epoch or the split) of `rows` of
    each batch that starts at `batch_starts`, batch after batch."""
    return (batch_starts[:, None] + np.arange(rows.start, rows.stop)[None, :]).reshape(-1)


def device_batches(local_batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                   global_batch_size: int, buffer_size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Turns process-local numpy batches into global jax.Arrays sharded on the batch axis, `buffer_size` ahead.

    Keeping a batch or two in flight lets the host-to-device copy overlap the train step.
    """
    batch_sharding = sharding.batch_sharding(mesh)

    def to_global(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {name: jax.make_array_from_process_local_data(
                        batch_sharding, value, (global_batch_size,) + value.shape[1:])
                for name, value in batch.items()}

    queue: deque = deque()
    for batch in local_batches:
        queue.append(to_global(batch))
        if len(queue) > buffer_size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def global_array(value: np.ndarray, array_sharding: jax.sharding.Sharding) -> jax.Array:
    """A global jax.Array from a host array that every process holds whole; each process fills its own devices."""
    return jax.make_array_from_callback(value.shape, array_sharding, lambda index: value[index])
