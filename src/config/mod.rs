//! The configuration file: one YAML document, validated at load.
//!
//! `${VAR}` and `${VAR:-default}` are replaced from the environment before parsing (`$$` is a literal
//! `$`); lines are preserved, so errors still point at the right line. Unknown fields are rejected and
//! every number is range-checked while parsing, so an error names the file, line, column and field.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::compression::Compression;
use crate::prefix::PrefixTemplate;

mod endpoint;
mod format_conversion;
mod processing;
pub use endpoint::{
    ContentEncoding, DocumentBackupMode, DocumentIdFormat, EndpointBuffering, EndpointRetry,
    HttpBackupMode, HttpEndpointDestination, IndexRotation, OpenSearchAuth, OpenSearchDestination,
    SigningService,
};
pub use format_conversion::{
    DeserializerConfig, FormatConversionConfig, OrcConfig, OutputKind, ParquetConfig, SchemaConfig,
};
pub use processing::{
    check_processors, CloudWatchLogsConfig, CompiledQuery, DeaggregateConfig, DecompressFormat,
    DynamicPartitioningConfig, MetadataExtractionConfig, Processor, SubRecordType, WasmConfig,
};

/// A configuration error, already formatted as `file:line:column: field: problem`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The whole daemon configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the log and checkpoints live.
    pub data_dir: PathBuf,
    /// Address of the Direct PUT endpoint.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long a SIGTERM/SIGINT drain may take before the daemon exits anyway (what is undelivered
    /// stays in the log and is delivered after restart).
    #[serde(default = "default_grace", deserialize_with = "in_range::<_, 1, 3600>")]
    pub shutdown_grace_s: u64,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(deserialize_with = "unique_streams")]
    pub delivery_streams: Vec<DeliveryStreamConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4573))
}
fn default_grace() -> u64 {
    30
}

/// Tunables of the internal shard log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A segment file is sealed at this size (MiB).
    #[serde(
        default = "default_segment_mib",
        deserialize_with = "in_range::<_, 1, 1024>"
    )]
    pub segment_mib: u64,
    /// Sealed segments older than this are deleted once every delivery stream has delivered them.
    #[serde(
        default = "default_retention_h",
        deserialize_with = "in_range::<_, 1, 8760>"
    )]
    pub retention_hours: u64,
    /// Bytes per shard that may wait for the disk before appends get ServiceUnavailableException.
    #[serde(
        default = "default_pending_mib",
        deserialize_with = "in_range::<_, 1, 1024>"
    )]
    pub max_pending_mib: u64,
    /// Disk each stream's log may use (MiB). Past it puts get ServiceUnavailableException and
    /// delivered segments are deleted before their retention age.
    #[serde(
        default = "default_disk_mib",
        deserialize_with = "in_range::<_, 1, 16777216>"
    )]
    pub max_disk_mib: u64,
}

fn default_disk_mib() -> u64 {
    10 * 1024
}

fn default_segment_mib() -> u64 {
    64
}
fn default_retention_h() -> u64 {
    24
}
fn default_pending_mib() -> u64 {
    64
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_mib: default_segment_mib(),
            retention_hours: default_retention_h(),
            max_pending_mib: default_pending_mib(),
            max_disk_mib: default_disk_mib(),
        }
    }
}

impl LogConfig {
    pub fn options(&self) -> crate::log::LogOptions {
        crate::log::LogOptions {
            segment_bytes: self.segment_mib << 20,
            retention: Duration::from_secs(self.retention_hours * 3600),
            max_pending_bytes: (self.max_pending_mib << 20) as usize,
            max_disk_bytes: self.max_disk_mib << 20,
        }
    }
}

/// Tunables of the Direct PUT endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Request bytes the endpoint holds at once (bodies being read, parsed and made durable); past
    /// it, requests get ServiceUnavailableException (503) instead of growing memory.
    #[serde(
        default = "default_inflight_mib",
        deserialize_with = "in_range::<_, 16, 65536>"
    )]
    pub max_inflight_mib: u64,
}

fn default_inflight_mib() -> u64 {
    256
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_inflight_mib: default_inflight_mib(),
        }
    }
}

/// A Firehose delivery stream name: `[a-zA-Z0-9_.-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamName(String);

impl StreamName {
    /// Checks Firehose's naming rule; the error says what is wrong.
    pub fn parse(s: &str) -> Result<StreamName, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "delivery stream name must be 1 to 64 characters, got {}",
                s.len()
            ));
        }
        if s == "." || s == ".." {
            return Err(format!(
                "delivery stream name {s:?} is reserved (it names directories)"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "delivery stream name {s:?} has {c:?}; only [a-zA-Z0-9_.-] are allowed"
            ));
        }
        Ok(StreamName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StreamName::parse(&s).map_err(de::Error::custom)
    }
}

/// One delivery stream: where records come from, how they are processed, where they go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryStreamConfig {
    pub name: StreamName,
    pub source: Source,
    /// Processors, applied in order to every record.
    #[serde(default)]
    pub processing: Vec<Processor>,
    pub destination: Destination,
}

impl DeliveryStreamConfig {
    /// The `metadata_extraction` query, if configured.
    pub fn metadata_query(&self) -> Option<&CompiledQuery> {
        self.processing.iter().find_map(|p| match p {
            Processor::MetadataExtraction(m) => Some(&m.query),
            _ => None,
        })
    }

    /// A fingerprint of what decides which records go to which object: processors, prefix,
    /// partitioning and the size hint. A replay under another fingerprint cannot trust the objects
    /// a checkpoint recorded (see `crate::pipeline`).
    pub fn routing_fingerprint(&self) -> String {
        let s3 = self.destination.s3();
        let kind = match self.destination.kind() {
            "s3" => String::new(), // as before request-based destinations existed
            other => format!("\0{other}"),
        };
        crate::fs::md5_hex(
            format!(
                "{:?}\0{}\0{:?}\0{:?}{kind}",
                self.processing,
                s3.prefix.as_configured(),
                s3.partitioning(),
                self.destination.hints().size_mib
            )
            .as_bytes(),
        )
    }

    /// Whether the `append_delimiter` processor is on.
    pub fn appends_delimiter(&self) -> bool {
        self.processing
            .iter()
            .any(|p| matches!(p, Processor::AppendDelimiter(true)))
    }
}

/// Where a delivery stream's records come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Source {
    /// Producers call PutRecord/PutRecordBatch; records land in a log stream of the same name.
    DirectPut(DirectPutSource),
}

/// Direct PUT source options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectPutSource {
    /// Shards of the backing log stream: the unit of parallelism of ingest and delivery.
    #[serde(default = "one", deserialize_with = "in_range::<_, 1, 1024>")]
    pub shards: u64,
}

fn one() -> u64 {
    1
}

/// Where records are delivered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Destination {
    S3(S3Destination),
    /// Firehose's HTTP endpoint delivery protocol.
    HttpEndpoint(HttpEndpointDestination),
    /// OpenSearch's (or Elasticsearch's) `_bulk` API.
    #[serde(rename = "opensearch")]
    OpenSearch(OpenSearchDestination),
}

impl Destination {
    /// The S3 section: the destination itself, or the bucket of a request-based destination's
    /// error documents and backups.
    pub fn s3(&self) -> &S3Destination {
        match self {
            Destination::S3(s3) => s3,
            Destination::HttpEndpoint(h) => &h.s3,
            Destination::OpenSearch(o) => &o.s3,
        }
    }

    fn s3_mut(&mut self) -> &mut S3Destination {
        match self {
            Destination::S3(s3) => s3,
            Destination::HttpEndpoint(h) => &mut h.s3,
            Destination::OpenSearch(o) => &mut o.s3,
        }
    }

    /// The S3 section's field path, for errors.
    pub fn s3_path(&self) -> &'static str {
        match self {
            Destination::S3(_) => "destination.s3",
            Destination::HttpEndpoint(_) => "destination.http_endpoint.s3",
            Destination::OpenSearch(_) => "destination.opensearch.s3",
        }
    }

    /// The buffering of the records delivered to the destination.
    pub fn hints(&self) -> BufferingHints {
        match self {
            Destination::S3(s3) => s3.hints(),
            Destination::HttpEndpoint(h) => h.buffering.hints(),
            Destination::OpenSearch(o) => o.buffering.hints(),
        }
    }

    /// Whether every record is also written to the S3 section's bucket (`AllData`,
    /// `AllDocuments`), not only the failed ones.
    pub fn backs_up_all(&self) -> bool {
        match self {
            Destination::S3(_) => false,
            Destination::HttpEndpoint(h) => h.s3_backup_mode == HttpBackupMode::AllData,
            Destination::OpenSearch(o) => o.s3_backup_mode == DocumentBackupMode::AllDocuments,
        }
    }

    /// The destination's kind, as in configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::S3(_) => "s3",
            Destination::HttpEndpoint(_) => "http_endpoint",
            Destination::OpenSearch(_) => "opensearch",
        }
    }
}

/// The S3 destination, Firehose's `ExtendedS3DestinationConfiguration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Destination {
    /// Where objects go: `s3://<bucket>` (any S3-compatible store) or `file://<directory>` (the
    /// embedded local-filesystem lake).
    pub url: LakeUrl,
    /// Key prefix; `!{timestamp:yyyy/MM/dd/HH/}` is appended when it has no timestamp expression.
    #[serde(default)]
    pub prefix: PrefixTemplate,
    /// Size and interval hints; the size defaults to 5 MiB, or 128 MiB with format conversion.
    #[serde(default)]
    pub buffering: BufferingConfig,
    /// Compression of whole objects; must be `none` with format conversion, whose writers compress.
    #[serde(default)]
    pub compression: Compression,
    /// gzip and zip 1–9 (default 6), zstd 1–19 (default 3): lower is faster, higher is smaller.
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// S3 endpoint URL; default: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region; default: the AWS configuration chain (`AWS_REGION`, profile), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Multipart part size: objects larger than this are uploaded in parts as they fill.
    #[serde(
        default = "default_part_mib",
        deserialize_with = "in_range::<_, 5, 512>"
    )]
    pub part_mib: u64,
    /// Longest wait for a response to start, or between two reads of it.
    #[serde(
        default = "default_request_timeout_s",
        deserialize_with = "in_range::<_, 1, 3600>"
    )]
    pub request_timeout_s: u64,
    /// How a replay avoids writing an object twice.
    #[serde(default)]
    pub conditional_create: ConditionalCreate,
    #[serde(default)]
    pub retry: RetryOptions,
    /// Where records the store permanently rejects go, as Firehose error documents:
    /// `!{firehose:error-output-type}` and `!{timestamp:...}` expressions. Default:
    /// `<prefix><error-output-type>/yyyy/MM/dd/HH/`; required when `prefix` has expressions.
    #[serde(default, deserialize_with = "error_prefix")]
    pub error_output_prefix: Option<PrefixTemplate>,
    /// JSON records to Parquet or ORC with a schema (Firehose's record format conversion).
    #[serde(default)]
    pub format_conversion: Option<FormatConversionConfig>,
    /// One buffer per evaluated prefix (`!{partitionKeyFromQuery:k}` expressions).
    #[serde(default)]
    pub dynamic_partitioning: Option<DynamicPartitioningConfig>,
    /// Time zone of `!{timestamp:...}` in prefixes (IANA name, e.g. `Europe/Berlin`); default UTC.
    #[serde(default)]
    pub custom_time_zone: Option<crate::time::TimeZone>,
    /// Replaces the default object extension (`.gz`, `.parquet`, ...); Firehose's `FileExtension`:
    /// empty, or `.` followed by `0-9 a-z ! - _ . * ' ( )`, at most 128 characters.
    #[serde(default, deserialize_with = "file_extension")]
    pub file_extension: Option<String>,
}

fn file_extension<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a file extension such as .json")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            if s.len() > 128 {
                return Err(E::custom("file_extension is longer than 128 characters"));
            }
            let valid = s.is_empty()
                || (s.starts_with('.')
                    && s.len() > 1
                    && s.bytes().all(|b| {
                        b.is_ascii_digit() || b.is_ascii_lowercase() || b"!-_.*'()".contains(&b)
                    }));
            if !valid {
                return Err(E::custom(format!(
                    "file_extension {s:?} must be empty or '.' followed by 0-9 a-z ! - _ . * ' ( )"
                )));
            }
            Ok(Some(s.to_string()))
        }
    }
    d.deserialize_str(Visitor)
}

fn error_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PrefixTemplate>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Option<PrefixTemplate>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an error output prefix")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            PrefixTemplate::parse_error_prefix(v)
                .map(Some)
                .map_err(E::custom)
        }
    }
    d.deserialize_str(Visitor)
}

impl S3Destination {
    /// The error output prefix in force (configured, or Firehose's default).
    /// The format conversion in effect (configured and enabled).
    pub fn conversion(&self) -> Option<&FormatConversionConfig> {
        self.format_conversion.as_ref().filter(|f| f.enabled)
    }

    /// The buffering hints in effect.
    pub fn hints(&self) -> BufferingHints {
        let size_mib = self
            .buffering
            .size_mib
            .unwrap_or(if self.conversion().is_some() {
                CONVERSION_SIZE_MIB.1
            } else {
                default_size_mib()
            });
        BufferingHints {
            size_mib,
            interval_s: self.buffering.interval_s,
        }
    }

    /// The objects' extension: `file_extension`, else the format's or the compression's.
    pub fn extension(&self) -> String {
        match (&self.file_extension, self.conversion()) {
            (Some(e), _) => e.clone(),
            (None, Some(fc)) => format!(".{}", fc.output),
            (None, None) => self.compression.extension().to_string(),
        }
    }

    /// Dynamic partitioning, when configured and enabled.
    pub fn partitioning(&self) -> Option<&DynamicPartitioningConfig> {
        self.dynamic_partitioning.as_ref().filter(|d| d.enabled)
    }

    pub fn error_prefix(&self) -> Option<PrefixTemplate> {
        self.error_output_prefix
            .clone()
            .or_else(|| self.prefix.default_error_prefix())
    }
}

fn default_part_mib() -> u64 {
    8
}
fn default_request_timeout_s() -> u64 {
    60
}

impl S3Destination {
    /// The S3 location, when the destination is a bucket.
    pub fn s3_location(&self) -> Option<S3Location> {
        match &self.url {
            LakeUrl::S3Bucket(bucket) => Some(S3Location {
                bucket: bucket.clone(),
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                force_path_style: self.force_path_style,
                part_mib: self.part_mib,
                request_timeout_s: self.request_timeout_s,
                conditional_create: self.conditional_create,
                retry_duration_s: self.retry.duration_s,
            }),
            LakeUrl::LocalDirectory(_) => None,
        }
    }
}

/// Everything the S3 client needs.
#[derive(Debug, Clone)]
pub struct S3Location {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub part_mib: u64,
    pub request_timeout_s: u64,
    pub conditional_create: ConditionalCreate,
    pub retry_duration_s: u64,
}

/// How an object write avoids replacing an object that an earlier attempt already wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionalCreate {
    /// `If-None-Match: *`, falling back to HEAD checks if the store answers 501 Not Implemented.
    #[default]
    Auto,
    /// Always `If-None-Match: *` (AWS S3, MinIO, R2 and most stores support it).
    IfNoneMatch,
    /// A HEAD request before each write, for stores without conditional writes.
    Head,
}

/// Firehose `RetryOptions`: how long one request to the destination is retried with backoff before
/// the attempt is given up and replayed from the log (records are never dropped for a store outage).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryOptions {
    #[serde(
        default = "default_retry_s",
        deserialize_with = "in_range::<_, 0, 604800>"
    )]
    pub duration_s: u64,
}

fn default_retry_s() -> u64 {
    86_400
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            duration_s: default_retry_s(),
        }
    }
}

/// Where the objects of an S3 destination are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeUrl {
    /// A directory on the local filesystem; object keys become relative paths inside it.
    LocalDirectory(PathBuf),
    /// A bucket of an S3-compatible store.
    S3Bucket(String),
}

impl LakeUrl {
    /// Parses `s3://<bucket>` or `file://<directory>`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<LakeUrl, String> {
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// URL needs a directory, e.g. file://./lake".into());
            }
            return Ok(LakeUrl::LocalDirectory(PathBuf::from(path)));
        }
        if let Some(bucket) = s.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !valid {
                return Err(format!(
                    "{s:?} is not a valid bucket URL: s3://<bucket> with 3-63 characters a-z 0-9 . -"
                ));
            }
            return Ok(LakeUrl::S3Bucket(bucket.to_string()));
        }
        Err(format!(
            "unsupported store URL {s:?}: use s3://<bucket> or file://<directory>"
        ))
    }
}

impl<'de> Deserialize<'de> for LakeUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Validated inside the visitor so that the error carries the field's own path.
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = LakeUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a store URL, s3://<bucket> or file://<directory>")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LakeUrl, E> {
                LakeUrl::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Firehose `BufferingHints`: a buffer is flushed when it holds `size_mib` (before compression) or
/// its oldest record has waited `interval_s`, whichever comes first. `interval_s: 0` flushes as soon
/// as records are read.
/// Buffering hints as configured (Firehose's `BufferingHints`); see [`S3Destination::hints`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BufferingConfig {
    #[serde(default, deserialize_with = "some_in_range::<_, 1, 128>")]
    pub size_mib: Option<u64>,
    #[serde(
        default = "default_interval_s",
        deserialize_with = "in_range::<_, 0, 900>"
    )]
    pub interval_s: u64,
}

impl Default for BufferingConfig {
    fn default() -> Self {
        BufferingConfig {
            size_mib: None,
            interval_s: default_interval_s(),
        }
    }
}

/// Firehose's buffer size with format conversion: at least 64 MiB, 128 by default, so that columnar
/// files are large enough to be worth their footers.
const CONVERSION_SIZE_MIB: (u64, u64) = (64, 128);

/// When an object is delivered: once `size_mib` of records (before compression) or `interval_s`
/// since its first record, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferingHints {
    pub size_mib: u64,
    pub interval_s: u64,
}

fn default_size_mib() -> u64 {
    5
}
fn default_interval_s() -> u64 {
    300
}

impl Default for BufferingHints {
    fn default() -> Self {
        BufferingHints {
            size_mib: default_size_mib(),
            interval_s: default_interval_s(),
        }
    }
}

impl BufferingHints {
    pub fn size_bytes(&self) -> u64 {
        self.size_mib << 20
    }
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_s)
    }
}

/// Deserializes an integer and checks it lies in `MIN..=MAX`. The check runs inside the visitor, so
/// the parser reports the error at the value with its full field path.
fn in_range<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<u64, D::Error> {
    struct Range<const MIN: u64, const MAX: u64>;
    impl<const MIN: u64, const MAX: u64> de::Visitor<'_> for Range<MIN, MAX> {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an integer between {MIN} and {MAX}")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            if (MIN..=MAX).contains(&v) {
                Ok(v)
            } else {
                Err(E::custom(format!(
                    "must be between {MIN} and {MAX}, got {v}"
                )))
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!(
                    "must be between {MIN} and {MAX}, got {v}"
                ))),
            }
        }
    }
    d.deserialize_u64(Range::<MIN, MAX>)
}

fn some_in_range<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    in_range::<D, MIN, MAX>(d).map(Some)
}

fn unique_streams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DeliveryStreamConfig>, D::Error> {
    let streams = Vec::<DeliveryStreamConfig>::deserialize(d)?;
    if streams.is_empty() {
        return Err(de::Error::custom(
            "at least one delivery stream is required",
        ));
    }
    let mut seen = HashSet::new();
    for s in &streams {
        if !seen.insert(s.name.as_str()) {
            return Err(de::Error::custom(format!(
                "delivery stream name {:?} is used twice",
                s.name.as_str()
            )));
        }
    }
    Ok(streams)
}

impl Config {
    /// Reads, interpolates and validates the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::parse_relative_to(&raw, &path.display().to_string(), base)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(raw: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_relative_to(raw, origin, Path::new(""))
    }

    /// Parses configuration text whose relative file references (schema files) are relative to
    /// `base`, the configuration file's directory.
    pub fn parse_relative_to(raw: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let text = interpolate(raw)
            .map_err(|(line, msg)| ConfigError(format!("{origin}:{line}: {msg}")))?;
        let mut config: Config = parse_yaml(&text, origin)?;
        config.check_across_fields(&text, origin)?;
        for (i, ds) in config.delivery_streams.iter_mut().enumerate() {
            for (j, p) in ds.processing.iter_mut().enumerate() {
                if let Processor::Wasm(w) = p {
                    w.load_module(base).map_err(|msg| {
                        ConfigError(format!(
                            "{origin}: delivery_streams[{i}].processing[{j}].wasm.module: {msg}"
                        ))
                    })?;
                }
            }
            let ca_file = match &mut ds.destination {
                Destination::S3(_) => None,
                Destination::HttpEndpoint(h) => h.ca_file.as_mut(),
                Destination::OpenSearch(o) => o.ca_file.as_mut(),
            };
            if let Some(path) = ca_file {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
            let s3 = ds.destination.s3_mut();
            if let Some(fc) = &mut s3.format_conversion {
                fc.load_schema_file(base)?;
            }
        }
        Ok(config)
    }

    /// Rules that tie fields together; errors point at the line of the field concerned.
    fn check_across_fields(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        for (i, ds) in self.delivery_streams.iter().enumerate() {
            let s3 = ds.destination.s3();
            let path = ds.destination.s3_path();
            if let Err(msg) = s3.compression.level(s3.compression_level) {
                let line = line_of_field(text, ds.name.as_str(), "compression_level:");
                return Err(ConfigError(format!(
                    "{origin}:{line}: delivery_streams[{i}].{path}.compression_level: {msg}"
                )));
            }
            if let Some(fc) = &s3.format_conversion {
                let at = |field: &str, msg: String| {
                    let line = line_of_field(text, ds.name.as_str(), &format!("{field}:"));
                    ConfigError(format!(
                        "{origin}:{line}: delivery_streams[{i}].{path}.{field}: {msg}"
                    ))
                };
                if let Err((field, msg)) = fc.check() {
                    let line = line_of_field(text, ds.name.as_str(), &format!("{field}:"));
                    return Err(ConfigError(format!(
                        "{origin}:{line}: delivery_streams[{i}].{path}.format_conversion.{field}: {msg}"
                    )));
                }
                if fc.enabled && s3.compression != Compression::None {
                    return Err(at("compression", format!(
                        "must be none with format_conversion (the {} writer compresses; set format_conversion.{}.compression)",
                        fc.output, fc.output
                    )));
                }
                let (min, _) = CONVERSION_SIZE_MIB;
                if fc.enabled && s3.buffering.size_mib.is_some_and(|s| s < min) {
                    return Err(at(
                        "buffering",
                        format!(
                        "size_mib must be at least {min} with format_conversion (as in Firehose)"
                    ),
                    ));
                }
            }
            let at = |field: &str, msg: String| {
                let last = field.rsplit('.').next().unwrap_or(field);
                let line = line_of_field(text, ds.name.as_str(), &format!("{last}:"));
                ConfigError(format!(
                    "{origin}:{line}: delivery_streams[{i}].{field}: {msg}"
                ))
            };
            if let Err((j, msg)) = check_processors(&ds.processing) {
                return Err(at("processing", format!("[{j}]: {msg}")));
            }
            if !matches!(ds.destination, Destination::S3(_)) {
                // The S3 section of a request-based destination only holds error documents and
                // backups: what only makes sense for a data lake is refused, not ignored.
                if s3.format_conversion.is_some() {
                    return Err(at(&format!("{path}.format_conversion"), format!(
                        "record format conversion is only available with the s3 destination, not {}",
                        ds.destination.kind()
                    )));
                }
                if s3.dynamic_partitioning.is_some() {
                    return Err(at(
                        &format!("{path}.dynamic_partitioning"),
                        format!(
                        "dynamic partitioning is only available with the s3 destination, not {}",
                        ds.destination.kind()
                    ),
                    ));
                }
            }
            let query_keys: Vec<&str> = s3
                .prefix
                .partition_keys()
                .filter(|(s, _)| *s == crate::prefix::KeySource::Query)
                .map(|(_, k)| k)
                .collect();
            let uses_keys = s3.prefix.partition_keys().next().is_some();
            match s3.partitioning() {
                Some(_) if !uses_keys => {
                    return Err(at(
                        &format!("{path}.prefix"),
                        "dynamic partitioning needs a prefix with !{partitionKeyFromQuery:key} (or !{partitionKeyFromLambda:key}) expressions".into(),
                    ))
                }
                None if uses_keys => {
                    return Err(at(
                        &format!("{path}.prefix"),
                        "!{partitionKeyFrom...} expressions need dynamic_partitioning: { enabled: true }".into(),
                    ))
                }
                Some(_) if s3.buffering.interval_s == 0 => {
                    return Err(at(
                        &format!("{path}.buffering"),
                        "interval_s 0 (zero buffering) is not available with dynamic partitioning, as in Firehose".into(),
                    ))
                }
                _ => {}
            }
            if !query_keys.is_empty() && ds.metadata_query().is_none() {
                return Err(at(
                    &format!("{path}.prefix"),
                    format!(
                        "!{{partitionKeyFromQuery:{}}} needs a metadata_extraction processor whose query yields that key",
                        query_keys[0]
                    ),
                ));
            }
            let has_plugin = ds
                .processing
                .iter()
                .any(|p| matches!(p, Processor::Wasm(_)));
            if let Some((_, k)) = s3
                .prefix
                .partition_keys()
                .find(|(s, _)| *s == crate::prefix::KeySource::Lambda && !has_plugin)
            {
                return Err(at(
                    &format!("{path}.prefix"),
                    format!("!{{partitionKeyFromLambda:{k}}} needs a transformation plugin that returns partition keys, and this delivery stream has none"),
                ));
            }
            if let Some(extension) = &s3.file_extension {
                if let Err(msg) = s3.prefix.check_extension(extension) {
                    return Err(at(&format!("{path}.file_extension"), msg));
                }
            }
            if s3.prefix.has_expressions() && s3.error_output_prefix.is_none() {
                let line = line_of_field(text, ds.name.as_str(), "prefix:");
                return Err(ConfigError(format!(
                    "{origin}:{line}: delivery_streams[{i}].{path}.error_output_prefix: required when prefix has !{{...}} expressions (e.g. 'errors/!{{firehose:error-output-type}}/!{{timestamp:yyyy/MM/dd}}/')"
                )));
            }
        }
        Ok(())
    }
}

/// Parses YAML text into `T`; errors read `origin:line:column: field.path: problem`.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let de = serde_norway::Deserializer::from_str(text);
    // Enums are written as single-key maps (`source: { direct_put: {...} }`), not YAML tags.
    serde_norway::with::singleton_map_recursive::deserialize(de).map_err(
        |e: serde_norway::Error| {
            let location = e
                .location()
                .map(|l| format!("{}:{}", l.line(), l.column()))
                .unwrap_or_else(|| "?".into());
            let mut msg = e.to_string();
            // The message ends with " at line L column C"; the location is already in front.
            if let Some(i) = msg.find(" at line ") {
                msg.truncate(i);
            }
            ConfigError(format!("{origin}:{location}: {msg}"))
        },
    )
}

/// The 1-based line of the first `field` after the line naming the stream `stream` (or of the
/// stream's name if no such field follows), for errors about rules across fields.
fn line_of_field(text: &str, stream: &str, field: &str) -> usize {
    let mut name_line = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        if name_line.is_none() {
            if let Some(v) = t.strip_prefix("name:") {
                if v.trim().trim_matches(|c| c == '\'' || c == '"') == stream {
                    name_line = Some(i + 1);
                }
            }
        } else if t.starts_with(field) {
            return i + 1;
        }
    }
    name_line.unwrap_or(1)
}

/// Replaces `${VAR}` / `${VAR:-default}` from the environment and `$$` with `$`.
/// Errors carry the 1-based line of the reference.
fn interpolate(raw: &str) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(raw.len());
    for (i, line) in raw.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| {
                    (
                        i + 1,
                        "unterminated ${ in environment reference".to_string(),
                    )
                })?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err((i + 1, format!("invalid environment variable name {name:?}")));
                }
                match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err((
                            i + 1,
                            format!("environment variable {name} is not set and has no default (use ${{{name}:-default}})"),
                        ))
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: { direct_put: {} }\n    destination:\n      s3: { url: 'file://./lake' }\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "t.yaml").unwrap();
        assert_eq!(c.listen, default_listen());
        let s3 = c.delivery_streams[0].destination.s3();
        assert_eq!(s3.hints(), BufferingHints::default());
        assert_eq!(s3.url, LakeUrl::LocalDirectory("./lake".into()));
    }

    #[test]
    fn range_errors_name_file_line_and_field() {
        let bad = MINIMAL.replace(
            "{ url: 'file://./lake' }",
            "{ url: 'file://./lake', buffering: { size_mib: 129 } }",
        );
        let err = Config::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:6:"), "{err}");
        assert!(
            err.contains("delivery_streams[0].destination.s3.buffering.size_mib"),
            "{err}"
        );
        assert!(err.contains("between 1 and 128, got 129"), "{err}");
    }

    #[test]
    fn buffering_edges() {
        for (field, ok, bad) in [
            ("size_mib", [1, 128], [0, 129]),
            ("interval_s", [0, 900], [-1, 901]),
        ] {
            for v in ok {
                let t = MINIMAL.replace(
                    "{ url: 'file://./lake' }",
                    &format!("{{ url: 'file://./lake', buffering: {{ {field}: {v} }} }}"),
                );
                Config::parse(&t, "t").unwrap_or_else(|e| panic!("{field}={v}: {e}"));
            }
            for v in bad {
                let t = MINIMAL.replace(
                    "{ url: 'file://./lake' }",
                    &format!("{{ url: 'file://./lake', buffering: {{ {field}: {v} }} }}"),
                );
                assert!(Config::parse(&t, "t").is_err(), "{field}={v} accepted");
            }
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let bad = MINIMAL.replace("data_dir", "data_dri");
        let err = Config::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(err.contains("unknown field `data_dri`"), "{err}");
        assert!(err.starts_with("t.yaml:1:"), "{err}");
    }

    #[test]
    fn stream_names_are_checked() {
        for bad in ["bad name", "", &"x".repeat(65), ".", ".."] {
            let t = MINIMAL.replace("name: s", &format!("name: '{bad}'"));
            assert!(Config::parse(&t, "t").is_err(), "{bad:?} accepted");
        }
        let t = MINIMAL.replace("name: s", &format!("name: '{}'", "a".repeat(64)));
        Config::parse(&t, "t").unwrap();
    }

    #[test]
    fn duplicate_stream_names_are_rejected() {
        let twice = format!("{MINIMAL}  - name: s\n    source: {{ direct_put: {{}} }}\n    destination: {{ s3: {{ url: 'file://x' }} }}\n");
        let err = Config::parse(&twice, "t").unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn interpolation_with_defaults_and_escapes() {
        std::env::set_var("SPILLWAY_TEST_SET", "v1");
        std::env::remove_var("SPILLWAY_TEST_UNSET");
        assert_eq!(interpolate("a ${SPILLWAY_TEST_SET} b").unwrap(), "a v1 b");
        assert_eq!(interpolate("${SPILLWAY_TEST_UNSET:-d/x}").unwrap(), "d/x");
        assert_eq!(interpolate("$$HOME $x").unwrap(), "$HOME $x");
        let (line, msg) = interpolate("ok\n${SPILLWAY_TEST_UNSET}").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("SPILLWAY_TEST_UNSET"));
        assert!(interpolate("${unterminated").is_err());
    }

    #[test]
    fn prefix_with_expressions_needs_an_error_prefix() {
        let t = MINIMAL.replace(
            "{ url: 'file://./lake' }",
            "\n        url: 'file://./lake'\n        prefix: 'y=!{timestamp:yyyy}/'",
        );
        let err = Config::parse(&t, "t").unwrap_err().to_string();
        assert!(err.starts_with("t:8:"), "{err}");
        assert!(err.contains("error_output_prefix: required"), "{err}");
        let ok = format!("{t}\n        error_output_prefix: 'e/!{{firehose:error-output-type}}/'");
        Config::parse(&ok, "t").unwrap();
        let bad = format!("{t}\n        error_output_prefix: 'e/!{{timestamp:yyyy}}/'");
        assert!(Config::parse(&bad, "t")
            .unwrap_err()
            .to_string()
            .contains("error-output-type"));
    }

    #[test]
    fn compression_levels_are_checked_per_format() {
        let with = |c: &str, l: &str| {
            MINIMAL.replace(
                "{ url: 'file://./lake' }",
                &format!("{{ url: 'file://./lake', compression: {c}, compression_level: {l} }}"),
            )
        };
        Config::parse(&with("gzip", "1"), "t").unwrap();
        Config::parse(&with("zstd", "19"), "t").unwrap();
        for (c, l) in [
            ("gzip", "10"),
            ("gzip", "0"),
            ("zstd", "20"),
            ("snappy", "1"),
            ("none", "3"),
        ] {
            let err = Config::parse(&with(c, l), "t").unwrap_err().to_string();
            assert!(err.contains("compression_level"), "{c} {l}: {err}");
        }
    }

    #[test]
    fn store_urls() {
        let t = MINIMAL.replace("file://./lake", "s3://my-bucket");
        let c = Config::parse(&t, "t").unwrap();
        let s3 = c.delivery_streams[0].destination.s3();
        assert_eq!(s3.url, LakeUrl::S3Bucket("my-bucket".into()));
        let loc = s3.s3_location().unwrap();
        assert_eq!((loc.part_mib, loc.retry_duration_s), (8, 86_400));
        for bad in ["http://x", "s3://", "s3://Upper", "s3://a", "file://"] {
            let t = MINIMAL.replace("file://./lake", bad);
            let err = Config::parse(&t, "t").unwrap_err().to_string();
            assert!(err.contains("url"), "{bad}: {err}");
        }
        let t = MINIMAL.replace(
            "{ url: 'file://./lake' }",
            "{ url: 's3://b-1', part_mib: 4 }",
        );
        assert!(Config::parse(&t, "t")
            .unwrap_err()
            .to_string()
            .contains("between 5 and 512"));
    }
}
