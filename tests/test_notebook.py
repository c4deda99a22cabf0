"""The quickstart notebook (examples/quickstart.ipynb) as a reader runs it: executed end to end in a
fresh kernel, from a working directory outside the checkout, on the shared CIFAR-10, and judged by
what it produced (the two runs, their analyses, its numbers and its inline figures), not only by
having run. The committed copy is checked too: executed, figures in it, small.

The kernel runs this test's own interpreter: a kernel spec written into a temporary JUPYTER_PATH
names ``sys.executable``, so a ``python3`` kernel spec installed elsewhere (another environment, a
user-level one) is never picked up, and nothing has to be installed with ``ipykernel install``.
"""

import base64
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import bnonly

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
SHARED_CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = 3  # γ histograms, per-layer small-γ and disabled fractions, the ablation


def outputs(nb):
    return [(cell, out) for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def images(nb) -> list[bytes]:
    return [base64.b64decode(out["data"]["image/png"]) for _, out in outputs(nb)
            if out.get("output_type") in ("display_data", "execute_result") and "image/png" in out.get("data", {})]


def errors(nb) -> list[str]:
    return [f"{out.get('ename')}: {out.get('evalue')}" for _, out in outputs(nb) if out.get("output_type") == "error"]


def results_of(nb) -> dict:
    """The JSON the notebook's last code cell prints: its numbers in one place."""
    last = [cell for cell in nb.cells if cell.cell_type == "code"][-1]
    text = "".join(out["text"] for out in last.outputs
                   if out.get("output_type") == "stream" and out["name"] == "stdout")
    return json.loads(text)


def test_the_committed_notebook_is_executed_with_its_figures_and_small():
    """Readers on GitHub see the outputs: every code cell ran, no error, the figures are there, < 1 MB."""
    import nbformat

    assert NOTEBOOK.stat().st_size < 1_000_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(cell.execution_count is not None for cell in nb.cells if cell.cell_type == "code")
    assert errors(nb) == []
    assert len(images(nb)) == FIGURES and all(png.startswith(PNG) for png in images(nb))
    results = results_of(nb)
    assert results["BN-only"]["test_acc"] > results["random:matched"]["test_acc"] > results["chance"]


@pytest.mark.slow
def test_quickstart_notebook_executes_and_bn_only_beats_the_matched_random_baseline(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if not SHARED_CIFAR_JPEG.is_dir():
        pytest.skip(f"shared CIFAR-10 JPEG folder not found at {SHARED_CIFAR_JPEG}")
    kernels = tmp_path / "jupyter" / "kernels" / "bnonly-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps(dict(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="bnonly test kernel", language="python")))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    runs = tmp_path / "runs"
    monkeypatch.setenv("BNONLY_NOTEBOOK_RUNS", str(runs))
    if not Path(bnonly.__file__).resolve().is_relative_to(ROOT):
        # bnonly installed from elsewhere: the notebook cannot find the checkout (and the data beside it) itself.
        monkeypatch.setenv("BNONLY_DATA", str(SHARED_CIFAR_JPEG))
    work = tmp_path / "work"  # outside the checkout, as a copy a reader downloaded
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)

    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    NotebookClient(nb, kernel_name="bnonly-test", timeout=600, resources={"metadata": {"path": str(work)}}).execute()

    # Every cell ran without an error, and the figures are shown inline as PNGs.
    assert all(cell.execution_count is not None for cell in nb.cells if cell.cell_type == "code")
    assert errors(nb) == []
    figures = images(nb)
    assert len(figures) == FIGURES
    assert all(png.startswith(PNG) and len(png) > 5_000 for png in figures)

    # Both runs trained here (not found finished), into the folder it was told to use.
    results = results_of(nb)
    bn, random = results["BN-only"], results["random:matched"]
    assert (bn["train"], random["train"]) == ("bn", "random:matched")
    assert bn["status"] == random["status"] == "done"
    summaries = {}
    for label, r in (("BN-only", bn), ("random:matched", random)):
        run = runs / r["run"]
        summaries[label] = json.loads((run / "summary.json").read_text())
        assert summaries[label]["status"] == "done" and summaries[label]["test_acc"] == r["test_acc"]
        assert (run / "analysis.json").is_file() and (run / "final.pt").is_file()
    assert results["chance"] == pytest.approx(1 / 3)

    # The same number of parameters trains in both: BatchNorm's γ+β of a width-8 ResNet-8 (2 x 168).
    assert bn["trainable_params"] == random["trainable_params"] == summaries["BN-only"]["bn_params"] == 336
    # BN-only is far above chance, and above as many random weights.
    assert bn["test_acc"] > results["chance"] + 0.15
    assert bn["test_acc"] > random["test_acc"] + 0.05
    # Its γ moved and disabled some features; the baseline's γ did not train, so it has none.
    assert bn["fraction_dead"] > 0
    assert random["fraction_dead"] == 0
    for label, r in (("BN-only", bn), ("random:matched", random)):
        final = torch.load(runs / r["run"] / "final.pt", map_location="cpu")
        init = torch.load(runs / r["run"] / "init.pt", map_location="cpu")
        gammas = [k for k in final if k.endswith(".weight") and final[k].dim() == 1]  # BN γ: the only 1-d weights
        moved = max((final[k] - init[k]).abs().max().item() for k in gammas)
        assert (moved > 0.01) if label == "BN-only" else (moved == 0)

    # What the notebook's tables and figures show is what the runs recorded.
    text = "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for _, out in outputs(nb))
    assert f"{bn['test_acc']:.4f}" in text and f"{random['test_acc']:.4f}" in text
    print(f"notebook: {results['notebook_seconds']} s in its kernel; BN-only {bn['test_acc']:.4f}, "
          f"random:matched {random['test_acc']:.4f}, chance {results['chance']:.4f}")
