"""The conformance corpus (tests/frameworks/corpus.py) over every backend: each model
compiles for x86-64 and its artifact agrees with ONNX Runtime within the default tolerance.

The corpus is built once per session from seeded weights: torchvision families, Keras
applications and the classic ONNX Model Zoo CNNs (opsets 7-9).  The README's table comes
from the same code (devtools/conformance.py).
"""

from __future__ import annotations

import pytest

from edgekiln.compile.validate import ValidationOptions
from edgekiln.runtime.compat import host_info
from tests.frameworks import corpus

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="x86-64 artifacts run only on an x86-64 host")


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    return corpus.build_all(tmp_path_factory.mktemp("corpus"))


def test_corpus_covers_the_three_sources():
    sources = {m.split("/")[0] for m in corpus.MODELS}
    assert sources == {"torchvision", "keras", "onnx-zoo"}
    assert len(corpus.MODELS) >= 18


@pytest.mark.parametrize("backend", corpus.BACKENDS)
@pytest.mark.parametrize("model", corpus.MODELS)
def test_model_compiles_and_validates(model, backend, corpus_files, tmp_path):
    row = corpus.compile_one(model, corpus_files[model], backend, tmp_path)
    assert row.compiled, row.error
    assert row.validated, row.error
    assert row.max_abs_diff is not None and row.max_abs_diff <= ValidationOptions().tolerance_abs
