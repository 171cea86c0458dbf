//! Test harness: runs the real `spillway` binary on loopback with its own data and lake directories,
//! talks HTTP/1.1 to it over real sockets, and reads the lake back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_spillway");

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon process with its own directories.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub config: PathBuf,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `config` (a file) with SPILLWAY_LISTEN/DATA_DIR/LAKE pointing into `root`.
    pub fn start(config: &Path, root: &Path) -> Daemon {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stderr_path = root.join(format!("daemon-{}.log", addr.port()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("SPILLWAY_LISTEN", addr.to_string())
            .env("SPILLWAY_DATA_DIR", root.join("data"))
            .env("SPILLWAY_LAKE", root.join("lake"))
            .env("SPILLWAY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn spillway");
        let mut d = Daemon {
            child: Some(child),
            addr,
            root: root.to_path_buf(),
            config: config.to_path_buf(),
            stderr_path,
        };
        d.wait_ready();
        d
    }

    /// Writes `yaml` to `<root>/spillway.yaml` and starts it.
    pub fn start_yaml(yaml: &str, root: &Path) -> Daemon {
        let path = root.join("spillway.yaml");
        std::fs::write(&path, yaml).unwrap();
        Daemon::start(&path, root)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {status}:\n{}", self.stderr());
            }
            if let Ok((200, _)) = request(self.addr, "GET", "/healthz", None, b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon not ready after 30 s:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit in {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn lake(&self) -> PathBuf {
        self.root.join("lake")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request on a new connection; returns (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    target: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = Connection::open(addr)?;
    conn.request(method, path, target, body)
}

/// A keep-alive HTTP/1.1 connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        target: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = target {
            head.push_str(&format!("X-Amz-Target: Firehose_20150804.{t}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof in headers",
                ));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

pub fn b64(data: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(data)
}

/// A PutRecordBatch body.
pub fn batch_body(stream: &str, records: &[Vec<u8>]) -> Vec<u8> {
    let recs: Vec<_> = records
        .iter()
        .map(|r| serde_json::json!({ "Data": b64(r) }))
        .collect();
    serde_json::json!({"DeliveryStreamName": stream, "Records": recs})
        .to_string()
        .into_bytes()
}

/// Sends a PutRecordBatch and returns (status, parsed JSON body).
pub fn put_batch(
    conn: &mut Connection,
    stream: &str,
    records: &[Vec<u8>],
) -> std::io::Result<(u16, serde_json::Value)> {
    let (status, body) = conn.request(
        "POST",
        "/",
        Some("PutRecordBatch"),
        &batch_body(stream, records),
    )?;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Every object file under `lake`, skipping dot-named paths (temporary files), sorted.
pub fn lake_objects(lake: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![lake.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// An object's content, decompressed according to its extension.
pub fn read_object(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => {
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("snappy") => {
            snap::read::FrameDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zst") => out = zstd::decode_all(&raw[..]).unwrap(),
        // An independent reader: Python's zipfile.
        Some("zip") => {
            let got = std::process::Command::new("python3")
                .args(["-c", "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\n(n,) = z.namelist()\nsys.stdout.buffer.write(z.read(n))"])
                .arg(path)
                .output()
                .unwrap();
            assert!(
                got.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&got.stderr)
            );
            out = got.stdout;
        }
        _ => out = raw,
    }
    out
}

/// All newline-delimited records in the lake.
pub fn lake_lines(lake: &Path) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for obj in lake_objects(lake) {
        let data = read_object(&obj);
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "{} does not end with a delimiter",
            obj.display()
        );
        lines.extend(
            data.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    lines
}

/// A config with one Direct PUT stream `events` that appends delimiters.
pub fn stream_config(shards: u32, buffering: &str, compression: &str, extra_s3: &str) -> String {
    config_with(
        shards,
        "      - append_delimiter: true\n",
        &format!("        buffering: {buffering}\n        compression: {compression}\n{extra_s3}"),
    )
}

/// A config with one Direct PUT stream `events` into the test's lake: `processing` and `s3` are
/// the YAML lines of its processors and of its S3 destination after `url`.
pub fn config_with(shards: u32, processing: &str, s3: &str) -> String {
    format!(
        r#"listen: ${{SPILLWAY_LISTEN}}
data_dir: ${{SPILLWAY_DATA_DIR}}
shutdown_grace_s: 20
log: {{ segment_mib: 1 }}
delivery_streams:
  - name: events
    source: {{ direct_put: {{ shards: {shards} }} }}
    processing:
{processing}    destination:
      s3:
        url: file://${{SPILLWAY_LAKE}}
{s3}"#
    )
}

/// A tiny deterministic PRNG for test schedules.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The built example or hostile plugin `name` (`transforms/build/<name>.wasm`); the test command
/// builds them with `transforms/build.sh` before `cargo test`.
pub fn plugin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("transforms/build")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run transforms/build.sh first (tests/run-all.sh does)",
        path.display()
    );
    path
}
