"""The Colab notebook runs top to bottom on CPU with the tiny config, so it cannot rot unnoticed.

Outside Colab its install cell only prints colab/install.py's plan and its Drive cell does nothing; the
parameters come from MBDE_NOTEBOOK_PARAMS.
"""

import json
import pathlib

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "mbde_colab.ipynb"


def test_notebook_trains_and_plots(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    params = {
        "CONFIG": "configs/test.py",
        # Real offline data (the first 360 of scikit-learn's digits), one epoch (45 steps) of the tiny ResNet-8.
        "OVERRIDES": {"dataset": "digits", "train_examples": 360, "num_epochs": 1, "lr_boundaries_epochs": [],
                      "download": True, "data_dir": str(tmp_path / "tfds")},
        "WORKDIR": str(workdir),
        "USE_DRIVE": False,
    }
    monkeypatch.setenv("MBDE_NOTEBOOK_PARAMS", json.dumps(params))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    results = json.loads((workdir / "results.json").read_text())
    assert results["final"]["epoch"] == 1 and results["dataset"] == "digits"
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert "running outside Colab" in text
    assert "runtime: cpu" in text and " jax>=" in text  # the install cell ran colab/install.py --plan
    assert "device(s)" in text and "final epoch 1: leader (deployed) test top-1" in text
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # accuracy, diversity, attention (the test config trains MBDE) and schedule
