"""The agent's local API with real compiled models, delivering to a real fleet and S3."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from edgekiln.agents.client import AgentCallError, AgentClient


def test_local_api_with_a_compiled_model(agent_factory, fleet_server, mobilenet, s3_records, wait, capsys):
    from edgekiln.cli.main import main
    from edgekiln.runtime import Model
    from edgekiln.zoo import sample_image_path

    fleet = fleet_server()
    agent = agent_factory(
        endpoint=fleet.endpoint,
        token=fleet.register("plant", "dev-1"),
        agent={"model_dirs": [str(Path(mobilenet).parent)]},
    )
    image = Path(str(sample_image_path()))
    with AgentClient(agent.config.agent.socket) as client:
        model = client.load_model(mobilenet, "mnv2")
        assert model["inputs"] == [
            {"name": Model(mobilenet).get_input_names()[0], "dtype": "float32", "shape": [1, 3, 224, 224]}
        ]
        assert model["outputs"][0]["shape"] == [1, 1000]
        assert [m["name"] for m in client.list_models()] == ["mnv2"]
        assert client.describe_model("mnv2") == model
        with pytest.raises(AgentCallError) as info:
            client.load_model(mobilenet, "mnv2")
        assert info.value.code == "ALREADY_EXISTS"

        answer = client.predict_image("mnv2", image, top_k=5)
        assert main(["run", str(mobilenet), str(image), "--json", "--top-k", "5"]) == 0
        cli = json.loads(capsys.readouterr().out)["results"][0]["top"]
        assert answer["top"][0]["index"] == cli[0]["index"]  # the same top-1 as `edgekiln run`
        assert [c["index"] for c in answer["top"]] == [c["index"] for c in cli]
        reference = Model(mobilenet).run([answer["input"]])[0]
        np.testing.assert_allclose(answer["outputs"][0], reference, rtol=1e-5, atol=1e-5)

        capture_id = client.capture(
            "mnv2",
            input_tensors={model["inputs"][0]["name"]: answer["input"]},
            output_tensors={model["outputs"][0]["name"]: answer["outputs"][0]},
            inputs={"source": ("NONE", image.name.encode())},
        )
        assert client.capture_status(capture_id) in ("IN_PROGRESS", "SUCCESS")
        wait("the capture to reach S3", lambda: client.capture_status(capture_id) == "SUCCESS", 30)
        assert s3_records(fleet.bucket, "plant/dev-1/") == [capture_id]
        listing = fleet.call("GET", "/v1/devices/plant/dev-1/captures")
        assert [r["record_id"] for r in listing["records"]] == [capture_id]
        # The 600 KB input went to an object of its own next to the batch; the output is embedded.
        assert any(
            o["key"].endswith("input-tensor-0.bin") and o["size"] == 3 * 224 * 224 * 4 for o in listing["objects"]
        )

        described = wait(
            "a heartbeat with the model's metrics",
            lambda: (lambda d: d if d["models"] else None)(fleet.call("GET", "/v1/devices/plant/dev-1")),
            20,
        )
        (m,) = described["models"]
        assert m["model_name"] == "mnv2" and m["metrics"]["inference_count"] >= 1
        assert m["latest_inference"] is not None and m["latest_sample_time"] is not None


def test_artifact_for_another_target_is_failed_precondition(agent_factory, compiled):
    from edgekiln.errors import CompatibilityError
    from edgekiln.runtime import Model

    rasp4b = compiled("zoo:mobilenet_v2", "rasp4b").path
    with pytest.raises(CompatibilityError) as expected:
        Model(rasp4b)
    agent = agent_factory(agent={"model_dirs": [str(Path(rasp4b).parent)]})
    with AgentClient(agent.config.agent.socket) as client:
        with pytest.raises(AgentCallError) as info:
            client.load_model(rasp4b, "pi")
        assert info.value.code == "FAILED_PRECONDITION"
        assert info.value.details == expected.value.one_line()
        assert client.list_models() == []


def test_predict_on_different_models_runs_concurrently(agent_factory, mobilenet):
    agent = agent_factory(agent={"model_dirs": [str(Path(mobilenet).parent)]})
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    errors: list[BaseException] = []
    with AgentClient(agent.config.agent.socket) as client:
        client.load_model(mobilenet, "a")
        client.load_model(mobilenet, "b")
        (expected,) = client.predict("a", [x])

        def work(name: str) -> None:
            try:
                for _ in range(3):
                    (y,) = client.predict(name, [x])
                    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b", "a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors
    # Two models inside run() at the same moment; never one model twice (its own lock).
    assert agent.registry.max_running == 2
