"""Runs training in a fresh process for the tests that need one (device count, a killed run).

    python tests/helpers/run_training.py '<json>'

JSON fields: mode ('train' or 'losses'), workdir, metadata_dir, num_examples, overrides (config fields),
kill_after_checkpoint_step (train mode: SIGKILL the process right after the checkpoint of that step is
written), signal_after_step and signals (train mode: send itself these signals, e.g. ["SIGTERM"], right after
that train step; "SIGKILL" kills it), signals_during_save (train mode: send these when the checkpoint of
signal_after_step starts being written, e.g. a second SIGTERM), steps (losses mode), distributed (keyword arguments of
mbde_jax.distributed.settings_from: join a multi-process run). Errors and signals end the process as they end
train.py (one line; 128 + the signal). XLA_FLAGS must be set by the caller.
"""

import json
import os
import pathlib
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main(args: dict) -> None:
    import jax
    from absl import logging

    from mbde_jax import cli_errors, distributed

    if args.get("distributed"):  # as train.py's --coordinator_address, --num_processes, --process_id, ...
        distributed.initialize(distributed.settings_from(**args["distributed"]))

    logging.set_verbosity(logging.INFO)  # the tests read "resumed from step N"

    from mbde_jax import checkpoint, config_utils, lifecycle, training
    from mbde_jax.data import testing

    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.update_from_flattened_dict(args.get("overrides", {}))
    with testing.mocked_dataset(config.dataset, num_examples=args["num_examples"],
                                metadata_dir=args["metadata_dir"]):
        if args["mode"] == "train":
            kill_step = args.get("kill_after_checkpoint_step")
            if kill_step is not None:
                original_save = checkpoint.Checkpointer.save

                def save_then_die(self, step, state, meta):
                    original_save(self, step, state, meta)
                    if step == kill_step:
                        self.wait()
                        os.kill(os.getpid(), signal.SIGKILL)

                checkpoint.Checkpointer.save = save_then_die
            signal_step = args.get("signal_after_step")
            if signal_step is not None:
                original_init = training.Trainer.__init__

                def init_then_wrap(self, *init_args, **init_kwargs):
                    original_init(self, *init_args, **init_kwargs)
                    step_fn = self.train_step

                    def step_then_signal(state, batch):
                        new_state, metrics = step_fn(state, batch)
                        # This process's copy of the step: fetching the global array is a program of its own
                        # (a collective since jax 0.12.1) that the other processes would not run.
                        if int(new_state.step.addressable_data(0)) == signal_step:
                            for name in args.get("signals", ["SIGTERM"]):
                                os.kill(os.getpid(), getattr(signal, name))
                        return new_state, metrics

                    self.train_step = step_then_signal

                training.Trainer.__init__ = init_then_wrap
                if args.get("signals_during_save"):
                    original_manager_save = checkpoint.ocp.CheckpointManager.save

                    def signal_then_save(self, step, *save_args, **save_kwargs):
                        if step == signal_step:  # the handler runs inside orbax's save, which is then cut short
                            for name in args["signals_during_save"]:
                                os.kill(os.getpid(), getattr(signal, name))
                        return original_manager_save(self, step, *save_args, **save_kwargs)

                    checkpoint.ocp.CheckpointManager.save = signal_then_save
            try:
                with cli_errors.one_line_errors("train.py"):
                    training.train_and_evaluate(config, args["workdir"])
            except lifecycle.TrainingStopped as stopped:
                print(stopped, file=sys.stderr)
                sys.exit(stopped.exit_code)
        else:
            losses = loss_trajectory(config, args["steps"])
            print("LOSSES " + json.dumps({"devices": jax.device_count(), "losses": losses}))


def loss_trajectory(config, steps: int) -> list[float]:
    """The losses of the first `steps` train steps of `config` on every device of this process, on the
    dataset the caller mocked (testing.mocked_dataset)."""
    from mbde_jax import experiment, sharding, training
    from mbde_jax.data import train_input

    mesh = sharding.make_data_mesh()
    pipeline = train_input.TrainPipeline(config.dataset, global_batch_size=config.batch_size, seed=config.seed,
                                         mesh=mesh, download=False)
    trainer = training.Trainer(experiment.resolve(config, mesh=mesh), pipeline.steps_per_epoch)
    state = trainer.init_state()
    losses = []
    for batch in pipeline.epoch_batches(0):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        if len(losses) == steps:
            break
    return losses


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
