//! Record format conversion: JSON records to columnar files (Parquet, ORC) with a table schema,
//! Firehose's `DataFormatConversionConfiguration`.
//!
//! The path of a record: its bytes are read as concatenated JSON objects and decoded straight into
//! column builders by the schema-directed decoder ([`decode`]), which defers every unusual value to
//! the reference deserializer ([`deserializer`]: OpenX / Hive JSON SerDe semantics, [`schema`],
//! [`timestamp`]); rows gather into Arrow batches ([`columnar`]) that the Parquet ([`parquet`]) or ORC
//! ([`orc`]) writer encodes into row groups / stripes, flushed into the object as they fill. A record
//! that does not fit is a [`ConversionError`]; the pipeline sends it to the `format-conversion-failed`
//! error output and keeps the rest. The schema is configured, or inferred from the stream's first
//! records and pinned for good ([`infer`]).

pub mod columnar;
pub mod decode;
pub mod deserializer;
pub mod infer;
pub mod orc;
pub mod parquet;
pub mod schema;
pub mod timestamp;

use std::io::Write;

pub use deserializer::{Cell, ConversionError, Deserializer};
pub use infer::{InferError, SchemaPin};
pub use orc::{OrcCompression, OrcOptions};
pub use parquet::{ParquetCompression, ParquetOptions};
pub use schema::TableSchema;

use decode::RecordDecoder;
use orc::OrcFileWriter;
use parquet::ParquetFileWriter;

/// Error output type of records that do not fit the schema (Firehose's).
pub const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";

/// The columnar file format written, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    Parquet(ParquetOptions),
    Orc(OrcOptions),
}

impl OutputFormat {
    /// The object name extension, as Firehose names converted objects.
    pub fn extension(&self) -> &'static str {
        match self {
            OutputFormat::Parquet(_) => ".parquet",
            OutputFormat::Orc(_) => ".orc",
        }
    }
}

/// A delivery stream's format conversion: schema, deserializer and output format.
#[derive(Debug, Clone)]
pub struct FormatConversion {
    pub schema: TableSchema,
    pub deserializer: Deserializer,
    pub output: OutputFormat,
}

/// A stream's conversion: with the configured schema, or with the one it infers from its first
/// records and pins ([`infer`]; shared by the stream's pipelines).
#[derive(Debug, Clone)]
pub enum Conversion {
    Fixed(FormatConversion),
    Inferred(std::sync::Arc<SchemaPin>),
}

impl Conversion {
    /// The output format, known before the schema is.
    pub fn output(&self) -> &OutputFormat {
        match self {
            Conversion::Fixed(c) => &c.output,
            Conversion::Inferred(pin) => pin.output(),
        }
    }
}

impl FormatConversion {
    /// Converts one record with the reference deserializer: one row per JSON object in it (Firehose accepts concatenated JSON, and
    /// JSON lines). All or nothing: if any object does not fit, or the record holds no object or
    /// something that is not JSON, the whole record is rejected.
    pub fn rows(&self, data: &[u8]) -> Result<Vec<Vec<Cell>>, ConversionError> {
        let mut rows = Vec::with_capacity(1);
        let mut values =
            serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>();
        for value in values.by_ref() {
            let value = value.map_err(|e| ConversionError {
                path: "$".into(),
                reason: format!("the record is not valid JSON: {e}"),
            })?;
            rows.push(self.deserializer.row(&value, &self.schema)?);
        }
        if rows.is_empty() {
            return Err(ConversionError {
                path: "$".into(),
                reason: "the record holds no JSON object".into(),
            });
        }
        Ok(rows)
    }
}

/// Why a columnar file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("orc: {0}")]
    Orc(#[from] orc_rust::error::OrcError),
}

/// Why a record could not be added to a file.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The record does not fit the schema; the file is unchanged.
    #[error(transparent)]
    Record(ConversionError),
    #[error(transparent)]
    Write(#[from] FormatError),
}

/// A Parquet or ORC file being written into `W`, fed with JSON records.
pub struct ColumnarWriter<W: Write + Send> {
    file: FileWriter<W>,
    decoder: RecordDecoder,
}

enum FileWriter<W: Write + Send> {
    Parquet(ParquetFileWriter<W>),
    Orc(OrcFileWriter<W>),
}

impl<W: Write + Send> ColumnarWriter<W> {
    /// Starts a file in `conversion`'s format (the file's header is written to `out`).
    pub fn new(out: W, conversion: &FormatConversion) -> Result<Self, FormatError> {
        let file = match &conversion.output {
            OutputFormat::Parquet(o) => {
                FileWriter::Parquet(ParquetFileWriter::new(out, &conversion.schema, o)?)
            }
            OutputFormat::Orc(o) => {
                FileWriter::Orc(OrcFileWriter::new(out, &conversion.schema, o)?)
            }
        };
        Ok(ColumnarWriter {
            file,
            decoder: RecordDecoder::new(&conversion.schema, &conversion.deserializer),
        })
    }

    /// Converts one record (concatenated JSON objects) and appends its rows; returns how many.
    /// A record that does not fit leaves the file as it was.
    pub fn push_record(&mut self, data: &[u8]) -> Result<usize, PushError> {
        let rows = match &mut self.file {
            FileWriter::Parquet(w) => self.decoder.decode(data, w.batch_mut()),
            FileWriter::Orc(w) => self.decoder.decode(data, w.batch_mut()),
        }
        .map_err(PushError::Record)?;
        match &mut self.file {
            FileWriter::Parquet(w) => w.write_if_full().map_err(FormatError::from)?,
            FileWriter::Orc(w) => w.write_if_full().map_err(FormatError::from)?,
        }
        Ok(rows)
    }

    /// Writes what is buffered and the file's footer; returns the output.
    pub fn finish(self) -> Result<W, FormatError> {
        Ok(match self.file {
            FileWriter::Parquet(w) => w.finish()?,
            FileWriter::Orc(w) => w.finish()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversion() -> FormatConversion {
        FormatConversion {
            schema: TableSchema::from_columns([("a", "int"), ("b", "string")]).unwrap(),
            deserializer: Deserializer::default(),
            output: OutputFormat::Parquet(ParquetOptions::default()),
        }
    }

    #[test]
    fn concatenated_json_and_json_lines_give_one_row_per_object() {
        let c = conversion();
        assert_eq!(c.rows(br#"{"a":1}{"a":2,"b":"x"}"#).unwrap().len(), 2);
        assert_eq!(c.rows(b"{\"a\":1}\n{\"a\":2}\n").unwrap().len(), 2);
        assert_eq!(
            c.rows(br#" {"A":3} "#).unwrap(),
            vec![vec![Cell::Int(3), Cell::Null]]
        );
    }

    #[test]
    fn bad_records_are_rejected_whole() {
        let c = conversion();
        for (bad, why) in [
            (&b""[..], "no JSON object"),
            (b"  \n", "no JSON object"),
            (b"[{\"a\":1}]", "JSON object"),
            (b"{\"a\":1}{\"a\":\"x\"}", "a"),
            (b"{\"a\":1} trailing", "not valid JSON"),
            (b"{\"a\":", "not valid JSON"),
        ] {
            let err = c.rows(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }
}
