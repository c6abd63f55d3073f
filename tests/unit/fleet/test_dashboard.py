"""The fleet dashboard in process: access, CSRF, pages' content, thumbnails, benchmark uploads."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekiln.fleet.dashboard import charts, thumbs

ADMIN = "admin-token-0123456789"
ORIGIN = {"Origin": "http://127.0.0.1:9"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "x86_64" / "results.json"


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def model_heartbeat(hb, hid, version="3", count=5, cpu=2.0):
    metrics = [
        {"metric_name": "inference_count", "value": count},
        {"metric_name": "latency_p50_ms", "value": 4.0},
        {"metric_name": "latency_p99_ms", "value": 9.0},
        {"metric_name": "error_count", "value": 0},
    ]
    return hb(
        hid,
        agent_metrics=[{"metric_name": "cpu_percent", "value": cpu}, {"metric_name": "memory_rss_bytes", "value": 1e8}],
        models=[{"model_name": "cls", "model_version": version, "model_metrics": metrics}],
    )


def test_pages_need_a_session_and_refuse_device_tokens(api):
    token = api.register("f", "d1")
    assert api.client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/signin"
    assert api.client.get("/dashboard", headers={"X-Dashboard-Fragment": "1"}).status_code == 401
    assert api.device(token, "GET", "/dashboard").status_code == 403
    assert api.device(ADMIN, "GET", "/dashboard", follow_redirects=False).status_code == 303  # a page needs a session
    refused = api.sign_in(token)
    assert refused.status_code == 403 and "a device token cannot open the dashboard" in refused.text
    assert "set-cookie" not in refused.headers
    assert api.sign_in("not-the-token").status_code == 401
    signed = api.sign_in()
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie
    page = api.client.get("/dashboard")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert ADMIN not in page.text and token not in page.text
    # A device token in the header is refused even alongside a valid session cookie.
    assert api.device(token, "GET", "/dashboard").status_code == 403


def test_secure_cookie_option(make_fleet):
    api = make_fleet(dashboard_secure_cookie=True)
    assert "Secure" in api.sign_in().headers["set-cookie"]


def test_cross_site_requests_and_missing_csrf_token_are_refused(api):
    assert api.sign_in(headers={"Origin": "http://evil.example"}).status_code == 403
    assert api.sign_in(headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert api.sign_in(headers={"Origin": "null"}).status_code == 403  # without Sec-Fetch-Site
    assert api.sign_in(headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}).status_code == 303
    csrf = csrf_of(api.client.get("/dashboard").text)
    out = api.client.post
    assert out("/dashboard/signout", content="csrf=forged", headers={**FORM, **ORIGIN}).status_code == 403
    cross = {**FORM, "Origin": "http://127.0.0.1:8", "Sec-Fetch-Site": "same-site"}
    assert out("/dashboard/signout", content=f"csrf={csrf}", headers=cross).status_code == 403
    assert out("/dashboard/signout", json={"csrf": csrf}, headers=ORIGIN).status_code == 415
    assert api.client.get("/dashboard").status_code == 200  # still signed in
    done = out("/dashboard/signout", content=f"csrf={csrf}", headers={**FORM, **ORIGIN}, follow_redirects=False)
    assert done.status_code == 303 and 'edgekiln_dashboard=""' in done.headers["set-cookie"]
    # The session is gone on the server, not only in this browser.
    api.client.cookies.clear()
    assert api.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_overview_counts_filters_and_sorts(api, hb):
    t1, t2 = api.register("f", "d1"), api.register("f", "d2")
    api.register("g", "d3")
    assert api.heartbeat(t2, dict(model_heartbeat(hb, "a", version="1"), device_name="d2")).status_code == 200
    api.clock[0] += 300  # d2 falls silent past the 120 s window
    assert api.heartbeat(t1, model_heartbeat(hb, "b", version="7")).status_code == 200
    api.sign_in()

    def rows(query=""):
        page = api.client.get("/dashboard" + query).text
        return re.findall(r'data-device="([^"]+)" data-status="([^"]+)"', page), page

    listed, page = rows()
    assert listed == [("f/d1", "online"), ("f/d2", "offline"), ("g/d3", "never")]
    for name, n in (("total", 3), ("online", 1), ("offline", 1), ("never", 1)):
        assert f'id="count-{name}">{n}<' in page
    assert "cls <b>7</b>" in page and "cls <b>1</b>" in page
    assert rows("?status=offline")[0] == [("f/d2", "offline")]
    assert rows("?fleet=g")[0] == [("g/d3", "never")]
    assert rows("?model=cls&sort=last")[0] == [("f/d1", "online"), ("f/d2", "offline")]
    assert rows("?sort=status")[0][0] == ("f/d1", "online")
    fragment = api.client.get("/dashboard", headers={"X-Dashboard-Fragment": "1"}).text
    assert fragment.lstrip().startswith('<section class="counts">') and "<html" not in fragment


def put_batch(api, token, records):
    """A batch as the agent writes it (JSON Lines + objects), uploaded through presigned PUTs."""
    lines, objects = [], {}
    for rid, item, data in records:
        if data is not None:
            objects[f"cls/2027-01-01/b1/{rid}/input-tensor-0.bin"] = data
            tensor = dict(item["input_tensors"][0], object=f"cls/2027-01-01/b1/{rid}/input-tensor-0.bin")
            item = dict(item, input_tensors=[tensor])
        lines.append(json.dumps({"record_id": rid, "model_name": "cls", **item}))
    objects["cls/2027-01-01/b1.jsonl"] = ("\n".join(lines) + "\n").encode()
    urls = api.device(token, "POST", "/v1/agent/uploads", json={"keys": list(objects)}).json()["urls"]
    for key, data in objects.items():
        assert api.client.put(urls[key], content=data).status_code == 200
    notice = {
        "key": "cls/2027-01-01/b1.jsonl",
        "objects": [k for k in objects if k.endswith(".bin")],
        "bytes": sum(map(len, objects.values())),
        "records": [{"record_id": r[0], "model_name": "cls"} for r in records],
    }
    assert api.device(token, "POST", "/v1/agent/captures", json=notice).status_code == 200


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_device_page_charts_and_thumbnails(api, hb):
    token, other = api.register("f", "d1"), api.register("f", "d2")
    for i in range(4):
        api.heartbeat(token, model_heartbeat(hb, f"h{i}", count=i * 10, cpu=float(i)))
    tensor = np.random.default_rng(0).random((1, 3, 120, 160), dtype=np.float32)
    png = io.BytesIO()
    Image.new("RGB", (200, 100), (200, 10, 10)).save(png, format="PNG")
    spec = {"input_tensors": [{"name": "x", "data_type": "FLOAT32", "shape": [1, 3, 120, 160]}]}
    aux = {"inputs": [{"name": "photo", "encoding": "NONE", "data": base64.b64encode(png.getvalue()).decode()}]}
    put_batch(api, token, [("r0", spec, tensor.tobytes()), ("r1", aux, None), ("r2", {}, None)])
    api.sign_in()
    page = api.client.get("/dashboard/devices/f/d1").text
    points = dict(re.findall(r'data-points="(\d+)" aria-label="([^"]+)"', page)[i][::-1] for i in range(5))
    assert points == {
        "cls: inferences": "4",
        "cls: latency": "8",
        "cls: errors": "4",
        "agent CPU": "4",
        "agent memory": "4",
    }
    assert "3 records in 1 batches" in page and 'class="version">3<' in page
    batch = re.search(r"/dashboard/devices/f/d1/batches/(\d+)/0\.png", page).group(1)
    first = api.client.get(f"/dashboard/devices/f/d1/batches/{batch}/0.png")
    assert first.headers["content-type"] == "image/png", first.text
    assert png_size(first.content) == (96, 72)
    assert png_size(api.client.get(f"/dashboard/devices/f/d1/batches/{batch}/1.png").content) == (96, 48)
    for bad in (f"f/d1/batches/{batch}/2", f"f/d1/batches/{batch}/3", f"f/d2/batches/{batch}/0", "f/nope/batches/1/0"):
        assert api.client.get(f"/dashboard/devices/{bad}.png").status_code == 404, bad
    assert other not in page and "/v1/objects/" not in page  # no presigned URL in the page
    assert "No deployment has reached this device." in page
    deployments = api.client.get("/dashboard/deployments").text
    assert 'id="deployments-empty"' in deployments


@pytest.mark.parametrize(
    ("shape", "dtype", "size"),
    [([1, 3, 192, 96], "<f4", (48, 96)), ([1, 192, 96, 3], "u1", (48, 96)), ([64, 64], "<f2", (64, 64))],
)
def test_tensor_thumbnails(shape, dtype, size):
    data = (np.arange(int(np.prod(shape))) % 251).astype(dtype).tobytes()
    name = {"<f4": "FLOAT32", "u1": "UINT8", "<f2": "FLOAT16"}[dtype]
    line = json.dumps({"input_tensors": [{"data_type": name, "shape": shape, "object": "k"}]}).encode()
    assert png_size(thumbs.thumbnail(line, 0, lambda key: data)) == size


def test_inputs_that_are_not_images_are_refused():
    for data_type, shape, data in (
        ("FLOAT32", [1, 5, 8, 8], b"\0" * 4 * 320),  # five channels
        ("FLOAT32", [1, 3, 8, 8], b"\0" * 10),  # too few bytes
        ("STRING", [4], b"abcd"),
        ("FLOAT32", [1, 1, 1, 1, 1], b"\0" * 4),
    ):
        with pytest.raises(thumbs.NoThumbnail):
            thumbs.tensor_image(data, data_type, shape)
    with pytest.raises(thumbs.NoThumbnail):
        thumbs.file_image(b"not an image")
    with pytest.raises(thumbs.NoThumbnail):
        thumbs.thumbnail(b"{}\n", 0, lambda key: b"")


def test_charts_count_their_points_and_say_when_empty():
    empty = charts.line_chart("x", [charts.Series("a", ())])
    assert 'data-points="0"' in empty and "no data yet" in empty
    chart = charts.line_chart("<y>", [charts.Series("a", ((1.0, 2.0), (2.0, 3.0))), charts.Series("b", ((1.0, 1.0),))])
    assert 'data-points="3"' in chart and chart.count("<circle") == 3 and "&lt;y&gt;" in chart


def test_benchmark_uploads_need_the_admin_token_and_show_the_gate(api):
    report = json.loads(RESULTS.read_text())
    token = api.register("f", "d1")
    body = {"target": "x86_64", "label": "run-1", "report": report, "gate": None}
    assert api.device(token, "POST", "/v1/benchmarks", json=body).status_code == 403
    assert api.admin("POST", "/v1/benchmarks", json=dict(body, target="../x")).status_code == 422
    assert api.admin("POST", "/v1/benchmarks", json=dict(body, report={"results": 3})).status_code == 400
    assert api.admin("POST", "/v1/benchmarks", json=body).json() == {
        "id": 1,
        "target": "x86_64",
        "results": len(report["results"]),
        "gate": None,
    }
    regression = {"key": report["results"][0]["key"], "metric": "ratio", "message": "30% slower"}
    gate = {"baseline": "stored", "passed": False, "regressions": [regression], "checked": [{}, {}]}
    assert api.admin("POST", "/v1/benchmarks", json=dict(body, gate=gate)).json()["gate"] is False
    stored = api.admin("GET", "/v1/benchmarks/x86_64").json()["uploads"]
    first = stored[0]["results"][0]
    assert first["p50_ms"] == report["results"][0]["subjects"][0]["latency"]["p50_ms"]
    assert first["ratios"]["onnxruntime"] == report["results"][0]["comparisons"][0]["ratio"]["median"]
    api.sign_in()
    page = api.client.get("/dashboard/benchmarks").text
    assert 'id="uploads">2<' in page and "30% slower" in page and ">failed<" in page
    assert page.count('<svg class="chart"') == len(report["results"])
    empty = api.client.get("/dashboard/benchmarks?target=nope").text
    assert 'id="uploads">2<' in empty  # an unknown target shows the first one
