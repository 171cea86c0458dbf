//! Firehose's HTTP endpoint delivery protocol, version 1.0: a batch is one `POST` of
//! `{"requestId","timestamp","records":[{"data":"<base64>"}]}` with the `X-Amz-Firehose-*` headers,
//! and only a 200 whose JSON body echoes the request id delivers it. The request id is the batch's
//! id, so it is the same on every retry and when a replay after a crash sends the batch again: a
//! receiver can drop a duplicate by it.
//!
//! Retries follow Firehose: 1 s doubling (±15 %) to 120 s within the retry duration; 413 is
//! permanent. Firehose drops a 413 batch without backing it up; here its records go to the error
//! output like any undelivered record, since nothing acknowledged may be lost.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::request::{jitter_seed, HttpClient, RequestError, RetryClock};
use super::{RecordBatch, RecordDestination, SinkError, Undelivered};
use crate::config::{ContentEncoding, HttpEndpointDestination};
use crate::error_output::{ErrorDetail, Failure, HTTP_ENDPOINT_FAILED};
use crate::log::{now_ms, ShardId};
use crate::process::Record;

/// Records in one request (Firehose's limit).
pub const MAX_RECORDS: usize = 10_000;
/// Longest `data` of a record, in base64 characters (Firehose's limit: 1,024,002 bytes of data).
pub const MAX_DATA_BASE64: usize = 1_365_336;
/// Largest request body before compression.
pub const MAX_BODY: usize = 64 << 20;
/// Largest response body that is read; a longer one is an invalid response.
const MAX_RESPONSE: usize = 1 << 20;
/// `{"data":""},` around each record's base64.
const ENTRY_OVERHEAD: usize = 12;
/// The body's fields around the records, with room for any request id and timestamp.
const BODY_OVERHEAD: usize = 128;

/// An HTTP endpoint destination.
#[derive(Debug, Clone)]
pub struct HttpEndpoint {
    inner: Arc<Endpoint>,
}

struct Endpoint {
    client: HttpClient,
    uri: http::Uri,
    url: String,
    source_arn: String,
    access_key: Option<String>,
    /// The `X-Amz-Firehose-Common-Attributes` value, if any.
    common_attributes: Option<String>,
    gzip: bool,
    retry: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("gzip", &self.gzip)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl HttpEndpoint {
    /// The destination of delivery stream `stream` configured by `config`.
    pub fn new(
        config: &HttpEndpointDestination,
        stream: &str,
        runtime: tokio::runtime::Handle,
    ) -> Result<HttpEndpoint, SinkError> {
        let uri = config
            .url
            .parse::<http::Uri>()
            .map_err(|e| SinkError::Store {
                message: format!("{}: {e}", config.url),
                code: None,
                permanent: true,
            })?;
        let common_attributes = (!config.common_attributes.is_empty()).then(|| {
            serde_json::json!({ "commonAttributes": config.common_attributes }).to_string()
        });
        Ok(HttpEndpoint {
            inner: Arc::new(Endpoint {
                client: HttpClient::new(runtime, Duration::from_secs(config.request_timeout_s))?,
                uri,
                url: config.url.clone(),
                source_arn: format!("arn:aws:firehose:local:000000000000:deliverystream/{stream}"),
                access_key: config.access_key.clone(),
                common_attributes,
                gzip: config.content_encoding == ContentEncoding::Gzip,
                retry: Duration::from_secs(config.retry.duration_s),
            }),
        })
    }
}

impl RecordDestination for HttpEndpoint {
    fn batch(&self, shard: ShardId, id: &str) -> Box<dyn RecordBatch> {
        Box::new(HttpBatch {
            endpoint: Arc::clone(&self.inner),
            shard,
            request_id: id.to_string(),
            entries: Vec::new(),
            records: Vec::new(),
        })
    }

    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    fn output_type(&self) -> &'static str {
        HTTP_ENDPOINT_FAILED
    }
}

/// One request being filled.
struct HttpBatch {
    endpoint: Arc<Endpoint>,
    shard: ShardId,
    request_id: String,
    /// The records' entries, comma-separated: the body between `"records":[` and `]`.
    entries: Vec<u8>,
    /// Sequence and sub-sequence number of each record taken, for `dataId`.
    records: Vec<(u64, u32)>,
}

impl RecordBatch for HttpBatch {
    fn push(&mut self, record: &Record) -> Result<(), Box<(Failure, ErrorDetail)>> {
        let encoded = base64_simd::STANDARD.encoded_length(record.data.len());
        if encoded > MAX_DATA_BASE64 {
            let failure = Failure {
                output_type: HTTP_ENDPOINT_FAILED,
                code: "HttpEndpoint.RecordTooLarge".into(),
                message: format!(
                    "the record is {} bytes; a record sent to an HTTP endpoint holds at most 1,024,002 bytes ({MAX_DATA_BASE64} base64 characters)",
                    record.data.len()
                ),
                attempts: 0,
                plugin: None,
            };
            return Err(Box::new((failure, data_id(self.shard, record))));
        }
        if !self.records.is_empty() {
            self.entries.push(b',');
        }
        self.entries.extend_from_slice(br#"{"data":""#);
        let start = self.entries.len();
        self.entries.resize(start + encoded, 0);
        let _ = base64_simd::STANDARD.encode(
            &record.data,
            base64_simd::Out::from_slice(&mut self.entries[start..]),
        );
        self.entries.extend_from_slice(br#""}"#);
        self.records.push((record.sequence.0, record.sub));
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.records.len() >= MAX_RECORDS
            || self.entries.len() + BODY_OVERHEAD + MAX_DATA_BASE64 + ENTRY_OVERHEAD > MAX_BODY
    }

    fn deliver(self: Box<Self>) -> Vec<Undelivered> {
        if self.records.is_empty() {
            return Vec::new();
        }
        let mut clock = RetryClock::new(self.endpoint.retry, jitter_seed(&self.request_id));
        let (code, message) = loop {
            clock.attempt();
            let (code, message) = match self.attempt() {
                Attempt::Delivered => return Vec::new(),
                Attempt::Refused(code, message) => break (code, message),
                Attempt::Failed(code, message) => (code, message),
            };
            tracing::warn!(endpoint = %self.endpoint.url, request_id = %self.request_id,
                attempt = clock.attempts, error = %message, "HTTP endpoint delivery failed");
            match clock.next_wait() {
                Some(wait) => std::thread::sleep(wait),
                None => break (code, message),
            }
        };
        let failure = Failure {
            output_type: HTTP_ENDPOINT_FAILED,
            code: code.into(),
            message,
            attempts: clock.attempts,
            plugin: None,
        };
        self.records
            .iter()
            .enumerate()
            .map(|(index, &(sequence, sub))| Undelivered {
                index,
                failure: failure.clone(),
                detail: ErrorDetail::HttpEndpoint {
                    data_id: format_data_id(self.shard, sequence, sub),
                },
            })
            .collect()
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Retrying cannot help (413).
    Refused(&'static str, String),
    Failed(&'static str, String),
}

/// The endpoint's response body.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

impl HttpBatch {
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() + BODY_OVERHEAD);
        let _ = write!(
            body,
            r#"{{"requestId":"{}","timestamp":{},"records":["#,
            self.request_id,
            now_ms()
        );
        body.extend_from_slice(&self.entries);
        body.extend_from_slice(b"]}");
        body
    }

    fn attempt(&self) -> Attempt {
        let e = &*self.endpoint;
        let mut body = self.body();
        if e.gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::default(),
            );
            // Writing to a Vec cannot fail.
            let _ = gz.write_all(&body);
            body = gz.finish().unwrap_or_default();
        }
        let mut request = http::Request::post(e.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header("X-Amz-Firehose-Request-Id", &self.request_id)
            .header("X-Amz-Firehose-Source-Arn", &e.source_arn);
        if let Some(key) = &e.access_key {
            request = request.header("X-Amz-Firehose-Access-Key", key);
        }
        if let Some(attributes) = &e.common_attributes {
            request = request.header("X-Amz-Firehose-Common-Attributes", attributes);
        }
        if e.gzip {
            request = request.header(http::header::CONTENT_ENCODING, "gzip");
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            // Only an access key or attribute that is not a valid header value gets here.
            Err(err) => {
                return Attempt::Refused(
                    "HttpEndpoint.InvalidRequest",
                    format!("the request could not be built: {err}"),
                )
            }
        };
        let response = match e.client.send(request, MAX_RESPONSE) {
            Ok(r) => r,
            Err(err @ RequestError::Timeout(_)) => {
                return Attempt::Failed("HttpEndpoint.RequestTimeout", err.to_string())
            }
            Err(err @ RequestError::Connect(_)) => {
                return Attempt::Failed("HttpEndpoint.ConnectionFailed", err.to_string())
            }
            Err(err @ RequestError::Reset(_)) => {
                return Attempt::Failed("HttpEndpoint.ConnectionReset", err.to_string())
            }
        };
        if response.too_large {
            return Attempt::Failed(
                "HttpEndpoint.ResponseTooLarge",
                format!(
                    "the response to request {} ({}) is larger than 1 MiB",
                    self.request_id, response.status
                ),
            );
        }
        let answer = serde_json::from_slice::<Answer>(&response.body);
        let status = response.status;
        match (status.as_u16(), answer) {
            (200, Ok(a)) if a.request_id.as_deref() == Some(&self.request_id) => Attempt::Delivered,
            (200, Ok(a)) => Attempt::Failed(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!(
                    "the response is invalid: its requestId is {:?}, the request's is {:?}",
                    a.request_id.unwrap_or_default(),
                    self.request_id
                ),
            ),
            (200, Err(err)) => Attempt::Failed(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!(
                    "the response is invalid: {err}; body: {}",
                    snippet(&response.body)
                ),
            ),
            (code, answer) => {
                let said = match answer {
                    Ok(Answer {
                        error_message: Some(m),
                        ..
                    }) => m,
                    _ => snippet(&response.body),
                };
                let message = format!(
                    "Received the following response from the endpoint destination. {status}: {said}"
                );
                if code == 413 {
                    Attempt::Refused("HttpEndpoint.DestinationException", message)
                } else {
                    Attempt::Failed("HttpEndpoint.DestinationException", message)
                }
            }
        }
    }
}

const USER_AGENT: &str = concat!("spillway/", env!("CARGO_PKG_VERSION"));

/// The start of a response body, as text, for error messages (Firehose keeps 8,192 characters).
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]);
    text.into_owned()
}

fn data_id(shard: ShardId, record: &Record) -> ErrorDetail {
    ErrorDetail::HttpEndpoint {
        data_id: format_data_id(shard, record.sequence.0, record.sub),
    }
}

/// `dataId`: the record's PutRecord `RecordId` (shard and sequence number, 32 hex digits) and its
/// sub-sequence number.
fn format_data_id(shard: ShardId, sequence: u64, sub: u32) -> String {
    format!("{:08x}{sequence:024x}.{sub}", shard.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SequenceNumber;

    fn batch(retry_s: u64) -> HttpBatch {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = HttpClient::new(runtime.handle().clone(), Duration::from_secs(1)).unwrap();
        std::mem::forget(runtime);
        HttpBatch {
            endpoint: Arc::new(Endpoint {
                client,
                uri: "http://127.0.0.1:9/".parse().unwrap(),
                url: "http://127.0.0.1:9/".into(),
                source_arn: "arn".into(),
                access_key: None,
                common_attributes: None,
                gzip: false,
                retry: Duration::from_secs(retry_s),
            }),
            shard: ShardId(3),
            request_id: "0f8e1b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            entries: Vec::new(),
            records: Vec::new(),
        }
    }

    fn record(seq: u64, data: &[u8]) -> Record {
        Record {
            sequence: SequenceNumber(seq),
            sub: 0,
            arrival_ms: 1,
            data: Bytes::copy_from_slice(data),
            keys: None,
        }
    }

    #[test]
    fn the_body_follows_the_protocol() {
        let mut b = batch(0);
        b.push(&record(1, b"hello")).unwrap();
        b.push(&record(2, b"")).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&b.body()).unwrap();
        assert_eq!(body["requestId"], "0f8e1b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert!(body["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(
            body["records"],
            serde_json::json!([{"data": "aGVsbG8="}, {"data": ""}])
        );
        assert_eq!(body.as_object().unwrap().len(), 3);
    }

    #[test]
    fn a_batch_is_full_at_ten_thousand_records() {
        let mut b = batch(0);
        for i in 0..MAX_RECORDS as u64 {
            assert!(!b.is_full());
            b.push(&record(i, b"x")).unwrap();
        }
        assert!(b.is_full());
    }

    #[test]
    fn a_batch_is_full_before_its_body_could_pass_64_mib() {
        // Whatever a batch that is not full takes, its body stays within the limit.
        let mut b = batch(0);
        let big = vec![7u8; 1_024_002];
        let mut n = 0;
        while !b.is_full() {
            b.push(&record(n, &big)).unwrap();
            assert!(b.body().len() <= MAX_BODY, "{}", b.body().len());
            n += 1;
        }
        assert!(n >= 48, "{n}");
    }

    #[test]
    fn records_too_large_for_the_protocol_are_refused_at_the_edge() {
        let mut b = batch(0);
        assert!(b.push(&record(1, &vec![0u8; 1_024_002])).is_ok());
        let refused = b.push(&record(2, &vec![0u8; 1_024_003])).unwrap_err();
        assert_eq!(refused.0.code, "HttpEndpoint.RecordTooLarge");
        assert_eq!(refused.0.output_type, HTTP_ENDPOINT_FAILED);
        assert_eq!(b.records.len(), 1);
    }

    #[test]
    fn an_unreachable_endpoint_fails_every_record_after_one_attempt_without_retry_time() {
        let mut b = batch(0);
        b.push(&record(5, b"a")).unwrap();
        b.push(&record(6, b"b")).unwrap();
        let failed = Box::new(b).deliver();
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].failure.code, "HttpEndpoint.ConnectionFailed");
        assert_eq!(failed[0].failure.attempts, 1);
        match &failed[1].detail {
            ErrorDetail::HttpEndpoint { data_id } => {
                assert_eq!(data_id, "00000003000000000000000000000006.0")
            }
            other => panic!("{other:?}"),
        }
    }
}
