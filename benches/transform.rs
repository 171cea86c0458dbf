//! WASM transformation plugins: what they cost.
//!
//! 1. Pipeline throughput, one shard, in-process: a shard log holding N records (benches/load's
//!    ~200-byte JSON) is delivered to a local lake by one pipeline thread, with and without
//!    plugins, so that the plugin's cost is not hidden behind ingest (which the end-to-end
//!    benches measure). The clock runs from the pipeline's start until the shard is delivered.
//! 2. Per-call overhead: the median time of a call with a one-record batch (copy in, call,
//!    validate, copy out), and the per-record cost of each example plugin in 1 MiB batches.
//!
//! Needs `transforms/build.sh` to have run. `cargo bench --bench transform` (env:
//! SPILLWAY_BENCH_RECORDS, default 1,000,000; SPILLWAY_BENCH_ONLY, a variant label's substring;
//! SPILLWAY_BENCH_CALLS_ONLY=1, only the per-call table; SPILLWAY_BENCH_SECONDS, default 10;
//! SPILLWAY_BENCH_ROUNDS, default 5; SPILLWAY_BENCH_DAEMON_ROUNDS, default 3).

mod load;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway::config::Config;
use spillway::log::{CheckpointStore, LogOptions, ShardId, ShardLog};
use spillway::pipeline::Pipeline;
use spillway::sink::LocalStore;
use spillway::transform::abi::BatchWriter;
use spillway::transform::plugin::{OutputBuffers, Plugin, PluginSpec};

fn plugin_path(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("transforms/build")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run transforms/build.sh",
        p.display()
    );
    p.display().to_string()
}

struct Variant {
    label: &'static str,
    processing: String,
    s3: &'static str,
}

fn variants() -> Vec<Variant> {
    let wasm = |name: &str, extra: &str| {
        format!("{{ wasm: {{ module: '{}'{extra} }} }}", plugin_path(name))
    };
    let lambda_prefix = "prefix: 'tenant=!{partitionKeyFromLambda:tenant}/', error_output_prefix: 'errors/!{firehose:error-output-type}/', dynamic_partitioning: { enabled: true }, ";
    let query_prefix = "prefix: 'tenant=!{partitionKeyFromQuery:tenant}/', error_output_prefix: 'errors/!{firehose:error-output-type}/', dynamic_partitioning: { enabled: true }, ";
    vec![
        Variant {
            label: "no plugin",
            processing: "[ { append_delimiter: true } ]".into(),
            s3: "",
        },
        Variant {
            label: "rename",
            processing: format!("[ {}, {{ append_delimiter: true }} ]", wasm("rename", "")),
            s3: "",
        },
        Variant {
            // No JSON walk: the plugin machinery's own cost (records hold no newline).
            label: "split (one piece each)",
            processing: format!("[ {}, {{ append_delimiter: true }} ]", wasm("split", "")),
            s3: "",
        },
        Variant {
            label: "filter (passes all)",
            processing: format!("[ {}, {{ append_delimiter: true }} ]", wasm("filter", "")),
            s3: "",
        },
        Variant {
            label: "rename, 3 MiB batches",
            processing: format!(
                "[ {}, {{ append_delimiter: true }} ]",
                wasm("rename", ", buffer_mib: 3")
            ),
            s3: "",
        },
        Variant {
            label: "rename → filter (chained)",
            processing: format!(
                "[ {}, {}, {{ append_delimiter: true }} ]",
                wasm("rename", ""),
                wasm("filter", "")
            ),
            s3: "",
        },
        Variant {
            label: "jq keys, 500 partitions",
            processing: "[ { metadata_extraction: { query: '{tenant: .customer_id}' } }, { append_delimiter: true } ]".into(),
            s3: query_prefix,
        },
        Variant {
            label: "plugin keys, 500 partitions",
            processing: format!(
                "[ {}, {{ append_delimiter: true }} ]",
                wasm("partition_keys", ", config: 'k'")
            ),
            s3: lambda_prefix,
        },
    ]
}

/// Records like benches/load's, with a `tenant` (= customer_id, 500 values) for partition_keys.
fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut r = load::record(i);
            r.pop(); // the closing brace
            r.extend_from_slice(format!(r#","tenant":"c-{:05}"}}"#, i % 500).as_bytes());
            r
        })
        .collect()
}

/// Delivers `records` from a fresh shard with one pipeline; returns seconds and objects written.
fn drain(v: &Variant, records: &[Vec<u8>]) -> (f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "data_dir: {}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: 1 }} }}\n    processing: {}\n    destination:\n      s3: {{ url: 'file://{}', {}compression: none, buffering: {{ size_mib: 64, interval_s: 900 }} }}\n",
        dir.path().join("data").display(),
        v.processing,
        dir.path().join("lake").display(),
        v.s3,
    );
    let config = Config::parse(&yaml, "bench").unwrap_or_else(|e| panic!("{}: {e}", v.label));
    let settings = Arc::new(
        spillway::daemon::delivery_settings(&config.delivery_streams[0], "bench", dir.path())
            .unwrap(),
    );
    let shard = ShardLog::open(
        ShardId(0),
        dir.path().join("log"),
        LogOptions::default(),
        Arc::default(),
    )
    .unwrap();
    for chunk in records.chunks(500) {
        let appended = shard
            .append(chunk.iter().map(|r| (&b""[..], r.as_slice())))
            .unwrap();
        appended.durable.blocking_recv().unwrap().unwrap();
    }
    let store = Arc::new(LocalStore::open(dir.path().join("lake")).unwrap());
    let checkpoints = CheckpointStore::new(dir.path().join("ck"));
    let started = Instant::now();
    Pipeline::new(
        settings,
        Arc::clone(&shard),
        store,
        checkpoints,
        Arc::new(AtomicBool::new(true)),
    )
    .run();
    let took = started.elapsed().as_secs_f64();
    shard.close();
    let objects = walk(&dir.path().join("lake"));
    (took, objects)
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        usize::from(!p.to_string_lossy().contains(".spillway"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn spec(name: &str, config: &str) -> PluginSpec {
    let path = plugin_path(name);
    PluginSpec {
        bytes: Arc::new(std::fs::read(&path).unwrap()),
        path: path.into(),
        function: "spillway_transform".into(),
        config: config.into(),
        timeout: Duration::from_secs(60),
        memory_bytes: 256 << 20,
    }
}

/// Median seconds of `runs` calls of `batch` on `plugin`.
fn median_call(plugin: &Plugin, batch: &BatchWriter, runs: usize) -> f64 {
    let mut buffers = OutputBuffers::default();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let r = plugin.call(batch, &mut buffers).unwrap();
            std::hint::black_box(r);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let n: usize = load::env_or("SPILLWAY_BENCH_RECORDS", 1_000_000);
    let recs = records(n);
    let mean = recs.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    let rounds: usize = load::env_or("SPILLWAY_BENCH_ROUNDS", 5);
    println!("One pipeline (one shard) delivering {n} records of {mean:.0} bytes from the log to a local lake; size_mib 64; best of {rounds} rounds, the variants interleaved in each");
    println!("| variant | records/s | MB/s | objects | vs no plugin |");
    println!("|---|---|---|---|---|");
    let calls_only = std::env::var_os("SPILLWAY_BENCH_CALLS_ONLY").is_some();
    // SPILLWAY_BENCH_ONLY=<label substring> runs the baseline and the matching variants (for profiling).
    let only = std::env::var("SPILLWAY_BENCH_ONLY").ok();
    let chosen: Vec<Variant> = variants()
        .into_iter()
        .enumerate()
        .filter(|_| !calls_only)
        .filter(|(i, v)| *i == 0 || only.as_ref().is_none_or(|o| v.label.contains(o.as_str())))
        .map(|(_, v)| v)
        .collect();
    // Rounds, not runs of one variant after another: this machine's speed drifts by tens of per
    // cent within minutes, and interleaving exposes every variant to the same drift.
    let mut best = vec![(f64::MAX, 0); chosen.len()];
    for _ in 0..rounds {
        for (v, best) in chosen.iter().zip(&mut best) {
            let (t, objects) = drain(v, &recs);
            *best = (best.0.min(t), objects);
        }
    }
    let mut baseline = None;
    for (v, (secs, objects)) in chosen.iter().zip(best) {
        let rate = n as f64 / secs;
        let base = *baseline.get_or_insert(rate);
        println!(
            "| {} | {rate:.0} | {:.1} | {objects} | {:+.1} % |",
            v.label,
            rate * mean / 1e6,
            (base / rate - 1.0) * 100.0
        );
    }

    println!();
    let seconds: u64 = load::env_or("SPILLWAY_BENCH_SECONDS", 10);
    let daemon_rounds: usize = load::env_or("SPILLWAY_BENCH_DAEMON_ROUNDS", 3);
    let connections = 8;
    println!("Whole daemon: Direct PUT → local lake, 2 shards, {connections} connections, {seconds} s of load then SIGTERM (clock stops when every acknowledged record is delivered); ingest and delivery share the 2 cores; best of {daemon_rounds} rounds, interleaved");
    println!("| variant | records/s | vs no plugin | daemon peak RSS MiB |");
    println!("|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let daemon_variants = [
        ("no plugin", "[ { append_delimiter: true } ]".to_string()),
        (
            "rename",
            format!(
                "[ {{ wasm: {{ module: '{}' }} }}, {{ append_delimiter: true }} ]",
                plugin_path("rename")
            ),
        ),
    ];
    // (best records/s, highest peak RSS) per variant.
    let mut best = vec![(0.0f64, 0.0f64); daemon_variants.len()];
    for _ in 0..daemon_rounds {
        if calls_only {
            break;
        }
        for ((label, processing), best) in daemon_variants.iter().zip(&mut best) {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "data_dir: {}\nshutdown_grace_s: 900\nlog: {{ segment_mib: 256 }}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: 2 }} }}\n    processing: {processing}\n    destination:\n      s3: {{ url: 'file://{}', compression: none, buffering: {{ size_mib: 64, interval_s: 60 }} }}\n",
                dir.path().join("data").display(),
                dir.path().join("lake").display(),
            );
            let (outcome, _, peak, total) =
                load::load_then_drain(&rt, dir.path(), &config, &[], connections, seconds);
            assert_eq!(outcome.errors, 0, "{label}: requests failed");
            let rate = outcome.calls as f64 * load::RECORDS_PER_CALL as f64 / total;
            *best = (best.0.max(rate), best.1.max(peak));
        }
    }
    if !calls_only {
        let base = best[0].0;
        for ((label, _), (rate, peak)) in daemon_variants.iter().zip(&best) {
            println!(
                "| {label} | {rate:.0} | {:+.1} % | {peak:.1} |",
                (base / rate - 1.0) * 100.0
            );
        }
    }

    println!();
    println!("Plugin calls (median of 2,000 one-record calls; 1 MiB batches of the records above, median of 50)");
    println!(
        "| plugin | µs per call (1 record) | records per 1 MiB batch | ns per record | MB/s |"
    );
    println!("|---|---|---|---|---|");
    for (name, config) in [
        ("rename", ""),
        ("filter", ""),
        ("partition_keys", "k"),
        ("split", ""),
        ("upper", ""),
    ] {
        let plugin = Plugin::load(spec(name, config), None).unwrap();
        let mut one = BatchWriter::default();
        one.push(0, &recs[0]);
        let per_call = median_call(&plugin, &one, 2000);
        let mut batch = BatchWriter::default();
        for r in &recs {
            if batch.len() + r.len() + 20 > 1 << 20 {
                break;
            }
            batch.push(0, r);
        }
        let t = median_call(&plugin, &batch, 50);
        let per_record = t / batch.count() as f64;
        println!(
            "| {name} | {:.2} | {} | {:.0} | {:.0} |",
            per_call * 1e6,
            batch.count(),
            per_record * 1e9,
            batch.len() as f64 / t / 1e6
        );
    }
}
