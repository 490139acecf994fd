"""What a run records besides checkpoints: TensorBoard tags and their custom-scalars layout, metrics.csv."""

import csv
import io
import json
import pathlib
import re

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.util import tensor_util

from mbde_jax import config_utils, tensorboard_scalars, training, workdir as run_files
from mbde_jax.data import testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 64


def _events(workdir: str) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return events


def _scalar_series(events, tag: str) -> dict[int, float]:
    return {event.step: float(tensor_util.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)}


def _layout(events) -> layout_pb2.Layout:
    (event,) = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


@pytest.fixture(scope="module", params=[("mbde", 1), ("one", 2)], ids=["mbde", "one_eval_every_2"])
def recorded_run(request, tmp_path_factory):
    method, eval_every_epochs = request.param
    tmp_path = tmp_path_factory.mktemp(f"records_{method}")
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.method = method
    # one: epoch 1 is neither evaluated nor checkpointed, so only the end-of-epoch flush keeps a train summary
    # (steps 7..9) from spanning epochs 1 and 2, whose ramp weights differ (0.0067 and 0.29)
    config.eval_every_epochs = config.checkpoint_every_epochs = eval_every_epochs
    config.log_every_steps = 3
    config.log_every_seconds = 1e-3  # a progress line (and an images/s scalar) after every step
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        results = training.train_and_evaluate(config, str(tmp_path / "run"))
    return str(tmp_path / "run"), results


def test_every_chart_of_the_layout_shows_written_tags_and_every_tag_is_charted(recorded_run):
    workdir, results = recorded_run
    events = _events(workdir)
    tags = set(events.Tags()["tensors"]) - {metadata.CONFIG_SUMMARY_TAG, "_hparams_/session_start_info"}
    layout = _layout(events)
    charted = set()
    for category in layout.category:
        for chart in category.chart:
            matched = {tag for tag in tags for regex in chart.multiline.tag if re.search(regex, tag)}
            assert matched, f"chart {chart.title!r} shows no tag"
            charted |= matched
    assert charted == tags
    heads = [name.split("/", 1)[1] for name in results["final"]["metrics"] if name.startswith("top1/")
             and name != "top1/deployed"]
    (top1_chart,) = [chart for category in layout.category for chart in category.chart
                     if chart.title.startswith("top-1 accuracy")]
    assert {tag for tag in tags if re.search(top1_chart.multiline.tag[0], tag)} == {f"test/top1/{h}" for h in heads}
    branch_heads = ["peer_0", "peer_1", "leader"] if results["method"] == "mbde" else ["branch_0", "branch_1",
                                                                                       "branch_2"]
    assert {f"test/ce/{head}" for head in branch_heads} <= tags  # test CE of every head
    for constant in ("test/num_examples", "train/kd_weight", "train/cd_weight", "train/ramp_weight"):
        assert constant not in tags


def test_weighted_terms_add_up_to_the_logged_loss(recorded_run):
    workdir, results = recorded_run
    events = _events(workdir)
    tags = events.Tags()["tensors"]
    loss = _scalar_series(events, "train/loss")
    terms = [_scalar_series(events, tag) for tag in tags if tag.startswith("train/weighted/")]
    assert len(terms) == (4 if results["method"] == "mbde" else 3)  # ce, kd x2, cd | ce, ce_ensemble, kd
    assert sorted(loss) == sorted(set(range(3, 17, 3)) | {8, 16})  # every 3 steps and each epoch's end
    for step, value in loss.items():
        assert sum(term[step] for term in terms) == pytest.approx(value, rel=1e-5), step
    per_branch = _scalar_series(events, "train/ce_per_branch")
    weighted_ce = _scalar_series(events, "train/weighted/ce")
    assert all(per_branch[s] == pytest.approx(weighted_ce[s] / 3, rel=1e-6) for s in per_branch)
    assert len(_scalar_series(events, "train/images_per_second")) == 15  # every step after the first


def test_test_scalars_equal_the_history(recorded_run):
    workdir, results = recorded_run
    events = _events(workdir)
    final = results["final"]
    deployed = _scalar_series(events, "test/deployed/top1")
    assert deployed[final["step"]] == pytest.approx(final["metrics"]["top1/deployed"], abs=1e-4)
    ce_leader = _scalar_series(events, f"test/ce/{results['deployed_head']}")
    assert ce_leader[final["step"]] == pytest.approx(final["metrics"]["ce/deployed"], rel=1e-6)


def test_metrics_csv_has_one_row_per_evaluation_equal_to_the_history(recorded_run):
    workdir, results = recorded_run
    history = json.loads(pathlib.Path(workdir, "history.json").read_text())
    rows = list(csv.DictReader(io.StringIO(pathlib.Path(workdir, "metrics.csv").read_text())))
    evaluated = [1, 2] if results["method"] == "mbde" else [2]
    assert [int(row["epoch"]) for row in rows] == [entry["epoch"] for entry in history] == evaluated
    for row, entry in zip(rows, history):
        assert float(row["learning_rate"]) == entry["learning_rate"]
        assert float(row["ramp_weight"]) == entry["ramp_weight"]
        assert float(row["train/loss"]) == entry["train"]["loss"]
        for name, value in entry["metrics"].items():
            if isinstance(value, float):
                assert float(row[f"test/{name}"]) == value, name
    columns = list(rows[0])
    assert "test/num_examples" not in columns and "train/kd_weight" not in columns
    top1 = [c for c in columns if c.startswith("test/top1/")]
    expected_heads = (["peer_0", "peer_1", "leader", "peer_mean", "peer_ensemble", "deployed"]
                      if results["method"] == "mbde" else
                      ["branch_0", "branch_1", "branch_2", "peer_mean", "peer_ensemble", "gated_ensemble",
                       "deployed"])
    assert top1 == [f"test/top1/{head}" for head in expected_heads]


def test_metrics_csv_does_not_depend_on_the_key_order_of_the_history():
    entry = {"epoch": 1, "step": 8, "learning_rate": 0.1, "ramp_weight": 0.5,
             "metrics": {"top1/peer_0": 10.0, "top1/peer_10": 5.0, "top1/peer_2": 7.0, "top1/deployed": 5.0,
                         "ce/peer_0": 2.0, "diversity": 0.1, "num_examples": 64, "deployed_head": "peer_0"},
             "train": {"loss": 3.0, "ce": 2.0, "kd_weight": 1.0}}
    columns, rows = run_files.metrics_rows([entry])
    reordered = dict(entry, metrics=dict(sorted(entry["metrics"].items(), reverse=True)))
    assert run_files.metrics_rows([reordered]) == (columns, rows)
    assert columns == ["epoch", "step", "learning_rate", "ramp_weight", "test/top1/peer_0", "test/top1/peer_2",
                       "test/top1/peer_10", "test/top1/deployed", "test/ce/peer_0", "test/diversity",
                       "train/ce", "train/loss"]
    assert rows == [[1, 8, 0.1, 0.5, 10.0, 7.0, 5.0, 5.0, 2.0, 0.1, 2.0, 3.0]]


def test_train_scalars_weights_and_omissions():
    summary = {"loss": 10.0 + 0.5 * 0.25 * (2.0 + 4.0) + 1e-3 * 50.0, "ce": 10.0, "kd_first_level": 2.0,
               "kd_second_level": 4.0, "cd": 50.0, "kd_weight": 0.5, "ramp_weight": 0.25, "cd_weight": 1e-3,
               "learning_rate": 0.1, "accuracy_deployed": 40.0}
    scalars = tensorboard_scalars.train_scalars(summary, num_branches=4, ramped=True)
    assert scalars["train/weighted/kd_first_level"] == pytest.approx(0.25)
    assert scalars["train/weighted/kd_second_level"] == pytest.approx(0.5)
    assert scalars["train/weighted/cd"] == pytest.approx(0.05)
    assert scalars["train/unweighted/cd"] == 50.0 and scalars["train/ce_per_branch"] == 2.5
    assert sum(v for k, v in scalars.items() if k.startswith("train/weighted/")) == pytest.approx(summary["loss"])
    assert scalars["schedule/ramp_weight"] == 0.25
    no_cd = tensorboard_scalars.train_scalars(dict(summary, cd=0.0, cd_weight=0.0), num_branches=4, ramped=False)
    assert not any("cd" in tag for tag in no_cd) and "schedule/ramp_weight" not in no_cd
