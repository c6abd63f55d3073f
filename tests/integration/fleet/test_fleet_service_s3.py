"""The fleet service as a real process with SeaweedFS: presigned uploads and device isolation."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest


def call(fleet, method, path, body=None, token=None):
    try:
        return 200, fleet.call(method, path, body, token=token)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def put(url, data=b"x"):
    request = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def s3_client(seaweed):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
    )


def test_presigned_uploads_land_in_the_devices_prefix_only(fleet_server, seaweed):
    fleet = fleet_server()
    t1, t2 = fleet.register("plant", "cam-1"), fleet.register("plant", "cam-2")
    key = "cls/2027-01-01/batch-1.jsonl"
    status, answer = call(fleet, "POST", "/v1/agent/uploads", {"keys": [key, "cls/2027-01-01/batch-1/r1/x.bin"]}, t1)
    assert status == 200 and answer["prefix"] == "plant/cam-1/" and answer["expires_in"] == 300
    url = answer["urls"][key]
    assert "X-Amz-Signature=" in url and "/plant/cam-1/cls/2027-01-01/batch-1.jsonl" in url
    assert put(url, b'{"record_id": "r1"}\n') == 200
    assert put(answer["urls"]["cls/2027-01-01/batch-1/r1/x.bin"], b"\0" * 1000) == 200
    s3 = s3_client(seaweed)
    body = s3.get_object(Bucket=fleet.bucket, Key="plant/cam-1/" + key)["Body"].read()
    assert body == b'{"record_id": "r1"}\n'
    # S3 checks the signature: the URL cannot be bent to another device's key.
    assert put(url.replace("/plant/cam-1/", "/plant/cam-2/"), b"evil") == 403
    # Without a signature the bucket is closed (no anonymous reads or writes).
    assert put(url.split("?")[0], b"evil") == 403
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert info.value.code == 403
    listed = s3.list_objects_v2(Bucket=fleet.bucket, Prefix="plant/cam-2/")
    assert listed.get("KeyCount", 0) == 0
    # Keys are relative to the caller's own prefix; escaping it is refused.
    assert call(fleet, "POST", "/v1/agent/uploads", {"keys": ["../cam-1/x"]}, t2)[0] == 400
    # A batch notice is recorded only for objects that are in the store, under the caller's prefix.
    notice = {
        "key": key,
        "objects": ["cls/2027-01-01/batch-1/r1/x.bin"],
        "bytes": 1020,
        "records": [{"record_id": "r1", "model_name": "cls"}],
    }
    assert call(fleet, "POST", "/v1/agent/captures", notice, t2)[0] == 409
    assert call(fleet, "POST", "/v1/agent/captures", notice, t1) == (200, {"new": 1, "duplicates": 0})
    assert call(fleet, "POST", "/v1/agent/captures", notice, t1) == (200, {"new": 0, "duplicates": 1})
    listing = fleet.call("GET", "/v1/devices/plant/cam-1/captures")
    assert [o["key"] for o in listing["objects"]] == [
        "plant/cam-1/" + key,
        "plant/cam-1/cls/2027-01-01/batch-1/r1/x.bin",
    ]
    assert listing["records"] == [{"record_id": "r1", "model_name": "cls", "key": "plant/cam-1/" + key}]
    # Operator routes are closed to device tokens.
    assert call(fleet, "GET", "/v1/devices/plant/cam-1/captures", token=t1)[0] == 403


def test_presigned_urls_are_short_lived(fleet_server):
    fleet = fleet_server(presign_seconds=1)
    token = fleet.register("plant", "cam-9")
    url = fleet.call("POST", "/v1/agent/uploads", {"keys": ["m/k.jsonl"]}, token=token)["urls"]["m/k.jsonl"]
    time.sleep(2.2)
    assert put(url) == 403
