"""The backend seam: which backend answers, and the clear errors when the chosen one cannot."""

from __future__ import annotations

import sys

import pytest

from daemon.bundle import Bundle, load_bundle
from daemon.config_file import ConfigError, load_config
from daemon.explain.backends import BackendError, choose_backend, explainer_graph, load_backend
from tests.conftest import SHIPPED_BUNDLE


@pytest.fixture(scope="module")
def shipped() -> Bundle:
    return load_bundle(SHIPPED_BUNDLE)


def with_graph(bundle: Bundle, gradcam_layer: str = "moment_map") -> Bundle:
    """The bundle as its manifest reads once an explainer graph is exported into it."""
    entry = {"file": "explainer_float.tflite", "batch": 8, "tokens": bundle.max_length + 1,
             "gradcam_layer": gradcam_layer, "bottleneck_layer": "spatial_reduce", "signatures": []}
    return Bundle(bundle.path, {**bundle.manifest, "explainer": entry})


def without_graph(bundle: Bundle) -> Bundle:
    """The bundle as its manifest reads without an explainer graph."""
    return Bundle(bundle.path, {k: v for k, v in bundle.manifest.items() if k != "explainer"})


def test_auto_takes_litert_when_the_bundle_has_the_graph_else_tensorflow(shipped):
    assert choose_backend(with_graph(shipped)) == "litert"
    assert choose_backend(without_graph(shipped)) == "tensorflow"
    assert choose_backend(shipped) == ("litert" if explainer_graph(shipped) else "tensorflow")
    assert choose_backend(with_graph(shipped), "tensorflow") == "tensorflow"


def test_litert_without_the_graph_says_how_to_export_it(shipped):
    with pytest.raises(BackendError, match=r"no explainer graph.*explaincam export-explainer --bundle"):
        load_backend(without_graph(shipped), "litert")


def test_another_gradcam_layer_needs_tensorflow(shipped):
    bundle = with_graph(shipped)
    assert choose_backend(bundle, "auto", gradcam_layer="moment_map") == "litert"
    assert choose_backend(bundle, "auto", gradcam_layer="expanded_conv_3") == "tensorflow"
    with pytest.raises(BackendError, match="'moment_map'.*'expanded_conv_3'"):
        choose_backend(bundle, "litert", gradcam_layer="expanded_conv_3")


def test_tensorflow_missing_says_which_extra_to_install(shipped, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # Python's own way to make an import fail
    with pytest.raises(BackendError, match=r"TensorFlow is not installed.*pip install 'explaincam\[explain\]'"):
        load_backend(shipped, "tensorflow")
    with pytest.raises(BackendError, match=r"export-explainer.*pip install 'explaincam\[explain\]'"):
        load_backend(without_graph(shipped), "auto")
    assert choose_backend(with_graph(shipped), "auto") == "litert"  # the graph needs no TensorFlow


def test_tensorflow_needs_the_keras_model_and_a_known_choice(shipped):
    no_keras = Bundle(shipped.path, {**shipped.manifest,
                                     "files": {k: v for k, v in shipped.manifest["files"].items() if k != "captioner"}})
    with pytest.raises(BackendError, match="no captioner.keras"):
        choose_backend(without_graph(no_keras), "tensorflow")
    with pytest.raises(BackendError, match="unknown explain backend 'onnx'"):
        choose_backend(shipped, "onnx")


def test_the_config_key_takes_the_three_choices(tmp_path):
    path = tmp_path / "config.yaml"
    for value in ("auto", "litert", "tensorflow"):
        path.write_text(f"explain:\n  backend: {value}\n")
        assert load_config(path).explain.backend == value
    path.write_text("explain:\n  backend: torch\n")
    with pytest.raises(ConfigError, match="explain.backend"):
        load_config(path)


def test_the_pipeline_and_every_method_import_no_tensorflow():
    """With the LiteRT backend the explainer process never imports TensorFlow: none of this does."""
    import subprocess

    from daemon.explain_settings import METHODS
    from tests.conftest import REPO

    modules = ["daemon.explain.explainer", "daemon.explain.process", "daemon.explain.oneshot",
               "daemon.explain.backends", *METHODS.values()]
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
