"""The report on the test sweep of tests/test_sweep.py (configs/test.py, mbde and one, seeds 0 and 1, mocked
CIFAR-10): table numbers recomputed from results.json, every PNG, and the runs it must leave out."""

import csv
import json
import pathlib
import shutil
import statistics

import pytest
from PIL import Image

from mbde_jax import report
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
    labels = [line.get_label() for line in mbde_panel.get_lines()]
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
