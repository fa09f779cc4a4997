"""The crate's layering (docs/architecture.md), checked on the source: no module cycles at
any level, `config` a leaf that imports only the shared vocabulary, and the build layer the
only module that assembles the pipeline. scripts/module-graph.py computes the graph."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "module-graph.py"


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("module_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_crate_has_no_module_cycles():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "no module cycles"


def test_the_detector_finds_cycles_of_any_length(graph):
    assert graph.cycles({("a", "b"), ("b", "a")}) == [["a", "b"]]
    assert graph.cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert graph.cycles({("a", "b"), ("b", "c")}) == []


def test_config_is_a_leaf(graph):
    edges = graph.edges(graph.modules(), top_level=True)
    assert {b for a, b in edges if a == "config"} <= {"vocabulary"}
    assert not {b for a, b in edges if a == "vocabulary"}


def test_only_the_build_layer_and_its_callers_construct_pipelines(graph):
    found = graph.modules()
    builders = {name for name, source in found.items() if "Pipeline::new(" in source}
    assert builders == {"build"}, builders
