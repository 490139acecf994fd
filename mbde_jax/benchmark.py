"""Throughput measurements, one subcommand each: train, eval, input, startup. The usage and what each measures
are mbde_jax.benchmark_flags's (`mbde-benchmark --help`); `python -m mbde_jax.benchmark` is the same command.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import types

from mbde_jax import benchmark_flags, command_line
from mbde_jax.data import info as dataset_info

COMMANDS = benchmark_flags.COMMANDS


# --------------------------------------------------------------------------------------------------------------
# Measurements shared by `train` and `eval`.


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_host_memory_gib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def _peak_device_memory_gib(devices) -> float | None:
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # pylint: disable=broad-except  # CPU and some plugins have no statistics
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / (1 << 30) if peaks else None


def _flops(compiled, num_devices: int) -> float | None:
    """XLA's FLOP count of one call over all devices (the cost analysis is of the per-device program)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # pylint: disable=broad-except  # not every backend implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) * num_devices if flops else None


def _time_in_turn(run_steps: list, steps: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each run_steps[i]() (each blocks on its result), after `warmup` untimed calls of each,
    the timed calls made one of each in turn (one run_step: plain timing)."""
    for run_step in run_steps:
        for _ in range(warmup):
            run_step()
    times = [[] for _ in run_steps]
    for _ in range(steps):
        for run_step, its_times in zip(run_steps, times):
            start = time.perf_counter()
            run_step()
            its_times.append(time.perf_counter() - start)
    return times


def parse_xla_option(text: str) -> dict:
    """'name=value' -> {name: value}, the value a bool, int or float where it reads as one, else the string."""
    name, separator, value = text.partition("=")
    name = name.strip().removeprefix("--")
    if not separator or not name:
        raise SystemExit(f"error: --compare_xla_option takes NAME=VALUE (e.g. "
                         f"xla_cpu_enable_concurrency_optimized_scheduler=true); got {text!r}.")
    for parse in (lambda v: {"true": True, "false": False}[v.lower()], int, float):
        try:
            return {name: parse(value)}
        except (KeyError, ValueError):
            pass
    return {name: value}


def _machine_figures() -> dict:
    """Where a figure was measured: devices, host CPU, JAX version, and the load average at the end."""
    import jax  # pylint: disable=import-outside-toplevel

    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "device_count": len(devices),
            "host_cpu": _cpu_model(), "host_cores": os.cpu_count(), "jax_version": jax.__version__,
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def _report(kind: str, args: types.SimpleNamespace, config, batch_size: int, compile_s: float, times: list[float],
            flops: float | None, load_before: tuple, extra: dict, compile_from_cache: bool,
            compared: dict | None = None) -> dict:
    import jax  # pylint: disable=import-outside-toplevel

    devices = jax.devices()
    median = statistics.median(times)
    result = {
        "benchmark": kind,
        "config": args.config_file,
        "overrides": list(args.overrides),
        "method": config.method,
        "arch": config.arch,
        "dataset": config.dataset,
        "batch_size": batch_size,
        "compute_dtype": config.compute_dtype,
        **_machine_figures(),
        "compile_s": round(compile_s, 4),
        "compile_from_cache": compile_from_cache,
        "steps": len(times),
        "step_ms_median": round(median * 1e3, 2),
        "step_ms_min": round(min(times) * 1e3, 2),
        "step_ms_mean": round(statistics.fmean(times) * 1e3, 2),
        "images_per_s": round(batch_size / median, 2),
        "gflop_per_image": round(flops / batch_size / 1e9, 4) if flops else None,
        "gflop_per_s": round(flops / median / 1e9, 1) if flops else None,
        "peak_host_memory_gib": round(_peak_host_memory_gib(), 3),
        "peak_device_memory_gib": (None if devices[0].platform == "cpu"
                                   else _peak_device_memory_gib(jax.local_devices())),
        "load_average_before": [round(v, 2) for v in load_before],
        **extra,
    }
    print(f"benchmark {kind}: {args.config_file} {' '.join(args.overrides)}".rstrip())
    print(f"  model: method={config.method} arch={config.arch} dataset={config.dataset} "
          f"batch={batch_size} compute_dtype={config.compute_dtype} "
          + " ".join(f"{k}={v}" for k, v in extra.items()))
    print(f"  devices: {len(devices)} x {devices[0].platform} ({devices[0].device_kind}); host {result['host_cpu']}, "
          f"{os.cpu_count()} cores; jax {jax.__version__}")
    cached = " (read from the persistent compilation cache, not compiled)" if compile_from_cache else ""
    print(f"  compile {compile_s:.1f} s{cached}; {len(times)} steps after {args.warmup} warm-up: "
          f"median {median * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, mean {statistics.fmean(times) * 1e3:.1f}) = "
          f"{result['images_per_s']:,.1f} images/s")
    if extra.get("num_seeds", 1) > 1:
        result["images_per_s_per_seed"] = round(result["images_per_s"] / extra["num_seeds"], 2)
        print(f"  {extra['num_seeds']} seeds in one step ({extra['seed_execution']}): "
              f"{result['images_per_s_per_seed']:,.1f} images/s per seed")
    if flops:
        print(f"  XLA cost analysis: {result['gflop_per_image']:.3f} GFLOP/image, {result['gflop_per_s']:.0f} GFLOP/s")
    if compared:
        result["compared"] = compared
        print(f"  with {compared['xla_option']}={compared['value']}, timed in turn with the above: median "
              f"{compared['step_ms_median']:.1f} ms = {compared['images_per_s']:,.1f} images/s, "
              f"{compared['speedup_over_default']:.3f}x the default's speed")
    device_memory = result["peak_device_memory_gib"]
    print(f"  peak host memory {result['peak_host_memory_gib']:.2f} GiB"
          + (f"; peak device memory {device_memory:.2f} GiB" if device_memory is not None else "")
          + f"; load average {load_before[0]:.2f} before, {result['load_average_after'][0]:.2f} after")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


@contextlib.contextmanager
def _persistent_cache_hits():
    """Yields a list that receives one entry per executable read from JAX's persistent compilation cache
    (JAX_COMPILATION_CACHE_DIR) inside the block: such a "compile" is only a file read."""
    import jax  # pylint: disable=import-outside-toplevel

    hits = []

    def listener(event: str, **_) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    jax.monitoring.register_event_listener(listener)
    try:
        yield hits
    finally:
        jax.monitoring.unregister_event_listener(listener)


def _setup(args: types.SimpleNamespace):
    """The experiment (devices split before JAX starts) and a Trainer for it; for `train`, also the seed group
    of config.num_seeds seeds (one seed: a group of one) that is timed."""
    from mbde_jax import experiment as experiment_lib, logs, seed_group, training  # pylint: disable=import-outside-toplevel

    experiment = experiment_lib.resolve(args.config)
    logs.quiet_library_info_logs()
    # Every timed step lies in the first epoch (its learning rate and ramp-up weight); the epoch length is not
    # part of the step's cost.
    steps_per_epoch = args.warmup + args.steps + 1
    trainer = training.Trainer(experiment, steps_per_epoch=steps_per_epoch)
    group = None
    if args.command == "train":
        seeds = [experiment] if args.config.num_seeds == 1 else [
            experiment_lib.resolve(config) for config in training.seed_configs(args.config)]
        execution = "loop" if len(seeds) == 1 else seed_group.resolve_seed_execution(args.config.seed_execution)
        group = seed_group.SeedGroup(seeds, steps_per_epoch, execution)
    return experiment, trainer, group


def _synthetic_batch(config, batch_size: int, mesh, seed: int, with_mask: bool):
    """Random normalised images and labels of the config's dataset, sharded on the batch axis."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from mbde_jax import sharding  # pylint: disable=import-outside-toplevel

    info = dataset_info.get_dataset_info(config.dataset)
    rng = np.random.default_rng(seed)
    batch = {"image": rng.standard_normal((batch_size, *info.image_shape), np.float32),
             "label": rng.integers(0, info.num_classes, batch_size).astype(np.int32)}
    if with_mask:
        batch["mask"] = np.ones(batch_size, np.int32)
    return jax.device_put(batch, sharding.batch_sharding(mesh))


def _step_command(args: types.SimpleNamespace) -> dict:
    """`train` or `eval` (args.command): compile the step, time it, report."""
    load_before = os.getloadavg()
    option = parse_xla_option(args.compare_xla_option) if args.compare_xla_option else None
    experiment, trainer, group = _setup(args)
    import jax  # pylint: disable=import-outside-toplevel

    config, mesh = experiment.config, experiment.mesh
    extra = {"num_branches": experiment.num_branches, "branch_execution": experiment.model.branch_execution}
    if args.command == "train":
        state = group.init()
        # each seed its own batch, as each seed of a group reads its own data order
        batches = [_synthetic_batch(config, config.batch_size, mesh, args.seed + i, with_mask=False)
                   for i in range(group.size)]
        lowered = lambda: group.lower_train_step(state, batches)  # noqa: E731
        run = lambda compiled, state: group.run_compiled(compiled, state, batches)  # noqa: E731
        batch_size = config.batch_size * group.size  # images per step, every seed's
        calls_per_step = 1 if group.execution == "vmap" else group.size
        extra.update(num_seeds=group.size, seed_execution=group.execution)
    else:
        state = trainer.init_state()
        batch = _synthetic_batch(config, config.eval_batch_size, mesh, args.seed, with_mask=True)
        lowered = lambda: trainer.eval_step.lower(state, batch)  # noqa: E731
        run = lambda compiled, state: (state, compiled(state, batch))  # noqa: E731
        batch_size, calls_per_step = config.eval_batch_size, 1
    with _persistent_cache_hits() as cache_hits:
        start = time.perf_counter()
        compiled = lowered().compile()
        compile_s = time.perf_counter() - start
    holder = [state]

    def stepper(executable):
        def run_step():
            # a train step donates its state: carry it from step to step
            holder[0], outputs = run(executable, holder[0])
            jax.block_until_ready((holder[0], outputs))
        return run_step

    executables = [compiled]
    if option is not None:
        try:
            executables.append(lowered().compile(compiler_options=option))
        except Exception as error:  # pylint: disable=broad-except  # XLA names the option and what is wrong
            raise SystemExit(f"error: --compare_xla_option {args.compare_xla_option}: XLA refused it: "
                             f"{str(error).splitlines()[0]}") from None
    times, *option_times = _time_in_turn([stepper(e) for e in executables], args.steps, args.warmup)
    flops = _flops(compiled, mesh.devices.size)
    return _report(args.command, args, config, batch_size, compile_s, times, flops and flops * calls_per_step,
                   load_before, extra, compile_from_cache=bool(cache_hits),
                   compared=_compared(option, times, option_times[0], batch_size) if option_times else None)


def _compared(option: dict, times: list[float], option_times: list[float], batch_size: int) -> dict:
    """The figures of the step compiled with `option`, beside the default's (timed in turn with it)."""
    (name, value), = option.items()
    median = statistics.median(option_times)
    return {"xla_option": name, "value": value, "step_ms_median": round(median * 1e3, 2),
            "images_per_s": round(batch_size / median, 2),
            "speedup_over_default": round(statistics.median(times) / median, 3)}


# --------------------------------------------------------------------------------------------------------------
# Input pipeline.


def _input_command(args: types.SimpleNamespace) -> None:
    # Imported here so that `--help` answers without loading TensorFlow and JAX.
    import jax  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    from mbde_jax import sharding  # pylint: disable=import-outside-toplevel
    from mbde_jax.data import testing, tf_runtime, train_input  # pylint: disable=import-outside-toplevel

    # The same CPU devices as training would use, so that the batches are sharded as the train step reads them.
    sharding.configure_host_devices(ml_collections.ConfigDict(
            {"cpu_devices": args.cpu_devices, "batch_size": args.batch_size, "eval_batch_size": args.batch_size}))
    source = args.data
    if source == "auto":
        source = "real" if args.dataset == "digits" else "mock"
    with contextlib.ExitStack() as stack:
        if source == "mock":
            metadata_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mbde_benchmark_"))
            stack.enter_context(testing.mocked_dataset(
                    args.dataset, num_examples=args.mock_examples, metadata_dir=metadata_dir))
        mesh = sharding.make_data_mesh()
        start = time.perf_counter()
        pipeline_cls = train_input.DeviceTrainPipeline if args.input_on_device else train_input.TrainPipeline
        pipeline = pipeline_cls(args.dataset, global_batch_size=args.batch_size, seed=args.seed, mesh=mesh,
                                data_dir=args.data_dir)
        load_s = time.perf_counter() - start

        def batches():
            epoch = 0
            while True:
                yield from pipeline.epoch_batches(epoch)
                epoch += 1

        stream = batches()
        jax.block_until_ready(next(stream))  # Warm-up: traces the tf.data functions (or compiles the device ones).
        start = time.perf_counter()
        for _ in range(args.num_batches):
            jax.block_until_ready(next(stream))
        elapsed = time.perf_counter() - start
    images_per_s = args.num_batches * args.batch_size / elapsed
    print(f"input pipeline: dataset={args.dataset} data={source} examples={pipeline.num_examples} "
          f"batch={args.batch_size} steps/epoch={pipeline.steps_per_epoch} devices={mesh.devices.size} "
          f"({jax.devices()[0].platform}) cpus={os.cpu_count()} tf_threads={tf_runtime.TF_THREADS} "
          f"on_device={args.input_on_device}")
    print(f"  load {load_s:.1f} s; {args.num_batches} batches in {elapsed:.2f} s: "
          f"{images_per_s:,.0f} training images/s ({elapsed / args.num_batches * 1e3:.1f} ms/batch); "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"benchmark": "input", "dataset": args.dataset, "data": source,
                       "examples": pipeline.num_examples, "batch_size": args.batch_size,
                       "on_device": args.input_on_device, "load_s": round(load_s, 2),
                       "batches": args.num_batches, "images_per_s": round(images_per_s, 1),
                       "ms_per_batch": round(elapsed / args.num_batches * 1e3, 2), **_machine_figures()},
                      f, indent=2)


def run(command: str, **settings):
    """Runs benchmark `command` ('train', 'eval', 'input' or 'startup') with the settings benchmark_flags parsed;
    returns the figures of 'train', 'eval' and 'startup'."""
    from mbde_jax import config_validation  # pylint: disable=import-outside-toplevel

    args = types.SimpleNamespace(command=command, **settings)
    if command == "startup":
        from mbde_jax import startup_benchmark  # pylint: disable=import-outside-toplevel

        return startup_benchmark.run(args, host_cpu=_cpu_model())
    try:
        return _input_command(args) if command == "input" else _step_command(args)
    except config_validation.ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def main(argv):
    """`python -m mbde_jax.benchmark` from Python: argv without the program name, e.g. ['train', '--config', F]."""
    return run(**benchmark_flags.parse(["mbde_jax.benchmark", *argv]))


if __name__ == "__main__":
    sys.exit(command_line.exit_status(main(sys.argv[1:])))
