"""The error output on S3: records the store permanently rejects become Firehose error documents
under the error output prefix (in the same bucket), while accepted records deliver as usual. The
store is real (SeaweedFS); the fault proxy in front of it plays a store that refuses data objects
for good (400 InvalidArgument), which no correct server does on demand.
"""

from __future__ import annotations

import base64
import json

from conftest import STREAM, Spillway
from faultproxy import FaultProxy
from test_s3 import (  # noqa: F401
    assert_exactly, bucket, bucket_keys, firehose_client, make_records, put_all, s3, seaweed,
    store_env, write_config,
)


def test_permanently_rejected_records_become_error_documents(tmp_path, store_env, s3, seaweed, monkeypatch):
    bucket = store_env["bucket"]
    with FaultProxy(seaweed.endpoint_url, seed=1) as proxy:
        proxy.fault_rate = 0.0
        rule = proxy.reject(path_contains=f"/{bucket}/data/", method="PUT", status=400, code="InvalidArgument")
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        config = write_config(
            tmp_path,
            buffering="{ size_mib: 1, interval_s: 900 }",
            extra="        prefix: 'data/'\n        error_output_prefix: 'errors/!{firehose:error-output-type}/!{timestamp:yyyy}/'\n",
        )
        daemon = Spillway(tmp_path, config=config)
        daemon.start()
        try:
            rejected = make_records(300, "rejected")
            put_all(firehose_client(daemon), rejected)
            daemon.stop()
        finally:
            daemon.kill()
        assert rule.hits >= 1, "the store never rejected anything"
        keys = bucket_keys(s3, bucket)
        assert keys and all(k.startswith("errors/s3-failed/") for k in keys), keys
        docs = []
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            docs.extend(json.loads(line) for line in body.splitlines())
        assert len(docs) == len(rejected)
        for doc in docs:
            assert set(doc) == {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                                "attemptEndingTimestamp", "rawData"}, doc
            assert doc["errorCode"] == "S3.InvalidArgument"
            assert "InvalidArgument" in doc["errorMessage"]
            assert doc["attemptEndingTimestamp"] >= doc["arrivalTimestamp"] > 0
        assert_exactly([base64.b64decode(d["rawData"]) for d in docs], rejected)

        # Once the store accepts again, records deliver as data; the error output is unchanged.
        proxy.clear_rejections()
        daemon = Spillway(tmp_path, config=config)
        daemon.start()
        try:
            accepted = make_records(200, "accepted")
            put_all(firehose_client(daemon), accepted)
            daemon.stop()
        finally:
            daemon.kill()
        data_keys = [k for k in bucket_keys(s3, bucket) if k.startswith("data/")]
        assert data_keys, bucket_keys(s3, bucket)
        got = []
        for key in data_keys:
            got.extend(s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines())
        assert_exactly(got, accepted)
        assert [k for k in bucket_keys(s3, bucket) if k.startswith("errors/")] == keys
