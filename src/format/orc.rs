//! ORC output (Firehose `OrcSerDe`), written with orc-rust: rows stream into stripes that are flushed
//! into the object as they fill, so memory is bounded by the stripe size, not the object size.
//!
//! orc-rust 0.9 writes flat columns only (integers, floats, boolean, strings, binary, date, UTC
//! timestamps) and no row indexes or bloom filters. [`check_schema`] rejects everything else when the
//! configuration is validated, so the writer is never asked for a file it cannot write (it would
//! panic) and no reader ever sees a file it cannot open.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use orc_rust::compression::CompressionType;
use orc_rust::ArrowWriterBuilder;

use super::columnar::BatchBuilder;
use super::deserializer::Cell;
use super::schema::{ColumnType, TableSchema};

/// Rows per Arrow batch handed to the ORC writer.
const BATCH_ROWS: usize = 8192;

/// ORC compression codecs (Firehose: NONE, ZLIB, SNAPPY; zstd added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcCompression {
    None,
    Zlib,
    Snappy,
    Zstd,
}

/// ORC writer options, the part of Firehose's `OrcSerDe` the writer implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcOptions {
    pub compression: OrcCompression,
    /// Stripe size in bytes (estimated in memory before encoding is finished); Firehose: 64 MiB.
    pub stripe_bytes: usize,
}

impl Default for OrcOptions {
    fn default() -> Self {
        OrcOptions {
            compression: OrcCompression::Snappy,
            stripe_bytes: 64 << 20,
        }
    }
}

/// Checks that every column has a type the ORC writer can write; the error names the column.
pub fn check_schema(schema: &TableSchema) -> Result<(), String> {
    for c in &schema.columns {
        let flat = match c.ty {
            ColumnType::Decimal { .. }
            | ColumnType::Array(_)
            | ColumnType::Map(..)
            | ColumnType::Struct(_) => false,
            ColumnType::String
            | ColumnType::Char(_)
            | ColumnType::Varchar(_)
            | ColumnType::TinyInt
            | ColumnType::SmallInt
            | ColumnType::Int
            | ColumnType::BigInt
            | ColumnType::Float
            | ColumnType::Double
            | ColumnType::Boolean
            | ColumnType::Timestamp
            | ColumnType::Date
            | ColumnType::Binary => true,
        };
        if !flat {
            return Err(format!(
                "column {:?} has type {}, which the ORC writer (orc-rust 0.9) cannot write; ORC output \
                 supports string, char, varchar, tinyint, smallint, int, bigint, float, double, boolean, \
                 timestamp, date and binary columns: use output: parquet for decimal and nested types",
                c.name, c.ty
            ));
        }
    }
    Ok(())
}

/// Shares the output between the ORC writer, which consumes it on close without giving it back, and
/// [`OrcFileWriter::finish`], which returns it.
struct Shared<W>(Arc<Mutex<W>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()
    }
}

/// An ORC file being written into `W`.
pub struct OrcFileWriter<W: Write> {
    writer: orc_rust::ArrowWriter<Shared<W>>,
    out: Arc<Mutex<W>>,
    batch: BatchBuilder,
    /// A batch is handed to the writer at [`BATCH_ROWS`] rows or this many bytes, whichever comes
    /// first: the writer cuts row groups / stripes only between batches.
    batch_bytes: usize,
}

impl<W: Write> OrcFileWriter<W> {
    /// Starts a file; `schema` must have passed [`check_schema`].
    pub fn new(
        out: W,
        schema: &TableSchema,
        options: &OrcOptions,
    ) -> Result<Self, orc_rust::error::OrcError> {
        let batch = BatchBuilder::new(schema);
        let out = Arc::new(Mutex::new(out));
        let mut builder = ArrowWriterBuilder::new(Shared(Arc::clone(&out)), batch.schema().clone())
            .with_stripe_byte_size(options.stripe_bytes);
        let codec = match options.compression {
            OrcCompression::None => None,
            OrcCompression::Zlib => Some(CompressionType::Zlib),
            OrcCompression::Snappy => Some(CompressionType::Snappy),
            OrcCompression::Zstd => Some(CompressionType::Zstd),
        };
        if let Some(codec) = codec {
            builder = builder.with_compression(codec);
        }
        Ok(OrcFileWriter {
            batch_bytes: super::parquet::batch_bytes(options.stripe_bytes),
            writer: builder.try_build()?,
            out,
            batch,
        })
    }

    /// Appends one converted row.
    pub fn push(&mut self, row: &[Cell]) -> Result<(), orc_rust::error::OrcError> {
        self.batch.push(row);
        self.write_if_full()
    }

    /// The batch being filled, for the decoder; call [`Self::write_if_full`] after appending.
    pub(crate) fn batch_mut(&mut self) -> &mut BatchBuilder {
        &mut self.batch
    }

    /// Hands the batch to the writer once it is full.
    pub(crate) fn write_if_full(&mut self) -> Result<(), orc_rust::error::OrcError> {
        if self.batch.len() >= BATCH_ROWS || self.batch.bytes() >= self.batch_bytes {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> Result<(), orc_rust::error::OrcError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finish();
        self.writer.write(&batch)
    }

    /// Writes the last stripe and the file tail; returns the output.
    pub fn finish(mut self) -> Result<W, orc_rust::error::OrcError> {
        self.write_batch()?;
        self.writer.close()?;
        let out = Arc::try_unwrap(self.out)
            .ok()
            .expect("the closed ORC writer dropped its handle");
        Ok(out.into_inner().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::deserializer::Deserializer;
    use arrow_array::RecordBatch;
    use bytes::Bytes;
    use orc_rust::ArrowReaderBuilder;
    use proptest::prelude::*;
    use serde_json::json;

    const COLUMNS: &[(&str, &str)] = &[
        ("id", "bigint"),
        ("name", "string"),
        ("code", "varchar(8)"),
        ("qty", "int"),
        ("small", "tinyint"),
        ("mid", "smallint"),
        ("ratio", "double"),
        ("f", "float"),
        ("ok", "boolean"),
        ("ts", "timestamp"),
        ("day", "date"),
        ("raw", "binary"),
    ];

    fn schema() -> TableSchema {
        TableSchema::from_columns(COLUMNS.iter().copied()).unwrap()
    }

    fn round_trip(records: &[serde_json::Value], options: &OrcOptions) -> Result<usize, String> {
        let schema = schema();
        let d = Deserializer::default();
        let mut expected = BatchBuilder::new(&schema);
        let mut w = OrcFileWriter::new(Vec::new(), &schema, options).unwrap();
        for r in records {
            let row = d.row(r, &schema).unwrap();
            expected.push(&row);
            w.push(&row).unwrap();
        }
        let expected: RecordBatch = expected.finish();
        let file = Bytes::from(w.finish().unwrap());
        let reader = ArrowReaderBuilder::try_new(file)
            .map_err(|e| e.to_string())?
            .with_timestamp_precision(orc_rust::TimestampPrecision::Microsecond)
            .build();
        let mut offset = 0;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let want = expected.slice(offset, batch.num_rows());
            for (i, (got, want)) in batch.columns().iter().zip(want.columns()).enumerate() {
                // The reader may name the timestamp's zone differently; compare values.
                let got = retype(got, want.data_type());
                if &got != want {
                    return Err(format!(
                        "column {i} rows {offset}..: wrote {want:?} read {got:?}"
                    ));
                }
            }
            offset += batch.num_rows();
        }
        if offset != records.len() {
            return Err(format!("read {offset} rows, wrote {}", records.len()));
        }
        Ok(offset)
    }

    fn retype(a: &arrow_array::ArrayRef, to: &arrow_schema::DataType) -> arrow_array::ArrayRef {
        use arrow_schema::DataType::Timestamp;
        match (a.data_type(), to) {
            (Timestamp(u1, _), Timestamp(u2, _)) if u1 == u2 => {}
            _ => return a.clone(),
        }
        let data = a
            .to_data()
            .into_builder()
            .data_type(to.clone())
            .build()
            .unwrap();
        arrow_array::make_array(data)
    }

    fn sample(i: i64) -> serde_json::Value {
        json!({
            "id": i * 7919, "name": format!("n{i}"), "code": "ab", "qty": i % 1000, "small": (i % 100) as i8,
            "mid": (i % 30000) as i16, "ratio": i as f64 / 3.0, "f": 1.5, "ok": i % 3 == 0,
            "ts": 1_700_000_000 + i, "day": "2024-02-29", "raw": "aGk=",
        })
    }

    #[test]
    fn every_flat_type_reads_back_equal_with_every_codec() {
        let mut records: Vec<_> = (0..5000).map(sample).collect();
        records.push(json!({}));
        records.push(json!({"name": null, "ts": "2024-01-01 00:00:00.123456"}));
        for compression in [
            OrcCompression::None,
            OrcCompression::Zlib,
            OrcCompression::Snappy,
            OrcCompression::Zstd,
        ] {
            let options = OrcOptions {
                compression,
                ..OrcOptions::default()
            };
            round_trip(&records, &options).unwrap_or_else(|e| panic!("{compression:?}: {e}"));
        }
    }

    #[test]
    fn stripes_are_flushed_by_size() {
        let options = OrcOptions {
            stripe_bytes: 64 << 10,
            ..OrcOptions::default()
        };
        let records: Vec<_> = (0..40_000).map(sample).collect();
        assert_eq!(round_trip(&records, &options), Ok(40_000));
    }

    #[test]
    fn nested_and_decimal_columns_are_rejected_by_name() {
        for (ty, name) in [
            ("decimal(10,2)", "price"),
            ("array<int>", "tags"),
            ("map<string,int>", "m"),
            ("struct<a:int>", "s"),
        ] {
            let s = TableSchema::from_columns([("id", "int"), (name, ty)]).unwrap();
            let err = check_schema(&s).unwrap_err();
            assert!(err.contains(name) && err.contains("parquet"), "{err}");
        }
        check_schema(&schema()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Random records, nulls included, read back equal.
        #[test]
        fn random_records_round_trip(rows in proptest::collection::vec(
            (any::<Option<i64>>(), any::<Option<String>>(), any::<Option<i32>>(), any::<Option<bool>>(),
             proptest::option::of(-1e9f64..1e9), proptest::option::of(0i64..4_000_000_000)),
            0..200)) {
            let records: Vec<_> = rows.into_iter().map(|(id, name, qty, ok, ratio, ts)| json!({
                "id": id, "name": name, "qty": qty, "ok": ok, "ratio": ratio, "ts": ts,
            })).collect();
            let n = records.len();
            prop_assert_eq!(round_trip(&records, &OrcOptions::default()), Ok(n));
        }
    }
}
