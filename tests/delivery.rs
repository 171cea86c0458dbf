//! End-to-end delivery through the real daemon: drain on SIGTERM, buffering hints, compression,
//! object naming, and what happens while the lake cannot be written.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

fn records(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"tag":"{tag}","i":{i},"msg":"{}"}}"#,
                "x".repeat(i % 50)
            )
            .into_bytes()
        })
        .collect()
}

fn send_all(daemon: &Daemon, recs: &[Vec<u8>]) {
    let mut conn = Connection::open(daemon.addr).unwrap();
    for chunk in recs.chunks(500) {
        let (status, body) = put_batch(&mut conn, "events", chunk).unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["FailedPutCount"], 0);
        assert_eq!(
            body["RequestResponses"].as_array().unwrap().len(),
            chunk.len()
        );
    }
}

#[test]
fn sigterm_drains_every_buffer_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Buffers that would not flush for 15 minutes: only the drain delivers them.
    let mut daemon = Daemon::start_yaml(
        &stream_config(3, "{ size_mib: 128, interval_s: 900 }", "none", ""),
        dir.path(),
    );
    let sent = records(2000, "drain");
    send_all(&daemon, &sent);
    assert!(
        lake_objects(&daemon.lake()).is_empty(),
        "nothing is due before the drain"
    );
    let status = daemon.terminate();
    assert!(status.success(), "{status}\n{}", daemon.stderr());
    let mut got = lake_lines(&daemon.lake());
    let mut want = sent.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // One object per shard, named as Firehose names them.
    let objects = lake_objects(&daemon.lake());
    assert_eq!(objects.len(), 3, "{objects:?}");
    for obj in &objects {
        let rel = obj
            .strip_prefix(daemon.lake())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 5, "{rel}: default prefix is yyyy/MM/dd/HH/");
        let name = parts[4];
        assert!(name.starts_with("events-1-"), "{name}");
        let date: Vec<&str> = name["events-1-".len()..].splitn(7, '-').collect();
        assert_eq!(
            &date[..4],
            &parts[..4],
            "{rel}: the name's date matches the prefix"
        );
        assert_eq!(date[6].len(), 36, "{name}: uuid-shaped id");
    }
}

#[test]
fn size_hint_flushes_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_yaml(
        &stream_config(1, "{ size_mib: 1, interval_s: 900 }", "none", ""),
        dir.path(),
    );
    // ~3.3 MiB of records in one shard: at least three objects without waiting for the interval.
    let big: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("{i:08}{}", "y".repeat(35_000)).into_bytes())
        .collect();
    send_all(&daemon, &big);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lake_objects(&daemon.lake()).len() < 3 {
        assert!(Instant::now() < deadline, "size hint did not flush");
        std::thread::sleep(Duration::from_millis(50));
    }
    for obj in lake_objects(&daemon.lake()) {
        let len = std::fs::metadata(&obj).unwrap().len();
        assert!(
            len >= 1 << 20,
            "{} holds {len} bytes: flushed before the size hint",
            obj.display()
        );
        assert!(
            len < (1 << 20) + 35_100,
            "{} holds {len} bytes: one record past the hint at most",
            obj.display()
        );
    }
    assert!(daemon.terminate().success());
    assert_eq!(lake_lines(&daemon.lake()).len(), 100);
}

#[test]
fn interval_hint_flushes_small_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_yaml(
        &stream_config(1, "{ size_mib: 128, interval_s: 1 }", "none", ""),
        dir.path(),
    );
    send_all(&daemon, &records(10, "interval"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while lake_objects(&daemon.lake()).is_empty() {
        assert!(Instant::now() < deadline, "interval hint did not flush");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lake_lines(&daemon.lake()).len(), 10);
    assert!(daemon.terminate().success());
}

#[test]
fn every_compression_round_trips_with_its_extension() {
    for (compression, ext) in [
        ("none", None),
        ("gzip", Some("gz")),
        ("snappy", Some("snappy")),
        ("zstd", Some("zst")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start_yaml(
            &stream_config(2, "{ size_mib: 1, interval_s: 900 }", compression, ""),
            dir.path(),
        );
        let sent = records(3000, compression);
        send_all(&daemon, &sent);
        assert!(daemon.terminate().success());
        for obj in lake_objects(&daemon.lake()) {
            assert_eq!(
                obj.extension().and_then(|e| e.to_str()),
                ext,
                "{}",
                obj.display()
            );
        }
        let got: HashSet<Vec<u8>> = lake_lines(&daemon.lake()).into_iter().collect();
        assert_eq!(got.len(), sent.len(), "{compression}");
        assert!(sent.iter().all(|r| got.contains(r)), "{compression}");
    }
}

#[test]
fn prefix_is_applied_with_timestamp_expressions() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "        prefix: 'raw/year=!{timestamp:yyyy}/month=!{timestamp:MM}/'\n        error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";
    let mut daemon = Daemon::start_yaml(
        &stream_config(1, "{ size_mib: 5, interval_s: 900 }", "none", extra),
        dir.path(),
    );
    send_all(&daemon, &records(5, "prefix"));
    assert!(daemon.terminate().success());
    let objects = lake_objects(&daemon.lake());
    assert_eq!(objects.len(), 1);
    let rel = objects[0]
        .strip_prefix(daemon.lake())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(rel.starts_with("raw/year=20"), "{rel}");
    assert_eq!(
        rel.split('/').count(),
        4,
        "{rel}: no default timestamp appended when the prefix has one"
    );
}

/// A lake where every commit fails (a file stands where the prefix directory must go), and a
/// config for `shards` delivering into it with flushes as soon as records are read.
fn blocked_lake(root: &std::path::Path, shards: u32) -> (std::path::PathBuf, String) {
    let lake = root.join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    std::fs::write(lake.join("blocked"), b"not a directory").unwrap();
    let config = stream_config(
        shards,
        "{ size_mib: 1, interval_s: 0 }",
        "none",
        "        prefix: 'blocked/'\n",
    );
    (lake, config)
}

/// While the lake cannot be written, records stay in the log; the drain gives up after the grace
/// period with exit 0, requests during the drain get 503, and a restart delivers everything once.
#[test]
fn undeliverable_records_survive_a_timed_out_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, config) = blocked_lake(dir.path(), 2);
    let config = config.replace("shutdown_grace_s: 20", "shutdown_grace_s: 2");
    let mut daemon = Daemon::start_yaml(&config, dir.path());
    let mut sent = records(700, "blocked");
    send_all(&daemon, &sent);

    let mut conn = Connection::open(daemon.addr).unwrap();
    let started = Instant::now();
    Command::kill_term(daemon.pid());
    // During the drain the endpoint answers, with 503 ServiceUnavailableException. (A request may
    // still be accepted before the daemon has handled the signal; it must then be delivered too.)
    let mut saw_503 = false;
    let mut late = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let record = format!("late-{late}").into_bytes();
        match put_batch(&mut conn, "events", std::slice::from_ref(&record)) {
            Ok((503, body)) => {
                assert_eq!(body["__type"], "ServiceUnavailableException");
                saw_503 = true;
            }
            Ok((200, _)) => {
                assert!(!saw_503, "a record was accepted after the drain had begun");
                sent.push(record);
                late += 1;
            }
            Ok((status, body)) => panic!("unexpected {status}: {body}"),
            Err(e) => match Connection::open(daemon.addr) {
                Ok(c) => conn = c,
                Err(e2) => panic!(
                    "lost the daemon during the drain: {e} / {e2}\n{}",
                    daemon.stderr()
                ),
            },
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_503, "no 503 during the drain");
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "exited before the grace period"
    );
    assert_eq!(
        lake_objects(&lake),
        vec![lake.join("blocked")],
        "nothing delivered while blocked"
    );

    std::fs::remove_file(lake.join("blocked")).unwrap();
    let mut daemon = Daemon::start(&dir.path().join("spillway.yaml"), dir.path());
    assert!(daemon.terminate().success());
    let mut got = lake_lines(&lake);
    let mut want = sent;
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn restart_continues_where_delivery_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stream_config(2, "{ size_mib: 1, interval_s: 900 }", "gzip", "");
    let mut daemon = Daemon::start_yaml(&cfg, dir.path());
    let first = records(1000, "first");
    send_all(&daemon, &first);
    assert!(daemon.terminate().success());
    let mut daemon = Daemon::start(&dir.path().join("spillway.yaml"), dir.path());
    let second = records(1000, "second");
    send_all(&daemon, &second);
    assert!(daemon.terminate().success());
    let got = lake_lines(&daemon.lake());
    assert_eq!(got.len(), 2000, "every record exactly once across restarts");
    let got: HashSet<Vec<u8>> = got.into_iter().collect();
    assert!(first.iter().chain(&second).all(|r| got.contains(r)));
}

struct Command;
impl Command {
    fn kill_term(pid: u32) {
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }
}

/// Object ids include the data directory's identity: two daemons delivering the same stream into one
/// lake in the same second never overwrite each other's objects.
#[test]
fn two_daemons_sharing_a_lake_do_not_collide() {
    let lake = tempfile::tempdir().unwrap();
    let config = stream_config(1, "{ size_mib: 5, interval_s: 900 }", "none", "")
        .replace("${SPILLWAY_LAKE}", &lake.path().display().to_string());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut da = Daemon::start_yaml(&config, a.path());
    let mut db = Daemon::start_yaml(&config, b.path());
    let sent = records(10, "shared");
    send_all(&da, &sent);
    send_all(&db, &sent);
    assert!(da.terminate().success());
    assert!(db.terminate().success());
    assert_eq!(lake_objects(lake.path()).len(), 2);
    assert_eq!(lake_lines(lake.path()).len(), 20);
}

/// While the destination is down the log keeps accepting until its disk budget, then answers 503;
/// once delivery resumes, delivered segments are freed early and puts are accepted again.
#[test]
fn disk_budget_answers_503_until_delivery_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, config) = blocked_lake(dir.path(), 1);
    let config = config.replace(
        "log: { segment_mib: 1 }",
        "log: { segment_mib: 1, max_disk_mib: 4 }",
    );
    let mut daemon = Daemon::start_yaml(&config, dir.path());
    let mut conn = Connection::open(daemon.addr).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for batch in 0..40 {
        let recs: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("{batch:03}-{i:03}-{}", "z".repeat(990)).into_bytes())
            .collect();
        let (status, body) = put_batch(&mut conn, "events", &recs).unwrap();
        match status {
            200 => acked.extend(recs),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refused = refused.expect("the disk budget never refused a put");
    assert_eq!(refused["__type"], "ServiceUnavailableException");
    assert!(
        refused["message"].as_str().unwrap().contains("disk budget"),
        "{refused}"
    );
    assert!(
        acked.len() >= 3000,
        "only {} records accepted before the 4 MiB budget",
        acked.len()
    );

    std::fs::remove_file(lake.join("blocked")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rec = format!("after-{}", acked.len()).into_bytes();
        let (status, body) = put_batch(&mut conn, "events", std::slice::from_ref(&rec)).unwrap();
        if status == 200 {
            acked.push(rec);
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "puts still refused a minute after delivery resumed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.terminate().success());
    let mut got = lake_lines(&lake);
    got.sort();
    acked.sort();
    assert_eq!(got, acked);
}
