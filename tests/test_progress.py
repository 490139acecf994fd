"""The console's progress, evaluation and closing lines, on a fake clock."""

import pytest

from mbde_jax import progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def lines(monkeypatch):
    logged = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    return logged


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (59.6, "0:01:00"), (3725.4, "1:02:05"),
                                           (-3, "0:00:00"), (36000, "10:00:00")])
def test_hours_minutes_seconds(seconds, text):
    assert progress.hours_minutes_seconds(seconds) == text


def _console(clock, **overrides):
    settings = dict(total_steps=100, steps_per_epoch=10, num_epochs=10, global_batch=32, every_seconds=30.0,
                    start_step=0, evaluations_left=lambda step: 10 - step // 10, clock=clock)
    return progress.ConsoleProgress(**dict(settings, **overrides))


def test_a_line_every_30_seconds_with_images_per_second_and_eta(lines):
    clock = FakeClock()
    console = _console(clock)
    clock.now += 12.0  # the first step compiles
    assert console.step_done(1, None) is None
    assert lines == ["first step done in 12.0 s (it compiles the train step or reads it from the cache); next line in 30 s"]
    rates = []
    for step in range(2, 32):
        clock.now += 1.0
        rates.append(console.step_done(step, 2.5))
    # 30 steps of batch 32 in 30 s; ETA: 69 steps at 1 s each, no evaluation timed yet
    assert rates[:-1] == [None] * 29 and rates[-1] == pytest.approx(32.0)
    assert lines[1] == "epoch 4/10  step 31/100 (31%)  32.0 images/s  loss 2.5  ETA 0:01:09"


def test_evaluations_are_left_out_of_the_rate_and_added_to_the_eta(lines):
    clock = FakeClock()
    console = _console(clock, every_seconds=25.0)
    console.step_done(1, None)  # compiling step (takes no time on this clock)
    for step in range(2, 11):
        clock.now += 1.0
        console.step_done(step, 1.0)
    started = console.evaluation_started()
    clock.now += 6.0
    best = {"epoch": 1, "metrics": {"top1/deployed": 50.0}}
    metrics = {"deployed_head": "leader", "top1/deployed": 50.0, "top1/peer_ensemble": 48.25, "diversity": 0.125}
    console.evaluation_done(started, 1, [(0, metrics, best)])
    assert lines[-1] == ("epoch 1/10  test top-1 leader 50.00% (best 50.00%, epoch 1)  peer ensemble 48.25%  "
                         "diversity 0.1250  eval 6.0 s")
    rates = []
    for step in range(11, 21):
        clock.now += 1.0
        rates.append(console.step_done(step, 1.0))
    # 19 steps in 25 s of which 6 were the evaluation: 32 images/s. ETA: 80 steps at 1 s + 8 evaluations at 6 s
    assert rates[:-1] == [None] * 9 and rates[-1] == pytest.approx(32.0)
    assert lines[-1] == "epoch 2/10  step 20/100 (20%)  32.0 images/s  loss 1  ETA 0:02:08"
    assert console.train_images_per_second(20) == pytest.approx(32.0)


def test_a_seed_group_logs_its_total_rate_and_one_evaluation_line_per_seed(lines):
    clock = FakeClock()
    console = _console(clock, every_seconds=10.0, global_batch=3 * 4, num_seeds=3)
    console.step_done(1, None)
    for step in range(2, 12):
        clock.now += 1.0
        console.step_done(step, 2.5)
    # 10 steps of 3 seeds x 4 images in 10 s
    assert lines[-1] == "epoch 2/10  step 11/100 (11%)  12.0 images/s (3 seeds; loss: their mean)  loss 2.5  ETA " \
                        + progress.hours_minutes_seconds(console.eta_seconds(11))
    started = console.evaluation_started()
    clock.now += 2.0
    entries = [(seed, {"deployed_head": "leader", "top1/deployed": 40.0 + seed, "top1/peer_ensemble": 30.0,
                       "diversity": 0.5}, {"epoch": 1, "metrics": {"top1/deployed": 45.0}}) for seed in (4, 5, 6)]
    console.evaluation_done(started, 1, entries)
    assert [line.split(" test top-1")[0] for line in lines[-3:]] == ["epoch 1/10  seed 4:", "epoch 1/10  seed 5:",
                                                                "epoch 1/10  seed 6:"]
    assert "leader 46.00% (best 45.00%, epoch 1)" in lines[-1] and lines[-1].endswith("eval 2.0 s")


def test_final_block_names_the_results_file_final_and_best(lines):
    best = {"epoch": 8, "metrics": {"top1/deployed": 97.5}}
    final = {"epoch": 10, "metrics": {"top1/deployed": 96.25, "top1/peer_ensemble": 96.5}}
    results = {"method": "mbde", "dataset": "digits", "arch": "resnet32", "num_branches": 4, "num_epochs": 10,
               "steps": 450, "final": final, "best": best, "deployed_head": "leader", "train_seconds": 130.0,
               "train_images_per_second": 123.45}
    progress.log_final_block(results, "/w/results.json", 3725.0)
    assert lines[0] == "finished mbde on digits (resnet32, 4 branches): 10 epochs, 450 steps"
    assert "final (epoch 10): leader top-1 96.25%, peer ensemble 96.50%" in lines[1] and "headline" in lines[1]
    assert "best  (epoch 8): leader top-1 97.50%" in lines[2] and "reference only" in lines[2]
    assert "wall time 1:02:05 this session" in lines[3] and "123.5 images/s" in lines[3]
    assert "0:02:10 over every session" in lines[3]
    assert lines[4].startswith("  results: /w/results.json")
    assert "trained together" not in lines[3]
    progress.log_final_block(results, "/w/seed_1/results.json", 3725.0, runs_together=3)
    assert lines[-2].endswith("123.5 images/s on average (this seed's share: 3 seeds trained together); "
                              "0:02:10 over every session")


def test_a_line_is_due_at_the_first_step_and_then_every_interval():
    clock = FakeClock()
    console = _console(clock)
    assert console.line_due()  # the first step: its line says how long compiling took
    console.step_done(1, None)
    clock.now += 29.0
    assert not console.line_due()
    clock.now += 1.0
    assert console.line_due()
