"""Dataset preparation from the command line.

    mbde-data prepare <dataset> [--data_dir DIR] [--manual_dir DIR]      (or python -m mbde_jax.data prepare ...)

prepares a dataset ahead of training (downloads it, or reads CINIC-10.tar.gz from the manual directory, and
writes the tfds files) and prints where it went and how big it is. Training would prepare a missing dataset
itself; doing it here first lets a cluster job start on data that is already there, or a machine with network
prepare data for one without (copy <data_dir>/<tfds name> across).

Datasets: cifar10, cifar100 (downloaded from cs.toronto.edu), cinic10 (CINIC-10.tar.gz, downloaded from the
Edinburgh DataShare or placed in the manual directory), digits (scikit-learn's bundled digits, no network).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from mbde_jax import command_line
from mbde_jax.data import info as dataset_info

TOOL = "mbde_jax.data"


def define(fv: command_line.Flags):
    return (flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or "
                                "~/tensorflow_datasets).", flag_values=fv),
            flags.DEFINE_string("manual_dir", None, "Directory holding a manually downloaded CINIC-10.tar.gz "
                                "(default: <data_dir>/downloads/manual).", flag_values=fv))


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference("mbde-data", __doc__, define)]


def _directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _human_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:,.0f} {unit}" if unit == "B" else f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def prepare_command(dataset: str, data_dir: str | None, manual_dir: str | None) -> int:
    """Prepares `dataset` and prints where it is and how big; 1 with one line on stderr when it cannot."""
    if dataset not in dataset_info.DATASETS:
        raise SystemExit(f"mbde_jax.data: error: unknown dataset {dataset!r}; valid datasets are "
                         f"{sorted(dataset_info.DATASETS)}.")
    # Imported here so that `--help` and a misspelt dataset answer without loading TensorFlow.
    from mbde_jax.data import cinic10, preparation  # pylint: disable=import-outside-toplevel

    try:
        builder = preparation.prepare(dataset, data_dir=data_dir, manual_dir=manual_dir)
    except (preparation.DatasetUnavailableError, cinic10.ArchiveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = builder.info.splits
    print(f"{dataset} (tfds {builder.name} {builder.version}) is prepared in {builder.data_dir}: "
          f"{_human_bytes(_directory_bytes(builder.data_dir))} on disk.")
    for name in sorted(splits.keys()):
        print(f"  {name}: {splits[name].num_examples:,} examples")
    return 0


def main(argv: Sequence[str]) -> int:
    """The command from Python: argv without the program name, e.g. ['prepare', 'digits', '--data_dir', D]."""
    (data_dir, manual_dir), positional = command_line.parse(TOOL, __doc__, [TOOL, *argv], define)
    if len(positional) != 2 or positional[0] != "prepare":
        raise SystemExit(f"{TOOL}: error: usage: {TOOL} prepare <dataset> [--data_dir DIR] [--manual_dir DIR]; "
                         f"got {positional}.")
    command_line.before_jax()
    return prepare_command(positional[1], data_dir.value, manual_dir.value)
