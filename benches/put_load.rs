//! Direct PUT load generator: PutRecordBatch calls of 500 ~200-byte JSON records over N keep-alive
//! connections against a release `spillway` on loopback, then at half the best measured rate.
//! Prints records/s, MB/s of payload, p50/p99 acknowledgement latency and the daemon's peak RSS.
//!
//! `cargo bench --bench put_load` (env: SPILLWAY_BENCH_SECONDS, default 10;
//! SPILLWAY_BENCH_CONNECTIONS, default "4,8,16"; SPILLWAY_BENCH_SHARDS, default 2; SPILLWAY_BENCH_LAKE,
//! a directory for the lake, default beside the log on the same disk).
//! Bounded in time, loopback only. The generator shares the machine's cores with the daemon.

mod load;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use load::*;

fn main() {
    // `cargo bench` passes `--bench`; any other filter argument is ignored.
    let seconds: u64 = env_or("SPILLWAY_BENCH_SECONDS", 10);
    let shards: u32 = env_or("SPILLWAY_BENCH_SHARDS", 2);
    let conns: Vec<usize> = std::env::var("SPILLWAY_BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "4,8,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let lake = std::env::var("SPILLWAY_BENCH_LAKE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("lake"));
    let config = format!(
        "data_dir: {}\nlog: {{ segment_mib: 256, max_disk_mib: 40960 }}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: {shards} }} }}\n    processing: [ {{ append_delimiter: true }} ]\n    destination:\n      s3: {{ url: 'file://{}', buffering: {{ size_mib: 128, interval_s: 60 }} }}\n",
        dir.path().join("data").display(),
        lake.display()
    );
    let (mut child, addr) = start_daemon(dir.path(), &config, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let built: Vec<(Vec<u8>, usize)> = (0..16)
        .map(|k| request_bytes(addr, k * RECORDS_PER_CALL))
        .collect();
    let payload_per_call = built.iter().map(|(_, p)| *p as f64).sum::<f64>() / built.len() as f64;
    let reqs = Arc::new(built.into_iter().map(|(r, _)| r).collect::<Vec<_>>());

    println!("Direct PUT durable ingest: PutRecordBatch x {RECORDS_PER_CALL} records of ~{:.0} B, {shards} shards, {seconds} s per row, fsync group commit", payload_per_call / RECORDS_PER_CALL as f64);
    println!(
        "| load                         |    records/s |     MB/s | p50 (ms) | p99 (ms) | errors |"
    );
    println!(
        "|------------------------------|--------------|----------|----------|----------|--------|"
    );
    let mut best = 0.0f64;
    for &c in &conns {
        let o = rt.block_on(run_load(
            addr,
            c,
            Duration::from_secs(seconds),
            None,
            Arc::clone(&reqs),
        ));
        best = best.max(o.calls as f64 / o.elapsed.as_secs_f64());
        row(&format!("max, {c} connections"), &o, payload_per_call);
    }
    let half = best / 2.0;
    for &c in &conns {
        let o = rt.block_on(run_load(
            addr,
            c,
            Duration::from_secs(seconds),
            Some(half),
            Arc::clone(&reqs),
        ));
        row(
            &format!("half of best, {c} connections"),
            &o,
            payload_per_call,
        );
    }
    println!("daemon peak RSS: {:.1} MiB", peak_rss_mib(child.id()));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
