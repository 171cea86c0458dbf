//! OpenSearch (and Elasticsearch) through the `_bulk` API: a batch is one bulk request of `index`
//! actions, each naming its index (with Firehose's rotation suffix) and, by default, a document id
//! derived from where the record is in the log, so that retries and replays overwrite instead of
//! duplicating.
//!
//! The response is read per item, as OpenSearch answers per document: 2xx is delivered, 429 and
//! 5xx are retried (only those documents, with the same ids), anything else is permanent and goes
//! to the error output at once. A failed request as a whole (status, connection, timeout, an
//! unreadable answer) is retried for every pending document.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::request::{
    bounded, jitter_seed, snippet, HttpClient, RequestError, RetryClock, USER_AGENT,
};
use super::{RecordBatch, RecordDestination, SinkError, Undelivered};
use crate::config::{
    DocumentIdFormat, IndexRotation, OpenSearchAuth, OpenSearchDestination, SigningService,
};
use crate::error_output::{ErrorDetail, Failure, OPENSEARCH_FAILED};
use crate::log::ShardId;
use crate::process::Record;
use crate::time::UtcDateTime;

/// Largest bulk response read (a 100 MiB request of tiny documents answers with ~100 bytes each).
const MAX_RESPONSE: usize = 256 << 20;
/// Largest bulk request: OpenSearch's default `http.max_content_length` (100 MiB). A batch is
/// sent in more than one request only when one log record's pieces take it past this.
const MAX_REQUEST: usize = 100 << 20;
/// Room kept for one more document and its action line before a batch counts as full.
const MAX_DOCUMENT: usize = 2 << 20;
/// Longest wait for the AWS credential chain (a `credential_process`, instance metadata).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);

/// An OpenSearch destination.
#[derive(Debug, Clone)]
pub struct OpenSearch {
    inner: Arc<Cluster>,
}

struct Cluster {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
    bulk: http::Uri,
    endpoint: String,
    index: String,
    type_name: Option<String>,
    rotation: IndexRotation,
    ids: DocumentIdFormat,
    auth: Auth,
    retry: Duration,
    /// Part of every document id: documents of two streams (or data directories) never collide.
    tag: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoint", &self.endpoint)
            .field("index", &self.index)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

enum Auth {
    None,
    /// The `Authorization` header's value.
    Basic(String),
    Sigv4 {
        region: String,
        service: SigningService,
        provider: SharedCredentialsProvider,
        cached: Mutex<Option<Credentials>>,
    },
}

impl OpenSearch {
    /// The destination of delivery stream `stream` (of data directory `instance`). `credentials`
    /// are needed for SigV4 signing.
    pub fn new(
        config: &OpenSearchDestination,
        stream: &str,
        instance: &str,
        runtime: tokio::runtime::Handle,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<OpenSearch, SinkError> {
        let invalid = SinkError::Setup;
        let bulk = format!("{}/_bulk", config.endpoint.trim_end_matches('/'))
            .parse::<http::Uri>()
            .map_err(|e| invalid(format!("{}: {e}", config.endpoint)))?;
        let auth = match &config.auth {
            None => Auth::None,
            Some(OpenSearchAuth::Basic { username, password }) => Auth::Basic(format!(
                "Basic {}",
                base64_simd::STANDARD.encode_to_string(format!("{username}:{password}"))
            )),
            Some(OpenSearchAuth::Sigv4 { region, service }) => Auth::Sigv4 {
                region: region.clone(),
                service: *service,
                provider: credentials.ok_or_else(|| {
                    invalid("SigV4 signing needs AWS credentials, and none were found".into())
                })?,
                cached: Mutex::new(None),
            },
        };
        let tag = crate::fs::md5_hex(format!("{instance}\0{stream}").as_bytes())[..8].to_string();
        Ok(OpenSearch {
            inner: Arc::new(Cluster {
                client: HttpClient::new(
                    runtime.clone(),
                    Duration::from_secs(config.request_timeout_s),
                    config.ca_file.as_deref(),
                )?,
                runtime,
                bulk,
                endpoint: config.endpoint.clone(),
                index: config.index.clone(),
                type_name: config.type_name.clone(),
                rotation: config.index_rotation,
                ids: config.document_id,
                auth,
                retry: Duration::from_secs(config.retry.duration_s),
                tag,
            }),
        })
    }
}

impl RecordDestination for OpenSearch {
    fn batch(&self, shard: ShardId, id: &str) -> Box<dyn RecordBatch> {
        Box::new(BulkBatch {
            cluster: Arc::clone(&self.inner),
            shard,
            id: id.to_string(),
            body: Vec::new(),
            items: Vec::new(),
            index: None,
        })
    }

    fn describe(&self) -> String {
        format!("{} (index {})", self.inner.endpoint, self.inner.index)
    }

    fn output_type(&self) -> &'static str {
        OPENSEARCH_FAILED
    }
}

/// One bulk request being filled.
struct BulkBatch {
    cluster: Arc<Cluster>,
    shard: ShardId,
    /// The batch's id, for logs and jitter.
    id: String,
    /// Every document's action and source lines.
    body: Vec<u8>,
    items: Vec<Item>,
    /// The index of the last document's arrival hour.
    index: Option<(i64, Arc<str>)>,
}

/// A document of the batch: its lines in the body, and where it goes.
struct Item {
    lines: std::ops::Range<usize>,
    /// The index, shared by the documents of one hour (a suffix never changes within one).
    index: Arc<str>,
    sequence: u64,
    sub: u32,
}

impl RecordBatch for BulkBatch {
    fn push(&mut self, record: &Record) -> Result<(), Box<(Failure, ErrorDetail)>> {
        let hour = record.arrival_ms.div_euclid(3_600_000);
        let index = match &self.index {
            Some((h, index)) if *h == hour => Arc::clone(index),
            _ => {
                let c = &*self.cluster;
                let name: Arc<str> = format!(
                    "{}{}",
                    c.index,
                    rotation_suffix(c.rotation, record.arrival_ms)
                )
                .into();
                self.index = Some((hour, Arc::clone(&name)));
                name
            }
        };
        let (sequence, sub) = (record.sequence.0, record.sub);
        if let Err(why) = check_document(&record.data) {
            let failure = Failure {
                output_type: OPENSEARCH_FAILED,
                code: "OpenSearch.MalformedDocument".into(),
                message: format!(
                    "the record is not a JSON object, which OpenSearch requires: {why}"
                )
                .into(),
                attempts: 0,
                plugin: None,
            };
            let detail = self.detail(&index, sequence, sub);
            return Err(Box::new((failure, detail)));
        }
        let c = &*self.cluster;
        let start = self.body.len();
        self.body.extend_from_slice(br#"{"index":{"_index":"#);
        push_json_string(&mut self.body, &index);
        if let Some(t) = &c.type_name {
            self.body.extend_from_slice(br#","_type":"#);
            push_json_string(&mut self.body, t);
        }
        if c.ids == DocumentIdFormat::FirehoseDefault {
            // The id is ASCII (hex tag and numbers): no escaping needed.
            self.body.extend_from_slice(br#","_id":""#);
            let _ = write!(self.body, "{}-{}-{sequence}-{sub}", c.tag, self.shard.0);
            self.body.push(b'"');
        }
        self.body.extend_from_slice(b"}}\n");
        // Newlines in valid JSON are whitespace: spaces keep the document on its line.
        let doc = self.body.len();
        self.body.extend_from_slice(&record.data);
        for b in &mut self.body[doc..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        self.body.push(b'\n');
        self.items.push(Item {
            lines: start..self.body.len(),
            index,
            sequence,
            sub,
        });
        Ok(())
    }

    fn is_full(&self) -> bool {
        // The size hint counts record bytes; the action lines come on top.
        self.body.len() + MAX_DOCUMENT > MAX_REQUEST
    }

    fn deliver(mut self: Box<Self>) -> Vec<Undelivered> {
        let body = Bytes::from(std::mem::take(&mut self.body));
        let mut undelivered = Vec::new();
        let mut pending: Vec<usize> = (0..self.items.len()).collect();
        let mut clock = RetryClock::new(self.cluster.retry, jitter_seed(&self.id));
        // Each pending document's last error; a whole request's error is shared by its documents.
        let mut last: Vec<Option<Why>> = vec![None; self.items.len()];
        // Request size: halved while the cluster refuses whole requests as too large or malformed,
        // down to single documents, so that one oversized or unparsable document fails alone.
        let mut limit = MAX_REQUEST;
        while !pending.is_empty() {
            clock.attempt();
            let mut retry = Vec::new();
            // Whether a document is retried for a reason that waiting may cure (not a split).
            let mut wait = false;
            for request in self.requests(&pending, limit) {
                match self.attempt(&body, request) {
                    Ok(statuses) => {
                        for (&i, (status, error)) in request.iter().zip(statuses) {
                            let why = || Why {
                                code: status.to_string().into(),
                                message: error.into(),
                            };
                            match status {
                                200..=299 => {}
                                429 | 500.. => {
                                    last[i] = Some(why());
                                    retry.push(i);
                                    wait = true;
                                }
                                _ => undelivered.push(self.undelivered(i, why(), clock.attempts)),
                            }
                        }
                    }
                    Err(Refusal { why, permanent }) if permanent && request.len() > 1 => {
                        let bytes: usize = request.iter().map(|&i| self.items[i].lines.len()).sum();
                        limit = limit.min(bytes / 2);
                        for &i in request {
                            last[i] = Some(why.clone());
                        }
                        retry.extend_from_slice(request);
                    }
                    Err(Refusal { why, permanent }) => {
                        for &i in request {
                            if permanent {
                                undelivered.push(self.undelivered(i, why.clone(), clock.attempts));
                            } else {
                                last[i] = Some(why.clone());
                            }
                        }
                        if !permanent {
                            retry.extend_from_slice(request);
                            wait = true;
                        }
                    }
                }
            }
            retry.sort_unstable(); // documents keep their order across requests
            pending = retry;
            let Some(&first) = pending.first() else {
                break;
            };
            if !wait {
                continue; // only smaller requests to send, at once
            }
            if let Some(why) = &last[first] {
                tracing::warn!(endpoint = %self.cluster.endpoint, batch = %self.id,
                    documents = pending.len(), attempt = clock.attempts, error = %why.message,
                    "OpenSearch did not index every document; retrying them");
            }
            match clock.next_wait() {
                Some(wait) => std::thread::sleep(wait),
                None => break,
            }
        }
        for i in pending {
            let why = last[i].take().unwrap_or_else(|| Why {
                code: "OpenSearch.Unknown".into(),
                message: "no attempt was answered".into(),
            });
            undelivered.push(self.undelivered(i, why, clock.attempts));
        }
        undelivered.sort_by_key(|u| u.index);
        undelivered
    }
}

/// Why a document was not indexed: an error code and message (an item's status and error, or
/// what became of the whole request).
#[derive(Debug, Clone)]
struct Why {
    code: Arc<str>,
    message: Arc<str>,
}

/// A bulk request that failed as a whole; `permanent`: sending it again cannot help (the
/// cluster refused its body as malformed or too large), so its documents fail now.
struct Refusal {
    why: Why,
    permanent: bool,
}

impl Refusal {
    fn retryable(code: &str, message: String) -> Refusal {
        Refusal {
            why: Why {
                code: code.into(),
                message: message.into(),
            },
            permanent: false,
        }
    }
}

/// A bulk response, as far as it is read when `errors` is false: every item succeeded, so only
/// their number is checked.
#[derive(Deserialize)]
struct BulkSummary {
    errors: bool,
    items: Vec<serde::de::IgnoredAny>,
}

/// A bulk response with failures, item by item.
#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BulkEntry>,
}

/// One item: `{"index": {...}}` (or another action's name).
#[derive(Deserialize)]
struct BulkEntry {
    #[serde(alias = "create", alias = "update", alias = "delete")]
    index: BulkItem,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl BulkBatch {
    fn undelivered(&self, index: usize, why: Why, attempts: u32) -> Undelivered {
        let item = &self.items[index];
        Undelivered {
            index,
            failure: Failure {
                output_type: OPENSEARCH_FAILED,
                code: why.code.to_string(),
                message: why.message,
                attempts,
                plugin: None,
            },
            detail: self.detail(&item.index, item.sequence, item.sub),
        }
    }

    /// The error document's fields of the record at (`sequence`, `sub`) bound for `index`.
    fn detail(&self, index: &str, sequence: u64, sub: u32) -> ErrorDetail {
        let c = &*self.cluster;
        ErrorDetail::OpenSearch {
            document_id: (c.ids == DocumentIdFormat::FirehoseDefault)
                .then(|| format!("{}-{}-{sequence}-{sub}", c.tag, self.shard.0)),
            index: index.to_string(),
            type_name: c.type_name.clone().unwrap_or_default(),
            serverless: matches!(
                c.auth,
                Auth::Sigv4 {
                    service: SigningService::Aoss,
                    ..
                }
            ),
        }
    }

    /// The `pending` documents in requests of at most `limit` bytes ([`MAX_REQUEST`], or less
    /// once the cluster refused a request as too large or malformed; a document alone may pass it).
    fn requests<'p>(&self, pending: &'p [usize], limit: usize) -> Vec<&'p [usize]> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (k, &i) in pending.iter().enumerate() {
            let len = self.items[i].lines.len();
            if k > start && bytes + len > limit {
                out.push(&pending[start..k]);
                (start, bytes) = (k, 0);
            }
            bytes += len;
        }
        if start < pending.len() {
            out.push(&pending[start..]);
        }
        out
    }

    /// One bulk request of the `pending` documents (of `body`, the batch's lines): each one's
    /// status and error, in order, or why the request as a whole failed.
    fn attempt(&self, body: &Bytes, pending: &[usize]) -> Result<Vec<(u16, String)>, Refusal> {
        let c = &*self.cluster;
        let body = if pending.len() == self.items.len() {
            body.clone() // the whole batch: no copy
        } else {
            let mut part = Vec::new();
            for &i in pending {
                part.extend_from_slice(&body[self.items[i].lines.clone()]);
            }
            Bytes::from(part)
        };
        let request = self
            .request(body)
            .map_err(|e| Refusal::retryable("OpenSearch.InvalidRequest", e))?;
        let response = c.client.send(request, MAX_RESPONSE).map_err(|e| match e {
            RequestError::Timeout(_) => {
                Refusal::retryable("OpenSearch.RequestTimeout", e.to_string())
            }
            RequestError::Connect(_) => {
                Refusal::retryable("OpenSearch.ConnectionFailed", e.to_string())
            }
            RequestError::Reset(_) => {
                Refusal::retryable("OpenSearch.ConnectionReset", e.to_string())
            }
        })?;
        if response.too_large {
            return Err(Refusal::retryable(
                "OpenSearch.InvalidResponse",
                "the bulk response is larger than 256 MiB".into(),
            ));
        }
        if response.status != http::StatusCode::OK {
            let status = response.status.as_u16();
            let mut refusal = Refusal::retryable(
                &status.to_string(),
                format!(
                    "the bulk request failed with {}: {}",
                    response.status,
                    snippet(&response.body)
                ),
            );
            // A malformed or oversized body stays so (the batch is sent again in smaller requests,
            // down to single documents); other refusals (429, 5xx, and 401/403, which a fixed
            // role or password cures) are retried.
            refusal.permanent = matches!(status, 400 | 413);
            return Err(refusal);
        }
        let invalid = |e: serde_json::Error| {
            Refusal::retryable(
                "OpenSearch.InvalidResponse",
                format!("the bulk response is not valid: {e}"),
            )
        };
        let summary: BulkSummary = serde_json::from_slice(&response.body).map_err(invalid)?;
        if summary.items.len() != pending.len() {
            return Err(Refusal::retryable(
                "OpenSearch.InvalidResponse",
                format!(
                    "the bulk response has {} items for {} documents",
                    summary.items.len(),
                    pending.len()
                ),
            ));
        }
        if !summary.errors {
            return Ok(vec![(200, String::new()); pending.len()]);
        }
        let parsed: BulkResponse = serde_json::from_slice(&response.body).map_err(invalid)?;
        Ok(parsed
            .items
            .into_iter()
            .map(|item| {
                let error = item
                    .index
                    .error
                    .map(|e| bounded(e.to_string()))
                    .unwrap_or_default();
                (item.index.status, error)
            })
            .collect())
    }

    fn request(&self, body: Bytes) -> Result<http::Request<Full<Bytes>>, String> {
        let c = &*self.cluster;
        let host = c
            .bulk
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let mut request = http::Request::post(c.bulk.clone())
            .header(http::header::HOST, &host)
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match &c.auth {
            Auth::None => {}
            Auth::Basic(value) => {
                let value = http::HeaderValue::from_str(value).map_err(|e| e.to_string())?;
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value);
            }
            Auth::Sigv4 {
                region,
                service,
                provider,
                cached,
            } => {
                let credentials = c.credentials(provider, cached)?;
                sign(&mut request, &body, &credentials, region, service.as_str())?;
            }
        }
        *request.body_mut() = Full::new(body);
        Ok(request)
    }
}

impl Cluster {
    /// Credentials for signing, refreshed five minutes before they expire.
    fn credentials(
        &self,
        provider: &SharedCredentialsProvider,
        cached: &Mutex<Option<Credentials>>,
    ) -> Result<Credentials, String> {
        let mut cached = cached.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = cached.as_ref().is_some_and(|c| {
            c.expiry()
                .is_none_or(|e| e > SystemTime::now() + Duration::from_secs(300))
        });
        if !fresh {
            let loaded = self
                .runtime
                .block_on(async {
                    tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await
                })
                .map_err(|_| {
                    format!("no AWS credentials for SigV4 within {CREDENTIALS_TIMEOUT:?}")
                })?
                .map_err(|e| format!("could not load AWS credentials for SigV4: {e}"))?;
            *cached = Some(loaded);
        }
        Ok(cached.clone().expect("just loaded"))
    }
}

/// Signs `request` (whose body will be `body`) with AWS Signature Version 4, adding
/// `Authorization`, `X-Amz-Date`, `X-Amz-Content-Sha256` and the session token if any.
fn sign(
    request: &mut http::Request<Full<Bytes>>,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
) -> Result<(), String> {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = request.uri().to_string();
    let headers = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let signable = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("SigV4 signing failed: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// Whether `data` is one JSON object (what an OpenSearch document is).
fn check_document(data: &[u8]) -> Result<(), String> {
    std::str::from_utf8(data).map_err(|e| format!("it is not UTF-8: {e}"))?;
    let first = data.iter().find(|b| !b" \t\r\n".contains(b));
    if first != Some(&b'{') {
        return Err("it does not start with '{'".into());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(data)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Firehose's `IndexRotationPeriod` suffix for a record that arrived at `arrival_ms` (UTC).
pub fn rotation_suffix(rotation: IndexRotation, arrival_ms: i64) -> String {
    let t = UtcDateTime::from_epoch_ms(arrival_ms);
    let mut s = String::new();
    let _ = match rotation {
        IndexRotation::NoRotation => Ok(()),
        IndexRotation::OneHour => write!(
            s,
            "-{:04}-{:02}-{:02}-{:02}",
            t.year, t.month, t.day, t.hour
        ),
        IndexRotation::OneDay => write!(s, "-{:04}-{:02}-{:02}", t.year, t.month, t.day),
        IndexRotation::OneWeek => write!(s, "-{:04}-w{:02}", t.year, us_week(arrival_ms, &t)),
        IndexRotation::OneMonth => write!(s, "-{:04}-{:02}", t.year, t.month),
    };
    s
}

/// The week of the year as Java's `ww` counts it in the US: weeks start on Sunday and week 1 is
/// the one holding January 1 — so the last days of December can be in week 1 (of the next year,
/// while `yyyy` still prints this one, as Firehose's index names do).
fn us_week(arrival_ms: i64, t: &UtcDateTime) -> u32 {
    let days = arrival_ms.div_euclid(86_400_000);
    let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday; Sunday = 0
    let leap = (t.year % 4 == 0 && t.year % 100 != 0) || t.year % 400 == 0;
    let days_in_year = if leap { 366 } else { 365 };
    let to_next_january = days_in_year - t.day_of_year + 1;
    if weekday + to_next_january <= 6 {
        return 1;
    }
    let january_first = (weekday + 7 * 53 - (t.day_of_year - 1)) % 7;
    (t.day_of_year - 1 + january_first) / 7 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(date: &str) -> i64 {
        let d: jiff::civil::DateTime = date.parse().unwrap();
        jiff::tz::TimeZone::UTC
            .to_timestamp(d)
            .unwrap()
            .as_millisecond()
    }

    #[test]
    fn rotation_suffixes_follow_firehose() {
        let t = ms("2024-02-29T07:08:09");
        assert_eq!(rotation_suffix(IndexRotation::NoRotation, t), "");
        assert_eq!(rotation_suffix(IndexRotation::OneHour, t), "-2024-02-29-07");
        assert_eq!(rotation_suffix(IndexRotation::OneDay, t), "-2024-02-29");
        assert_eq!(rotation_suffix(IndexRotation::OneMonth, t), "-2024-02");
        assert_eq!(rotation_suffix(IndexRotation::OneWeek, t), "-2024-w09");
    }

    #[test]
    fn weeks_start_on_sunday_and_week_one_holds_january_first() {
        for (date, week) in [
            ("2024-01-01T00:00:00", "-2024-w01"), // a Monday
            ("2024-01-06T23:59:59", "-2024-w01"), // Saturday
            ("2024-01-07T00:00:00", "-2024-w02"), // Sunday
            ("2024-12-28T12:00:00", "-2024-w52"), // Saturday
            ("2024-12-29T00:00:00", "-2024-w01"), // Sunday of the week holding 2025-01-01
            ("2024-12-31T12:00:00", "-2024-w01"),
            ("2023-01-01T00:00:00", "-2023-w01"), // a Sunday
            ("2023-12-31T00:00:00", "-2023-w01"), // Sunday; 2024-01-01 is the Monday after
            ("2022-12-31T00:00:00", "-2022-w53"), // Saturday; 2023 starts on Sunday
            ("2020-12-26T00:00:00", "-2020-w52"),
        ] {
            assert_eq!(
                rotation_suffix(IndexRotation::OneWeek, ms(date)),
                week,
                "{date}"
            );
        }
    }

    fn batch() -> BulkBatch {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client =
            HttpClient::new(runtime.handle().clone(), Duration::from_secs(1), None).unwrap();
        let handle = runtime.handle().clone();
        std::mem::forget(runtime);
        BulkBatch {
            cluster: Arc::new(Cluster {
                client,
                runtime: handle,
                bulk: "http://127.0.0.1:9/_bulk".parse().unwrap(),
                endpoint: "http://127.0.0.1:9".into(),
                index: "logs".into(),
                type_name: None,
                rotation: IndexRotation::OneDay,
                ids: DocumentIdFormat::FirehoseDefault,
                auth: Auth::None,
                retry: Duration::ZERO,
                tag: "tag".into(),
            }),
            shard: ShardId(1),
            id: "batch".into(),
            body: Vec::new(),
            items: Vec::new(),
            index: None,
        }
    }

    fn record(seq: u64, data: &[u8]) -> Record {
        Record {
            sequence: crate::log::SequenceNumber(seq),
            sub: 2,
            arrival_ms: ms("2024-02-29T07:08:09"),
            data: Bytes::copy_from_slice(data),
            keys: None,
        }
    }

    #[test]
    fn actions_name_index_and_stable_id_and_documents_stay_on_one_line() {
        let mut b = batch();
        b.push(&record(7, b"{\"a\":\n1}\n")).unwrap();
        assert_eq!(
            String::from_utf8(b.body.clone()).unwrap(),
            "{\"index\":{\"_index\":\"logs-2024-02-29\",\"_id\":\"tag-1-7-2\"}}\n{\"a\": 1} \n"
        );
        let refused = b.push(&record(8, b"not json")).unwrap_err();
        assert_eq!(refused.0.code, "OpenSearch.MalformedDocument");
        assert_eq!(b.items.len(), 1);
    }

    #[test]
    fn a_batch_is_full_before_a_request_could_pass_100_mib_and_is_cut_if_it_does() {
        let mut b = batch();
        let doc = format!("{{\"v\":\"{}\"}}", "x".repeat(1 << 20));
        let mut n = 0;
        while !b.is_full() {
            b.push(&record(n, doc.as_bytes())).unwrap();
            n += 1;
        }
        assert!(
            b.body.len() <= MAX_REQUEST && n >= 90,
            "{} bytes, {n} documents",
            b.body.len()
        );
        // Past the limit (one log record's many pieces), the batch goes in several requests.
        for i in 0..20 {
            b.push(&record(n + i, doc.as_bytes())).unwrap();
        }
        let pending: Vec<usize> = (0..b.items.len()).collect();
        let requests = b.requests(&pending, MAX_REQUEST);
        assert_eq!(requests.len(), 2);
        for r in &requests {
            let bytes: usize = r.iter().map(|&i| b.items[i].lines.len()).sum();
            assert!(bytes <= MAX_REQUEST, "{bytes}");
        }
        assert_eq!(
            requests.iter().map(|r| r.len()).sum::<usize>(),
            b.items.len()
        );
        // Below one document's size, each document goes alone.
        assert_eq!(b.requests(&pending, 1).len(), b.items.len());
    }

    #[test]
    fn an_unreachable_cluster_fails_each_document_with_its_own_place() {
        let mut b = batch();
        b.push(&record(1, b"{}")).unwrap();
        b.push(&record(2, b"{}")).unwrap();
        let failed = Box::new(b).deliver();
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].failure.code, "OpenSearch.ConnectionFailed");
        match &failed[1].detail {
            ErrorDetail::OpenSearch {
                document_id, index, ..
            } => {
                assert_eq!(document_id.as_deref(), Some("tag-1-2-2"));
                assert_eq!(index, "logs-2024-02-29");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn documents_must_be_json_objects() {
        assert!(check_document(br#"{"a":1}"#).is_ok());
        assert!(check_document(b" {\n\"a\": [1,\n2]\n}\n").is_ok());
        assert!(check_document(b"[1]").is_err());
        assert!(check_document(b"\"s\"").is_err());
        assert!(check_document(br#"{"a":1} {"b":2}"#).is_err());
        assert!(check_document(b"{\"a\":\"\xff\"}").is_err());
        assert!(check_document(b"").is_err());
    }
}
