"""The design's own rules: imports form a DAG with no in-function imports of bnonly, and every
registry states its contract and holds what the docs say it holds."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_imports_form_a_dag_without_in_function_imports():
    r = subprocess.run([sys.executable, "tools/import_graph.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_import_graph_tool_sees_the_layers():
    r = subprocess.run([sys.executable, "tools/import_graph.py", "--layers"], cwd=REPO, capture_output=True,
                       text=True, check=True)
    first = r.stdout.splitlines()[0]
    assert first.startswith("0: ") and "bnonly.errors" in first.split()
    top = r.stdout.splitlines()[-1]
    assert "bnonly.cli" not in first and "bnonly.errors" not in top


def test_every_registry_states_its_contract():
    from bnonly.analysis import EVALUATORS
    from bnonly.data import DATA_FORMATS
    from bnonly.models import MODEL_FAMILIES
    from bnonly.trainable import TERMS
    from bnonly.training import LOGGERS, OBJECTIVES, OPTIMIZERS

    for registry in (MODEL_FAMILIES, TERMS, DATA_FORMATS, OPTIMIZERS, OBJECTIVES, LOGGERS, EVALUATORS):
        assert registry.contract and len(registry) >= 1, registry.kind
        assert all(e.help for e in registry.entries()), registry.kind
    assert OPTIMIZERS.names() == ["sgd", "adamw"] and OBJECTIVES.names() == ["cross_entropy"]
    assert set(EVALUATORS.names()) >= {"affine", "disabled", "ablation"}
