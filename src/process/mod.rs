//! Firehose record processors: the steps a record may pass through between ingest and the
//! buffers, each a pure function of the record's bytes.
//!
//! - [`decompress::gunzip`]: CloudWatch Logs decompression (gzip, multi-member, bounded output).
//! - [`cloudwatch::extract_messages`]: CloudWatch Logs message extraction.
//! - [`deaggregate::split_json`] / [`deaggregate::split_delimited`]: record deaggregation.
//! - [`kpl::deaggregate`]: Kinesis Producer Library aggregated records.
//!
//! Splitting functions return byte ranges into their input rather than copies, so that a caller
//! holding the record as [`bytes::Bytes`] can cut sub-records out of it for free
//! ([`SubRecord::from_ranges`]). Every failure is a [`ProcessError`], which carries the Firehose
//! error output type and error code under which the record goes to the error output.

pub mod cloudwatch;
pub mod deaggregate;
pub mod decompress;
pub mod kpl;

use std::ops::Range;

use bytes::Bytes;

/// Error output type of records that could not be decompressed (Firehose's name).
pub const DECOMPRESSION_FAILED: &str = "decompression-failed";
/// Error output type of records that a processor (deaggregation, KPL, CloudWatch Logs message
/// extraction) could not process (Firehose's name).
pub const PROCESSING_FAILED: &str = "processing-failed";
/// Firehose deaggregates a record into at most this many sub-records; a record holding more is
/// passed on whole (see [`deaggregate::split_json`]).
pub const MAX_SUB_RECORDS: usize = 500;

/// One record on its way through the processors. `Bytes` so that pass-through and slicing a
/// sub-record out of its parent cost no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    /// The record's bytes.
    pub data: Bytes,
}

impl SubRecord {
    /// Wraps bytes as a record.
    pub fn new(data: impl Into<Bytes>) -> Self {
        SubRecord { data: data.into() }
    }

    /// Cuts the sub-records at `ranges` out of `parent` without copying. `None` if any range is
    /// reversed or reaches past the end of `parent` (never the case for ranges returned by this
    /// module's splitters for that same `parent`), so that a bad range cannot panic.
    pub fn from_ranges(parent: &Bytes, ranges: &[Range<usize>]) -> Option<Vec<SubRecord>> {
        ranges
            .iter()
            .map(|r| {
                (r.start <= r.end && r.end <= parent.len()).then(|| SubRecord {
                    data: parent.slice(r.clone()),
                })
            })
            .collect()
    }
}

/// Why a processor could not process a record. Each variant maps to a Firehose error output type
/// ([`ProcessError::output_type`]) and a Firehose-style error code ([`ProcessError::code`]); the
/// `Display` text is the error message written to the error document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// The data is not valid gzip (bad header, corrupt deflate stream, CRC mismatch, truncated,
    /// trailing garbage).
    #[error("decompression failed: {reason}")]
    DecompressInvalid {
        /// What is wrong, for the error message.
        reason: String,
    },
    /// The decompressed data would exceed the configured limit (gzip bomb protection).
    #[error("decompressed data exceeds the limit of {limit} bytes")]
    DecompressTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The data is not a CloudWatch Logs subscription envelope.
    #[error("invalid CloudWatch Logs envelope: {reason}")]
    CloudWatchInvalid {
        /// What is wrong, for the error message.
        reason: String,
    },
    /// The envelope's `messageType` is neither `DATA_MESSAGE` nor `CONTROL_MESSAGE`.
    #[error("unknown CloudWatch Logs messageType {message_type:?}")]
    CloudWatchUnknownType {
        /// The `messageType` found.
        message_type: String,
    },
    /// JSON deaggregation met malformed JSON (or no JSON object at all) at byte `offset`.
    #[error("invalid JSON at byte {offset}: {reason}")]
    JsonInvalid {
        /// Byte offset in the record where the problem was found.
        offset: usize,
        /// What is wrong, for the error message.
        reason: String,
    },
    /// JSON deaggregation met a top-level value that is not an object at byte `offset`.
    #[error("top-level JSON value at byte {offset} is not an object")]
    JsonNotObject {
        /// Byte offset in the record where the problem was found.
        offset: usize,
    },
    /// JSON deaggregation met nesting deeper than `limit` at byte `offset`.
    #[error("JSON nesting deeper than {limit} at byte {offset}")]
    JsonTooDeep {
        /// Byte offset in the record where the problem was found.
        offset: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// `kpl::deaggregate` was given data without the KPL magic prefix or too short to hold one.
    #[error("not a KPL aggregated record")]
    KplNotAggregated,
    /// The MD5 trailer of a KPL aggregated record does not match its protobuf body.
    #[error("KPL aggregated record MD5 checksum mismatch")]
    KplChecksumMismatch,
    /// The protobuf body of a KPL aggregated record is malformed; `offset` is relative to the
    /// start of the record (magic included).
    #[error("malformed KPL aggregated record at byte {offset}: {reason}")]
    KplMalformed {
        /// Byte offset in the record where the problem was found.
        offset: usize,
        /// What is wrong, for the error message.
        reason: String,
    },
}

impl ProcessError {
    /// The Firehose error output type ([`DECOMPRESSION_FAILED`] or [`PROCESSING_FAILED`]) under
    /// which the failed record goes to the error output prefix.
    pub fn output_type(&self) -> &'static str {
        match self {
            ProcessError::DecompressInvalid { .. } | ProcessError::DecompressTooLarge { .. } => {
                DECOMPRESSION_FAILED
            }
            _ => PROCESSING_FAILED,
        }
    }

    /// The Firehose-style error code (`errorCode` of the error document).
    pub fn code(&self) -> &'static str {
        match self {
            ProcessError::DecompressInvalid { .. } => "Decompression.InvalidData",
            ProcessError::DecompressTooLarge { .. } => "Decompression.TooLarge",
            ProcessError::CloudWatchInvalid { .. } => "CloudWatchLogs.InvalidEnvelope",
            ProcessError::CloudWatchUnknownType { .. } => "CloudWatchLogs.UnknownMessageType",
            ProcessError::JsonInvalid { .. } => "Deaggregation.InvalidJson",
            ProcessError::JsonNotObject { .. } => "Deaggregation.NotJsonObject",
            ProcessError::JsonTooDeep { .. } => "Deaggregation.NestingTooDeep",
            ProcessError::KplNotAggregated => "KPL.NotAggregated",
            ProcessError::KplChecksumMismatch => "KPL.ChecksumMismatch",
            ProcessError::KplMalformed { .. } => "KPL.MalformedRecord",
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init, clippy::reversed_empty_ranges)]
mod tests {
    use super::*;

    #[test]
    fn output_types_and_codes() {
        let e = ProcessError::DecompressTooLarge { limit: 10 };
        assert_eq!(e.output_type(), DECOMPRESSION_FAILED);
        assert_eq!(e.code(), "Decompression.TooLarge");
        assert_eq!(
            e.to_string(),
            "decompressed data exceeds the limit of 10 bytes"
        );
        let e = ProcessError::KplChecksumMismatch;
        assert_eq!(e.output_type(), PROCESSING_FAILED);
        assert_eq!(e.code(), "KPL.ChecksumMismatch");
        let e = ProcessError::JsonNotObject { offset: 3 };
        assert_eq!(e.output_type(), PROCESSING_FAILED);
        assert_eq!(e.code(), "Deaggregation.NotJsonObject");
    }

    #[test]
    fn from_ranges_slices_without_copy_and_rejects_bad_ranges() {
        let parent = Bytes::from_static(b"abcdef");
        let subs = SubRecord::from_ranges(&parent, &[0..2, 3..6]).unwrap_or_default();
        assert_eq!(subs, vec![SubRecord::new("ab"), SubRecord::new("def")]);
        assert_eq!(subs[0].data.as_ptr(), parent.as_ptr());
        assert!(SubRecord::from_ranges(&parent, &[0..7]).is_none());
        let reversed = [4..2];
        assert!(SubRecord::from_ranges(&parent, &reversed).is_none());
        assert_eq!(SubRecord::from_ranges(&parent, &[]), Some(vec![]));
    }
}

mod chain;
pub use chain::{failure, Outcome, Processors, Record, MAX_PROCESSED_BYTES};
