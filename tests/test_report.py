"""The report on the test sweep of tests/test_sweep.py (configs/test.py, mbde and one, seeds 0 and 1, mocked
CIFAR-10): table numbers recomputed from results.json, every PNG, and the runs it must leave out; then the
figures on runs made up in memory: one y range for every accuracy panel, std bands clipped and named in the
legend, the schedule's drops at the 1-based boundary epochs, and the setting line's wording."""

import csv
import json
import pathlib
import shutil
import statistics

import matplotlib.colors
import numpy as np
import pytest
from PIL import Image

from mbde_jax import losses, optim, report, report_plots
from mbde_jax.runs import Run
from test_sweep import METHODS, SEEDS, built_sweep

# name -> (width, height) in pixels: 480 x 360 per panel, one panel per method here.
PNG_SIZES = {"accuracy.png": (960, 360), "diversity.png": (640, 400), "attention.png": (960, 360),
             "schedule.png": (960, 360)}
# markdown column -> (metric in results.json's final metrics, as an error, decimals)
TABLE_COLUMNS = {
    "**error: deployed, final epoch**": ("top1/deployed", True, 2),
    "error: peer ensemble, final": ("top1/peer_ensemble", True, 2),
    "error: peer mean, final": ("top1/peer_mean", True, 2),
    "diversity, final": ("diversity", False, 4),
}


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> pathlib.Path:
    return pathlib.Path(built_sweep(tmp_path_factory)["root"])


@pytest.fixture(scope="module")
def written(sweep_root, tmp_path_factory) -> dict:
    return report.write_report([str(sweep_root)], str(tmp_path_factory.mktemp("report")))


def _table(markdown: str) -> dict[str, dict[str, str]]:
    """{method: {column header: cell}} of the first markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(headers, row)) for row in rows}


def _results(sweep_root, method) -> list[dict]:
    return [json.loads((sweep_root / method / f"seed_{seed}" / "results.json").read_text()) for seed in SEEDS]


def test_table_cells_are_the_mean_and_sample_std_over_seeds(sweep_root, written):
    table = _table(pathlib.Path(written["results.md"]).read_text())
    assert list(table) == list(METHODS)
    with open(written["results.csv"]) as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    for method in METHODS:
        results = _results(sweep_root, method)
        assert table[method]["deployed head"] == results[0]["final"]["metrics"]["deployed_head"]
        assert table[method]["seeds"] == "0, 1"
        for column, (metric, as_error, decimals) in TABLE_COLUMNS.items():
            values = [r["final"]["metrics"][metric] for r in results]
            values = [100.0 - v for v in values] if as_error else values
            mean, std = statistics.mean(values), statistics.stdev(values)  # stdev: the sample std (n - 1)
            assert table[method][column] == f"{mean:.{decimals}f} ± {std:.{decimals}f} (n=2)", (method, column)
        best = [100.0 - r["best"]["metrics"]["top1/deployed"] for r in results]
        assert table[method]["error: deployed, best epoch (picked on test: reference only)"] == \
            f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f} (n=2)"
        assert table[method]["best epochs"] == ", ".join(str(r["best"]["epoch"]) for r in results)

        headline = [100.0 - r["final"]["metrics"]["top1/deployed"] for r in results]
        assert rows[method]["n_seeds"] == "2"
        assert float(rows[method]["deployed_error_final_mean"]) == pytest.approx(statistics.mean(headline), abs=1e-9)
        assert float(rows[method]["deployed_error_final_std"]) == pytest.approx(statistics.stdev(headline), abs=1e-9)
    assert "None." in pathlib.Path(written["results.md"]).read_text().split("## Runs left out")[1]


def test_every_plot_is_a_png_of_its_fixed_size(written):
    assert set(PNG_SIZES) <= set(written)
    for name, size in PNG_SIZES.items():
        with Image.open(written[name]) as image:
            image.load()
            assert (image.format, image.size) == ("PNG", size), name
            assert len(image.convert("L").getcolors()) > 20, f"{name} is blank"  # grey levels: not empty
        assert pathlib.Path(written[name]).stat().st_size < 150_000, name


def test_the_plots_are_figures_for_a_notebook(sweep_root):
    runs = report.load_runs([str(sweep_root)])
    fig = report.plot_accuracy(runs)
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == list(METHODS)
    mbde_panel = fig.axes[0]
    labels = [line.get_label() for line in mbde_panel.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["peer_0", "peer_1", "leader (deployed)", "peer ensemble", "peer mean"]
    # The deployed line is the mean over seeds of the deployed head's accuracy at each evaluated epoch.
    histories = [run.history for run in runs if run.method == "mbde"]
    expected = [statistics.mean(h[i]["metrics"]["top1/leader"] for h in histories) for i in range(2)]
    assert mbde_panel.get_lines()[2].get_ydata().tolist() == pytest.approx(expected)


def test_incomplete_repeated_and_differently_configured_runs_are_left_out(sweep_root, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_root, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "one" / "seed_1" / "results.json").unlink()  # stopped before its last epoch
    config_path = copy / "mbde" / "seed_1" / "config.json"
    config = json.loads(config_path.read_text())
    config["learning_rate"] = 0.05
    config_path.write_text(json.dumps(config))
    repeated = sweep_root / "mbde" / "seed_0"  # the same run given twice

    written = report.write_report([str(copy), str(repeated)], str(tmp_path / "report"))
    markdown = pathlib.Path(written["results.md"]).read_text()
    left_out = markdown.split("## Runs left out")[1]
    assert f"`{copy / 'one' / 'seed_1'}` (one seed 1): incomplete: no results.json" in left_out
    assert f"`{copy / 'mbde' / 'seed_1'}` (mbde seed 1): config differs" in left_out
    assert "learning_rate 0.05 (the others: 0.1)" in left_out
    assert "repeats method mbde seed 0" in left_out
    assert len([line for line in left_out.splitlines() if line.startswith("- ")]) == 3

    table = _table(markdown)
    results = json.loads((sweep_root / "one" / "seed_0" / "results.json").read_text())
    assert table["one"]["**error: deployed, final epoch**"] == \
        f"{100.0 - results['final']['metrics']['top1/deployed']:.2f} (n=1)"  # one seed: no std
    assert table["mbde"]["seeds"] == "0" and table["one"]["seeds"] == "0"
    with open(written["results.csv"]) as f:
        assert {row["method"]: (row["n_seeds"], row["deployed_error_final_std"]) for row in csv.DictReader(f)} == \
            {"mbde": ("1", ""), "one": ("1", "")}


def test_runs_that_differ_only_in_bookkeeping_fields_are_grouped_and_the_differences_listed(sweep_root, tmp_path):
    copy = _copy_without_checkpoints(sweep_root, tmp_path)
    config_path = copy / "mbde" / "seed_1" / "config.json"
    _edit_json(config_path, lambda config: config.update(
        checkpoint_every_steps=50, log_every_seconds=5.0, data_dir="/elsewhere/tensorflow_datasets"))
    before = {path: path.read_bytes() for path in copy.rglob("*.json")}

    written = report.write_report([str(copy)], str(tmp_path / "report"))
    markdown = pathlib.Path(written["results.md"]).read_text()
    assert _table(markdown)["mbde"]["seeds"] == "0, 1"
    assert markdown.split("## Runs left out")[1].strip() == "None."
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"- mbde seed 1: `{copy / 'mbde'}")]
    assert line.endswith("(differs only in fields that cannot change its numbers: checkpoint_every_steps 50 (the "
                         "others: 0), data_dir '/elsewhere/tensorflow_datasets' (the others: None), "
                         "log_every_seconds 5.0 (the others: 30.0))")
    assert sum("differs only in fields" in line for line in markdown.splitlines()) == 1
    assert {path: path.read_bytes() for path in copy.rglob("*.json")} == before  # the report only reads


def test_a_report_with_no_usable_run_says_why(sweep_root, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_root / "mbde" / "seed_0", copy / "mbde" / "seed_0",
                    ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "mbde" / "seed_0" / "results.json").unlink()
    with pytest.raises(ValueError, match="(?s)every run was left out.*incomplete: no results.json"):
        report.write_report([str(copy)], str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def _copy_without_checkpoints(sweep_root, tmp_path) -> pathlib.Path:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_root, copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def _edit_json(path: pathlib.Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


def test_every_run_records_its_provenance(sweep_root):
    import jax
    import flax
    results = _results(sweep_root, "mbde")[0]
    block = results["provenance"]
    assert block["versions"]["jax"] == jax.__version__ and block["versions"]["flax"] == flax.__version__
    assert set(block["versions"]) >= {"python", "jaxlib", "optax", "orbax-checkpoint", "tensorflow",
                                      "tensorflow-datasets", "numpy"}
    assert (block["platform"], block["device_count"], block["process_count"]) == ("cpu", 2, 1)
    assert block["code"]["package"] == "0.1.0"
    history = json.loads((sweep_root / "mbde" / "seed_0" / "history.json").read_text())
    assert all(entry["provenance"] == block for entry in history)


def test_runs_of_another_jax_version_are_left_out_not_averaged(sweep_root, tmp_path):
    copy = _copy_without_checkpoints(sweep_root, tmp_path)
    other = copy / "mbde" / "seed_1"

    def older_jax(payload):
        payload["provenance"]["versions"]["jax"] = "0.0.1"

    _edit_json(other / "results.json", older_jax)
    for run in report.load_runs([str(copy)]):
        if run.workdir == str(other):
            assert run.left_out.startswith("made with jax 0.0.1, jaxlib "), run.left_out
        else:
            assert run.left_out is None, run.left_out
    written = report.write_report([str(copy)], str(tmp_path / "report"))
    left_out = pathlib.Path(written["results.md"]).read_text().split("## Runs left out")[1]
    assert f"`{other}` (mbde seed 1): made with jax 0.0.1" in left_out
    assert "runs of different versions are never averaged together" in left_out
    assert _table(pathlib.Path(written["results.md"]).read_text())["mbde"]["seeds"] == "0"


def test_a_run_resumed_across_versions_is_left_out(sweep_root, tmp_path):
    copy = _copy_without_checkpoints(sweep_root, tmp_path)
    resumed = copy / "one" / "seed_0"

    def first_epoch_older(history):
        history[0]["provenance"]["versions"]["flax"] = "0.0.2"

    _edit_json(resumed / "history.json", first_epoch_older)
    (run,) = [run for run in report.load_runs([str(copy)]) if run.workdir == str(resumed)]
    assert run.left_out.startswith("resumed across library versions")
    assert "flax 0.0.2" in run.left_out


def test_a_run_with_an_unreadable_json_file_is_named_and_the_rest_reported(sweep_root, tmp_path):
    copy = _copy_without_checkpoints(sweep_root, tmp_path)
    (copy / "mbde" / "seed_1" / "history.json").write_text('[{"epoch": 1, "metr')  # truncated
    (copy / "one" / "seed_1" / "config.json").write_bytes(b"\xff\xfe garbage")
    written = report.write_report([str(copy)], str(tmp_path / "report"))
    markdown = pathlib.Path(written["results.md"]).read_text()
    left_out = markdown.split("## Runs left out")[1]
    assert f"unreadable: {copy / 'mbde' / 'seed_1' / 'history.json'} cannot be read (JSONDecodeError" in left_out
    assert f"unreadable: {copy / 'one' / 'seed_1' / 'config.json'} cannot be read (UnicodeDecodeError" in left_out
    table = _table(markdown)
    assert table["mbde"]["seeds"] == "0" and table["one"]["seeds"] == "0"


# --- The figures, on runs made up in memory (no training): any accuracy, spread and schedule -------------------

FAKE_CONFIG = dict(dataset="digits", arch="resnet32", num_epochs=10, batch_size=32, learning_rate=0.1,
                   lr_boundaries_epochs=(6, 9), lr_decay_factor=0.1, rampup_epochs=5, temperature=3.0)
FAKE_HEADS = {"mbde": (["peer_0", "peer_1", "leader"], "leader"),
              "one": (["branch_0", "branch_1", "branch_2"], "branch_0"), "vanilla": (["branch_0"], "branch_0")}
# The learning rate and w(e) of the 1-based epochs 1..10 of FAKE_CONFIG: x0.1 from the 6th and from the 9th.
FAKE_LR = [0.1] * 5 + [0.01] * 3 + [0.001] * 2
FAKE_RAMP = [float(np.exp(-5.0 * (1.0 - min(e, 5) / 5) ** 2)) for e in range(10)]


def _fake_run(method: str, seed: int, final_accuracy: float, final_diversity: float) -> Run:
    """A finished run of FAKE_CONFIG whose heads climb linearly to final_accuracy at epoch 10."""
    heads, deployed = FAKE_HEADS[method]
    history = []
    for epoch in range(1, 11):
        accuracy = final_accuracy * (0.5 + 0.05 * epoch)
        metrics = {f"top1/{head}": accuracy for head in heads + ["deployed", "peer_ensemble"]}
        metrics.update({"top1/peer_mean": accuracy - 1.0, "deployed_head": deployed,
                        "diversity": final_diversity * epoch / 10})
        if method == "one":
            metrics.update({"top1/gated_ensemble": accuracy, "gate": [0.5, 0.3, 0.2]})
        if method == "mbde":
            metrics["attention"] = [[0.9, 0.1], [0.2, 0.8]]
        history.append({"epoch": epoch, "metrics": metrics, "learning_rate": FAKE_LR[epoch - 1],
                        "ramp_weight": FAKE_RAMP[epoch - 1]})
    results = {"final": history[-1], "best": history[-1], "num_branches": len(heads)}
    return Run(f"/fake/{method}/seed_{seed}", dict(FAKE_CONFIG, method=method, seed=seed), history, results)


@pytest.fixture(scope="module")
def fake_runs() -> list[Run]:
    """mbde: 3 seeds whose final mean + std of accuracy is past 100 and mean - std of diversity below 0; one
    around 60%, vanilla around 30% (panels that alone would get very different y ranges)."""
    spread = {"mbde": ((99.9, 0.0), (99.5, 0.01), (93.0, 0.3)), "one": ((62.0, 0.2), (58.0, 0.3)),
              "vanilla": ((30.0, 0.0), (28.0, 0.0))}
    runs = [_fake_run(method, seed, accuracy, diversity) for method, seeds in spread.items()
            for seed, (accuracy, diversity) in enumerate(seeds)]
    final = [99.9, 99.5, 93.0]
    assert statistics.mean(final) + statistics.stdev(final) > 100  # the band would leave [0, 100] unclipped
    return runs


def _bands(ax) -> list:
    """The fill_between polygons of an axes."""
    return [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]


def test_every_accuracy_panel_shares_one_y_range_within_0_and_100(fake_runs):
    axes = report.plot_accuracy(fake_runs).axes
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["mbde", "one", "vanilla"]
    limits = {ax.get_ylim() for ax in axes}
    assert len(limits) == 1, limits  # the same accuracy is at the same height in every panel
    ((low, high),) = limits
    assert 0.0 <= low < 28.0 * 0.55 and 99.9 <= high <= 100.0  # every panel's data inside, never past 100


def test_std_bands_are_clipped_to_the_range_of_their_metric(fake_runs):
    accuracy_bands = [band for ax in report.plot_accuracy(fake_runs).axes for band in _bands(ax)]
    assert accuracy_bands
    tops = [band.get_paths()[0].vertices[:, 1].max() for band in accuracy_bands]
    bottoms = [band.get_paths()[0].vertices[:, 1].min() for band in accuracy_bands]
    assert max(tops) == 100.0 and min(bottoms) >= 0.0  # clipped at 100, not dropped
    (diversity_ax,) = report.plot_diversity(fake_runs).axes
    bottoms = [band.get_paths()[0].vertices[:, 1].min() for band in _bands(diversity_ax)]
    assert bottoms and min(bottoms) == 0.0
    assert diversity_ax.get_ylim()[0] == 0.0


def _legend_entries(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_the_legend_names_the_line_of_every_band(fake_runs):
    mbde, one, vanilla = report.plot_accuracy(fake_runs).axes
    expected = {mbde: ["leader (deployed) ±1 std", "peer ensemble ±1 std"],
                one: ["branch_0 (deployed) ±1 std", "peer ensemble ±1 std", "gated ensemble ±1 std"],
                vanilla: ["branch_0 (deployed) ±1 std"]}
    for ax, banded in expected.items():
        assert [entry for entry in _legend_entries(ax) if "std" in entry] == banded, ax.get_title()
        assert "±1 std over seeds" in ax.get_title()
        # Each band has its line's colour: the legend's "<line> ±1 std" is the line drawn on its band.
        lines = {line.get_label(): line for line in ax.get_lines()}
        bands = _bands(ax)
        assert len(bands) == len(banded)
        for band, entry in zip(bands, banded):
            colour = matplotlib.colors.to_rgb(lines[entry.removesuffix(" ±1 std")].get_color())
            assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(colour)
    (diversity_ax,) = report.plot_diversity(fake_runs).axes
    assert _legend_entries(diversity_ax) == ["mbde (n=3 seeds) ±1 std", "one (n=2 seeds) ±1 std"]
    assert "vanilla" in " ".join(text.get_text() for text in diversity_ax.texts)  # one branch: not drawn


def _value_over(line, x: float) -> float:
    """The y of a drawn line at x (its path as drawn: a step line's steps, not its data points)."""
    vertices = line.get_path().vertices
    for (x0, y0), (x1, y1) in zip(vertices[:-1], vertices[1:]):
        if min(x0, x1) < x < max(x0, x1):
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError(f"the line does not reach x={x}")


def test_the_schedule_drops_at_the_1_based_boundary_epochs(fake_runs):
    lr_ax, ramp_ax = report.plot_schedule(fake_runs).axes
    lr_line, ramp_line = lr_ax.get_lines()[0], ramp_ax.get_lines()[0]
    vertices = lr_line.get_path().vertices
    drops = [x for (x, y), (_, previous) in zip(vertices[1:], vertices[:-1]) if y < previous]
    assert drops == [6.0, 9.0]
    for epoch in range(1, 11):  # epoch e's value (what epoch e trains with) over [e, e + 1)
        assert _value_over(lr_line, epoch + 0.5) == pytest.approx(FAKE_LR[epoch - 1], rel=1e-6), epoch
        assert _value_over(ramp_line, epoch + 0.5) == pytest.approx(FAKE_RAMP[epoch - 1], rel=1e-6), epoch
    marks = [line.get_xdata()[0] for line in lr_ax.get_lines() if line.get_linestyle() == ":"]
    assert marks == [6, 9]
    assert [text.get_text().strip() for text in lr_ax.texts] == ["x0.1 from epoch 6", "x0.1 from epoch 9"]
    assert "x0.1 from epochs 6 and 9" in lr_ax.get_title()


@pytest.mark.parametrize("boundaries, rampup", [((6, 9), 5), ((), 0), ((1,), 3), ((150, 225), 20)])
def test_the_plotted_schedule_is_the_training_schedule(boundaries, rampup):
    config = dict(FAKE_CONFIG, num_epochs=300, lr_boundaries_epochs=boundaries, rampup_epochs=rampup)
    epochs, rates, ramp = report_plots.schedule_of_config(config)
    assert epochs.tolist() == list(range(1, 301))
    def trained(value):  # the training's function may give one number for every epoch
        return np.broadcast_to(np.asarray(value, np.float64), epochs.shape)

    assert rates == pytest.approx(trained(optim.learning_rate_at_epoch(epochs - 1, 0.1, boundaries, 0.1)), rel=1e-6)
    assert ramp == pytest.approx(trained(losses.rampup_weight(epochs - 1, rampup)), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("boundaries, wording", [
    ((), "constant lr 0.1, ramp-up"), ((2,), "lr 0.1, x0.1 from epoch 2, ramp-up"),
    ((6, 9), "lr 0.1, x0.1 from epochs 6 and 9, ramp-up"), ((3, 6, 9), "lr 0.1, x0.1 from epochs 3, 6 and 9,")])
def test_the_setting_line_words_the_lr_schedule_in_1_based_epochs(boundaries, wording):
    line = report._describe_config(dict(FAKE_CONFIG, lr_boundaries_epochs=boundaries), 3)
    assert line.startswith("digits, resnet32, 3 branches, 10 epochs of batch 32, ")
    assert wording in line
