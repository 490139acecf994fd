"""Throughput measurements, one subcommand each.

    python -m mbde_jax.benchmark input --dataset digits
    python -m mbde_jax.benchmark input --dataset cifar10 --data mock --mock_examples 20000

`input`: training images per second that TrainPipeline delivers as global jax.Arrays on the local devices
(every batch waited for with block_until_ready, epochs chained as the training loop chains them, so the
per-epoch set-up is included). Pipeline construction (reading the split into memory) is not timed.

Subcommands for the train and eval steps are meant to be added beside `input`: one function
`_<name>_command(args) -> None` and one `subparsers.add_parser` block in `_parser()`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence

from mbde_jax.datasets import info as dataset_info


def _input_command(args: argparse.Namespace) -> None:
    # Imported here so that `--help` answers without loading TensorFlow and JAX.
    import jax  # pylint: disable=import-outside-toplevel

    from mbde_jax import input_pipeline, sharding  # pylint: disable=import-outside-toplevel

    source = args.data
    if source == "auto":
        source = "real" if args.dataset == "digits" else "mock"
    with contextlib.ExitStack() as stack:
        if source == "mock":
            metadata_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mbde_benchmark_"))
            stack.enter_context(input_pipeline.mocked_dataset(
                    args.dataset, num_examples=args.mock_examples, metadata_dir=metadata_dir))
        mesh = sharding.make_data_mesh()
        start = time.perf_counter()
        pipeline = input_pipeline.TrainPipeline(args.dataset, global_batch_size=args.batch_size, seed=args.seed,
                                                mesh=mesh, data_dir=args.data_dir)
        load_s = time.perf_counter() - start

        def batches():
            epoch = 0
            while True:
                yield from pipeline.epoch_batches(epoch)
                epoch += 1

        stream = batches()
        jax.block_until_ready(next(stream))  # Warm-up: traces the tf.data functions.
        start = time.perf_counter()
        for _ in range(args.num_batches):
            jax.block_until_ready(next(stream))
        elapsed = time.perf_counter() - start
    images_per_s = args.num_batches * args.batch_size / elapsed
    print(f"input pipeline: dataset={args.dataset} data={source} examples={pipeline.num_examples} "
          f"batch={args.batch_size} steps/epoch={pipeline.steps_per_epoch} devices={mesh.devices.size} "
          f"({jax.devices()[0].platform}) cpus={os.cpu_count()} tf_threads={input_pipeline.TF_THREADS}")
    print(f"  load {load_s:.1f} s; {args.num_batches} batches in {elapsed:.2f} s: "
          f"{images_per_s:,.0f} training images/s ({elapsed / args.num_batches * 1e3:.1f} ms/batch)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mbde_jax.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)

    input_parser = subparsers.add_parser("input", help="training images/s delivered by the input pipeline")
    input_parser.add_argument("--dataset", required=True, choices=sorted(dataset_info.DATASETS))
    input_parser.add_argument("--data", choices=("auto", "real", "mock"), default="auto",
                              help="real: the prepared dataset; mock: tfds mock data; auto: real for digits, "
                                   "mock otherwise (default)")
    input_parser.add_argument("--mock_examples", type=int, default=10_000,
                              help="examples per split with --data mock (default 10000)")
    input_parser.add_argument("--batch_size", type=int, default=128, help="global batch size (default 128)")
    input_parser.add_argument("--num_batches", type=int, default=300, help="batches timed (default 300)")
    input_parser.add_argument("--seed", type=int, default=0)
    input_parser.add_argument("--data_dir", default=None, help="tfds data directory for --data real")
    input_parser.set_defaults(run=_input_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
