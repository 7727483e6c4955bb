"""The room an S3 prefix leaves the keys (``MIN_KEY_ROOM_BYTES``), where a URI is built or only read.

A store's prefix must leave the flow's keys 512 of S3's 1024 bytes. ``<SKUFORGE_STORE_URI>/adapters`` is
built, not set, so the settings' check of the store passed a prefix the adapter registry's refused; and a
model's folder, which the flow only reads, was held to the room of a folder it writes in.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3

from shared.model_cache import fetch_directory, fetch_file

# 506 bytes: the store's prefix fits (at most 511), the adapter registry's under it (516) does not.
LONG_PREFIX = "/".join(["p" * 250, "p" * 255])
STORE_URI = f"s3://bucket/{LONG_PREFIX}"


def test_a_model_in_a_folder_with_a_long_prefix_is_fetched(s3_endpoint: str, tmp_path: Path) -> None:
    """The model cache opened the model's folder as a store, so a folder of over 511 bytes was refused
    for leaving the flow's keys too little room, though the flow writes nothing there and S3 serves it."""
    folder = "/".join(["m" * 250, "m" * 250, "m" * 100])  # 602 bytes
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"{folder}/model.onnx", Body=b"weights")
    uri = f"s3://{bucket}/{folder}"
    copy = fetch_file(
        f"{uri}/model.onnx", tmp_path / "cache", s3_endpoint_url=s3_endpoint, uri_from="the test"
    )
    assert copy.read_bytes() == b"weights"
    local = fetch_directory(uri, tmp_path / "cache", s3_endpoint_url=s3_endpoint, uri_from="the test")
    assert (local / "model.onnx").read_bytes() == b"weights"
