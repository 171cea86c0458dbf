"""AWS CLI v1 (the ``aws`` executable of this venv, see requirements.txt)
against a real Spillway daemon.

How AWS CLI v1 treats blob parameters (checked in awscli 1.46.3 and its
vendored botocore 1.43.62, and asserted below): a blob member such as
``Records[].Data`` or ``Record.Data`` given as *text* -- inline, via shorthand,
or inside a ``file://`` JSON document -- is sent as the UTF-8 bytes of that
text; botocore base64-encodes those bytes on the wire
(``Serializer._get_base64``: ``str`` -> ``.encode('utf-8')`` -> b64encode).
So the text must NOT be pre-encoded: ``"Data": "aGVsbG8="`` is delivered as
the 8 bytes ``aGVsbG8=``, not as ``hello``. (AWS CLI v2 is the opposite by
default: ``cli_binary_format=base64`` expects base64 text; v1 only uses that
setting to print an upgrade warning.) The records file is written with
``ensure_ascii=True`` so it is pure ASCII and its reading does not depend on
the locale, while a ``\\u00e9`` escape inside it still yields the UTF-8 bytes
C3 A9 in the lake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import STREAM, assert_lake_holds

CLI_TIMEOUT_S = 120


def aws_executable() -> Path:
    # Deliberately not resolved: sys.executable may be a venv symlink and the
    # venv's bin/ directory is where pip put the `aws` script.
    path = Path(sys.executable).parent / "aws"
    assert path.is_file(), (
        f"AWS CLI not found at {path}; install tests/clients/requirements.txt "
        f"into the venv running pytest"
    )
    return path


def run_aws(spillway, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    # Credentials, region and isolated config files come from the autouse
    # aws_env fixture (conftest.py), which patched os.environ.
    env = dict(os.environ)
    env.update(AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard")
    cmd = [
        str(aws_executable()),
        *args,
        "--endpoint-url",
        spillway.endpoint,
        "--region",
        "us-east-1",
        "--output",
        "json",
        "--cli-connect-timeout",
        "5",
        "--cli-read-timeout",
        "60",
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    if expect_ok:
        assert proc.returncode == 0, (
            f"`aws {' '.join(args)}` exited {proc.returncode}\n--- aws stderr ---\n"
            f"{proc.stderr.decode(errors='replace')}\n--- spillway stderr ---\n"
            f"{spillway.stderr_tail()}"
        )
    return proc


def parse_output(proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"aws printed non-JSON output: {proc.stdout[:500]!r}")


def text_records(n: int) -> list[str]:
    """``n`` distinct ~200-character JSON texts, no newlines."""
    out = []
    for i in range(n):
        doc = {"cli": True, "seq": i, "id": f"cli-{i:05d}", "pad": "y" * (150 - len(str(i)))}
        out.append(json.dumps(doc, sort_keys=True))
    # Two records that pin down the v1 blob semantics described above.
    out[0] = "aGVsbG8gd29ybGQ="  # valid base64 text: must arrive as these 16 bytes
    out[1] = json.dumps({"seq": 1, "text": "caf\u00e9"}, ensure_ascii=False)  # non-ASCII
    assert len(set(out)) == n and not any("\n" in t for t in out)
    return out


def test_awscli_round_trip(spillway, tmp_path):
    texts = text_records(500)
    records_file = tmp_path / "records.json"
    records_file.write_text(json.dumps([{"Data": t} for t in texts], ensure_ascii=True))
    assert records_file.read_bytes().isascii()

    out = parse_output(
        run_aws(
            spillway,
            "firehose",
            "put-record-batch",
            "--delivery-stream-name",
            STREAM,
            "--records",
            f"file://{records_file}",
        )
    )
    assert out.get("FailedPutCount") == 0, f"FailedPutCount should be 0: {out.get('FailedPutCount')!r}"
    responses = out.get("RequestResponses", [])
    assert len(responses) == 500, f"expected 500 RequestResponses, got {len(responses)}"
    assert all(r.get("RecordId") for r in responses), "some RequestResponses lack a RecordId"

    inline_text = '{"via": "put-record", "inline": true}'
    out = parse_output(
        run_aws(
            spillway,
            "firehose",
            "put-record",
            "--delivery-stream-name",
            STREAM,
            "--record",
            json.dumps({"Data": inline_text}),
        )
    )
    assert out.get("RecordId"), f"put-record returned no RecordId: {out}"

    shorthand_text = "put-record-shorthand-1"
    out = parse_output(
        run_aws(
            spillway,
            "firehose",
            "put-record",
            "--delivery-stream-name",
            STREAM,
            "--record",
            f"Data={shorthand_text}",
        )
    )
    assert out.get("RecordId"), f"put-record (shorthand) returned no RecordId: {out}"

    listed = parse_output(run_aws(spillway, "firehose", "list-delivery-streams"))
    assert STREAM in listed.get("DeliveryStreamNames", []), f"'{STREAM}' not listed: {listed}"

    described = parse_output(
        run_aws(spillway, "firehose", "describe-delivery-stream", "--delivery-stream-name", STREAM)
    )
    d = described.get("DeliveryStreamDescription", {})
    assert (d.get("DeliveryStreamName"), d.get("DeliveryStreamStatus"), d.get("DeliveryStreamType")) == (
        STREAM,
        "ACTIVE",
        "DirectPut",
    ), f"unexpected description: {d}"

    spillway.stop()
    expected = [t.encode("utf-8") for t in texts + [inline_text, shorthand_text]]
    assert expected[0] == b"aGVsbG8gd29ybGQ=" and b"caf\xc3\xa9" in expected[1]
    assert_lake_holds(spillway, expected)


def test_awscli_unknown_stream(spillway):
    proc = run_aws(
        spillway,
        "firehose",
        "put-record",
        "--delivery-stream-name",
        "no-such-stream",
        "--record",
        "Data=lost",
        expect_ok=False,
    )
    assert proc.returncode != 0, "put-record to an unknown stream should fail"
    assert b"ResourceNotFoundException" in proc.stderr, (
        f"expected ResourceNotFoundException in aws stderr: {proc.stderr[-1000:]!r}"
    )
    kept = "delivered-after-cli-error"
    run_aws(
        spillway, "firehose", "put-record", "--delivery-stream-name", STREAM, "--record", f"Data={kept}"
    )
    spillway.stop()
    assert_lake_holds(spillway, [kept.encode()])
