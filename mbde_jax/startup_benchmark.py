"""`mbde-benchmark startup`: from the command to the first step, in fresh processes, uncached and cached.

    mbde-benchmark startup --config configs/demo.py [--config.<field>=...] [--data auto|real|mock] [--json F]

Three training processes of the config start one after the other, each exactly as train.py starts, in a new
temporary workdir and with their own new compilation cache (MBDE_COMPILATION_CACHE=<temp dir>, empty at first):
  uncached   a new run, every program compiled;
  cached     another new run of the same config: what a second run, a sweep's next seed or a rerun reads;
  resumed    the first run's workdir again, which restores its checkpoint (cached too).
Each is stopped (SIGTERM, as a scheduler would) once its first step is done. The figures are the ready line's
(mbde_jax.startup: data, evaluation input, workdir records, model initialisation or restoring, other; the time
spent compiling inside it), the command's time to ready and to the first step done (Python, TensorFlow and JAX
imports included), and every compiled program with its seconds. --data auto trains on the real digits and on
tfds mock data (--mock_examples per split) for the other datasets, which need no download then: the "data"
piece of a mock run is not that of the real dataset. A benchmark prints figures; nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time

RUNS = ("uncached", "cached", "resumed")


def run(args, host_cpu: str) -> dict:
    """The parent: three child processes, a table, and --json; `host_cpu` names the machine's CPU."""
    config = args.config
    mock = args.data == "mock" or (args.data == "auto" and config.dataset != "digits")
    mock_examples = args.mock_examples or max(2 * config.batch_size, config.eval_batch_size)
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mbde_startup_") as scratch:
        cache = os.path.join(scratch, "xla_cache")
        for name, workdir in zip(RUNS, ("first", "second", "first")):
            results[name] = _child_run(args, os.path.join(scratch, workdir), cache,
                                       mock_examples if mock else None, os.path.join(scratch, f"{name}.json"))
    result = {"benchmark": "startup", "config": args.config_file, "overrides": list(args.overrides),
              "method": config.method, "arch": config.arch, "dataset": config.dataset,
              "data": f"mock ({mock_examples} examples per split)" if mock else "real",
              "host_cpu": host_cpu, "host_cores": os.cpu_count(),
              **{k: results["uncached"][k] for k in ("jax_version", "platform", "device_count")},
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()], "runs": results}
    _print(result)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _child_run(args, workdir: str, cache: str, mock_examples: int | None, out: str) -> dict:
    env = dict(os.environ, MBDE_COMPILATION_CACHE=cache)
    spec = {"train_argv": ["--config", args.config_file, *args.overrides, f"--workdir={workdir}"],
            "dataset": args.config.dataset, "mock_examples": mock_examples, "out": out, "spawned": time.time()}
    completed = subprocess.run([sys.executable, "-m", "mbde_jax.startup_benchmark", json.dumps(spec)], env=env,
                               capture_output=True, text=True, timeout=args.timeout)
    if not os.path.exists(out):
        raise SystemExit(f"error: the training process of the startup benchmark failed (exit {completed.returncode})"
                         f":\n{completed.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def _print(result: dict) -> None:
    runs = [result["runs"][name] for name in RUNS]
    print(f"benchmark startup: {result['config']} {' '.join(result['overrides'])}".rstrip())
    print(f"  model: method={result['method']} arch={result['arch']} dataset={result['dataset']}, "
          f"data {result['data']}")
    print(f"  {result['device_count']} x {result['platform']}; host {result['host_cpu']}, {result['host_cores']} "
          f"cores; jax {result['jax_version']}")
    rows = [("command to ready", [r["command_to_ready_s"] for r in runs]),
            ("ready (the ready line)", [r["ready"]["total_s"] for r in runs])]
    names = []
    for r in runs:
        names += [n for n in r["ready"]["pieces_s"] if n not in names and not n.startswith("restoring")]
    for piece in names:
        rows.append((f"  {piece}", [r["ready"]["pieces_s"].get(piece) for r in runs]))
    rows.append(("  restoring the checkpoint", [next((v for k, v in r["ready"]["pieces_s"].items()
                                                       if k.startswith("restoring")), None) for r in runs]))
    rows.append(("  of which compiling", [r["ready"]["compile_s"] for r in runs]))
    rows.append(("first step done (after ready)", [r["first_step_s"] for r in runs]))
    rows.append(("command to first step done", [r["command_to_first_step_s"] for r in runs]))
    print(f"  {'seconds':<32}" + "".join(f"{name:>11}" for name in RUNS))
    for label, values in rows:
        print(f"  {label:<32}" + "".join(f"{'-' if v is None else f'{v:.1f}':>11}" for v in values))
    for name, r in zip(RUNS, runs):
        compiled = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["compiled_s"].items(), key=lambda kv: -kv[1])
                             if v >= 0.05)
        print(f"  {name}: compiled or read {compiled or 'nothing over 0.05 s'}; {r['cache_hits']} of all its "
              f"programs read from the cache")
    print(f"  load average {result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} "
          f"after")


class _Watcher(logging.Handler):
    """Keeps the ready line's figures and stops the run (SIGTERM) once its first step is done."""

    def __init__(self):
        super().__init__()
        self.ready, self.ready_at, self.first_step_at = None, None, None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "startup_seconds", None) is not None:
            self.ready, self.ready_at = record.startup_seconds, record.created
        elif str(record.msg).startswith("first step done") and self.first_step_at is None:
            self.first_step_at = record.created
            os.kill(os.getpid(), signal.SIGTERM)  # checkpoints after this step, as a scheduler's stop does


def _child(spec: dict) -> None:
    """One training process: train.py's start-up, stopped after its first step; its figures into spec['out']."""
    import jax  # pylint: disable=import-outside-toplevel

    from mbde_jax import startup, train  # pylint: disable=import-outside-toplevel

    watcher = _Watcher()
    logging.getLogger().addHandler(watcher)
    clock = startup.StartupClock(spec["spawned"])
    with clock.listening(), contextlib.ExitStack() as stack:
        if spec["mock_examples"]:
            from mbde_jax.data import testing  # pylint: disable=import-outside-toplevel

            metadata = stack.enter_context(tempfile.TemporaryDirectory(prefix="mbde_startup_meta_"))
            stack.enter_context(testing.mocked_dataset(spec["dataset"], num_examples=spec["mock_examples"],
                                                       metadata_dir=metadata))
        try:
            train.main(["train.py", *spec["train_argv"]])
        except SystemExit as stopped:  # the SIGTERM's stop; anything else is an error
            if watcher.first_step_at is None:
                raise
            del stopped
    devices = jax.devices()
    figures = clock.figures()
    result = {"ready": watcher.ready, "command_to_ready_s": round(watcher.ready_at - spec["spawned"], 3),
              "first_step_s": round(watcher.first_step_at - watcher.ready_at, 3),
              "command_to_first_step_s": round(watcher.first_step_at - spec["spawned"], 3),
              "compiled_s": figures["compiled_s"], "cache_hits": figures["cache_hits"],
              "jax_version": jax.__version__, "platform": devices[0].platform, "device_count": len(devices)}
    with open(spec["out"], "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
