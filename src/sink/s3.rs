//! The S3 destination: any S3-compatible store (AWS S3, MinIO, Ceph, R2, SeaweedFS).
//!
//! Client: `aws-sdk-s3`, because Spillway needs what only a full S3 client offers together — the
//! standard credential chain (environment, profiles, web identity, instance metadata), conditional
//! creates (`If-None-Match: *`) on PutObject and CompleteMultipartUpload, and multipart control.
//! `object_store` is lighter but has no profiles and hides multipart uploads.
//!
//! Memory is bounded independently of the buffering hints: an object's compressed bytes go to a spill
//! file beside the log, and whenever the spill holds a part (`part_mib`, ≥ 5 MiB) it is uploaded as a
//! multipart part streamed from the file. A small object goes as one PutObject. Every request carries
//! Content-MD5, which every S3-compatible store verifies.
//!
//! Exactly-once: keys are deterministic and the pipeline replays an interrupted object byte for byte,
//! so a replay either finds the object already there (412 from a conditional create, or a HEAD hit
//! where the store has no conditional create) or writes it for the first time.
//!
//! Multipart uploads in progress are recorded in a journal (`<data_dir>/uploads/<stream>/`) until
//! completed or aborted, so those a crash leaves behind are aborted at the next start.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64_simd::STANDARD as B64;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::{check_key, ObjectStore, ObjectWriter, SinkError};
use crate::config::{ConditionalCreate, S3Location};

/// How a failed S3 request is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying: network errors, timeouts, throttling, 5xx, and credentials or buckets that
    /// may be fixed while we wait (401/403/404 NoSuchBucket).
    Transient,
    /// The store will never accept this request (e.g. 400 InvalidArgument, EntityTooLarge).
    Permanent,
    /// A conditional create found the object already there.
    AlreadyExists,
    /// The multipart upload no longer exists (aborted or completed): retrying the request is
    /// pointless, the object must start over (or, for an abort, there is nothing left to do).
    UploadGone,
}

/// An S3 request error with its classification.
#[derive(Debug, thiserror::Error)]
#[error("S3 {op} s3://{bucket}/{key}: {message}")]
pub struct S3Error {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub failure: Failure,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

/// Retries of one S3 request: exponential backoff with full jitter, 100 ms doubling to 20 s, for at
/// most `duration` (Firehose `RetryOptions.DurationInSeconds`).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub duration: Duration,
}

struct Inner {
    client: aws_sdk_s3::Client,
    bucket: String,
    runtime: tokio::runtime::Handle,
    spill_dir: PathBuf,
    journal_dir: PathBuf,
    part_bytes: u64,
    retry: RetryPolicy,
    conditional: ConditionalCreate,
    /// Set by `auto` when the store answered a conditional create with 501 Not Implemented.
    conditional_unsupported: AtomicBool,
}

/// An S3 bucket as an [`ObjectStore`].
pub struct S3Store {
    inner: Arc<Inner>,
}

/// A key with multipart uploads possibly open, recorded before the first CreateMultipartUpload and
/// removed once none is left: a Create whose response was lost still leaves an upload behind, so
/// uploads are found by key (ListMultipartUploads), not by the ids we happened to receive.
#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    bucket: String,
    key: String,
}

impl S3Store {
    /// Builds the client from the standard AWS configuration chain plus `location`'s overrides,
    /// clears spill files, and aborts multipart uploads a previous run left behind.
    pub async fn open(
        location: &S3Location,
        state_dir: &Path,
        runtime: tokio::runtime::Handle,
    ) -> Result<S3Store, SinkError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &location.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(location.force_path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(location.request_timeout_s))
                    .operation_attempt_timeout(Duration::from_secs(location.request_timeout_s * 4))
                    .build(),
            );
        if shared.region().is_none() {
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &location.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let io = |what: &'static str, path: &Path| {
            let key = path.display().to_string();
            move |source| SinkError::Io {
                op: what,
                key,
                source,
            }
        };
        let spill_dir = state_dir.join("spill");
        let journal_dir = state_dir.join("uploads");
        std::fs::create_dir_all(&spill_dir).map_err(io("create directory", &spill_dir))?;
        std::fs::create_dir_all(&journal_dir).map_err(io("create directory", &journal_dir))?;
        for entry in std::fs::read_dir(&spill_dir)
            .map_err(io("list", &spill_dir))?
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        let store = S3Store {
            inner: Arc::new(Inner {
                client: aws_sdk_s3::Client::from_conf(builder.build()),
                bucket: location.bucket.clone(),
                runtime,
                spill_dir,
                journal_dir,
                part_bytes: location.part_mib << 20,
                retry: RetryPolicy {
                    duration: Duration::from_secs(location.retry_duration_s),
                },
                conditional: location.conditional_create,
                conditional_unsupported: AtomicBool::new(false),
            }),
        };
        store.abort_leftovers().await;
        Ok(store)
    }

    /// Aborts the multipart uploads of every key in the journal (a crash left them open).
    async fn abort_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.journal_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(raw) = std::fs::read(&path) else {
                continue;
            };
            let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw) else {
                tracing::warn!(path = %path.display(), "unreadable multipart journal entry; removing it");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if e.bucket != self.inner.bucket {
                continue;
            }
            match self.inner.abort_uploads_of(&e.key).await {
                Ok(0) => {
                    let _ = std::fs::remove_file(&path);
                }
                Ok(n) => {
                    tracing::info!(key = %e.key, uploads = n, "aborted multipart uploads left by an earlier run");
                    let _ = std::fs::remove_file(&path);
                }
                Err(err) => tracing::warn!(key = %e.key, error = %err,
                    "could not abort leftover multipart uploads; will try again at the next start"),
            }
        }
    }
}

impl Inner {
    /// Aborts every multipart upload open for exactly `key`; returns how many there were. Only this
    /// pipeline ever writes `key` (keys are unique per data directory, stream, shard and first
    /// record), so every such upload is ours.
    async fn abort_uploads_of(&self, key: &str) -> Result<usize, String> {
        let listed = with_retries(self, "ListMultipartUploads", key, || {
            self.client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(key)
                .send()
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut aborted = 0;
        for upload in listed.uploads() {
            let (Some(k), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            if k != key {
                continue;
            }
            let result = with_retries(self, "AbortMultipartUpload", key, || {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
            })
            .await;
            match result {
                Ok(_) => aborted += 1,
                Err(e) if e.failure == Failure::UploadGone => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(aborted)
    }

    fn journal_path(&self, key: &str) -> PathBuf {
        self.journal_dir
            .join(format!("{}.json", crate::fs::md5_hex(key.as_bytes())))
    }
}

impl ObjectStore for S3Store {
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, SinkError> {
        check_key(key)?;
        let spill_path = self
            .inner
            .spill_dir
            .join(format!("{}.spill", crate::fs::md5_hex(key.as_bytes())));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&spill_path)
            .map_err(|source| SinkError::Io {
                op: "create spill file for",
                key: key.to_string(),
                source,
            })?;
        Ok(Box::new(S3Object {
            inner: Arc::clone(&self.inner),
            key: key.to_string(),
            spill_path,
            spill: Some(BufWriter::with_capacity(super::WRITE_BUFFER, file)),
            spilled: 0,
            part_md5: Md5::new(),
            upload: None,
            journaled: false,
        }))
    }

    fn delete(&self, key: &str) -> Result<(), SinkError> {
        let inner = &self.inner;
        inner
            .runtime
            .block_on(with_retries(inner, "DeleteObject", key, || {
                inner
                    .client
                    .delete_object()
                    .bucket(&inner.bucket)
                    .key(key)
                    .send()
            }))
            .map(|_| ())
            .map_err(SinkError::from)
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.inner.bucket)
    }
}

impl From<S3Error> for SinkError {
    fn from(e: S3Error) -> SinkError {
        let permanent = e.failure == Failure::Permanent;
        SinkError::Store {
            message: e.to_string(),
            code: e.code.clone(),
            permanent,
        }
    }
}

struct Multipart {
    upload_id: String,
    parts: Vec<CompletedPart>,
}

/// An object being written to S3 through its spill file.
struct S3Object {
    inner: Arc<Inner>,
    key: String,
    spill_path: PathBuf,
    spill: Option<BufWriter<File>>,
    /// Bytes in the spill file (the part being assembled).
    spilled: u64,
    part_md5: Md5,
    upload: Option<Multipart>,
    /// The key is in the upload journal (a multipart upload may be open).
    journaled: bool,
}

impl Write for S3Object {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let spill = self.spill.as_mut().expect("not committed");
        let n = spill.write(buf)?;
        self.part_md5.update(&buf[..n]);
        self.spilled += n as u64;
        if self.spilled >= self.inner.part_bytes {
            self.upload_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl S3Object {
    /// Flushes the spill file; returns the part's length and base64 MD5, and starts a new digest.
    fn seal_part(&mut self) -> Result<(u64, String), SinkError> {
        let spill = self.spill.as_mut().expect("not committed");
        spill.flush().map_err(|source| SinkError::Io {
            op: "flush spill file of",
            key: self.key.clone(),
            source,
        })?;
        let md5 = B64.encode_to_string(std::mem::take(&mut self.part_md5).finalize());
        Ok((self.spilled, md5))
    }

    /// Empties the spill file for the next part.
    fn reset_spill(&mut self) -> Result<(), SinkError> {
        let spill = self.spill.as_mut().expect("not committed");
        let file = spill.get_mut();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .map_err(|source| SinkError::Io {
                op: "reset spill file of",
                key: self.key.clone(),
                source,
            })?;
        self.spilled = 0;
        Ok(())
    }

    fn upload_part(&mut self) -> Result<(), SinkError> {
        let inner = Arc::clone(&self.inner);
        if self.upload.is_none() {
            let journal = inner.journal_path(&self.key);
            let entry = JournalEntry {
                bucket: inner.bucket.clone(),
                key: self.key.clone(),
            };
            write_synced(&journal, &serde_json::to_vec(&entry).expect("serializes")).map_err(
                |source| SinkError::Io {
                    op: "record multipart upload of",
                    key: self.key.clone(),
                    source,
                },
            )?;
            self.journaled = true;
            let created = inner.runtime.block_on(with_retries(
                &inner,
                "CreateMultipartUpload",
                &self.key,
                || {
                    inner
                        .client
                        .create_multipart_upload()
                        .bucket(&inner.bucket)
                        .key(&self.key)
                        .send()
                },
            ))?;
            self.upload = Some(Multipart {
                upload_id: created.upload_id().unwrap_or_default().to_string(),
                parts: Vec::new(),
            });
        }
        let part_number = self.upload.as_ref().map_or(0, |u| u.parts.len()) as i32 + 1;
        let upload_id = self
            .upload
            .as_ref()
            .expect("just created")
            .upload_id
            .clone();
        let (len, md5) = self.seal_part()?;
        let key = self.key.clone();
        let spill_path = self.spill_path.clone();
        let done = inner
            .runtime
            .block_on(with_retries(&inner, "UploadPart", &key, || {
                let (inner, key, upload_id, md5, spill_path) = (
                    Arc::clone(&inner),
                    key.clone(),
                    upload_id.clone(),
                    md5.clone(),
                    spill_path.clone(),
                );
                async move {
                    // A fresh body per attempt: a retried request must resend the whole part.
                    let body = spill_stream(&spill_path, len).await?;
                    inner
                        .client
                        .upload_part()
                        .bucket(&inner.bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(part_number)
                        .content_length(len as i64)
                        .content_md5(md5)
                        .body(body)
                        .send()
                        .await
                }
            }))?;
        self.upload.as_mut().expect("created").parts.push(
            CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(done.e_tag().map(str::to_string))
                .build(),
        );
        self.reset_spill()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        let conditional = match inner.conditional {
            ConditionalCreate::Head => false,
            ConditionalCreate::IfNoneMatch => true,
            ConditionalCreate::Auto => !inner.conditional_unsupported.load(Ordering::Relaxed),
        };
        if !conditional {
            // No conditional create: a HEAD finds an object that an earlier attempt already wrote.
            let head = inner
                .runtime
                .block_on(with_retries(&inner, "HeadObject", &key, || {
                    inner
                        .client
                        .head_object()
                        .bucket(&inner.bucket)
                        .key(&key)
                        .send()
                }));
            match head {
                Ok(_) => {
                    tracing::debug!(%key, "object already delivered (HEAD); skipping the replay");
                    self.close_out_uploads();
                    return Ok(());
                }
                Err(e) if e.status == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let result = if self.upload.is_none() {
            self.put_whole(conditional)
        } else {
            self.complete(conditional)
        };
        match result {
            Err(e) if e.failure == Failure::AlreadyExists => {
                tracing::debug!(%key, "object already delivered (412); skipping the replay");
                self.close_out_uploads();
                Ok(())
            }
            Err(e)
                if conditional
                    && inner.conditional == ConditionalCreate::Auto
                    && (e.status == Some(501) || e.code.as_deref() == Some("NotImplemented")) =>
            {
                tracing::warn!(bucket = %inner.bucket, "the store does not support If-None-Match; using HEAD checks");
                inner.conditional_unsupported.store(true, Ordering::Relaxed);
                self.finish()
            }
            Err(e) => Err(e.into()),
            Ok(()) => Ok(()),
        }
    }

    /// Uploads the whole object with one PutObject.
    fn put_whole(&mut self, conditional: bool) -> Result<(), S3Error> {
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        let (len, md5) = self
            .seal_part()
            .map_err(|e| local_failure("PutObject", &inner, &key, e))?;
        let spill_path = self.spill_path.clone();
        inner
            .runtime
            .block_on(with_retries(&inner, "PutObject", &key, || {
                let (inner, key, md5, spill_path) = (
                    Arc::clone(&inner),
                    key.clone(),
                    md5.clone(),
                    spill_path.clone(),
                );
                async move {
                    let body = spill_stream(&spill_path, len).await?;
                    let mut req = inner
                        .client
                        .put_object()
                        .bucket(&inner.bucket)
                        .key(&key)
                        .content_length(len as i64)
                        .content_md5(md5)
                        .body(body);
                    if conditional {
                        req = req.if_none_match("*");
                    }
                    req.send().await
                }
            }))
            .map(|_| ())
    }

    /// Uploads the last part and completes the multipart upload.
    fn complete(&mut self, conditional: bool) -> Result<(), S3Error> {
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        if self.spilled > 0 {
            self.upload_part()
                .map_err(|e| local_failure("UploadPart", &inner, &key, e))?;
        }
        let upload = self.upload.as_ref().expect("multipart");
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(upload.parts.clone()))
            .build();
        inner.runtime.block_on(with_retries(
            &inner,
            "CompleteMultipartUpload",
            &key,
            || {
                let mut req = inner
                    .client
                    .complete_multipart_upload()
                    .bucket(&inner.bucket)
                    .key(&key)
                    .upload_id(&upload.upload_id)
                    .multipart_upload(parts.clone());
                if conditional {
                    req = req.if_none_match("*");
                }
                req.send()
            },
        ))?;
        // Ours is complete; any other upload of this key (a Create whose response was lost) goes.
        self.close_out_uploads();
        Ok(())
    }

    /// Aborts whatever multipart uploads are still open for this key (ours, and any a lost Create
    /// response left behind), then forgets the key. Best effort: a failure leaves the journal entry
    /// for the next start.
    fn close_out_uploads(&mut self) {
        self.upload = None;
        if !self.journaled {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let result = inner.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(300), inner.abort_uploads_of(&self.key)).await
        });
        match result {
            Ok(Ok(_)) => {
                let _ = std::fs::remove_file(inner.journal_path(&self.key));
                self.journaled = false;
            }
            Ok(Err(e)) => tracing::warn!(key = %self.key, error = %e,
                "could not abort multipart uploads now; they are aborted at the next start"),
            Err(_) => tracing::warn!(key = %self.key,
                "aborting multipart uploads timed out; they are aborted at the next start"),
        }
    }
}

impl ObjectWriter for S3Object {
    fn commit(mut self: Box<Self>) -> Result<(), SinkError> {
        self.finish()
    }
}

impl Drop for S3Object {
    fn drop(&mut self) {
        // Nothing is left open for a committed object; an abandoned one has its uploads aborted.
        self.close_out_uploads();
        self.spill = None;
        let _ = std::fs::remove_file(&self.spill_path);
    }
}

/// A request body streaming the first `len` bytes of the spill file (built anew for every attempt:
/// a retried request resends the whole body). A read failure is retried like a network error.
async fn spill_stream<E>(path: &Path, len: u64) -> Result<ByteStream, SdkError<E, HttpResponse>> {
    ByteStream::read_from()
        .path(path)
        .offset(0)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(SdkError::construction_failure)
}

/// A local failure (spill file I/O) while finishing an upload, reported as a transient S3 failure.
fn local_failure(op: &'static str, inner: &Inner, key: &str, e: SinkError) -> S3Error {
    S3Error {
        op,
        bucket: inner.bucket.clone(),
        key: key.to_string(),
        failure: Failure::Transient,
        status: None,
        code: None,
        message: e.to_string(),
    }
}

/// Classifies an SDK error: (failure, code, status).
fn classify<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
) -> (Failure, Option<String>, Option<u16>) {
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().map(str::to_string);
            let status = service.raw().status().as_u16();
            let failure = match (status, code.as_deref()) {
                (_, Some("NoSuchUpload")) => Failure::UploadGone,
                (412, _) | (_, Some("PreconditionFailed")) => Failure::AlreadyExists,
                (s, _) if s >= 500 || s == 429 || s == 408 => Failure::Transient,
                (
                    _,
                    Some(
                        "SlowDown"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestTimeout"
                        | "RequestTimeTooSkewed"
                        | "InternalError"
                        | "ServiceUnavailable",
                    ),
                ) => Failure::Transient,
                // Credentials and buckets can be fixed while we wait: keep retrying, never drop.
                (401 | 403 | 404, _) => Failure::Transient,
                // A conflicting concurrent operation: retry.
                (409, _) => Failure::Transient,
                (400..=499, _) => Failure::Permanent,
                _ => Failure::Transient,
            };
            (failure, code, Some(status))
        }
        SdkError::ResponseError(r) => (Failure::Transient, None, Some(r.raw().status().as_u16())),
        // Timeouts, dispatch (network) and construction (spill file) failures.
        _ => (Failure::Transient, None, None),
    }
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> String {
    match err {
        SdkError::ServiceError(s) => format!(
            "{} (HTTP {}){}",
            s.err().code().unwrap_or("unknown error"),
            s.raw().status().as_u16(),
            s.err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        other => {
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, finds the object existing, or the retry
/// duration is spent; transient failures wait with exponential backoff and full jitter.
async fn with_retries<T, E, F, Fut>(
    inner: &Inner,
    op_name: &'static str,
    key: &str,
    mut op: F,
) -> Result<T, S3Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let (failure, code, status) = classify(&err);
        let message = format!("{} (attempt {attempts})", describe(&err));
        let give_up =
            failure != Failure::Transient || started.elapsed() + delay > inner.retry.duration;
        if give_up {
            return Err(S3Error {
                op: op_name,
                bucket: inner.bucket.clone(),
                key: key.to_string(),
                failure,
                status,
                code,
                message,
            });
        }
        tracing::warn!(op = op_name, bucket = %inner.bucket, %key, error = %message, "S3 request failed; retrying");
        let jittered = Duration::from_nanos(fastrand_u64() % (delay.as_nanos() as u64 + 1));
        tokio::time::sleep(jittered).await;
        delay = (delay * 2).min(Duration::from_secs(20));
    }
}

fn fastrand_u64() -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7) | 1));
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn write_synced(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(body)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
