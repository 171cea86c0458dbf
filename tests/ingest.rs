//! Endpoint protections that need raw sockets: the in-flight byte budget and declared oversize bodies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Sends headers declaring `len` body bytes plus a little of the body, and leaves the rest unsent.
fn stalled_request(daemon: &Daemon, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(daemon.addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.PutRecordBatch\r\nContent-Length: {len}\r\n\r\n{{\"DeliveryStreamName\":\"events\""
    )
    .unwrap();
    s
}

#[test]
fn slow_clients_cannot_hold_more_than_the_inflight_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = stream_config(1, "{ size_mib: 5, interval_s: 900 }", "none", "")
        .replace("log: {", "ingest: { max_inflight_mib: 16 }\nlog: {");
    let mut daemon = Daemon::start_yaml(&config, dir.path());
    // A body is charged twice its declared length (the body and its decoded copy): 3.5 MiB
    // declared holds 7 MiB of the 16 MiB budget.
    let declared = 7 << 19;
    let a = stalled_request(&daemon, declared);
    let b = stalled_request(&daemon, declared);
    std::thread::sleep(Duration::from_millis(200));
    // 14 MiB are held; a third such request does not fit and is refused at once.
    let mut c = stalled_request(&daemon, declared);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = c.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("ServiceUnavailableException"), "{text}");
    // Small requests still fit beside the stalled ones.
    let mut conn = Connection::open(daemon.addr).unwrap();
    let (status, body) = put_batch(&mut conn, "events", &[b"small".to_vec()]).unwrap();
    assert_eq!(status, 200, "{body}");
    // Once the slow clients go away, their budget is released.
    drop((a, b));
    std::thread::sleep(Duration::from_millis(200));
    let big: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i; 1_000_000]).collect();
    let (status, body) = put_batch(&mut conn, "events", &big).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(daemon.terminate().success());
    assert_eq!(lake_lines(&daemon.lake()).len(), 5);
}

#[test]
fn declared_oversize_body_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_yaml(
        &stream_config(1, "{ size_mib: 5, interval_s: 900 }", "none", ""),
        dir.path(),
    );
    let mut s = stalled_request(&daemon, (8 << 20) + 1);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("InvalidArgumentException"), "{text}");
    assert!(daemon.terminate().success());
    assert!(lake_objects(&daemon.lake()).is_empty());
}
