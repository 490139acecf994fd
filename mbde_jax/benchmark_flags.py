"""Throughput measurements, one subcommand each (`python -m mbde_jax.benchmark` is the same command).

    mbde-benchmark train --config configs/paper.py:cifar100,resnet32 [--config.<field>=<value> ...]
                         [--steps 20] [--warmup 3] [--json out.json] [--compare_xla_option NAME=VALUE]
    mbde-benchmark eval --config configs/paper.py:cifar100,resnet32 [--steps 20] [--json out.json]
    mbde-benchmark input --dataset digits
    mbde-benchmark input --dataset cifar10 --data mock --mock_examples 20000 [--input_on_device]
    mbde-benchmark startup --config configs/demo.py [--config.<field>=<value> ...] [--data mock] [--json out.json]

`train`: the jitted train step of the config on synthetic data of the config's shapes (random normalised images
and labels already on the devices, sharded as the training loop shards them), so it runs anywhere. It prints the
devices, the compile time, the steady-state images/s (median over --steps steps after --warmup, each step's
result blocked on), XLA's FLOP count of the step, the peak host memory and, on GPU/TPU, the peak device memory,
and the load average before and after (on a shared machine the figures are only as good as that number).
`eval`: the same for the evaluation step at config.eval_batch_size.
`--compare_xla_option NAME=VALUE` (train, eval): the step is also compiled with that XLA option and the two
programs are timed in turn, one step each; the line it adds gives the option's images/s and its speed over the
default's. On a shared VM whose speed drifts by minutes, this is the fair A/B (separate runs are not).
`input`: training images per second that the input pipeline delivers as global jax.Arrays on the local devices
(every batch waited for with block_until_ready, epochs chained as the training loop chains them, so the
per-epoch set-up is included). Pipeline construction (reading the split into memory) is not timed.
`startup`: from the command to the first step, uncached, cached and resumed (mbde_jax.startup_benchmark).

Like train.py, `train` and `eval` split a CPU-only host into config.cpu_devices JAX devices (auto: 2 on 2+
cores) before JAX starts; pass --config.cpu_devices=1 to measure a single device.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from absl import flags

from mbde_jax import cli_errors, command_line

TOOL = "mbde_jax.benchmark"
USAGE = __doc__
COMMANDS = ("train", "eval", "input", "startup")


def form_usage(command: str) -> str:
    """The part of the usage about benchmark `command`: its usage lines and the paragraphs (each starts a line with
    a backquote, or after a blank line) naming it before their first colon."""
    _, usage_lines, prose = USAGE.strip().split("\n\n", 2)
    paragraphs = re.split(r"\n(?=`)|\n\n", prose)
    ours = re.findall(rf"^    mbde-benchmark {command} .*(?:\n {{10,}}.*)*", usage_lines, re.MULTILINE)
    named = [text for text in paragraphs if re.search(rf"\b{command}\b", text.split(":", 1)[0])]
    return "usage:\n" + "\n".join(ours) + "\n\n" + "\n\n".join(named)


def define(command: str, argv: Sequence[str]) -> command_line.Define:
    """The flags of benchmark `command` (--config overrides from `argv`)."""
    return lambda fv: _define(command, fv, argv)


def _define(command: str, fv: command_line.Flags, argv: Sequence[str]) -> dict:
    holders = {"seed": flags.DEFINE_integer("seed", 0, "Seed of the synthetic or shuffled data.", flag_values=fv),
               "json_path": flags.DEFINE_string("json", None, "Also write the figures to this JSON file.",
                                                flag_values=fv)}
    if command in ("train", "eval"):
        return dict(holders, config=command_line.config_flag(fv, argv),
                    steps=flags.DEFINE_integer("steps", 20, "Timed steps.", flag_values=fv),
                    warmup=flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.", flag_values=fv),
                    compare_xla_option=flags.DEFINE_string(
                        "compare_xla_option", None, "NAME=VALUE: also compile the step with this XLA option "
                        "(e.g. xla_cpu_enable_concurrency_optimized_scheduler=true) and time the two programs in "
                        "turn, one step each, so that a machine's drift hits both alike.", flag_values=fv))
    if command == "startup":
        return dict(holders, config=command_line.config_flag(fv, argv),
                    data=flags.DEFINE_enum("data", "auto", ["auto", "real", "mock"], "real: the prepared dataset; "
                                           "mock: tfds mock data; auto: real for digits, mock otherwise.",
                                           flag_values=fv),
                    mock_examples=flags.DEFINE_integer("mock_examples", 0, "Examples per split with mock data (0: "
                                                       "two batches).", flag_values=fv),
                    timeout=flags.DEFINE_integer("timeout", 3600, "Seconds each training process may take.",
                                                 flag_values=fv))
    from mbde_jax.data import info as dataset_info  # pylint: disable=import-outside-toplevel

    holders["dataset"] = flags.DEFINE_enum("dataset", None, sorted(dataset_info.DATASETS), "Dataset.",
                                           flag_values=fv)
    flags.mark_flag_as_required("dataset", fv)
    return dict(
        holders,
        data=flags.DEFINE_enum("data", "auto", ["auto", "real", "mock"], "real: the prepared dataset; mock: tfds "
                               "mock data; auto: real for digits, mock otherwise.", flag_values=fv),
        mock_examples=flags.DEFINE_integer("mock_examples", 10_000, "Examples per split with --data=mock.",
                                           flag_values=fv),
        batch_size=flags.DEFINE_integer("batch_size", 128, "Global batch size.", flag_values=fv),
        num_batches=flags.DEFINE_integer("num_batches", 300, "Batches timed.", flag_values=fv),
        data_dir=flags.DEFINE_string("data_dir", None, "tfds data directory for --data=real.", flag_values=fv),
        input_on_device=flags.DEFINE_bool("input_on_device", False, "Measure the device-resident pipeline "
                                          "(config.input_on_device).", flag_values=fv),
        cpu_devices=flags.DEFINE_integer("cpu_devices", 0, "JAX devices a CPU-only host is split into, as "
                                         "config.cpu_devices (0: auto, as training).", flag_values=fv))


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference(f"mbde-benchmark {command}", form_usage(command), define(command, [TOOL]))
            for command in COMMANDS]


def parse(argv: Sequence[str]) -> dict:
    """The keyword arguments of mbde_jax.benchmark.run for the command line `argv` (argv[0] the program, argv[1]
    the benchmark); JAX's set-up (command_line.before_jax) done."""
    argv = list(argv)
    command = argv[1] if len(argv) > 1 else None
    if command in ("-h", "--help", "--helpfull"):
        print(USAGE.strip())
        raise SystemExit(0)
    if command not in COMMANDS:
        raise SystemExit(f"{TOOL}: error: the first argument names the benchmark, one of "
                         f"{', '.join(COMMANDS)}; got {command!r} (--help lists them).")
    tool = f"{TOOL} {command}"
    holders, positional = command_line.parse(tool, USAGE, [argv[0]] + argv[2:], define(command, argv))
    command_line.no_positional(tool, positional)
    settings = {name: holder.value for name, holder in holders.items()}
    settings["overrides"] = [arg for arg in argv[2:] if arg.startswith("--config.")]
    if "config" in settings:
        settings["config_file"] = cli_errors.flag_text(argv, "config")
    command_line.before_jax()
    return dict(command=command, **settings)
