//! Firehose's HTTP endpoint delivery protocol, version 1.0: a batch is one `POST` of
//! `{"requestId","timestamp","records":[{"data":"<base64>"}]}` with the `X-Amz-Firehose-*` headers,
//! and only a 200 whose JSON body echoes the request id delivers it. The request id is the batch's
//! id, so it is the same on every retry and when a replay after a crash sends the batch again: a
//! receiver can drop a duplicate by it.
//!
//! Retries follow Firehose: 1 s doubling (±15 %) to 120 s within the retry duration; 413 is
//! permanent. Firehose drops a 413 batch without backing it up; here its records go to the error
//! output like any undelivered record, since nothing acknowledged may be lost.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::request::{
    bounded, jitter_seed, snippet, HttpClient, RequestError, Response, RetryClock, USER_AGENT,
};
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
    access_key: Option<http::HeaderValue>,
    /// The `X-Amz-Firehose-Common-Attributes` value, if any.
    common_attributes: Option<http::HeaderValue>,
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
            .map_err(|e| SinkError::Setup(format!("{}: {e}", config.url)))?;
        let header = |name: &str, value: &str| {
            http::HeaderValue::from_str(value).map_err(|_| {
                SinkError::Setup(format!(
                    "{name} must be printable ASCII to be sent as a header"
                ))
            })
        };
        let access_key = config
            .access_key
            .as_deref()
            .map(|k| header("access_key", k))
            .transpose()?;
        let common_attributes = (!config.common_attributes.is_empty())
            .then(|| {
                let json =
                    serde_json::json!({ "commonAttributes": config.common_attributes }).to_string();
                header("common_attributes", &ascii_json(&json))
            })
            .transpose()?;
        Ok(HttpEndpoint {
            inner: Arc::new(Endpoint {
                client: HttpClient::new(
                    runtime,
                    Duration::from_secs(config.request_timeout_s),
                    config.ca_file.as_deref(),
                )?,
                uri,
                url: config.url.clone(),
                source_arn: format!("arn:aws:firehose:local:000000000000:deliverystream/{stream}"),
                access_key,
                common_attributes,
                gzip: config.content_encoding == ContentEncoding::Gzip,
                retry: Duration::from_secs(config.retry.duration_s),
            }),
        })
    }
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`), so that it is a valid header
/// value. Outside strings JSON is ASCII, so only string contents change, and they mean the same.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

impl RecordDestination for HttpEndpoint {
    fn batch(&self, shard: ShardId, id: &str) -> Box<dyn RecordBatch> {
        let mut entries = Vec::with_capacity(64 << 10);
        entries.resize(HEADER_LEN, b' ');
        Box::new(HttpBatch {
            endpoint: Arc::clone(&self.inner),
            shard,
            request_id: id.to_string(),
            entries,
            ends: Vec::new(),
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

/// The length of `{"requestId":"<36>","timestamp":<13 digits>,"records":[`, which a batch
/// reserves at the front of its entries so that a request's body is written in place.
const HEADER_LEN: usize = 14 + 36 + 14 + 13 + 12;

/// One batch being filled: normally one request, more if one log record's pieces took it past a
/// request's limits.
struct HttpBatch {
    endpoint: Arc<Endpoint>,
    shard: ShardId,
    request_id: String,
    /// `HEADER_LEN` bytes of room, then each record's `{"data":"<base64>"},`.
    entries: Vec<u8>,
    /// Where each record's entry ends in `entries` (after its comma).
    ends: Vec<usize>,
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
                ).into(),
                attempts: 0,
                plugin: None,
            };
            return Err(Box::new((failure, data_id(self.shard, record))));
        }
        self.entries.extend_from_slice(br#"{"data":""#);
        let start = self.entries.len();
        self.entries.resize(start + encoded, 0);
        let _ = base64_simd::STANDARD.encode(
            &record.data,
            base64_simd::Out::from_slice(&mut self.entries[start..]),
        );
        self.entries.extend_from_slice(br#""},"#);
        self.ends.push(self.entries.len());
        self.records.push((record.sequence.0, record.sub));
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.records.len() >= MAX_RECORDS
            || self.entries.len() + BODY_OVERHEAD + MAX_DATA_BASE64 + ENTRY_OVERHEAD > MAX_BODY
    }

    fn deliver(mut self: Box<Self>) -> Vec<Undelivered> {
        let chunks = self.requests();
        let mut undelivered = Vec::new();
        for (k, records) in chunks.iter().enumerate() {
            let id = if k == 0 {
                self.request_id.clone()
            } else {
                crate::fs::guid(&format!("{}\0{k}", self.request_id))
            };
            let whole = chunks.len() == 1;
            if let Some(failure) = self.send(&id, records.clone(), whole) {
                undelivered.extend(records.clone().map(|index| {
                    let (sequence, sub) = self.records[index];
                    Undelivered {
                        index,
                        failure: failure.clone(),
                        detail: ErrorDetail::HttpEndpoint {
                            data_id: format_data_id(self.shard, sequence, sub),
                        },
                    }
                }));
            }
        }
        undelivered
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
    /// The records of each request: one range normally; more when one log record's pieces took
    /// the batch past 10,000 records or 64 MiB.
    fn requests(&self) -> Vec<std::ops::Range<usize>> {
        let mut chunks = Vec::new();
        let (mut first, mut from) = (0, HEADER_LEN);
        for (i, &end) in self.ends.iter().enumerate() {
            let too_long = end - from + HEADER_LEN + BODY_OVERHEAD > MAX_BODY;
            if i > first && (i - first == MAX_RECORDS || too_long) {
                chunks.push(first..i);
                (first, from) = (i, self.ends[i - 1]);
            }
        }
        if first < self.ends.len() {
            chunks.push(first..self.ends.len());
        }
        chunks
    }

    /// Sends the request of `records` (with request id `id`) until it is delivered or the retry
    /// duration is used up; `None` when delivered, else why not. `whole`: the request is the
    /// whole batch, whose body is written in place in `entries`.
    fn send(&mut self, id: &str, records: std::ops::Range<usize>, whole: bool) -> Option<Failure> {
        let mut clock = RetryClock::new(self.endpoint.retry, jitter_seed(id));
        let (code, message) = loop {
            clock.attempt();
            let (body, in_place) = self.body(id, records.clone(), whole);
            let (outcome, body) = self.attempt(id, body);
            if in_place {
                self.entries = unfinish_body(body); // the buffer back, for the next attempt
            }
            let (code, message) = match outcome {
                Attempt::Delivered => return None,
                Attempt::Refused(code, message) => break (code, message),
                Attempt::Failed(code, message) => (code, message),
            };
            tracing::warn!(endpoint = %self.endpoint.url, request_id = %id,
                attempt = clock.attempts, error = %message, "HTTP endpoint delivery failed");
            match clock.next_wait() {
                Some(wait) => std::thread::sleep(wait),
                None => break (code, message),
            }
        };
        Some(Failure {
            output_type: HTTP_ENDPOINT_FAILED,
            code: code.into(),
            message: message.into(),
            attempts: clock.attempts,
            plugin: None,
        })
    }

    /// The request body of `records` with a fresh timestamp: for the whole batch, `entries`
    /// itself with its header written in front (no copy; then `true`, and the caller puts it
    /// back); otherwise a copy of their entries.
    fn body(&mut self, id: &str, records: std::ops::Range<usize>, whole: bool) -> (Vec<u8>, bool) {
        let header = format!(
            r#"{{"requestId":"{id}","timestamp":{},"records":["#,
            now_ms()
        );
        let from = match records.start {
            0 => HEADER_LEN,
            i => self.ends[i - 1],
        };
        let to = self.ends[records.end - 1];
        if whole && header.len() == HEADER_LEN {
            let mut body = std::mem::take(&mut self.entries);
            body[..HEADER_LEN].copy_from_slice(header.as_bytes());
            finish_body(&mut body);
            return (body, true);
        }
        let mut body = Vec::with_capacity(header.len() + to - from + 2);
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&self.entries[from..to]);
        finish_body(&mut body);
        (body, false)
    }

    /// One attempt; gives the (uncompressed) body back.
    fn attempt(&self, id: &str, body: Vec<u8>) -> (Attempt, Vec<u8>) {
        let e = &*self.endpoint;
        let (payload, reusable) = if e.gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::default(),
            );
            // Writing to a Vec cannot fail.
            let _ = gz.write_all(&body);
            (Bytes::from(gz.finish().unwrap_or_default()), Some(body))
        } else {
            (Bytes::from(body), None)
        };
        let mut request = http::Request::post(e.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header("X-Amz-Firehose-Request-Id", id)
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
        let sent = payload.clone();
        let outcome = match request.body(Full::new(payload)) {
            Ok(request) => self.outcome(id, e.client.send(request, MAX_RESPONSE)),
            // Header values were checked when the destination was set up.
            Err(err) => Attempt::Refused(
                "HttpEndpoint.InvalidRequest",
                format!("the request could not be built: {err}"),
            ),
        };
        // hyper has dropped its reference once the exchange is over: no copy then.
        let body = reusable.unwrap_or_else(|| {
            sent.try_into_mut()
                .map(Vec::from)
                .unwrap_or_else(|b| b.to_vec())
        });
        (outcome, body)
    }

    fn outcome(&self, id: &str, response: Result<Response, RequestError>) -> Attempt {
        let response = match response {
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
        let status = response.status;
        let refused = |message| Attempt::Refused("HttpEndpoint.DestinationException", message);
        if response.too_large {
            let message = format!("the response to request {id} ({status}) is larger than 1 MiB");
            return match status.as_u16() {
                413 => refused(message),
                _ => Attempt::Failed("HttpEndpoint.ResponseTooLarge", message),
            };
        }
        // The answer is a JSON object (serde would take an array's elements as its fields).
        let object = response.body.trim_ascii_start().first() == Some(&b'{');
        let answer = match serde_json::from_slice::<Answer>(&response.body) {
            Ok(_) if !object => Err("the body is not a JSON object".to_string()),
            answer => answer.map_err(|e| e.to_string()),
        };
        match (status.as_u16(), answer) {
            (200, Ok(a)) if a.request_id.as_deref() == Some(id) => Attempt::Delivered,
            (200, Ok(a)) => Attempt::Failed(
                "HttpEndpoint.InvalidResponseFromDestination",
                bounded(format!(
                    "the response is invalid: its requestId is {:?}, the request's is {id:?}",
                    a.request_id.unwrap_or_default(),
                )),
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
                    }) => bounded(m),
                    _ => snippet(&response.body),
                };
                let message = format!(
                    "Received the following response from the endpoint destination. {status}: {said}"
                );
                if code == 413 {
                    refused(message)
                } else {
                    Attempt::Failed("HttpEndpoint.DestinationException", message)
                }
            }
        }
    }
}

/// Ends a body whose last entry ends with a comma: `...}]}`.
fn finish_body(body: &mut Vec<u8>) {
    if body.last() == Some(&b',') {
        body.pop();
    }
    body.extend_from_slice(b"]}");
}

/// Undoes [`finish_body`] on a whole batch's body, giving back its entries.
fn unfinish_body(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() - 2);
    body.push(b',');
    body
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
        let client =
            HttpClient::new(runtime.handle().clone(), Duration::from_secs(1), None).unwrap();
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
            entries: vec![b' '; HEADER_LEN],
            ends: Vec::new(),
            records: Vec::new(),
        }
    }

    /// The whole batch's body, leaving the batch as it was.
    fn whole(b: &mut HttpBatch) -> Vec<u8> {
        let id = b.request_id.clone();
        let (body, in_place) = b.body(&id, 0..b.records.len(), true);
        let copy = body.clone();
        if in_place {
            b.entries = unfinish_body(body);
        }
        copy
    }

    fn parse(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn the_body_is_written_in_place_and_survives_attempts() {
        let mut b = batch(0);
        b.push(&record(1, b"hello")).unwrap();
        b.push(&record(2, b"world")).unwrap();
        let entries = b.entries[HEADER_LEN..].to_vec();
        for _ in 0..3 {
            let (body, in_place) = b.body("0f8e1b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 0..2, true);
            assert!(in_place);
            let json = parse(&body);
            assert_eq!(json["records"][1]["data"], "d29ybGQ=");
            b.entries = unfinish_body(body);
            assert_eq!(b.entries[HEADER_LEN..], entries[..]);
        }
    }

    #[test]
    fn a_batch_past_a_request_limit_is_sent_as_several_requests() {
        // One log record's pieces can take a batch past 10,000 records (is_full is asked only
        // between log records): the batch is cut into requests that each keep the limits.
        let mut b = batch(0);
        for i in 0..25_000 {
            b.push(&record(i, b"x")).unwrap();
        }
        let requests = b.requests();
        assert_eq!(requests, vec![0..10_000, 10_000..20_000, 20_000..25_000]);
        let (body, in_place) = b.body("id", requests[1].clone(), false);
        assert!(!in_place);
        assert_eq!(parse(&body)["records"].as_array().unwrap().len(), 10_000);
        let mut big = batch(0);
        let data = vec![1u8; 1_000_000];
        for i in 0..70 {
            big.push(&record(i, &data)).unwrap();
        }
        let requests = big.requests();
        assert!(requests.len() >= 2, "{requests:?}");
        for r in requests {
            let (body, _) = big.body("0f8e1b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", r, false);
            assert!(body.len() <= MAX_BODY, "{}", body.len());
        }
    }

    #[test]
    fn common_attributes_become_an_ascii_header() {
        let json = serde_json::json!({"commonAttributes": {"city": "Zürich 🚀"}}).to_string();
        let ascii = ascii_json(&json);
        assert!(ascii.is_ascii());
        assert!(http::HeaderValue::from_str(&ascii).is_ok());
        assert_eq!(parse(ascii.as_bytes()), parse(json.as_bytes()));
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
        let body: serde_json::Value = serde_json::from_slice(&whole(&mut b)).unwrap();
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
            let len = whole(&mut b).len();
            assert!(len <= MAX_BODY, "{len}");
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
