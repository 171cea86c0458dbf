//! kill -9 under concurrent load, at a random moment: after restart and drain, every acknowledged
//! record is in the lake exactly once, and no record appears twice; with dynamic partitioning too
//! (50 partitions, and a partition limit below that, whose overflow records must land in the
//! `activePartitionExceeded` error output exactly once), and with a WASM plugin whose keys partition
//! the records.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const ITERATIONS: u64 = 20;
const CLIENTS: usize = 4;

#[test]
fn kill_9_under_load_loses_and_duplicates_nothing() {
    crash_test(ITERATIONS, |iteration| {
        // Vary the buffering so crashes land in every phase: mid-object, mid-flush, between objects.
        let (buffering, compression) = match iteration % 4 {
            0 => ("{ size_mib: 1, interval_s: 0 }", "none"),
            1 => ("{ size_mib: 1, interval_s: 1 }", "gzip"),
            2 => ("{ size_mib: 1, interval_s: 0 }", "zstd"),
            _ => ("{ size_mib: 2, interval_s: 900 }", "snappy"),
        };
        stream_config(2, buffering, compression, "")
    });
}

#[test]
fn kill_9_with_50_partitions_loses_and_duplicates_nothing() {
    crash_test(12, |iteration| {
        let (buffering, max_active) = match iteration % 3 {
            0 => ("{ size_mib: 1, interval_s: 1 }", 500),
            1 => ("{ size_mib: 1, interval_s: 900 }", 500),
            // Fewer partitions allowed than there are: overflow records go to the error output.
            _ => ("{ size_mib: 1, interval_s: 1 }", 20),
        };
        config_with(
            2,
            "      - metadata_extraction: { query: '{customer: .customer}' }\n      - append_delimiter: true\n",
            &format!(
                "        prefix: 'customer=!{{partitionKeyFromQuery:customer}}/'\n        error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n        dynamic_partitioning: {{ enabled: true, max_active_partitions: {max_active} }}\n        buffering: {buffering}\n"
            ),
        )
    });
}

#[test]
fn kill_9_with_a_plugin_partitioning_by_its_keys_loses_and_duplicates_nothing() {
    let module = common::plugin("partition_keys");
    crash_test(8, |iteration| {
        let interval = if iteration % 2 == 0 { 1 } else { 900 };
        config_with(
            2,
            &format!(
                "      - wasm: {{ module: '{}', config: 'crash', buffer_mib: 0.2 }}\n      - append_delimiter: true\n",
                module.display()
            ),
            &format!(
                "        prefix: 'tenant=!{{partitionKeyFromLambda:tenant}}/kind=!{{partitionKeyFromLambda:kind}}/'\n        error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n        dynamic_partitioning: {{ enabled: true }}\n        buffering: {{ size_mib: 1, interval_s: {interval} }}\n"
            ),
        )
    });
}

/// Runs `iterations` kill -9 rounds, each with the configuration `config(iteration)`.
fn crash_test(iterations: u64, config: impl Fn(u64) -> String) {
    let seed = std::env::var("SPILLWAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (set SPILLWAY_CRASH_SEED to replay)");
    let mut rng = XorShift(seed);
    for iteration in 0..iterations {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start_yaml(&config(iteration), dir.path());
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), daemon.addr);
                std::thread::spawn(move || {
                    let Ok(mut conn) = Connection::open(addr) else {
                        return;
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let records: Vec<Vec<u8>> = (0..100)
                            .map(|i| {
                                format!(
                                    r#"{{"it":{iteration},"client":{c},"n":{},"customer":"c{}","tenant":"t{}","pad":"{}"}}"#,
                                    n + i,
                                    (n + i) % 50,
                                    (n + i) % 7,
                                    "p".repeat(120)
                                )
                                .into_bytes()
                            })
                            .collect();
                        match put_batch(&mut conn, "events", &records) {
                            Ok((200, body)) => {
                                assert_eq!(body["FailedPutCount"], 0, "{body}");
                                acked.lock().unwrap().extend(
                                    records.into_iter().map(|r| String::from_utf8(r).unwrap()),
                                );
                                n += 100;
                            }
                            Ok((status, body)) => panic!("unexpected answer {status}: {body}"),
                            Err(_) => return, // the daemon was killed mid-request: not acknowledged
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "iteration {iteration}: no record was acknowledged before the kill"
        );

        let mut daemon = Daemon::start(&dir.path().join("spillway.yaml"), dir.path());
        let status = daemon.terminate();
        assert!(
            status.success(),
            "drain after restart failed: {status}\n{}",
            daemon.stderr()
        );

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut overflowed = 0;
        for line in lake_lines(&daemon.lake()) {
            let record = match error_document_data(&line) {
                Some(raw) => {
                    overflowed += 1;
                    raw
                }
                None => line,
            };
            *seen.entry(String::from_utf8(record).unwrap()).or_default() += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(3).collect();
        assert!(
            dups.is_empty(),
            "iteration {iteration} (seed {seed}): duplicated records {dups:?}"
        );
        let lost: Vec<_> = acked
            .iter()
            .filter(|r| !seen.contains_key(*r))
            .take(3)
            .collect();
        assert!(
            lost.is_empty(),
            "iteration {iteration} (seed {seed}): {} of {} acknowledged records lost, e.g. {lost:?}",
            acked.iter().filter(|r| !seen.contains_key(*r)).count(),
            acked.len()
        );
        eprintln!(
            "iteration {iteration}: {} acknowledged, {} delivered ({overflowed} in the error output)",
            acked.len(),
            seen.len()
        );
    }
}

/// The record inside an `activePartitionExceeded` error document, or `None` for a data line.
fn error_document_data(line: &[u8]) -> Option<Vec<u8>> {
    let doc: serde_json::Value = serde_json::from_slice(line).ok()?;
    let code = doc.get("errorCode")?.as_str()?;
    assert_eq!(code, "DynamicPartitioning.ActivePartitionExceeded", "{doc}");
    let raw = doc.get("rawData")?.as_str()?;
    Some(
        base64_simd::STANDARD
            .decode_to_vec(raw)
            .expect("rawData is base64"),
    )
}
