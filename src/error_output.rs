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
    /// What went wrong; shared, as one failure often stands for many records (every document
    /// of a request the destination refused).
    pub message: std::sync::Arc<str>,
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
        /// OpenSearch Serverless: the document names `osDocumentId` and `osIndexName` instead.
        serverless: bool,
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
    #[serde(flatten)]
    target: IndexTarget<'a>,
    raw_data: String,
}

/// Where the document was to go, in a domain's or a Serverless collection's field names.
#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum IndexTarget<'a> {
    Domain {
        es_document_id: Option<&'a str>,
        es_index_name: &'a str,
        es_type_name: &'a str,
    },
    Serverless {
        os_document_id: Option<&'a str>,
        os_index_name: &'a str,
    },
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
        let (code, message) = (failure.code.as_str(), &*failure.message);
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
                serverless,
            } => serde_json::to_writer(
                &mut self.line,
                &OpenSearchErrorDocument {
                    attempts_made: failure.attempts,
                    arrival_timestamp: record.arrival_ms,
                    error_code: code,
                    error_message: message,
                    attempt_ending_timestamp: now_ms(),
                    target: match serverless {
                        false => IndexTarget::Domain {
                            es_document_id: document_id.as_deref(),
                            es_index_name: index,
                            es_type_name: type_name,
                        },
                        true => IndexTarget::Serverless {
                            os_document_id: document_id.as_deref(),
                            os_index_name: index,
                        },
                    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SequenceNumber;
    use crate::sink::LocalStore;

    /// The OpenSearch error document of one record, as written.
    fn opensearch_document(serverless: bool) -> serde_json::Map<String, serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let output = ErrorOutput {
            prefix: PrefixTemplate::parse_error_prefix("e/").unwrap(),
            stream: "s".into(),
            consumer: "s".into(),
            version: 1,
            instance: "i".into(),
            time_zone: None,
        };
        let mut w = output.create(&store, "doc").unwrap();
        let record = Record {
            sequence: SequenceNumber(7),
            sub: 0,
            arrival_ms: 1_700_000_000_000,
            data: bytes::Bytes::from_static(b"{\"a\":1}"),
            keys: None,
        };
        let failure = Failure {
            output_type: OPENSEARCH_FAILED,
            code: "400".into(),
            message: "mapper_parsing_exception".into(),
            attempts: 2,
            plugin: None,
        };
        let detail = ErrorDetail::OpenSearch {
            document_id: Some("id-1".into()),
            index: "logs-2024-01-01".into(),
            type_name: String::new(),
            serverless,
        };
        w.push_detailed(&record, &failure, &detail).unwrap();
        w.commit().unwrap();
        let line = std::fs::read_to_string(dir.path().join("doc")).unwrap();
        serde_json::from_str(line.trim_end()).unwrap()
    }

    #[test]
    fn opensearch_documents_name_a_domain_s_or_a_collection_s_fields() {
        let common = [
            "attemptsMade",
            "arrivalTimestamp",
            "errorCode",
            "errorMessage",
            "attemptEndingTimestamp",
            "rawData",
        ];
        fn keys(d: &serde_json::Map<String, serde_json::Value>) -> Vec<&str> {
            let mut k: Vec<&str> = d.keys().map(String::as_str).collect();
            k.sort_unstable();
            k
        }
        let sorted = |extra: &[&'static str]| {
            let mut k: Vec<&str> = common.iter().chain(extra).copied().collect();
            k.sort_unstable();
            k
        };
        let domain = opensearch_document(false);
        assert_eq!(
            keys(&domain),
            sorted(&["esDocumentId", "esIndexName", "esTypeName"])
        );
        assert_eq!(domain["esIndexName"], "logs-2024-01-01");
        let collection = opensearch_document(true);
        assert_eq!(keys(&collection), sorted(&["osDocumentId", "osIndexName"]));
        assert_eq!(collection["osDocumentId"], "id-1");
        assert_eq!(collection["attemptsMade"], 2);
    }
}
