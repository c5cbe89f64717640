"""`notebooks/quickstart.ipynb` runs end to end (nbclient, the project's Python as the kernel) and is
stored without outputs."""

from __future__ import annotations

import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "quickstart.ipynb")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("QUICKSTART_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("QUICKSTART_WEIGHTS", raising=False)
    monkeypatch.delenv("QUICKSTART_PHOTOS", raising=False)
    # One CPU device, as a user's laptop kernel has (conftest's 8 fake devices make each step slower).
    monkeypatch.setenv(
        "XLA_FLAGS", os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is this interpreter (ipykernel's "python3" spec runs sys.executable) and inherits the
    # suite's environment (the compile level and cache).
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
    )
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "inception_v3" in text and "23,834,568" in text  # the zoo table
    assert "Mixed_7c         (1, 8, 8, 2048)" in text  # an endpoint
    top1 = [float(x) for x in re.findall(r"train split train\S*: test top-1 ([0-9.]+)", text)]
    assert len(top1) == 2 and min(top1) > 0.3, top1  # the study learns: chance on digits is 0.1
    assert "dataset.train_split=train[:25%]" in text  # the study's rows name the setting
    assert "['flower', 'sky', 'temple']" in text  # the stand-in folder's classes
    assert "on folder:" in text and "class names: recorded with the weights" in text  # evaluate, predict
    assert "uint8[b,224,224,3]" in text and "float32[b,3]" in text  # the export's signature
    assert "0.jpg: " in text  # the exported file's predictions
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the photo and the loss curves
