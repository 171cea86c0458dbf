//! HTTP endpoint and OpenSearch delivery: what one pipeline sends per second.
//!
//! A shard log holding N records (benches/load's ~200-byte JSON) is delivered by one pipeline
//! thread to a receiver in the same process over loopback: a Firehose-protocol receiver (gzip off
//! and on) and a `_bulk` server. The receivers do the least a real one must: read the whole body
//! (inflating it when gzipped), echo the request id, or answer one `201` item per document. The
//! clock runs from the pipeline's start until the shard is delivered; MB/s counts record bytes.
//! Peak RSS is the process's (`VmHWM`, receiver included), reset before each run through
//! `/proc/self/clear_refs`; the records are generated in chunks as they are appended, so it is the
//! pipeline's and the receiver's memory, not the input's.
//!
//! `cargo bench --bench endpoint` (env: SPILLWAY_BENCH_RECORDS, default 1,000,000;
//! SPILLWAY_BENCH_ONLY, a variant label's substring).

mod load;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spillway::config::{Config, Destination};
use spillway::log::{CheckpointStore, LogOptions, ShardId, ShardLog};
use spillway::pipeline::Pipeline;
use spillway::sink::{HttpEndpoint, LocalStore, OpenSearch, RecordDestination};

struct Variant {
    label: &'static str,
    destination: fn(SocketAddr) -> String,
    bulk: bool,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            label: "HTTP endpoint, 5 MiB batches",
            destination: |a| {
                format!("http_endpoint: {{ url: 'http://{a}/', buffering: {{ size_mib: 5, interval_s: 900 }}, s3: {{ url: 'file://./lake' }} }}")
            },
            bulk: false,
        },
        Variant {
            label: "HTTP endpoint, 64 MiB hint (10,000-record cap)",
            destination: |a| {
                format!("http_endpoint: {{ url: 'http://{a}/', buffering: {{ size_mib: 64, interval_s: 900 }}, s3: {{ url: 'file://./lake' }} }}")
            },
            bulk: false,
        },
        Variant {
            label: "HTTP endpoint, 5 MiB, gzip",
            destination: |a| {
                format!("http_endpoint: {{ url: 'http://{a}/', content_encoding: gzip, buffering: {{ size_mib: 5, interval_s: 900 }}, s3: {{ url: 'file://./lake' }} }}")
            },
            bulk: false,
        },
        Variant {
            label: "OpenSearch _bulk, 5 MiB, one_day",
            destination: |a| {
                format!("opensearch: {{ endpoint: 'http://{a}', index: bench, buffering: {{ size_mib: 5, interval_s: 900 }}, s3: {{ url: 'file://./lake' }} }}")
            },
            bulk: true,
        },
    ]
}

/// What a receiver took: request body bytes (inflated) and records.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    records: AtomicU64,
}

/// Answers Firehose requests: reads (and inflates) the body, echoes the request id.
async fn firehose(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let gzip = req.headers().get("content-encoding").is_some();
    let body = req.into_body().collect().await?.to_bytes();
    let text = if gzip {
        let mut out = Vec::with_capacity(body.len() * 4);
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body.to_vec()
    };
    seen.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
    let records = memchr::memmem::find_iter(&text, br#"{"data":""#).count();
    seen.records.fetch_add(records as u64, Ordering::Relaxed);
    // {"requestId":"<36>",...
    let id = std::str::from_utf8(&text[14..50]).unwrap().to_string();
    let answer = format!(r#"{{"requestId":"{id}","timestamp":1}}"#);
    Ok(hyper::Response::new(Full::new(Bytes::from(answer))))
}

/// Answers `_bulk`: one created item per action line.
async fn bulk(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let docs = memchr::memchr_iter(b'\n', &body).count() / 2;
    seen.records.fetch_add(docs as u64, Ordering::Relaxed);
    let mut answer = String::with_capacity(docs * 40 + 40);
    answer.push_str(r#"{"took":1,"errors":false,"items":["#);
    for i in 0..docs {
        if i > 0 {
            answer.push(',');
        }
        answer.push_str(r#"{"index":{"status":201}}"#);
    }
    answer.push_str("]}");
    Ok(hyper::Response::new(Full::new(Bytes::from(answer))))
}

fn serve(runtime: &tokio::runtime::Runtime, is_bulk: bool, seen: Arc<Seen>) -> SocketAddr {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let seen = Arc::clone(&seen);
                    async move {
                        if is_bulk {
                            bulk(req, seen).await
                        } else {
                            firehose(req, seen).await
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let n: usize = load::env_or("SPILLWAY_BENCH_RECORDS", 1_000_000);
    let only = std::env::var("SPILLWAY_BENCH_ONLY").unwrap_or_default();
    let raw: usize = (0..n).map(|i| load::record(i).len()).sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{n} records of {} bytes on average, one shard, one pipeline thread\n",
        raw / n
    );
    println!("| destination | records/s | MB/s (records) | MB/s (request bodies) | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    for v in variants().into_iter().filter(|v| v.label.contains(&only)) {
        let seen = Arc::new(Seen::default());
        let addr = serve(&runtime, v.bulk, Arc::clone(&seen));
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "data_dir: {}\ndelivery_streams:\n  - name: events\n    source: {{ direct_put: {{ shards: 1 }} }}\n    destination:\n      {}\n",
            dir.path().join("data").display(),
            (v.destination)(addr).replace("./lake", &dir.path().join("lake").display().to_string()),
        );
        let config = Config::parse(&yaml, "bench").unwrap_or_else(|e| panic!("{}: {e}", v.label));
        let ds = &config.delivery_streams[0];
        let mut settings = spillway::daemon::delivery_settings(ds, "bench", dir.path()).unwrap();
        let destination: Arc<dyn RecordDestination> = match &ds.destination {
            Destination::HttpEndpoint(h) => {
                Arc::new(HttpEndpoint::new(h, "events", runtime.handle().clone()).unwrap())
            }
            Destination::OpenSearch(o) => Arc::new(
                OpenSearch::new(o, "events", "bench", runtime.handle().clone(), None).unwrap(),
            ),
            Destination::S3(_) => unreachable!("the variants are request-based"),
        };
        settings.destination = Some(destination);
        let shard = ShardLog::open(
            ShardId(0),
            dir.path().join("log"),
            LogOptions::default(),
            Arc::default(),
        )
        .unwrap();
        for start in (0..n).step_by(500) {
            let chunk: Vec<Vec<u8>> = (start..n.min(start + 500)).map(load::record).collect();
            let appended = shard
                .append(chunk.iter().map(|r| (&b""[..], r.as_slice())))
                .unwrap();
            appended.durable.blocking_recv().unwrap().unwrap();
        }
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let store = Arc::new(LocalStore::open(dir.path().join("lake")).unwrap());
        let started = Instant::now();
        Pipeline::new(
            Arc::new(settings),
            Arc::clone(&shard),
            store,
            CheckpointStore::new(dir.path().join("ck")),
            Arc::new(AtomicBool::new(true)),
        )
        .run();
        let took = started.elapsed().as_secs_f64();
        shard.close();
        // A figure counts only if every record reached the receiver and none went to the error
        // output (whose objects would be in the lake).
        let delivered = seen.records.load(Ordering::Relaxed);
        assert_eq!(delivered, n as u64, "{}: records received", v.label);
        let errors = std::fs::read_dir(dir.path().join("lake"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(errors, 0, "{}: the lake holds error objects", v.label);
        let sent = seen.bytes.load(Ordering::Relaxed) as f64;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} |",
            v.label,
            n as f64 / took,
            raw as f64 / took / 1e6,
            sent / took / 1e6,
            peak_rss_mib(),
        );
    }
}
