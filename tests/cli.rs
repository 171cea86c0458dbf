//! The command line: validate, help and version, and every example config running as-is.

mod common;

use std::process::Command;

use common::*;

fn validate(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["validate", "--config"])
        .arg(path)
        .env("SPILLWAY_S3_BUCKET", "example-bucket")
        .output()
        .unwrap()
}

/// Whether an example writes to an S3 bucket (those run against a real S3 server in
/// tests/clients/test_s3.py; here they are validated).
fn writes_to_s3(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .unwrap()
        .contains("url: s3://")
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn every_example_config_validates() {
    for path in examples() {
        let out = validate(&path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_config_runs_and_delivers() {
    // Converting configs deliver Parquet, read back by tests/clients/test_format.py
    // (test_config_parquet_yaml_runs_as_is_and_duckdb_queries_the_lake).
    let converts = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .contains("format_conversion:")
    };
    // Configs with plugins change the records: see the test below.
    let transforms = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().contains("wasm:");
    // Request-based destinations deliver to a server, not the lake: tests/clients/
    // test_http_endpoint.py and test_opensearch.py run their examples against one.
    let requests = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).unwrap();
        text.contains("http_endpoint:") || text.contains("opensearch:")
    };
    for path in examples()
        .into_iter()
        .filter(|p| !writes_to_s3(p) && !converts(p) && !transforms(p) && !requests(p))
    {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start(&path, dir.path());
        let mut conn = Connection::open(daemon.addr).unwrap();
        // JSON records that also fit config/partitioned.yaml's partition keys.
        let records = [
            br#"{"customer_id":"acme","ts":1764614400}"#.to_vec(),
            br#"{"customer_id":"zenith","ts":1764614401}"#.to_vec(),
        ];
        let (status, body) = put_batch(&mut conn, "events", &records).unwrap();
        assert_eq!(status, 200, "{}: {body}", path.display());
        assert!(daemon.terminate().success(), "{}", path.display());
        let mut lines = lake_lines(&daemon.lake());
        lines.sort();
        assert_eq!(lines, records, "{}", path.display());
    }
}

#[test]
fn the_transform_example_runs_its_plugins() {
    common::plugin("rename");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/transform.yaml");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&path, dir.path());
    let mut conn = Connection::open(daemon.addr).unwrap();
    let records = [
        br#"{"msg":"hello","tenant":"acme"}"#.to_vec(),
        br#"{"msg":"hi","tenant":"zenith"}"#.to_vec(),
        br#"{"msg":"no tenant"}"#.to_vec(),
    ];
    let (status, body) = put_batch(&mut conn, "events", &records).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let lake = daemon.lake();
    for (tenant, line) in [
        (
            "acme",
            r#"{"message":"hello","tenant":"acme","enriched":true}"#,
        ),
        (
            "zenith",
            r#"{"message":"hi","tenant":"zenith","enriched":true}"#,
        ),
    ] {
        let dir = lake.join(format!("tenant={tenant}/kind=click"));
        assert_eq!(
            lake_lines(&dir),
            vec![line.as_bytes().to_vec()],
            "{}",
            dir.display()
        );
    }
    let errors = lake_lines(&lake.join("errors/processing-failed"));
    assert_eq!(errors.len(), 1);
    let doc: serde_json::Value = serde_json::from_slice(&errors[0]).unwrap();
    assert_eq!(doc["errorCode"], "Lambda.ProcessingFailedStatus", "{doc}");
    assert_eq!(doc["errorMessage"], "no string field \"tenant\"", "{doc}");
    assert_eq!(
        doc["lambdaArn"],
        "wasm:../transforms/build/partition_keys.wasm#spillway_transform"
    );
    assert_eq!(
        b64(br#"{"message":"no tenant","enriched":true}"#),
        doc["rawData"].as_str().unwrap()
    );
}

#[test]
fn invalid_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let yaml = stream_config(1, "{ size_mib: 200, interval_s: 60 }", "none", "");
    std::fs::write(
        &path,
        yaml.replace("${SPILLWAY_LISTEN}", "127.0.0.1:0")
            .replace("${SPILLWAY_DATA_DIR}", "/tmp/x")
            .replace("${SPILLWAY_LAKE}", "/tmp/y"),
    )
    .unwrap();
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:13:", path.display())), "{err}");
    assert!(err.contains("buffering.size_mib"), "{err}");
    assert!(err.contains("between 1 and 128, got 200"), "{err}");

    let out = validate(&dir.path().join("missing.yaml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    // `run` refuses an invalid config the same way.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unset_variable_without_default_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(&path, "data_dir: ${SPILLWAY_SURELY_UNSET_VAR}\n").unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("SPILLWAY_SURELY_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":1: environment variable SPILLWAY_SURELY_UNSET_VAR is not set"),
        "{err}"
    );
}

#[test]
fn help_and_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spillway "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("validate"), "{help}");
    let out = Command::new(BIN).arg("bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
