//! Dynamic partitioning end to end: Direct PUT → jq partition keys → one buffer per partition →
//! the local lake, next to the same load unpartitioned. PutRecordBatch load for a while from
//! several connections, then SIGTERM; the clock stops when every acknowledged record is delivered.
//! Reports records/s, MB/s, objects and the daemon's peak RSS.
//!
//! The records (benches/load) carry 500 distinct `customer_id`s, so the partitioned runs keep 500
//! partitions active in every shard. `cargo bench --bench partition_e2e` (env:
//! SPILLWAY_BENCH_SECONDS, default 10; SPILLWAY_BENCH_CONNECTIONS, default 8).

mod load;

use load::*;

struct Variant {
    label: &'static str,
    processing: &'static str,
    s3: &'static str,
    compression: &'static str,
}

const VARIANTS: &[Variant] = &[
    Variant {
        label: "unpartitioned",
        processing: "[ { append_delimiter: true } ]",
        s3: "",
        compression: "none",
    },
    Variant {
        label: "500 partitions (customer_id)",
        processing: "[ { metadata_extraction: { query: '{customer_id: .customer_id}' } }, { append_delimiter: true } ]",
        s3: "prefix: 'customer_id=!{partitionKeyFromQuery:customer_id}/', error_output_prefix: 'errors/!{firehose:error-output-type}/', dynamic_partitioning: { enabled: true }, ",
        compression: "none",
    },
    Variant {
        label: "500 partitions, 2 keys",
        processing: "[ { metadata_extraction: { query: '{customer_id: .customer_id, type: .event_type}' } }, { append_delimiter: true } ]",
        s3: "prefix: 'customer_id=!{partitionKeyFromQuery:customer_id}/type=!{partitionKeyFromQuery:type}/', error_output_prefix: 'errors/!{firehose:error-output-type}/', dynamic_partitioning: { enabled: true }, ",
        compression: "none",
    },
    Variant {
        label: "unpartitioned, gzip 1",
        processing: "[ { append_delimiter: true } ]",
        s3: "compression_level: 1, ",
        compression: "gzip",
    },
    Variant {
        label: "500 partitions, gzip 1",
        processing: "[ { metadata_extraction: { query: '{customer_id: .customer_id}' } }, { append_delimiter: true } ]",
        s3: "prefix: 'customer_id=!{partitionKeyFromQuery:customer_id}/', error_output_prefix: 'errors/!{firehose:error-output-type}/', dynamic_partitioning: { enabled: true }, compression_level: 1, ",
        compression: "gzip",
    },
];

fn count_files(dir: &std::path::Path) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            let (a, b) = count_files(&path);
            n += a;
            bytes += b;
        } else if !path.to_string_lossy().contains(".spillway") {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, bytes)
}

fn main() {
    let seconds: u64 = env_or("SPILLWAY_BENCH_SECONDS", 10);
    let connections: usize = env_or("SPILLWAY_BENCH_CONNECTIONS", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("Direct PUT → local lake, 2 shards, size_mib 64, interval 60 s, {connections} connections, {seconds} s of load then SIGTERM (every acknowledged record delivered)");
    println!("| variant | records | load+drain s | records/s | MB/s payload | objects | daemon peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for v in VARIANTS {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let config = format!(
            "data_dir: {}\nshutdown_grace_s: 900\nlog: {{ segment_mib: 256 }}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: 2 }} }}\n    processing: {}\n    destination:\n      s3: {{ url: 'file://{}', {}compression: {}, buffering: {{ size_mib: 64, interval_s: 60 }} }}\n",
            dir.path().join("data").display(),
            v.processing,
            lake.display(),
            v.s3,
            v.compression,
        );
        let (outcome, payload_per_call, peak, total) =
            load_then_drain(&rt, dir.path(), &config, &[], connections, seconds);
        let (objects, _) = count_files(&lake);
        let records = outcome.calls as f64 * RECORDS_PER_CALL as f64;
        assert_eq!(outcome.errors, 0, "{}: requests failed", v.label);
        println!(
            "| {} | {records:.0} | {total:.1} | {:.0} | {:.1} | {objects} | {peak:.1} |",
            v.label,
            records / total,
            outcome.calls as f64 * payload_per_call / total / 1e6,
        );
    }
}
