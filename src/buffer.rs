//! A delivery buffer: the object being assembled from a run of records.
//!
//! Records stream through the compressor straight into the store's writer, so a buffer holds a few
//! hundred KiB however large `size_mib` is; the log, not memory, is what keeps records until the object
//! is committed. The size hint counts bytes before compression (data plus delimiters), as Firehose does.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::compression::{Compression, Encoder};
use crate::config::BufferingHints;
use crate::log::{LogRecord, SequenceNumber};
use crate::sink::{ObjectStore, ObjectWriter, SinkError};

/// An object being filled with records `first..=last`.
pub struct ObjectBuffer {
    pub first: SequenceNumber,
    pub last: SequenceNumber,
    pub key: String,
    /// Bytes written before compression.
    pub raw_bytes: u64,
    pub records: u64,
    opened: Instant,
    encoder: Encoder<Box<dyn ObjectWriter>>,
}

impl ObjectBuffer {
    /// Starts an object under `key` whose first record is `first`.
    pub fn open(
        store: &dyn ObjectStore,
        key: String,
        compression: Compression,
        level: Option<u32>,
        first: &LogRecord,
    ) -> Result<ObjectBuffer, SinkError> {
        let writer = store.create(&key)?;
        // A ZIP's one entry is named like the object, without directories or the `.zip`.
        let entry = key.rsplit('/').next().unwrap_or(&key);
        let entry = entry.strip_suffix(".zip").unwrap_or(entry);
        let encoder = compression
            .encoder(writer, entry, level)
            .map_err(|source| SinkError::Io {
                op: "start compressor for",
                key: key.clone(),
                source,
            })?;
        Ok(ObjectBuffer {
            first: first.sequence,
            last: first.sequence,
            key,
            raw_bytes: 0,
            records: 0,
            opened: Instant::now(),
            encoder,
        })
    }

    /// Appends a record's data, followed by `delimiter`.
    pub fn push(&mut self, record: &LogRecord, delimiter: &[u8]) -> Result<(), SinkError> {
        let io = |source| SinkError::from_io("write", &self.key, source);
        self.encoder.write_all(&record.data).map_err(io)?;
        if !delimiter.is_empty() {
            self.encoder.write_all(delimiter).map_err(io)?;
        }
        self.last = record.sequence;
        self.raw_bytes += (record.data.len() + delimiter.len()) as u64;
        self.records += 1;
        Ok(())
    }

    /// Whether the size hint is reached.
    pub fn is_full(&self, hints: &BufferingHints) -> bool {
        self.raw_bytes >= hints.size_bytes()
    }

    /// How long until the interval hint is reached (zero when it is).
    pub fn time_left(&self, hints: &BufferingHints) -> Duration {
        hints.interval().saturating_sub(self.opened.elapsed())
    }

    /// Finishes compression and commits the object.
    pub fn commit(self) -> Result<(), SinkError> {
        let key = self.key;
        let writer = self
            .encoder
            .finish()
            .map_err(|source| SinkError::from_io("finish compression of", &key, source))?;
        writer.commit()
    }
}
