"""Dataset preparation from the command line.

    python -m mbde_jax.data prepare <dataset> [--data_dir DIR] [--manual_dir DIR]

prepares a dataset ahead of training (downloads it, or reads CINIC-10.tar.gz from the manual directory, and
writes the tfds files) and prints where it went and how big it is. Training would prepare a missing dataset
itself; doing it here first lets a cluster job start on data that is already there, or a machine with network
prepare data for one without (copy <data_dir>/<tfds name> across).

Datasets: cifar10, cifar100 (downloaded from cs.toronto.edu), cinic10 (CINIC-10.tar.gz, downloaded from the
Edinburgh DataShare or placed in the manual directory), digits (scikit-learn's bundled digits, no network).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mbde_jax.data import info as dataset_info


def _directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _human_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:,.0f} {unit}" if unit == "B" else f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _prepare_command(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and a misspelt dataset answer without loading TensorFlow.
    from mbde_jax.data import cinic10, preparation  # pylint: disable=import-outside-toplevel

    try:
        builder = preparation.prepare(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir)
    except (preparation.DatasetUnavailableError, cinic10.ArchiveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = builder.info.splits
    print(f"{args.dataset} (tfds {builder.name} {builder.version}) is prepared in {builder.data_dir}: "
          f"{_human_bytes(_directory_bytes(builder.data_dir))} on disk.")
    for name in sorted(splits.keys()):
        print(f"  {name}: {splits[name].num_examples:,} examples")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mbde_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    prepare = subparsers.add_parser("prepare", help="download (if needed) and prepare a dataset")
    prepare.add_argument("dataset", help=f"one of {', '.join(sorted(dataset_info.DATASETS))}")
    prepare.add_argument("--data_dir", default=None,
                         help="tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    prepare.add_argument("--manual_dir", default=None,
                         help="directory holding a manually downloaded CINIC-10.tar.gz "
                              "(default: <data_dir>/downloads/manual)")
    prepare.set_defaults(run=_prepare_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        dataset_info.get_dataset_info(args.dataset)
    except ValueError as e:
        parser.error(str(e))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
