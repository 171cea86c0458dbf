//! Parquet output (Firehose `ParquetSerDe`): rows stream into row groups that are flushed into the
//! object as they fill, so memory is bounded by the block (row group) size, not the object size.

use std::io::Write;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};

use super::columnar::BatchBuilder;
use super::deserializer::Cell;
use super::schema::TableSchema;

/// Rows per Arrow batch handed to the Parquet writer, at most.
const BATCH_ROWS: usize = 8192;

/// Bytes per Arrow batch for a row group (or stripe) size: small enough that row groups end close
/// to their size, large enough that batches amortise the writer's per-batch work.
pub(crate) fn batch_bytes(group_bytes: usize) -> usize {
    (group_bytes / 8).clamp(64 << 10, 4 << 20)
}

/// Parquet compression codecs (Firehose: UNCOMPRESSED, GZIP, SNAPPY; zstd added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
}

/// Parquet writer options, Firehose's `ParquetSerDe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetOptions {
    pub compression: ParquetCompression,
    /// Row group ("block") size in bytes; Firehose: 256 MiB, at least 64 MiB.
    pub block_bytes: usize,
    /// Page size in bytes; Firehose: 1 MiB, at least 64 KiB.
    pub page_bytes: usize,
    pub dictionary: bool,
    /// Parquet format version 2 data pages (`WriterVersion` V2) instead of V1.
    pub writer_v2: bool,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            block_bytes: 256 << 20,
            page_bytes: 1 << 20,
            dictionary: true,
            writer_v2: false,
        }
    }
}

/// A Parquet file being written into `W`.
pub struct ParquetFileWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    batch: BatchBuilder,
    /// A batch is handed to the writer at [`BATCH_ROWS`] rows or this many bytes, whichever comes
    /// first: the writer cuts row groups / stripes only between batches.
    batch_bytes: usize,
}

impl<W: Write + Send> ParquetFileWriter<W> {
    pub fn new(
        out: W,
        schema: &TableSchema,
        options: &ParquetOptions,
    ) -> parquet::errors::Result<Self> {
        let batch = BatchBuilder::new(schema);
        let props = WriterProperties::builder()
            .set_compression(match options.compression {
                ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
                ParquetCompression::Snappy => Compression::SNAPPY,
                ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
                ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            })
            .set_data_page_size_limit(options.page_bytes)
            .set_dictionary_enabled(options.dictionary)
            .set_writer_version(if options.writer_v2 {
                WriterVersion::PARQUET_2_0
            } else {
                WriterVersion::PARQUET_1_0
            })
            // Row groups are cut by size (Firehose's block size), not by row count.
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(Some(options.block_bytes))
            .build();
        let writer = ArrowWriter::try_new(out, batch.schema().clone(), Some(props))?;
        Ok(ParquetFileWriter {
            writer,
            batch,
            batch_bytes: batch_bytes(options.block_bytes),
        })
    }

    /// Appends one converted row.
    pub fn push(&mut self, row: &[Cell]) -> parquet::errors::Result<()> {
        self.batch.push(row);
        self.write_if_full()
    }

    /// The batch being filled, for the decoder; call [`Self::write_if_full`] after appending.
    pub(crate) fn batch_mut(&mut self) -> &mut BatchBuilder {
        &mut self.batch
    }

    /// Hands the batch to the writer once it is full.
    pub(crate) fn write_if_full(&mut self) -> parquet::errors::Result<()> {
        if self.batch.len() >= BATCH_ROWS || self.batch.bytes() >= self.batch_bytes {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> parquet::errors::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finish();
        // The writer closes a row group, sending it to the object, once it reaches the block size:
        // memory holds at most one row group.
        self.writer.write(&batch)
    }

    /// Bytes buffered for the current row group (encoded, before compression of the last pages).
    pub fn buffered_bytes(&self) -> usize {
        self.writer.in_progress_size()
    }

    /// Writes the last row group and the footer; returns the output.
    pub fn finish(mut self) -> parquet::errors::Result<W> {
        self.write_batch()?;
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::deserializer::Deserializer;
    use arrow_array::RecordBatch;
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use proptest::prelude::*;
    use serde_json::json;

    const COLUMNS: &[(&str, &str)] = &[
        ("id", "bigint"),
        ("name", "string"),
        ("qty", "int"),
        ("small", "tinyint"),
        ("ratio", "double"),
        ("f", "float"),
        ("price", "decimal(12,2)"),
        ("ok", "boolean"),
        ("ts", "timestamp"),
        ("day", "date"),
        ("raw", "binary"),
        ("tags", "array<string>"),
        ("geo", "struct<city:string,zip:int,points:array<double>>"),
        ("counts", "map<string,bigint>"),
    ];

    fn schema() -> TableSchema {
        TableSchema::from_columns(COLUMNS.iter().copied()).unwrap()
    }

    /// Writes `records`, reads the file back, and checks every read batch against the same rows
    /// of what was written.
    fn round_trip(records: &[serde_json::Value], options: &ParquetOptions) -> Result<(), String> {
        let schema = schema();
        let d = Deserializer::default();
        let mut expected = BatchBuilder::new(&schema);
        let mut w = ParquetFileWriter::new(Vec::new(), &schema, options).unwrap();
        for r in records {
            let row = d.row(r, &schema).unwrap();
            expected.push(&row);
            w.push(&row).unwrap();
        }
        let expected: RecordBatch = expected.finish();
        let file = Bytes::from(w.finish().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut offset = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let want = expected.slice(offset, batch.num_rows());
            if batch != want {
                return Err(format!(
                    "rows {offset}..{} differ:\nwritten {want:?}\nread {batch:?}",
                    offset + batch.num_rows()
                ));
            }
            offset += batch.num_rows();
        }
        if offset != records.len() {
            return Err(format!("read {offset} rows, wrote {}", records.len()));
        }
        Ok(())
    }

    fn sample(i: i64) -> serde_json::Value {
        json!({
            "id": i, "name": format!("n{i}"), "qty": i % 100, "small": (i % 100) as i8, "ratio": i as f64 / 3.0,
            "f": 1.5, "price": format!("{}.{:02}", i, i % 100), "ok": i % 2 == 0,
            "ts": 1_700_000_000 + i, "day": "2024-02-29", "raw": "aGk=",
            "tags": ["a", format!("t{i}")],
            "geo": {"city": "Oslo", "zip": i, "points": [1.0, 2.5]},
            "counts": {"x": i, "y": -i},
        })
    }

    #[test]
    fn every_type_reads_back_equal_with_every_codec() {
        let mut records: Vec<_> = (0..3000).map(sample).collect();
        records.push(json!({}));
        records.push(json!({"geo": null, "tags": null, "counts": null, "name": null}));
        records.push(json!({"geo": {"points": null}, "tags": [], "counts": {}}));
        for compression in [
            ParquetCompression::Uncompressed,
            ParquetCompression::Snappy,
            ParquetCompression::Gzip,
            ParquetCompression::Zstd,
        ] {
            for writer_v2 in [false, true] {
                let options = ParquetOptions {
                    compression,
                    writer_v2,
                    ..ParquetOptions::default()
                };
                round_trip(&records, &options)
                    .unwrap_or_else(|e| panic!("{compression:?} v2={writer_v2}: {e}"));
            }
        }
    }

    #[test]
    fn row_groups_are_flushed_by_size() {
        let options = ParquetOptions {
            block_bytes: 64 << 10,
            dictionary: false,
            ..ParquetOptions::default()
        };
        let schema = schema();
        let d = Deserializer::default();
        let mut w = ParquetFileWriter::new(Vec::new(), &schema, &options).unwrap();
        for i in 0..40_000 {
            w.push(&d.row(&sample(i), &schema).unwrap()).unwrap();
            assert!(w.buffered_bytes() < 8 << 20, "row group memory is bounded");
        }
        let file = Bytes::from(w.finish().unwrap());
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert!(
            builder.metadata().num_row_groups() > 3,
            "{}",
            builder.metadata().num_row_groups()
        );
        let rows: usize = builder
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 40_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Random records, nulls and nesting included, read back equal.
        #[test]
        fn random_records_round_trip(rows in proptest::collection::vec(
            (any::<Option<i64>>(), any::<Option<String>>(), proptest::option::of(proptest::collection::vec(any::<Option<String>>(), 0..4)),
             proptest::option::of((any::<Option<String>>(), any::<Option<i32>>())), any::<Option<bool>>(), proptest::option::of(-1e9f64..1e9)),
            0..200)) {
            let records: Vec<_> = rows.into_iter().map(|(id, name, tags, geo, ok, ratio)| json!({
                "id": id, "name": name, "tags": tags, "ok": ok, "ratio": ratio,
                "geo": geo.map(|(city, zip)| json!({"city": city, "zip": zip})),
            })).collect();
            prop_assert_eq!(round_trip(&records, &ParquetOptions::default()), Ok(()));
        }
    }
}
