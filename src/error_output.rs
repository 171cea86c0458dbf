//! The error bucket: records that cannot be delivered go, as Firehose error documents, to the
//! destination's error output prefix instead of being dropped or blocking delivery forever.
//!
//! One document per record, one JSON object per line: `attemptsMade`, `arrivalTimestamp`,
//! `errorCode`, `errorMessage`, `attemptEndingTimestamp`, `rawData` (base64), as Firehose writes
//! them. `format-conversion-failed` documents follow Firehose's schema for that type: `ErrorCode` /
//! `ErrorMessage` capitalised, plus `sequenceNumber`, `subSequenceNumber` and `dataCatalogTable`
//! (all of whose fields are null: the schema comes from the configuration, not a Glue catalog). Error objects are named like data objects, under the error prefix, with an id derived from
//! the records they hold, so they are exactly-once too.

use std::io::Write;

use serde::Serialize;

use crate::format::FORMAT_CONVERSION_FAILED;
use crate::log::{now_ms, ShardId};
use crate::prefix::{self, PrefixTemplate};
use crate::process::Record;
use crate::sink::{ObjectStore, ObjectWriter, SinkError};
use crate::time::UtcDateTime;

/// Error output type of records an S3-compatible store permanently rejected (Spillway's own type,
/// named like Firehose's `http-endpoint-failed`; Firehose retries S3 instead).
pub const S3_FAILED: &str = "s3-failed";
/// Error output type of records an HTTP endpoint did not accept within the retry duration.
pub const HTTP_ENDPOINT_FAILED: &str = "http-endpoint-failed";
/// Error output type of documents OpenSearch did not index (Firehose's name).
pub const OPENSEARCH_FAILED: &str = "AmazonOpenSearchService-failed";
/// Error output type of records beyond `max_active_partitions` (Firehose's name).
pub const ACTIVE_PARTITION_EXCEEDED: &str = "activePartitionExceeded";

/// Why a run of records failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error output type, e.g. [`S3_FAILED`].
    pub output_type: &'static str,
    /// Firehose-style code, e.g. `S3.InvalidArgument`.
    pub code: String,
    pub message: String,
    pub attempts: u32,
    /// The transformation plugin that failed the record, written as the document's `lambdaArn`
    /// (Firehose's field for the function) in the form `wasm:<module path>#<function>`.
    pub plugin: Option<std::sync::Arc<str>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDocument<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: &'a str,
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    raw_data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lambda_arn: Option<&'a str>,
}

/// What a request-based destination's error documents say beyond the common fields.
#[derive(Debug, Clone)]
pub enum ErrorDetail {
    /// `http-endpoint-failed`: the record's sub-sequence number and `dataId` (its PutRecord
    /// RecordId and sub-sequence number).
    HttpEndpoint { data_id: String },
    /// `AmazonOpenSearchService-failed`: where the document was to be indexed.
    OpenSearch {
        document_id: Option<String>,
        index: String,
        type_name: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpEndpointErrorDocument<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: &'a str,
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    raw_data: String,
    subsequence_number: u32,
    data_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpenSearchErrorDocument<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: &'a str,
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    es_document_id: Option<&'a str>,
    es_index_name: &'a str,
    es_type_name: &'a str,
    raw_data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConversionErrorDocument<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    #[serde(rename = "ErrorCode")]
    error_code: &'a str,
    #[serde(rename = "ErrorMessage")]
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    raw_data: String,
    sequence_number: String,
    sub_sequence_number: u64,
    data_catalog_table: DataCatalogTable,
}

/// Firehose's Glue table reference; Spillway's schemas are not in a catalog, so every field is null.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct DataCatalogTable {
    catalog_id: Option<String>,
    database_name: Option<String>,
    table_name: Option<String>,
    region: Option<String>,
    version_id: Option<String>,
    catalog_arn: Option<String>,
}

/// Names and writes error objects for one delivery stream.
#[derive(Debug, Clone)]
pub struct ErrorOutput {
    pub prefix: PrefixTemplate,
    pub stream: String,
    /// The log consumer writing (see `DeliverySettings::consumer`): part of object ids when it
    /// is not the stream itself, so two consumers' error objects never share a key.
    pub consumer: String,
    pub version: u32,
    pub instance: String,
    /// Time zone of the error prefix's timestamps and the object names; `None` is UTC.
    pub time_zone: Option<crate::time::TimeZone>,
}

impl ErrorOutput {
    /// The key of the error object holding records of `shard` from `first` on, for the data
    /// partition `partition` ("" without dynamic partitioning) or an error partition.
    pub fn key(
        &self,
        failure: &Failure,
        shard: ShardId,
        partition: &str,
        first: &Record,
    ) -> String {
        self.key_of_type(failure.output_type, shard, partition, first)
    }

    /// [`Self::key`] for records of error output type `output_type`.
    pub fn key_of_type(
        &self,
        output_type: &str,
        shard: ShardId,
        partition: &str,
        first: &Record,
    ) -> String {
        let at = self.time_zone.as_ref().map_or_else(
            || UtcDateTime::from_epoch_ms(first.arrival_ms),
            |z| z.calendar(first.arrival_ms),
        );
        let mut seed = if partition.is_empty() {
            format!("{}\0{output_type}", self.stream)
        } else {
            format!("{}\0{output_type}\0{partition}", self.stream)
        };
        if self.consumer != self.stream {
            seed = format!("{seed}\0{}", self.consumer);
        }
        let id = prefix::object_id(&self.instance, &seed, shard.0, first.sequence.0);
        prefix::object_key(
            &self.prefix.render_error(&at, &id, output_type),
            &self.stream,
            self.version,
            &at,
            &id,
            "",
        )
    }

    /// Starts an error object under `key`.
    pub fn create(&self, store: &dyn ObjectStore, key: &str) -> Result<ErrorWriter, SinkError> {
        Ok(ErrorWriter {
            key: key.to_string(),
            out: store.create(key)?,
            line: Vec::new(),
        })
    }
}

/// An error object being written.
pub struct ErrorWriter {
    key: String,
    out: Box<dyn ObjectWriter>,
    line: Vec<u8>,
}

impl ErrorWriter {
    /// Appends the error document of one record.
    pub fn push(&mut self, record: &Record, failure: &Failure) -> Result<(), SinkError> {
        self.line.clear();
        let raw_data = base64_simd::STANDARD.encode_to_string(&record.data);
        let written = if failure.output_type == FORMAT_CONVERSION_FAILED {
            serde_json::to_writer(
                &mut self.line,
                &ConversionErrorDocument {
                    attempts_made: failure.attempts,
                    arrival_timestamp: record.arrival_ms,
                    error_code: &failure.code,
                    error_message: &failure.message,
                    attempt_ending_timestamp: now_ms(),
                    raw_data,
                    sequence_number: record.sequence.0.to_string(),
                    sub_sequence_number: record.sub.into(),
                    data_catalog_table: DataCatalogTable::default(),
                },
            )
        } else {
            serde_json::to_writer(
                &mut self.line,
                &ErrorDocument {
                    attempts_made: failure.attempts,
                    arrival_timestamp: record.arrival_ms,
                    error_code: &failure.code,
                    error_message: &failure.message,
                    attempt_ending_timestamp: now_ms(),
                    raw_data,
                    lambda_arn: failure.plugin.as_deref(),
                },
            )
        };
        written.expect("an error document serializes");
        self.line.push(b'\n');
        self.out
            .write_all(&self.line)
            .map_err(|e| SinkError::from_io("write", &self.key, e))
    }

    /// Appends the error document of a record a request-based destination did not take.
    pub fn push_detailed(
        &mut self,
        record: &Record,
        failure: &Failure,
        detail: &ErrorDetail,
    ) -> Result<(), SinkError> {
        self.line.clear();
        let raw_data = base64_simd::STANDARD.encode_to_string(&record.data);
        let (code, message) = (failure.code.as_str(), failure.message.as_str());
        let written = match detail {
            ErrorDetail::HttpEndpoint { data_id } => serde_json::to_writer(
                &mut self.line,
                &HttpEndpointErrorDocument {
                    attempts_made: failure.attempts,
                    arrival_timestamp: record.arrival_ms,
                    error_code: code,
                    error_message: message,
                    attempt_ending_timestamp: now_ms(),
                    raw_data,
                    subsequence_number: record.sub,
                    data_id,
                },
            ),
            ErrorDetail::OpenSearch {
                document_id,
                index,
                type_name,
            } => serde_json::to_writer(
                &mut self.line,
                &OpenSearchErrorDocument {
                    attempts_made: failure.attempts,
                    arrival_timestamp: record.arrival_ms,
                    error_code: code,
                    error_message: message,
                    attempt_ending_timestamp: now_ms(),
                    es_document_id: document_id.as_deref(),
                    es_index_name: index,
                    es_type_name: type_name,
                    raw_data,
                },
            ),
        };
        written.expect("an error document serializes");
        self.line.push(b'\n');
        self.out
            .write_all(&self.line)
            .map_err(|e| SinkError::from_io("write", &self.key, e))
    }

    /// Makes the error object durable and visible.
    pub fn commit(self) -> Result<(), SinkError> {
        self.out.commit()
    }

    /// The object writer, to commit later along with others.
    pub fn into_inner(self) -> Box<dyn ObjectWriter> {
        self.out
    }
}
