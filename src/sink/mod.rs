//! Destinations. An [`ObjectStore`] takes whole objects as a byte stream and makes each visible under
//! its key atomically on commit, so a reader never sees a partial object and a replay overwrites.
//! A [`RecordDestination`] (HTTP endpoint, OpenSearch) takes records in batches, one request each,
//! and answers for every record: delivered, or not, with why.

mod http_endpoint;
mod local;
mod opensearch;
mod request;
mod s3;

use std::io::Write;

pub use http_endpoint::HttpEndpoint;
pub use local::LocalStore;
pub use opensearch::OpenSearch;
pub use request::HttpClient;
pub use s3::S3Store;

use crate::error_output::{ErrorDetail, Failure};
use crate::log::ShardId;
use crate::process::Record;

/// Errors of a destination.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A destination cannot be set up as configured.
    #[error("{0}")]
    Setup(String),
    #[error("object key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The store refused or failed a request after its retries.
    #[error("{message}")]
    Store {
        message: String,
        /// The store's error code, e.g. `InvalidArgument`.
        code: Option<String>,
        /// The store will never accept this object: its records go to the error output.
        permanent: bool,
    },
}

impl SinkError {
    /// An I/O error of `op` on `key`, keeping a store error that travelled inside it (writers
    /// report store failures through `std::io::Write`).
    pub fn from_io(op: &'static str, key: &str, source: std::io::Error) -> SinkError {
        if source.get_ref().is_some_and(|e| e.is::<SinkError>()) {
            if let Ok(inner) = source
                .into_inner()
                .expect("checked")
                .downcast::<SinkError>()
            {
                return *inner;
            }
            unreachable!("checked to be a SinkError");
        }
        SinkError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }

    /// Whether retrying can never succeed, so the records belong in the error output.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SinkError::Store {
                permanent: true,
                ..
            }
        )
    }

    /// The store's error code, if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SinkError::Store { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Write buffer of an object being written (a local object's file, an S3 object's spill file).
/// Small enough that a thousand open partitions cost 64 MiB, large enough that writes stay a
/// negligible share of the CPU (a syscall per 64 KiB at 250 MB/s is ~4,000 a second).
pub const WRITE_BUFFER: usize = 64 << 10;

/// An object store: the S3 destination's backend.
pub trait ObjectStore: Send + Sync {
    /// Starts an object under `key`. Nothing is visible until [`ObjectWriter::commit`]; dropping the
    /// writer without committing discards it.
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, SinkError>;
    /// Removes an object if it exists.
    fn delete(&self, key: &str) -> Result<(), SinkError>;
    /// Where the store writes, for logs and DescribeDeliveryStream.
    fn describe(&self) -> String;
}

/// An object being written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its key, replacing any object already there.
    fn commit(self: Box<Self>) -> Result<(), SinkError>;
}

/// Checks that `key` is a relative path of non-empty, non-dot segments, so that it cannot escape the
/// store's root.
pub fn check_key(key: &str) -> Result<(), SinkError> {
    let bad = |reason| {
        Err(SinkError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("must not start with '/'");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\0'))
    {
        return bad("has an empty, '.', '..' or NUL-containing segment");
    }
    Ok(())
}

/// A destination that takes records by request. Batches are built by the pipeline like objects
/// (same buffering, same deterministic boundaries), so a batch's id, and with it the HTTP
/// endpoint's request id and OpenSearch's document ids, is the same when a replay sends it again.
pub trait RecordDestination: Send + Sync + std::fmt::Debug {
    /// Starts a batch of records of `shard`; `id` is a GUID derived from its first record.
    fn batch(&self, shard: ShardId, id: &str) -> Box<dyn RecordBatch>;
    /// Where the destination sends, for logs.
    fn describe(&self) -> String;
    /// The error output type of the records it does not take.
    fn output_type(&self) -> &'static str;
}

/// A batch being filled; one request.
pub trait RecordBatch: Send {
    /// Adds a record, or refuses one that the destination can never take (it goes to the error
    /// output) and which is then not part of the batch.
    fn push(&mut self, record: &Record) -> Result<(), Box<(Failure, ErrorDetail)>>;
    /// Whether one more record might not fit in the request.
    fn is_full(&self) -> bool;
    /// Sends the batch, retrying for the configured duration. Returns the records it could not
    /// deliver, by their index among the records taken, with why; they go to the error output.
    fn deliver(self: Box<Self>) -> Vec<Undelivered>;
}

/// A record of a batch that was not delivered.
#[derive(Debug)]
pub struct Undelivered {
    /// Index among the records the batch took.
    pub index: usize,
    /// Why, as the error document says it.
    pub failure: Failure,
    /// The destination's fields of the error document.
    pub detail: ErrorDetail,
}
