//! The internal shard log: the only durable buffer in Spillway.
//!
//! Kinesis-Data-Streams semantics on local disk. A stream has N shards; each shard is a directory of
//! segment files named by the first sequence number they hold, each a run of CRC-framed records
//! ([`frame`]). Appends are group-committed: one `fdatasync` covers every request that arrived while the
//! previous one ran, and an append's future resolves only once its records are durable. Readers see only
//! durable records. A torn tail is detected by CRC and truncated on open. Retention deletes whole sealed
//! segments by age, but never one a pinned consumer (a delivery stream) has not yet delivered, so an
//! acknowledged record is never dropped while its delivery is pending.

mod checkpoint;
pub mod frame;
mod shard;
mod stream;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

pub use checkpoint::{Checkpoint, CheckpointStore, InFlightObject, ObjectEntry, ObjectState};
pub use shard::{Appended, DiskUsage, ShardLog, ShardReader};
pub use stream::StreamLog;

/// Per-shard sequence number: unique and strictly increasing within a shard, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SequenceNumber(pub u64);

impl SequenceNumber {
    /// The sequence number after this one.
    pub fn next(self) -> Self {
        SequenceNumber(self.0 + 1)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}", self.0)
    }
}

/// A shard's index within its stream, shown Kinesis-style as `shardId-000000000003`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shardId-{:012}", self.0)
    }
}

/// One record as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub sequence: SequenceNumber,
    /// Approximate arrival time, milliseconds since the Unix epoch; non-decreasing within a shard.
    pub arrival_ms: i64,
    /// Empty for Direct PUT records, which carry no partition key.
    pub partition_key: Bytes,
    pub data: Bytes,
}

/// Where a reader starts, as Kinesis `ShardIteratorType`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Just after the newest durable record: only records appended from now on.
    Latest,
    AtSequenceNumber(SequenceNumber),
    AfterSequenceNumber(SequenceNumber),
    /// The first record whose arrival time is at or after this instant (ms since the epoch).
    AtTimestamp(i64),
}

/// Tunables of the log, shared by every stream.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Sealed segments older than this are deleted once no pinned consumer needs them.
    pub retention: Duration,
    /// Appends beyond this many bytes waiting for the disk are refused ([`LogError::Overloaded`]).
    pub max_pending_bytes: usize,
    /// Bytes of segments a stream may keep on disk; appends past it are refused
    /// ([`LogError::DiskBudget`]) and delivered segments are deleted early.
    pub max_disk_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            retention: Duration::from_secs(24 * 3600),
            max_pending_bytes: 64 << 20,
            max_disk_bytes: u64::MAX,
        }
    }
}

/// Limits of a single read, as Kinesis `GetRecords`.
pub const MAX_READ_RECORDS: usize = 10_000;
/// At most this many bytes of records are returned by one read.
pub const MAX_READ_BYTES: usize = 10 << 20;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {path} is corrupt at byte {offset}")]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("shard {shard} has {pending} bytes waiting for the disk; try again later")]
    Overloaded { shard: ShardId, pending: usize },
    #[error(
        "the stream's log holds {used} bytes, its disk budget is {budget}; delivery is behind"
    )]
    DiskBudget { used: u64, budget: u64 },
    #[error("shard {shard} is closed")]
    Closed { shard: ShardId },
    #[error("the write to shard {shard} failed and was rolled back: {reason}")]
    WriteFailed { shard: ShardId, reason: String },
    #[error(
        "sequence number {requested} of shard {shard} has expired; the oldest retained is {oldest}"
    )]
    Trimmed {
        shard: ShardId,
        requested: SequenceNumber,
        oldest: SequenceNumber,
    },
    #[error("record {index} of the append is too large: key {key_len} bytes (at most {MAX_KEY_BYTES}), data {data_len} bytes (at most {MAX_DATA_BYTES})")]
    RecordTooLarge {
        index: usize,
        key_len: usize,
        data_len: usize,
    },
    #[error("checkpoint {path} is unreadable: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Syncs a directory so that a file created, renamed or removed in it survives a crash.
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), LogError> {
    crate::fs::sync_dir(dir).map_err(LogError::io(dir))
}

/// Creates a directory and its ancestors durably.
pub(crate) fn create_dir_all(dir: &std::path::Path) -> Result<(), LogError> {
    crate::fs::create_dir_all_synced(dir).map_err(LogError::io(dir))
}

/// Longest partition key, in bytes (Kinesis: 256 characters).
pub const MAX_KEY_BYTES: usize = 256;
/// Largest record data, in bytes (Kinesis: 1 MiB).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// The identity of a data directory: 128 random bits, created on first use and kept in
/// `<data_dir>/instance-id`. Object ids include it, so replays from this log reproduce their keys
/// while a daemon with another data directory writing into the same lake cannot collide.
pub fn instance_id(data_dir: &std::path::Path) -> Result<String, LogError> {
    use std::io::Read;
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 32 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(id.trim().to_string())
        }
        Ok(_) => {
            return Err(LogError::BadCheckpoint {
                path,
                reason: "expected 32 hex digits".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::Io { path, source: e }),
    }
    create_dir_all(data_dir)?;
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(LogError::io("/dev/urandom"))?;
    let id = crate::fs::hex(&raw);
    crate::fs::replace_synced(&path, id.as_bytes()).map_err(LogError::io(&path))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::instance_id(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(super::instance_id(dir.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(super::instance_id(other.path()).unwrap(), a);
        std::fs::write(dir.path().join("instance-id"), "garbage").unwrap();
        assert!(super::instance_id(dir.path()).is_err());
    }
}
