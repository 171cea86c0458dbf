//! The Direct PUT endpoint: Firehose's AWS JSON 1.1 API over HTTP/1.1.
//!
//! A request is answered only after its records are durable in the log. While the daemon drains, every
//! request gets ServiceUnavailableException (503), which SDKs retry against the restarted daemon.

pub mod api;
mod error;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use api::{IngestStream, StreamInfo, Streams};
pub use error::{ApiError, ErrorKind};

/// Largest request body read; larger ones get 413 without being read further.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Open connections at most; further clients wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 4096;
/// Longest a client may take to send a request's headers, or its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared state of the endpoint.
pub struct Endpoint {
    streams: Streams,
    /// KiB of request bodies that may be held at once.
    budget: Arc<tokio::sync::Semaphore>,
    accepting: AtomicBool,
    inflight: AtomicUsize,
    request_ids: AtomicU64,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Endpoint {
    /// An endpoint serving `streams` that holds at most `max_inflight_bytes` of requests at once.
    pub fn new(streams: Streams, max_inflight_bytes: usize) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            streams,
            budget: Arc::new(tokio::sync::Semaphore::new(
                max_inflight_bytes.div_ceil(1024),
            )),
            accepting: AtomicBool::new(true),
            inflight: AtomicUsize::new(0),
            request_ids: AtomicU64::new(0),
        })
    }

    /// Stops accepting records and waits (up to `timeout`) for requests already accepted to finish.
    /// Returns whether they all did.
    pub async fn stop_accepting(&self, timeout: Duration) -> bool {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inflight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn enter(&self) -> Option<InFlight<'_>> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&self.inflight);
        self.accepting.load(Ordering::SeqCst).then_some(guard)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::GET && req.uri().path() == "/healthz" {
            let (status, text) = if self.accepting.load(Ordering::SeqCst) {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            };
            let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            *resp.status_mut() = status;
            return resp;
        }
        let request_id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let result = match self.enter() {
            None => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                ApiError::new(
                    ErrorKind::ServiceUnavailable,
                    "Spillway is shutting down; retry shortly",
                ),
            )),
            Some(_guard) => self.dispatch(req).await,
        };
        let (status, body) = match result {
            Ok(body) => (StatusCode::OK, body),
            Err((status, e)) => {
                if e.kind == ErrorKind::InternalFailure {
                    tracing::error!(error = %e.message, "request failed");
                }
                (status, e.body())
            }
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("spillway-{request_id:016x}")) {
            headers.insert("x-amzn-RequestId", v);
        }
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<String, (StatusCode, ApiError)> {
        let plain = |e: ApiError| (e.kind.status(), e);
        if req.method() != Method::POST {
            return Err(plain(ApiError::new(
                ErrorKind::UnknownOperation,
                format!(
                    "{} is not supported; Firehose operations are POST /",
                    req.method()
                ),
            )));
        }
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let op = api::Operation::from_target(target.as_deref()).map_err(plain)?;
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiError::new(
                    ErrorKind::InvalidArgument,
                    format!("Request body exceeds the {MAX_BODY_BYTES}-byte limit"),
                ),
            )
        };
        let timed_out = || {
            plain(ApiError::new(
                ErrorKind::RequestTimeout,
                format!("the request body was not received within {READ_TIMEOUT:?}"),
            ))
        };
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        // Charge the body and its decoded copy against the in-flight budget before reading it (a
        // body without a length is charged the maximum).
        let charge = (2 * declared.unwrap_or(MAX_BODY_BYTES as u64))
            .div_ceil(1024)
            .max(1) as u32;
        let _permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(charge)
            .map_err(|_| {
                plain(ApiError::new(
                    ErrorKind::ServiceUnavailable,
                    "Slow down: too many request bytes in flight. Back off and retry.",
                ))
            })?;
        let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
        let body = match tokio::time::timeout(READ_TIMEOUT, collect)
            .await
            .map_err(|_| timed_out())?
        {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ApiError::new(
                        ErrorKind::InvalidArgument,
                        format!("Request body exceeds the {MAX_BODY_BYTES}-byte limit"),
                    ),
                ))
            }
            Err(e) => {
                return Err(plain(ApiError::new(
                    ErrorKind::Serialization,
                    format!("could not read the request body: {e}"),
                )))
            }
        };
        let s = &self.streams;
        match op {
            api::Operation::PutRecord => api::put_record(s, &body).await,
            api::Operation::PutRecordBatch => api::put_record_batch(s, &body).await,
            api::Operation::ListDeliveryStreams => api::list_delivery_streams(s, &body),
            api::Operation::DescribeDeliveryStream => api::describe_delivery_stream(s, &body),
        }
        .map_err(plain)
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let endpoint = Arc::clone(&endpoint);
                async move { Ok::<_, Infallible>(endpoint.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
