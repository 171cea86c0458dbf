//! `destination.s3.format_conversion`: Firehose's `DataFormatConversionConfiguration` in YAML.
//!
//! Every value is checked while parsing (types, names, ranges, timestamp formats), so a bad schema is
//! reported at its line; a schema file is read and checked when the configuration loads, and its
//! errors name that file's line.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{in_range, ConfigError};
use crate::format::schema::{check_name, Column, ColumnType};
use crate::format::timestamp::HiveFormat;
use crate::format::{
    self, Conversion, FormatConversion, OrcCompression, OrcOptions, OutputFormat,
    ParquetCompression, ParquetOptions, SchemaPin, TableSchema,
};

/// Record format conversion on an S3 destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatConversionConfig {
    /// Firehose's `Enabled`: conversion can be switched off without deleting its settings.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `parquet` or `orc`.
    pub output: OutputKind,
    pub schema: SchemaConfig,
    /// How JSON records are read; default: the OpenX JSON SerDe with its defaults.
    #[serde(default)]
    pub deserializer: DeserializerConfig,
    /// Parquet writer options (only with `output: parquet`).
    #[serde(default)]
    pub parquet: Option<ParquetConfig>,
    /// ORC writer options (only with `output: orc`).
    #[serde(default)]
    pub orc: Option<OrcConfig>,
}

fn yes() -> bool {
    true
}

/// The columnar format written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Parquet,
    Orc,
}

/// The table schema: `columns` inline, a `file` holding `columns:` (YAML or JSON, Glue's
/// `Name`/`Type` spelling accepted), or `infer` it from the stream's first records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    #[serde(default)]
    pub columns: Option<Columns>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub infer: Option<InferConfig>,
}

/// Schema inference ([`format::infer`]): from how many of the stream's first records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferConfig {
    /// Records sampled before the schema is pinned (fewer if the first object ends sooner, or
    /// once 16 MiB are sampled).
    #[serde(
        default = "default_sample_records",
        deserialize_with = "in_range::<_, 1, 100000>"
    )]
    pub sample_records: u64,
}

fn default_sample_records() -> u64 {
    1000
}

/// A schema file's content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[serde(alias = "Columns")]
    columns: Columns,
}

/// Schema columns, checked for duplicate names and emptiness while parsing.
#[derive(Debug, Clone)]
pub struct Columns(pub TableSchema);

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let columns = Vec::<ColumnConfig>::deserialize(d)?;
        TableSchema::new(
            columns
                .into_iter()
                .map(|c| Column {
                    name: c.name,
                    ty: c.ty,
                })
                .collect(),
        )
        .map(Columns)
        .map_err(de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnConfig {
    #[serde(alias = "Name", deserialize_with = "column_name")]
    name: String,
    #[serde(rename = "type", alias = "Type", deserialize_with = "column_type")]
    ty: ColumnType,
    /// Glue's column comment, accepted and ignored.
    #[serde(default, alias = "Comment")]
    #[allow(dead_code)]
    comment: Option<String>,
}

fn column_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn column_type<'de, D: Deserializer<'de>>(d: D) -> Result<ColumnType, D::Error> {
    let text = String::deserialize(d)?;
    ColumnType::parse(&text).map_err(de::Error::custom)
}

/// The deserializer: Firehose's `OpenXJsonSerDe` or `HiveJsonSerDe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DeserializerConfig {
    Openx(OpenxConfig),
    Hive(HiveConfig),
}

impl Default for DeserializerConfig {
    fn default() -> Self {
        DeserializerConfig::Openx(OpenxConfig::default())
    }
}

/// OpenX JSON SerDe options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenxConfig {
    /// Match JSON keys to columns ignoring case (Firehose's default: on).
    #[serde(default = "yes")]
    pub case_insensitive: bool,
    /// Read a key `a.b` as column `a_b`.
    #[serde(default)]
    pub convert_dots_in_json_keys_to_underscores: bool,
    /// Column name → JSON key, for keys that are not valid column names (e.g. `ts: "@timestamp"`).
    #[serde(default)]
    pub column_to_json_key_mappings: HashMap<String, String>,
}

impl Default for OpenxConfig {
    fn default() -> Self {
        OpenxConfig {
            case_insensitive: true,
            convert_dots_in_json_keys_to_underscores: false,
            column_to_json_key_mappings: HashMap::new(),
        }
    }
}

/// Hive JSON SerDe options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiveConfig {
    /// Joda-style patterns (`yyyy-MM-dd'T'HH:mm:ss`) or `millis`, tried in order; default:
    /// `yyyy-MM-dd HH:mm:ss[.f…]` (`java.sql.Timestamp.valueOf`).
    #[serde(default, deserialize_with = "timestamp_formats")]
    pub timestamp_formats: Vec<HiveFormat>,
}

fn timestamp_formats<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HiveFormat>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|f| HiveFormat::parse(f).map_err(|e| de::Error::custom(format!("format {f:?}: {e}"))))
        .collect()
}

/// Parquet writer options (Firehose's `ParquetSerDe`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    #[serde(default = "default_parquet_compression")]
    pub compression: ParquetCodec,
    /// Row group size. Firehose: 256 MiB, at least 64; Spillway allows smaller row groups to bound
    /// memory on small machines (a row group is held in memory until it is full).
    #[serde(
        default = "default_block_mib",
        deserialize_with = "in_range::<_, 1, 1024>"
    )]
    pub block_mib: u64,
    /// Page size; Firehose: 1 MiB, at least 64 KiB.
    #[serde(
        default = "default_page_kib",
        deserialize_with = "in_range::<_, 64, 65536>"
    )]
    pub page_kib: u64,
    /// Dictionary encoding (Firehose's `EnableDictionaryCompression`).
    #[serde(default = "yes")]
    pub dictionary: bool,
    #[serde(default)]
    pub writer_version: WriterVersion,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            compression: default_parquet_compression(),
            block_mib: default_block_mib(),
            page_kib: default_page_kib(),
            dictionary: true,
            writer_version: WriterVersion::V1,
        }
    }
}

fn default_parquet_compression() -> ParquetCodec {
    ParquetCodec::Snappy
}
fn default_block_mib() -> u64 {
    256
}
fn default_page_kib() -> u64 {
    1024
}

/// Parquet compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCodec {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
}

/// Parquet writer version (data page format).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterVersion {
    #[default]
    V1,
    V2,
}

/// ORC writer options (Firehose's `OrcSerDe`, as far as the writer implements it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrcConfig {
    #[serde(default = "default_orc_compression")]
    pub compression: OrcCodec,
    /// Stripe size. Firehose: 64 MiB, at least 8; Spillway allows smaller stripes to bound memory.
    #[serde(
        default = "default_stripe_mib",
        deserialize_with = "in_range::<_, 1, 1024>"
    )]
    pub stripe_mib: u64,
    /// Not supported: the writer writes no row index. Rejected with that reason.
    #[serde(default, deserialize_with = "no_row_index")]
    #[allow(dead_code)]
    pub row_index_stride: Option<u64>,
    /// Not supported: the writer writes no bloom filters. A non-empty list is rejected.
    #[serde(default, deserialize_with = "no_bloom_filters")]
    #[allow(dead_code)]
    pub bloom_filter_columns: Vec<String>,
}

impl Default for OrcConfig {
    fn default() -> Self {
        OrcConfig {
            compression: default_orc_compression(),
            stripe_mib: default_stripe_mib(),
            row_index_stride: None,
            bloom_filter_columns: Vec::new(),
        }
    }
}

fn default_orc_compression() -> OrcCodec {
    OrcCodec::Snappy
}
fn default_stripe_mib() -> u64 {
    64
}

fn no_row_index<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d)?;
    Err(de::Error::custom(
        "the ORC writer (orc-rust 0.9) writes no row index, so a row index stride cannot be set; remove it",
    ))
}

fn no_bloom_filters<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let columns = Vec::<String>::deserialize(d)?;
    if columns.is_empty() {
        return Ok(columns);
    }
    Err(de::Error::custom(
        "the ORC writer (orc-rust 0.9) writes no bloom filters; remove bloom_filter_columns or use output: parquet",
    ))
}

/// ORC compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrcCodec {
    None,
    Zlib,
    Snappy,
    Zstd,
}

/// Each column must read its own JSON key: a mapping that names no column, or that makes two
/// columns read the same key, is an error (one of them would silently stay null).
fn check_mappings(o: &OpenxConfig, schema: &TableSchema) -> Result<(), String> {
    let fold = |k: &str| {
        let k = if o.case_insensitive {
            k.to_lowercase()
        } else {
            k.to_string()
        };
        if o.convert_dots_in_json_keys_to_underscores {
            k.replace('.', "_")
        } else {
            k
        }
    };
    for column in o.column_to_json_key_mappings.keys() {
        if !schema
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(column))
        {
            return Err(format!(
                "column_to_json_key_mappings names column {column:?}, which is not in the schema"
            ));
        }
    }
    let mut seen: HashMap<String, &str> = HashMap::new();
    for c in &schema.columns {
        let key = o
            .column_to_json_key_mappings
            .iter()
            .find(|(col, _)| col.eq_ignore_ascii_case(&c.name))
            .map_or(c.name.as_str(), |(_, key)| key.as_str());
        if let Some(other) = seen.insert(fold(key), &c.name) {
            return Err(format!(
                "columns {other:?} and {:?} would both read the JSON key {key:?}; map one of them to another key",
                c.name
            ));
        }
    }
    Ok(())
}

impl FormatConversionConfig {
    /// Reads the schema file, if the schema names one (a relative path is relative to `base`, the
    /// configuration file's directory, so a configuration and its schemas move together), so that
    /// [`FormatConversionConfig::settings`] has the columns; errors name that file's line.
    pub(super) fn load_schema_file(&mut self, base: &std::path::Path) -> Result<(), ConfigError> {
        let Some(file) = &self.schema.file else {
            return Ok(());
        };
        let path = &base.join(file);
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the schema file: {e}",
                path.display()
            ))
        })?;
        let origin = path.display().to_string();
        let file: SchemaFile = super::parse_yaml(&text, &origin)?;
        if self.output == OutputKind::Orc {
            format::orc::check_schema(&file.columns.0)
                .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        }
        self.schema.columns = Some(file.columns);
        Ok(())
    }

    /// Rules across the fields of this section; `Err` carries the field (relative to
    /// `format_conversion`) and the problem.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let given = [
            self.schema.columns.is_some(),
            self.schema.file.is_some(),
            self.schema.infer.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err((
                    "schema",
                    "needs `columns` (a list of {name, type}), `file` (a file holding them) or \
                     `infer` (from the stream's first records)"
                        .into(),
                ));
            }
            1 => {}
            _ => {
                return Err(("schema", "give one of `columns`, `file` and `infer`".into()));
            }
        }

        if let (DeserializerConfig::Openx(o), Some(columns)) =
            (&self.deserializer, &self.schema.columns)
        {
            check_mappings(o, &columns.0).map_err(|e| ("deserializer", e))?;
        }
        if let (DeserializerConfig::Hive(_), Some(_)) = (&self.deserializer, &self.schema.infer) {
            return Err((
                "schema.infer",
                "needs the OpenX JSON SerDe: the Hive SerDe takes no number, boolean or JSON text \
                 in a string column, which is what an inferred schema falls back to"
                    .into(),
            ));
        }
        // An inferred schema names the columns of mapped keys after the mappings.
        if let (DeserializerConfig::Openx(o), Some(_)) = (&self.deserializer, &self.schema.infer) {
            for column in o.column_to_json_key_mappings.keys() {
                check_name(column).map_err(|e| ("deserializer", e))?;
            }
        }
        match self.output {
            OutputKind::Parquet if self.orc.is_some() => {
                return Err(("orc", "ORC options given, but output is parquet".into()))
            }
            OutputKind::Orc if self.parquet.is_some() => {
                return Err(("parquet", "Parquet options given, but output is orc".into()))
            }
            OutputKind::Orc => {
                if let Some(columns) = &self.schema.columns {
                    format::orc::check_schema(&columns.0).map_err(|e| ("schema", e))?;
                }
            }
            OutputKind::Parquet => {}
        }
        Ok(())
    }

    /// The conversion the pipeline runs. Call after the configuration is loaded (schema files
    /// read). An inferred schema is pinned in `pinned_schema`, and read from it if it exists.
    pub fn conversion(&self, pinned_schema: &std::path::Path) -> Result<Conversion, String> {
        if let Some(infer) = &self.schema.infer {
            let (deserializer, output) = self.reading_and_writing();
            return SchemaPin::open(
                pinned_schema.to_path_buf(),
                deserializer,
                output,
                infer.sample_records as usize,
            )
            .map(|pin| Conversion::Inferred(std::sync::Arc::new(pin)))
            .map_err(|e| e.to_string());
        }
        self.settings().map(Conversion::Fixed)
    }

    /// The conversion with the configured schema.
    pub fn settings(&self) -> Result<FormatConversion, String> {
        let schema = match &self.schema.columns {
            Some(c) => c.0.clone(),
            None => return Err("the schema file was not loaded".into()),
        };
        let (deserializer, output) = self.reading_and_writing();
        Ok(FormatConversion {
            schema,
            deserializer,
            output,
        })
    }

    /// How records are read and files written, whatever the schema.
    fn reading_and_writing(&self) -> (format::Deserializer, OutputFormat) {
        let deserializer = match &self.deserializer {
            DeserializerConfig::Openx(o) => format::Deserializer::OpenX {
                case_insensitive: o.case_insensitive,
                convert_dots_to_underscores: o.convert_dots_in_json_keys_to_underscores,
                column_to_json_key: o
                    .column_to_json_key_mappings
                    .iter()
                    .map(|(column, key)| (column.to_ascii_lowercase(), key.clone()))
                    .collect(),
            },
            DeserializerConfig::Hive(h) => format::Deserializer::Hive {
                timestamp_formats: h.timestamp_formats.clone(),
            },
        };
        let output = match self.output {
            OutputKind::Parquet => {
                let default = ParquetConfig::default();
                let p = self.parquet.as_ref().unwrap_or(&default);
                OutputFormat::Parquet(ParquetOptions {
                    compression: match p.compression {
                        ParquetCodec::Uncompressed => ParquetCompression::Uncompressed,
                        ParquetCodec::Snappy => ParquetCompression::Snappy,
                        ParquetCodec::Gzip => ParquetCompression::Gzip,
                        ParquetCodec::Zstd => ParquetCompression::Zstd,
                    },
                    block_bytes: (p.block_mib << 20) as usize,
                    page_bytes: (p.page_kib << 10) as usize,
                    dictionary: p.dictionary,
                    writer_v2: p.writer_version == WriterVersion::V2,
                })
            }
            OutputKind::Orc => {
                let default = OrcConfig::default();
                let o = self.orc.as_ref().unwrap_or(&default);
                OutputFormat::Orc(OrcOptions {
                    compression: match o.compression {
                        OrcCodec::None => OrcCompression::None,
                        OrcCodec::Zlib => OrcCompression::Zlib,
                        OrcCodec::Snappy => OrcCompression::Snappy,
                        OrcCodec::Zstd => OrcCompression::Zstd,
                    },
                    stripe_bytes: (o.stripe_mib << 20) as usize,
                })
            }
        };
        (deserializer, output)
    }

    /// Firehose's `DataFormatConversionConfiguration`, for DescribeDeliveryStream.
    pub fn describe(&self) -> serde_json::Value {
        let columns: Vec<_> = self
            .schema
            .columns
            .iter()
            .flat_map(|c| c.0.columns.iter())
            .map(|c| serde_json::json!({"Name": c.name, "Type": c.ty.to_string()}))
            .collect();
        let serializer = match self.output {
            OutputKind::Parquet => serde_json::json!({"ParquetSerDe": {}}),
            OutputKind::Orc => serde_json::json!({"OrcSerDe": {}}),
        };
        let deserializer = match self.deserializer {
            DeserializerConfig::Openx(_) => serde_json::json!({"OpenXJsonSerDe": {}}),
            DeserializerConfig::Hive(_) => serde_json::json!({"HiveJsonSerDe": {}}),
        };
        serde_json::json!({
            "Enabled": self.enabled,
            "SchemaConfiguration": {"Columns": columns},
            "InputFormatConfiguration": {"Deserializer": deserializer},
            "OutputFormatConfiguration": {"Serializer": serializer},
        })
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputKind::Parquet => "parquet",
            OutputKind::Orc => "orc",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use crate::format::infer::Sampled;

    /// A stream with `fc` (YAML lines at the `format_conversion:` indentation) and `extra` S3 fields.
    fn config(fc: &str, extra: &str) -> String {
        let fc: String = fc.lines().map(|l| format!("          {l}\n")).collect();
        format!(
            "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: {{ direct_put: {{}} }}\n    destination:\n      s3:\n        url: 'file://./lake'\n{extra}        format_conversion:\n{fc}"
        )
    }

    const PARQUET: &str = "output: parquet\nschema:\n  columns:\n    - { name: id, type: bigint }\n    - { name: tags, type: 'array<string>' }\n";

    fn parse(text: &str) -> Result<FormatConversion, String> {
        let c = Config::parse(text, "t.yaml").map_err(|e| e.to_string())?;
        let s3 = c.delivery_streams[0].destination.s3();
        s3.conversion().expect("enabled").settings()
    }

    #[test]
    fn defaults_follow_firehose() {
        let c = Config::parse(&config(PARQUET, ""), "t").unwrap();
        let s3 = c.delivery_streams[0].destination.s3();
        assert_eq!(
            s3.hints().size_mib,
            128,
            "conversion buffers 128 MiB by default"
        );
        let fc = s3.conversion().unwrap().settings().unwrap();
        assert_eq!(fc.output, OutputFormat::Parquet(ParquetOptions::default()));
        assert!(matches!(
            fc.deserializer,
            format::Deserializer::OpenX {
                case_insensitive: true,
                convert_dots_to_underscores: false,
                ..
            }
        ));
        assert_eq!(fc.schema.columns.len(), 2);
    }

    #[test]
    fn every_option_is_read() {
        let fc = parse(&config(
            &format!("{PARQUET}parquet: {{ compression: zstd, block_mib: 1, page_kib: 64, dictionary: false, writer_version: v2 }}\ndeserializer:\n  openx: {{ case_insensitive: false, convert_dots_in_json_keys_to_underscores: true, column_to_json_key_mappings: {{ ID: '@id' }} }}\n"),
            "",
        ))
        .unwrap();
        assert_eq!(
            fc.output,
            OutputFormat::Parquet(ParquetOptions {
                compression: ParquetCompression::Zstd,
                block_bytes: 1 << 20,
                page_bytes: 64 << 10,
                dictionary: false,
                writer_v2: true,
            })
        );
        let format::Deserializer::OpenX {
            case_insensitive,
            convert_dots_to_underscores,
            column_to_json_key,
        } = fc.deserializer
        else {
            panic!("openx")
        };
        assert!(!case_insensitive && convert_dots_to_underscores);
        assert_eq!(column_to_json_key["id"], "@id");

        let orc = "output: orc\nschema: { columns: [ { name: ts, type: timestamp } ] }\norc: { compression: zlib, stripe_mib: 8 }\ndeserializer: { hive: { timestamp_formats: [ millis, \"yyyy-MM-dd'T'HH:mm:ss\" ] } }\n";
        let fc = parse(&config(orc, "")).unwrap();
        assert_eq!(
            fc.output,
            OutputFormat::Orc(OrcOptions {
                compression: OrcCompression::Zlib,
                stripe_bytes: 8 << 20
            })
        );
        assert!(
            matches!(&fc.deserializer, format::Deserializer::Hive { timestamp_formats } if timestamp_formats.len() == 2)
        );
    }

    #[test]
    fn bad_schemas_are_reported_at_their_line() {
        for (fc, line, want) in [
            (
                PARQUET.replace("bigint", "bigint<"),
                12,
                "columns[0]: invalid type",
            ),
            (
                PARQUET.replace("array<string>", "array<strin>"),
                13,
                "strin",
            ),
            (
                PARQUET.replace("name: tags", "name: 'ta gs'"),
                13,
                "columns[1]",
            ),
            (
                PARQUET.replace("name: tags", "name: ID"),
                11,
                "defined twice",
            ),
            (
                "output: parquet\nschema: { columns: [] }\n".to_string(),
                10,
                "at least one column",
            ),
            (
                "output: avro\nschema: { columns: [ { name: a, type: int } ] }\n".to_string(),
                9,
                "output",
            ),
        ] {
            let err = parse(&config(&fc, "")).unwrap_err();
            assert!(err.starts_with(&format!("t.yaml:{line}:")), "{fc}: {err}");
            assert!(err.contains(want), "{fc}: {err}");
        }
    }

    #[test]
    fn rules_across_fields() {
        for (fc, extra, want) in [
            (PARQUET.to_string(), "        compression: gzip\n", "compression: must be none"),
            (PARQUET.to_string(), "        buffering: { size_mib: 63 }\n", "at least 64"),
            ("output: parquet\nschema: {}\n".into(), "", "needs `columns`"),
            (format!("{PARQUET}orc: {{ compression: zlib }}\n"), "", "output is parquet"),
            ("output: orc\nschema: { columns: [ { name: p, type: 'decimal(5,2)' } ] }\n".into(), "", "cannot write"),
            ("output: orc\nschema: { columns: [ { name: a, type: int } ] }\norc: { row_index_stride: 10000 }\n".into(), "", "no row index"),
            ("output: orc\nschema: { columns: [ { name: a, type: int } ] }\norc: { bloom_filter_columns: [a] }\n".into(), "", "no bloom filters"),
            ("output: parquet\nschema: { columns: [ { name: a, type: int } ] }\ndeserializer: { hive: { timestamp_formats: [ \"yyyy-QQ\" ] } }\n".into(), "", "yyyy-QQ"),
            ("output: parquet\nschema: { columns: [ { name: a, type: int }, { name: b, type: int } ] }\ndeserializer: { openx: { column_to_json_key_mappings: { a: B } } }\n".into(), "", "both read the JSON key"),
            ("output: parquet\nschema: { columns: [ { name: a, type: int } ] }\ndeserializer: { openx: { column_to_json_key_mappings: { zz: x } } }\n".into(), "", "not in the schema"),
        ] {
            let err = parse(&config(&fc, extra)).unwrap_err();
            assert!(err.contains(want), "{fc} {extra}: {err}");
        }
        parse(&config(PARQUET, "        buffering: { size_mib: 64 }\n")).unwrap();
        let orc_ok = "output: orc\nschema: { columns: [ { name: a, type: int } ] }\norc: { bloom_filter_columns: [] }\n";
        parse(&config(orc_ok, "")).unwrap();
    }

    #[test]
    fn inference_is_configured_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = dir.path().join("s.json");
        let conversion = |fc: &str| -> Result<Conversion, String> {
            let c = Config::parse(&config(fc, ""), "t.yaml").map_err(|e| e.to_string())?;
            let s3 = c.delivery_streams[0].destination.s3();
            s3.conversion().expect("enabled").conversion(&pinned)
        };
        let Ok(Conversion::Inferred(pin)) = conversion("output: parquet\nschema: { infer: {} }\n")
        else {
            panic!("an inferred conversion")
        };
        assert!(pin.conversion().is_none());
        for _ in 1..1000 {
            assert!(matches!(pin.sample(br#"{"a":1}"#), Ok(Sampled::More)));
        }
        assert!(
            matches!(pin.sample(br#"{"a":1}"#), Ok(Sampled::Pinned(_))),
            "1,000 records by default"
        );
        std::fs::remove_file(&pinned).unwrap();
        for ok in [1, 100_000] {
            let fc = format!("output: orc\nschema: {{ infer: {{ sample_records: {ok} }} }}\n");
            assert!(matches!(conversion(&fc), Ok(Conversion::Inferred(_))));
        }
        for bad in [0, 100_001] {
            let fc = format!("output: parquet\nschema: {{ infer: {{ sample_records: {bad} }} }}\n");
            let err = conversion(&fc).unwrap_err();
            assert!(err.contains("schema.infer.sample_records"), "{err}");
        }
        for (fc, want) in [
            (
                "output: parquet\nschema: { infer: {}, columns: [ { name: a, type: int } ] }\n",
                "give one of",
            ),
            (
                "output: parquet\nschema: { infer: {} }\ndeserializer: { openx: { column_to_json_key_mappings: { 'a b': x } } }\n",
                "column name \"a b\"",
            ),
            (
                "output: parquet\nschema: { infer: {} }\ndeserializer: { hive: {} }\n",
                "schema.infer: needs the OpenX JSON SerDe",
            ),
        ] {
            let err = conversion(fc).err().unwrap();
            assert!(err.contains(want), "{fc}: {err}");
        }
    }

    #[test]
    fn writer_option_edges() {
        for (field, ok, bad) in [
            ("block_mib", [1, 1024], [0, 1025]),
            ("page_kib", [64, 65536], [63, 65537]),
        ] {
            for v in ok {
                parse(&config(
                    &format!("{PARQUET}parquet: {{ {field}: {v} }}\n"),
                    "",
                ))
                .unwrap();
            }
            for v in bad {
                let err = parse(&config(
                    &format!("{PARQUET}parquet: {{ {field}: {v} }}\n"),
                    "",
                ))
                .unwrap_err();
                assert!(err.contains(&format!("parquet.{field}")), "{err}");
            }
        }
        let orc = "output: orc\nschema: { columns: [ { name: a, type: int } ] }\n";
        for v in [1, 1024] {
            parse(&config(&format!("{orc}orc: {{ stripe_mib: {v} }}\n"), "")).unwrap();
        }
        for v in [0, 1025] {
            let err =
                parse(&config(&format!("{orc}orc: {{ stripe_mib: {v} }}\n"), "")).unwrap_err();
            assert!(err.contains("orc.stripe_mib"), "{err}");
        }
    }

    #[test]
    fn schema_files_are_read_and_their_errors_located() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"Columns": [{"Name": "id", "Type": "bigint", "Comment": "key"}, {"Name": "m", "Type": "map<string,int>"}]}"#,
        )
        .unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "columns:\n  - { name: id, type: bigint }\n  - { name: x, type: 'struct<a>' }\n",
        )
        .unwrap();
        let with = |p: &std::path::Path, output: &str| {
            config(
                &format!("output: {output}\nschema: {{ file: '{}' }}\n", p.display()),
                "",
            )
        };
        let fc = parse(&with(&good, "parquet")).unwrap();
        assert_eq!(fc.schema.columns[1].ty.to_string(), "map<string,int>");
        let err = parse(&with(&bad, "parquet")).unwrap_err();
        assert!(err.starts_with(&format!("{}:3:", bad.display())), "{err}");
        let err = parse(&with(&good, "orc")).unwrap_err();
        assert!(err.contains("good.json") && err.contains("\"m\""), "{err}");
        let err = parse(&with(&dir.path().join("missing.yaml"), "parquet")).unwrap_err();
        assert!(err.contains("cannot read the schema file"), "{err}");
    }
}
