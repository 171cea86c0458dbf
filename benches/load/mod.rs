//! The Direct PUT load generator shared by the benchmarks: PutRecordBatch calls of 500 ~200-byte
//! JSON records over keep-alive loopback connections, with latency per call.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const RECORDS_PER_CALL: usize = 500;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ~200-byte clickstream-like JSON records (deterministic).
pub fn record(i: usize) -> Vec<u8> {
    let types = ["page_view", "click", "add_to_cart", "purchase"];
    format!(
        r#"{{"event_id":"{:016x}","customer_id":"c-{:05}","ts":"2026-11-23T16:{:02}:{:02}.{:03}Z","event_type":"{}","url":"https://shop.example.com/p/{:06}","qty":{},"amount":{}.{:02},"geo":{{"country":"DE","city":"Berlin"}}}}"#,
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        i % 500,
        i % 60,
        (i / 60) % 60,
        i % 1000,
        types[i % 4],
        i % 999_983,
        i % 7,
        i % 300,
        i % 100
    )
    .into_bytes()
}

/// A whole HTTP request carrying one PutRecordBatch; returns it and its payload bytes.
pub fn request_bytes(addr: SocketAddr, offset: usize) -> (Vec<u8>, usize) {
    let b64 = base64_simd::STANDARD;
    let mut payload = 0;
    let mut body = String::from(r#"{"DeliveryStreamName":"events","Records":["#);
    for i in 0..RECORDS_PER_CALL {
        let r = record(offset + i);
        payload += r.len();
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"Data":""#);
        body.push_str(&b64.encode_to_string(&r));
        body.push_str(r#""}"#);
    }
    body.push_str("]}");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: Firehose_20150804.PutRecordBatch\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body.as_bytes());
    (req, payload)
}

pub struct Conn {
    stream: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends one request and reads the response; returns the status.
    async fn call(&mut self, req: &[u8]) -> std::io::Result<u16> {
        self.stream.get_mut().write_all(req).await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l
                .strip_prefix("content-length:")
                .or_else(|| l.strip_prefix("Content-Length:"))
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        self.body.resize(len, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

pub struct Outcome {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
}

/// Runs `connections` clients for `duration`; with `rate` (calls/s in total) each client paces itself.
pub async fn run_load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    reqs: Arc<Vec<Vec<u8>>>,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (stop, reqs) = (Arc::clone(&stop), Arc::clone(&reqs));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.expect("connect");
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let mut next = Instant::now()
                + period
                    .map(|p| p.mul_f64(c as f64 / connections as f64))
                    .unwrap_or_default();
            let (mut lat, mut errors, mut calls) = (Vec::new(), 0u64, 0u64);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                    next += p;
                }
                let t = Instant::now();
                match conn.call(&reqs[i % reqs.len()]).await {
                    Ok(200) => {
                        calls += 1;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
                i += connections;
            }
            (lat, errors, calls)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        let (lat, errors, calls) = t.await.expect("client task");
        out.latencies_us.extend(lat);
        out.errors += errors;
        out.calls += calls;
    }
    out.elapsed = start.elapsed();
    out.latencies_us.sort_unstable();
    out
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// One benchmark round: a release daemon on `config_yaml`, `seconds` of PutRecordBatch load from
/// `connections`, then SIGTERM and the drain. Returns the load's outcome, the payload bytes per
/// call, the daemon's peak RSS (MiB) and the seconds from the first call until the daemon exited.
pub fn load_then_drain(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    config_yaml: &str,
    env: &[(&str, String)],
    connections: usize,
    seconds: u64,
) -> (Outcome, f64, f64, f64) {
    let (mut daemon, addr) = start_daemon(dir, config_yaml, env);
    let (reqs, payload_per_call) = prepared_requests(addr);
    let started = Instant::now();
    let outcome = rt.block_on(run_load(
        addr,
        connections,
        Duration::from_secs(seconds),
        None,
        reqs,
    ));
    let peak = terminate_and_peak_rss(&mut daemon);
    (
        outcome,
        payload_per_call,
        peak,
        started.elapsed().as_secs_f64(),
    )
}

/// Sends SIGTERM to the daemon and waits for it to exit (the drain), sampling its peak RSS (MiB).
pub fn terminate_and_peak_rss(daemon: &mut Child) -> f64 {
    let pid = daemon.id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut peak = 0.0f64;
    loop {
        let now = peak_rss_mib(pid);
        if now.is_finite() {
            peak = peak.max(now);
        }
        if daemon.try_wait().unwrap().is_some() {
            return peak;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a release `spillway` with `config_yaml` (its `listen:` is filled in) and waits for it.
pub fn start_daemon(
    dir: &std::path::Path,
    config_yaml: &str,
    env: &[(&str, String)],
) -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("bench.yaml");
    std::fs::write(&config, format!("listen: {addr}\n{config_yaml}")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("SPILLWAY_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start spillway");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// Prepared requests: 16 distinct PutRecordBatch calls and their mean payload bytes.
pub fn prepared_requests(addr: SocketAddr) -> (Arc<Vec<Vec<u8>>>, f64) {
    let built: Vec<(Vec<u8>, usize)> = (0..16)
        .map(|k| request_bytes(addr, k * RECORDS_PER_CALL))
        .collect();
    let payload = built.iter().map(|(_, p)| *p as f64).sum::<f64>() / built.len() as f64;
    (
        Arc::new(built.into_iter().map(|(r, _)| r).collect()),
        payload,
    )
}

pub fn row(label: &str, o: &Outcome, payload_per_call: f64) {
    let secs = o.elapsed.as_secs_f64();
    let records = o.calls as f64 * RECORDS_PER_CALL as f64;
    println!(
        "| {label:<28} | {:>12.0} | {:>8.1} | {:>8.2} | {:>8.2} | {:>6} |",
        records / secs,
        o.calls as f64 * payload_per_call / secs / 1e6,
        percentile(&o.latencies_us, 0.50),
        percentile(&o.latencies_us, 0.99),
        o.errors
    );
}
