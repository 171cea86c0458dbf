//! Record processors and dynamic partitioning, as configured (Firehose's `ProcessingConfiguration`
//! and `DynamicPartitioningConfiguration`).
//!
//! Processors run in Firehose's order whatever order they are listed in is checked against:
//! `decompress` → `cloudwatch_logs` → `deaggregate` → `wasm` (any number, in the order listed) →
//! `metadata_extraction`; `append_delimiter` may
//! stand anywhere (it applies as records enter the object).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::partition::query::MetadataQuery;

/// A record processor (Firehose `ProcessingConfiguration.Processors`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Processor {
    /// Firehose `AppendDelimiterToRecord`: a newline after every record.
    AppendDelimiter(bool),
    /// Firehose `Decompression` (`CompressionFormat=GZIP`): records are gzip members, as CloudWatch
    /// Logs subscriptions send them. A record that does not decompress goes, still compressed, to
    /// the `decompression-failed` error output.
    Decompress(DecompressFormat),
    /// Firehose `CloudWatchLogProcessing`: reads CloudWatch Logs subscription envelopes (after
    /// `decompress`); control messages are dropped.
    CloudwatchLogs(CloudWatchLogsConfig),
    /// Firehose `RecordDeAggregation`: one record into several.
    Deaggregate(DeaggregateConfig),
    /// Firehose `Lambda`: a WebAssembly transformation plugin (see `crate::transform`). May be
    /// listed several times; plugins run in the order listed.
    Wasm(WasmConfig),
    /// Firehose `MetadataExtraction`: partition keys from a jq query.
    MetadataExtraction(MetadataExtractionConfig),
}

/// Options of a `wasm` processor.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The plugin module (`.wasm`, or `.wat` text), relative to the configuration file.
    pub module: PathBuf,
    /// The transform export to call (ABI: `(i32, i32) -> i64`); one module may hold several.
    #[serde(default = "default_function")]
    pub function: String,
    /// Text passed to the plugin's `spillway_init`.
    #[serde(default)]
    pub config: String,
    /// Most record bytes sent per call (Firehose's Lambda `BufferSizeInMBs`: 0.2 to 3).
    #[serde(default = "default_buffer_mib", deserialize_with = "buffer_mib")]
    pub buffer_mib: f64,
    /// Retries of a failed batch before its records go to `processing-failed` (Firehose: 3).
    #[serde(
        default = "default_retries",
        deserialize_with = "super::in_range::<_, 0, 300>"
    )]
    pub number_of_retries: u64,
    /// Deadline of every call into the plugin, in milliseconds (Lambda's limit: 5 minutes).
    #[serde(
        default = "default_timeout_ms",
        deserialize_with = "super::in_range::<_, 1, 300000>"
    )]
    pub timeout_ms: u64,
    /// Cap of the plugin instance's memory, in MiB.
    #[serde(
        default = "default_memory_mib",
        deserialize_with = "super::in_range::<_, 1, 4096>"
    )]
    pub memory_mib: u64,
    /// The module's bytes, read with the configuration.
    #[serde(skip)]
    pub bytes: Arc<Vec<u8>>,
    /// Hex SHA-256 of `bytes`.
    #[serde(skip)]
    pub digest: String,
}

impl fmt::Debug for WasmConfig {
    /// Everything that can decide what becomes of a record (batches, deadlines, memory and
    /// retries decide failures): part of the routing fingerprint. The bytes are in as their
    /// digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmConfig")
            .field("module", &self.module)
            .field("digest", &self.digest)
            .field("function", &self.function)
            .field("config", &self.config)
            .field("buffer_mib", &self.buffer_mib)
            .field("number_of_retries", &self.number_of_retries)
            .field("timeout_ms", &self.timeout_ms)
            .field("memory_mib", &self.memory_mib)
            .finish_non_exhaustive()
    }
}

impl WasmConfig {
    /// Reads the module file (relative to `base`, the configuration file's directory).
    pub(super) fn load_module(&mut self, base: &Path) -> Result<(), String> {
        let path = base.join(&self.module);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("{}: cannot read the plugin module: {e}", path.display()))?;
        self.digest = crate::transform::plugin::digest(&bytes);
        self.bytes = Arc::new(bytes);
        Ok(())
    }
}

fn default_function() -> String {
    "spillway_transform".into()
}

fn default_buffer_mib() -> f64 {
    1.0
}

fn default_retries() -> u64 {
    3
}

fn default_timeout_ms() -> u64 {
    60_000
}

fn default_memory_mib() -> u64 {
    256
}

/// `buffer_mib`: a number from 0.2 to 3. Checked inside the visitor, so that an error carries
/// the value's line and field.
fn buffer_mib<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Mib;
    impl de::Visitor<'_> for Mib {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of MiB between 0.2 and 3")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            if (0.2..=3.0).contains(&v) {
                Ok(v)
            } else {
                Err(E::custom(format!(
                    "must be between 0.2 and 3 (MiB), got {v}"
                )))
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
    }
    d.deserialize_f64(Mib)
}

/// The compression `decompress` undoes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecompressFormat {
    Gzip,
}

/// Options of the `cloudwatch_logs` processor.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchLogsConfig {
    /// Firehose `DataMessageExtraction`: emit each log event's `message` as its own record instead
    /// of the whole envelope.
    #[serde(default)]
    pub message_extraction: bool,
}

/// Options of the `deaggregate` processor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeaggregateConfig {
    /// How sub-records are laid out in a record.
    #[serde(rename = "type")]
    pub kind: SubRecordType,
    /// The separator of `delimited` records (Firehose takes it base64-encoded; here it is the text
    /// itself, e.g. `"####"` or `"\n"`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// A record with more sub-records than this is passed on whole (Firehose: 500).
    #[serde(
        default = "default_max_sub_records",
        deserialize_with = "super::in_range::<_, 1, 100000>"
    )]
    pub max_records: u64,
}

fn default_max_sub_records() -> u64 {
    500
}

/// Firehose `SubRecordType`, plus KPL aggregation.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubRecordType {
    /// Concatenated JSON objects or JSON lines.
    Json,
    /// Pieces between a configured delimiter.
    Delimited,
    /// Kinesis Producer Library aggregated records (magic, protobuf, MD5 trailer).
    Kpl,
}

/// Options of the `metadata_extraction` processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataExtractionConfig {
    /// A jq query producing an object of at most 50 keys, e.g.
    /// `{customer_id: .customer_id, year: (.ts | strftime("%Y"))}`; compiled at load.
    pub query: CompiledQuery,
}

/// A jq query, compiled while the configuration is parsed so that errors point at its line.
#[derive(Clone)]
pub struct CompiledQuery {
    pub source: String,
    pub query: Arc<MetadataQuery>,
}

impl fmt::Debug for CompiledQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompiledQuery({:?})", self.source)
    }
}

impl<'de> Deserialize<'de> for CompiledQuery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = CompiledQuery;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a jq query")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CompiledQuery, E> {
                let query = MetadataQuery::compile(v).map_err(E::custom)?;
                Ok(CompiledQuery {
                    source: v.to_string(),
                    query: Arc::new(query),
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Firehose `DynamicPartitioningConfiguration`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DynamicPartitioningConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most partitions buffered at once per shard; records of further partitions go to the
    /// `activePartitionExceeded` error output (Firehose: 500, up to 5,000 on request).
    #[serde(
        default = "default_max_active_partitions",
        deserialize_with = "super::in_range::<_, 1, 5000>"
    )]
    pub max_active_partitions: u64,
}

fn yes() -> bool {
    true
}

fn default_max_active_partitions() -> u64 {
    500
}

impl Processor {
    /// The processor as DescribeDeliveryStream shows it: Firehose's `{Type, Parameters}`.
    pub fn describe(&self) -> serde_json::Value {
        let param =
            |n: &str, v: String| serde_json::json!({"ParameterName": n, "ParameterValue": v});
        let (kind, params) = match self {
            Processor::AppendDelimiter(_) => ("AppendDelimiterToRecord", vec![]),
            Processor::Decompress(_) => (
                "Decompression",
                vec![param("CompressionFormat", "GZIP".into())],
            ),
            Processor::CloudwatchLogs(c) => (
                "CloudWatchLogProcessing",
                vec![param(
                    "DataMessageExtraction",
                    c.message_extraction.to_string(),
                )],
            ),
            Processor::Deaggregate(d) => {
                let mut params = vec![param(
                    "SubRecordType",
                    match d.kind {
                        SubRecordType::Json => "JSON",
                        SubRecordType::Delimited => "DELIMITED",
                        SubRecordType::Kpl => "KPL",
                    }
                    .into(),
                )];
                if let Some(delimiter) = &d.delimiter {
                    use base64_simd::STANDARD;
                    params.push(param("Delimiter", STANDARD.encode_to_string(delimiter)));
                }
                ("RecordDeAggregation", params)
            }
            Processor::Wasm(w) => (
                "Lambda",
                vec![
                    param(
                        "LambdaArn",
                        format!("wasm:{}#{}", w.module.display(), w.function),
                    ),
                    param("NumberOfRetries", w.number_of_retries.to_string()),
                    param("BufferSizeInMBs", w.buffer_mib.to_string()),
                ],
            ),
            Processor::MetadataExtraction(m) => (
                "MetadataExtraction",
                vec![
                    param("MetadataExtractionQuery", m.query.source.clone()),
                    param("JsonParsingEngine", "JQ-1.6".into()),
                ],
            ),
        };
        serde_json::json!({"Type": kind, "Parameters": params})
    }
}

/// Where a processor belongs in Firehose's order (lower runs first); `None`: anywhere.
fn rank(p: &Processor) -> Option<u8> {
    match p {
        Processor::AppendDelimiter(_) => None,
        Processor::Decompress(_) => Some(0),
        Processor::CloudwatchLogs(_) => Some(1),
        Processor::Deaggregate(_) => Some(2),
        Processor::Wasm(_) => Some(3),
        Processor::MetadataExtraction(_) => Some(4),
    }
}

fn name(p: &Processor) -> &'static str {
    match p {
        Processor::AppendDelimiter(_) => "append_delimiter",
        Processor::Decompress(_) => "decompress",
        Processor::CloudwatchLogs(_) => "cloudwatch_logs",
        Processor::Deaggregate(_) => "deaggregate",
        Processor::Wasm(_) => "wasm",
        Processor::MetadataExtraction(_) => "metadata_extraction",
    }
}

/// Checks the processor list: each processor at most once, in Firehose's order, `cloudwatch_logs`
/// only after `decompress`, a `delimited` deaggregation with a non-empty delimiter. The error names
/// the processor's index.
pub fn check_processors(list: &[Processor]) -> Result<(), (usize, String)> {
    let mut last: Option<(u8, &str)> = None;
    let mut seen = Vec::new();
    for (i, p) in list.iter().enumerate() {
        if seen.contains(&name(p)) && !matches!(p, Processor::Wasm(_)) {
            return Err((i, format!("{} is listed twice", name(p))));
        }
        seen.push(name(p));
        if let Some(r) = rank(p) {
            if let Some((prev, prev_name)) = last {
                if r < prev {
                    return Err((
                        i,
                        format!(
                            "{} must come before {prev_name} (Firehose's order: decompress, cloudwatch_logs, deaggregate, wasm, metadata_extraction)",
                            name(p)
                        ),
                    ));
                }
            }
            last = Some((r, name(p)));
        }
        match p {
            Processor::CloudwatchLogs(_) if !seen.contains(&"decompress") => {
                return Err((
                    i,
                    "cloudwatch_logs needs a decompress processor before it (CloudWatch Logs sends gzip records)".into(),
                ))
            }
            Processor::Deaggregate(d) => match (d.kind, &d.delimiter) {
                (SubRecordType::Delimited, None) => {
                    return Err((i, "deaggregate type delimited needs a delimiter".into()))
                }
                (SubRecordType::Delimited, Some(s)) if s.is_empty() => {
                    return Err((i, "deaggregate delimiter must not be empty".into()))
                }
                (SubRecordType::Json | SubRecordType::Kpl, Some(_)) => {
                    return Err((
                        i,
                        "deaggregate delimiter is only for type delimited".into(),
                    ))
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}
