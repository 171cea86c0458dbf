//! Schema inference: a stream's table schema learned from its first records, pinned once and
//! persisted, so that every object the stream ever writes has the same schema — across restarts,
//! and whichever shard's records came first. It is never inferred again: a field that first
//! appears later is ignored, like any key that is not in a schema. To change it, delete the pinned
//! file, or give the schema (the pinned file is a schema file, ready for `schema: { file: … }`).
//!
//! The rules, as a Glue crawler reads JSON: strings → `string`, integers → `bigint` (`double` when
//! mixed with fractions, or beyond the signed 64-bit range), booleans → `boolean`, objects →
//! `struct<…>`, arrays → `array<…>`; values seen with two incompatible shapes, only as null, or
//! nested deeper than a type may ([`MAX_DEPTH`]) → `string`, which the OpenX SerDe fills with the
//! value's JSON text (so inference needs the OpenX SerDe). Names are the keys as the deserializer
//! matches them (lower case unless matching is case-sensitive, dots to underscores when
//! configured, the column of a `column_to_json_key_mappings` entry); keys that cannot be names are
//! skipped. ORC output has flat columns only, so nested values are `string` there.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::schema::{check_name, Column, ColumnType, TableSchema, MAX_DEPTH};
use super::{Deserializer, FormatConversion, OutputFormat};

/// Fields (columns and nested struct fields together) an inferred schema holds at most; keys
/// first seen once the schema has this many are ignored.
pub const MAX_INFERRED_FIELDS: usize = 10_000;

/// Bytes of records a stream samples at most before it pins its schema.
pub const MAX_SAMPLE_BYTES: usize = 16 << 20;

/// Why no schema could be pinned.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The sample holds no key that can be a column (no JSON object, or only unusable keys).
    #[error("no schema can be inferred from the stream's first records: {0}")]
    NoColumns(String),
    #[error("cannot {op} the pinned schema {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The pinned file is not a schema this stream can write (edited, or the output changed).
    #[error("the pinned schema {} is not usable: {reason}; fix or delete it", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The shape of the values seen at one place of the records.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Only nulls so far.
    Null,
    Bool,
    Int,
    Float,
    String,
    Array(Box<Shape>),
    Object(Fields),
}

/// Fields in the order first seen, found by their lower-case name (objects can be wide).
#[derive(Debug, Clone, Default, PartialEq)]
struct Fields {
    list: Vec<(String, Shape)>,
    by_name: HashMap<String, usize>,
}

impl Fields {
    /// Merges a value of `shape` at field `name`. A new field costs one of `budget` (and its
    /// nested fields one each); without budget it is left out. A name that differs from a known
    /// one only in case (case-sensitive matching) is left out too: Hive and Glue cannot hold both,
    /// so the first seen wins.
    fn add(&mut self, name: String, shape: Shape, budget: &mut usize) {
        let folded = name.to_ascii_lowercase();
        match self.by_name.get(&folded) {
            Some(&i) if self.list[i].0 == name => {
                let known = std::mem::replace(&mut self.list[i].1, Shape::Null);
                self.list[i].1 = merge(known, shape, budget);
            }
            Some(_) => {}
            None if *budget > 0 => {
                *budget -= 1;
                self.by_name.insert(folded, self.list.len());
                self.list.push((name, prune(shape, budget)));
            }
            None => {}
        }
    }
}

/// The shape of values seen as `a` and as `b`; fields new to `a` are paid from `budget`.
fn merge(a: Shape, b: Shape, budget: &mut usize) -> Shape {
    match (a, b) {
        (Shape::Null, b) => prune(b, budget),
        (a, Shape::Null) => a,
        (Shape::Int, Shape::Float) | (Shape::Float, Shape::Int) => Shape::Float,
        (Shape::Array(a), Shape::Array(b)) => Shape::Array(Box::new(merge(*a, *b, budget))),
        (Shape::Object(mut a), Shape::Object(b)) => {
            for (name, shape) in b.list {
                a.add(name, shape, budget);
            }
            Shape::Object(a)
        }
        (a, b) if a == b => a,
        _ => Shape::String,
    }
}

/// `shape`, new to the schema, with only the nested fields `budget` pays for.
fn prune(shape: Shape, budget: &mut usize) -> Shape {
    match shape {
        Shape::Object(fields) => {
            let mut kept = Fields::default();
            for (name, shape) in fields.list {
                if *budget == 0 {
                    break;
                }
                kept.add(name, shape, budget);
            }
            Shape::Object(kept)
        }
        Shape::Array(item) => Shape::Array(Box::new(prune(*item, budget))),
        other => other,
    }
}

fn column_type(shape: &Shape) -> ColumnType {
    match shape {
        Shape::Bool => ColumnType::Boolean,
        Shape::Int => ColumnType::BigInt,
        Shape::Float => ColumnType::Double,
        Shape::Null | Shape::String => ColumnType::String,
        Shape::Array(item) => ColumnType::Array(Box::new(column_type(item))),
        // A struct needs a field (Parquet has no empty groups); `{}` is kept as its JSON text.
        Shape::Object(fields) if fields.list.is_empty() => ColumnType::String,
        Shape::Object(fields) => ColumnType::Struct(
            fields
                .list
                .iter()
                .map(|(name, shape)| (name.clone(), column_type(shape)))
                .collect(),
        ),
    }
}

/// The shapes of a sample of records, accumulated record by record.
#[derive(Debug)]
pub struct Inference {
    deserializer: Deserializer,
    /// ORC output: nested values are strings.
    flat: bool,
    columns: Fields,
    /// Fields that may still be added under [`MAX_INFERRED_FIELDS`].
    budget: usize,
}

impl Inference {
    /// An empty inference for records read by `deserializer` into `output`.
    pub fn new(deserializer: &Deserializer, output: &OutputFormat) -> Inference {
        Inference {
            deserializer: deserializer.clone(),
            flat: matches!(output, OutputFormat::Orc(_)),
            columns: Fields::default(),
            budget: MAX_INFERRED_FIELDS,
        }
    }

    /// Adds the JSON objects of one record (each of concatenated objects counts). What is not JSON,
    /// or not an object, adds nothing: it cannot be converted under any schema.
    pub fn observe(&mut self, record: &[u8]) {
        let mut de = serde_json::Deserializer::from_slice(record);
        while de.end().is_err() {
            let seed = ShapeOf {
                inference: self,
                depth: None,
            };
            match seed.deserialize(&mut de) {
                Ok(Shape::Object(columns)) => {
                    for (name, shape) in columns.list {
                        self.columns.add(name, shape, &mut self.budget);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// The schema of what was observed.
    pub fn schema(&self) -> Result<TableSchema, InferError> {
        if self.columns.list.is_empty() {
            return Err(InferError::NoColumns(
                "they hold no JSON object with a key usable as a column name".into(),
            ));
        }
        TableSchema::new(
            self.columns
                .list
                .iter()
                .map(|(name, shape)| Column {
                    name: name.clone(),
                    ty: column_type(shape),
                })
                .collect(),
        )
        .map_err(InferError::NoColumns)
    }

    /// The column a top-level key fills, as the deserializer matches keys to columns: a mapped
    /// key names its column, and a mapped column reads no other key.
    fn column_name(&self, key: &str) -> Option<String> {
        let normalized = self.deserializer.normalize_key(key);
        if let Deserializer::OpenX {
            column_to_json_key, ..
        } = &self.deserializer
        {
            // Should two columns map the same key, the first in name order wins.
            let mapped = column_to_json_key
                .iter()
                .filter(|(_, k)| self.deserializer.normalize_key(k) == normalized)
                .map(|(c, _)| c)
                .min();
            if let Some(column) = mapped {
                return Some(column.clone());
            }
            if column_to_json_key
                .keys()
                .any(|c| c.eq_ignore_ascii_case(&normalized))
            {
                return None;
            }
        }
        check_name(&normalized).ok().map(|()| normalized)
    }
}

/// Reads one JSON value as its [`Shape`], keys in the order they come (a schema's columns are in
/// the order of the first record's keys), without building the value. `depth` is the value's
/// depth as a column type (`None`: the record itself, whose keys are named as columns); a
/// container deeper than a type may nest is a `string`.
struct ShapeOf<'i> {
    inference: &'i Inference,
    depth: Option<usize>,
}

impl ShapeOf<'_> {
    /// The seed of this value's items or members.
    fn inner(&self) -> ShapeOf<'_> {
        ShapeOf {
            inference: self.inference,
            depth: Some(self.depth.map_or(0, |d| d + 1)),
        }
    }

    /// Whether this container is a `string` column value rather than an array or struct.
    fn as_string(&self) -> bool {
        self.depth
            .is_some_and(|d| self.inference.flat || d >= MAX_DEPTH)
    }
}

impl<'de> DeserializeSeed<'de> for ShapeOf<'_> {
    type Value = Shape;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeOf<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Int)
    }

    /// Beyond `i64` a number is a `double` (a `bigint` column cannot hold it).
    fn visit_u64<E>(self, v: u64) -> Result<Shape, E> {
        Ok(if i64::try_from(v).is_ok() {
            Shape::Int
        } else {
            Shape::Float
        })
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Float)
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::String)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Shape, A::Error> {
        if self.as_string() {
            while items.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Shape::String);
        }
        // Inside one value nothing is counted yet: `Fields::add` pays for what the schema keeps.
        let (mut item, mut unlimited) = (Shape::Null, usize::MAX);
        while let Some(x) = items.next_element_seed(self.inner())? {
            item = merge(item, x, &mut unlimited);
        }
        Ok(Shape::Array(Box::new(item)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        if self.as_string() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Shape::String);
        }
        let (mut fields, mut unlimited) = (Fields::default(), usize::MAX);
        while let Some(key) = map.next_key::<String>()? {
            let shape = map.next_value_seed(self.inner())?;
            let name = if self.depth.is_none() {
                self.inference.column_name(&key)
            } else {
                let name = self.inference.deserializer.normalize_key(&key);
                check_name(&name).is_ok().then_some(name)
            };
            if let Some(name) = name {
                fields.add(name, shape, &mut unlimited);
            }
        }
        Ok(Shape::Object(fields))
    }
}

/// What adding a record to a stream's sample came to.
#[derive(Debug)]
pub enum Sampled<'a> {
    /// Keep the record and sample on.
    More,
    /// The schema is pinned: convert.
    Pinned(&'a FormatConversion),
}

/// A stream's inferred schema. Its pipelines' buffers add the records they take to one sample
/// of the stream; the schema is pinned once the sample is large enough (or a buffer must write
/// its object first), persisted before any object is written with it, and read back at start.
/// The buffers hold the records they sampled until then.
#[derive(Debug)]
pub struct SchemaPin {
    path: PathBuf,
    sample_records: usize,
    deserializer: Deserializer,
    output: OutputFormat,
    sample: Mutex<Sample>,
    pinned: OnceLock<FormatConversion>,
}

/// The stream's records seen before its schema is pinned, as shapes.
#[derive(Debug)]
struct Sample {
    inference: Inference,
    records: usize,
    bytes: usize,
}

impl Sample {
    fn new(deserializer: &Deserializer, output: &OutputFormat) -> Sample {
        Sample {
            inference: Inference::new(deserializer, output),
            records: 0,
            bytes: 0,
        }
    }
}

impl SchemaPin {
    /// The pin persisted at `path` (a schema file), which is read now if it exists.
    pub fn open(
        path: PathBuf,
        deserializer: Deserializer,
        output: OutputFormat,
        sample_records: usize,
    ) -> Result<SchemaPin, InferError> {
        let pin = SchemaPin {
            path,
            sample_records,
            sample: Mutex::new(Sample::new(&deserializer, &output)),
            deserializer,
            output,
            pinned: OnceLock::new(),
        };
        if let Some(schema) = pin.read()? {
            let _ = pin.pinned.set(pin.conversion_with(schema));
        }
        Ok(pin)
    }

    /// The conversion with the pinned schema, once there is one.
    pub fn conversion(&self) -> Option<&FormatConversion> {
        self.pinned.get()
    }

    /// The output format (known before the schema is).
    pub fn output(&self) -> &OutputFormat {
        &self.output
    }

    /// Adds a record to the stream's sample, and pins the schema once the sample has
    /// `sample_records` records or [`MAX_SAMPLE_BYTES`].
    pub fn sample(&self, record: &[u8]) -> Result<Sampled<'_>, InferError> {
        if let Some(c) = self.pinned.get() {
            return Ok(Sampled::Pinned(c));
        }
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = self.pinned.get() {
            return Ok(Sampled::Pinned(c));
        }
        sample.inference.observe(record);
        sample.records += 1;
        sample.bytes += record.len();
        if sample.records >= self.sample_records || sample.bytes >= MAX_SAMPLE_BYTES {
            self.pin_from(&mut sample).map(Sampled::Pinned)
        } else {
            Ok(Sampled::More)
        }
    }

    /// The pinned conversion: the one already pinned (by this process, or persisted by an earlier
    /// run), else one inferred from the sample so far and persisted first. When the sample gives
    /// no schema it is dropped, and sampling starts again.
    pub fn pin(&self) -> Result<&FormatConversion, InferError> {
        if let Some(c) = self.pinned.get() {
            return Ok(c);
        }
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        self.pin_from(&mut sample)
    }

    fn pin_from(&self, sample: &mut Sample) -> Result<&FormatConversion, InferError> {
        if let Some(c) = self.pinned.get() {
            return Ok(c);
        }
        let schema = match self.read()? {
            Some(schema) => schema,
            None => {
                let inferred = sample.inference.schema();
                if let Ok(schema) = &inferred {
                    self.persist(schema)?;
                }
                // Pinned, or a sample that gives no schema: either way it is done with.
                *sample = Sample::new(&self.deserializer, &self.output);
                inferred?
            }
        };
        Ok(self.pinned.get_or_init(|| self.conversion_with(schema)))
    }

    fn conversion_with(&self, schema: TableSchema) -> FormatConversion {
        FormatConversion {
            schema,
            deserializer: self.deserializer.clone(),
            output: self.output.clone(),
        }
    }

    /// The persisted schema, if there is one.
    fn read(&self) -> Result<Option<TableSchema>, InferError> {
        match std::fs::read(&self.path) {
            Ok(text) => self.parse(&text).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io("read", source)),
        }
    }

    fn parse(&self, text: &[u8]) -> Result<TableSchema, InferError> {
        let invalid = |reason: String| InferError::Invalid {
            path: self.path.clone(),
            reason,
        };
        let file: PinnedFile = serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        let schema = TableSchema::from_columns(
            file.columns
                .iter()
                .map(|c| (c.name.as_str(), c.ty.as_str())),
        )
        .map_err(invalid)?;
        if matches!(self.output, OutputFormat::Orc(_)) {
            super::orc::check_schema(&schema).map_err(invalid)?;
        }
        Ok(schema)
    }

    /// Writes `schema`, durably and whole (see [`crate::fs::replace_synced`]), after checking that
    /// it reads back as written, so that a restart finds it.
    fn persist(&self, schema: &TableSchema) -> Result<(), InferError> {
        let file = PinnedFile {
            columns: schema
                .columns
                .iter()
                .map(|c| PinnedColumn {
                    name: c.name.clone(),
                    ty: c.ty.to_string(),
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("a schema serializes");
        text.push(b'\n');
        if self.parse(&text)? != *schema {
            return Err(InferError::Invalid {
                path: self.path.clone(),
                reason: "the inferred schema does not read back as inferred".into(),
            });
        }
        if let Some(dir) = self.path.parent() {
            crate::fs::create_dir_all_synced(dir)
                .map_err(|e| self.io("create the directory of", e))?;
        }
        crate::fs::replace_synced(&self.path, &text).map_err(|e| self.io("write", e))
    }

    fn io(&self, op: &'static str, source: io::Error) -> InferError {
        InferError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

/// The pinned file: a schema file (`columns:` of names and types, JSON being YAML).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinnedFile {
    columns: Vec<PinnedColumn>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinnedColumn {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ColumnarWriter, OrcOptions, ParquetOptions};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn more(sampled: Result<Sampled<'_>, InferError>) -> bool {
        matches!(sampled, Ok(Sampled::More))
    }

    fn pinned(sampled: Result<Sampled<'_>, InferError>) -> TableSchema {
        match sampled {
            Ok(Sampled::Pinned(conversion)) => conversion.schema.clone(),
            other => panic!("not pinned: {other:?}"),
        }
    }

    fn parquet() -> OutputFormat {
        OutputFormat::Parquet(ParquetOptions::default())
    }

    /// The inferred schema of `records`, as `name type` lines.
    fn infer(d: &Deserializer, output: &OutputFormat, records: &[&str]) -> String {
        let mut inference = Inference::new(d, output);
        for r in records {
            inference.observe(r.as_bytes());
        }
        match inference.schema() {
            Ok(schema) => schema
                .columns
                .iter()
                .map(|c| format!("{} {}", c.name, c.ty))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn types_follow_the_values_and_widen_or_fall_back_to_string() {
        let got = infer(
            &Deserializer::default(),
            &parquet(),
            &[
                r#"{"id":1,"price":2,"ok":true,"name":"a","tags":["x"],"geo":{"lat":1.5},"n":null}"#,
                r#"{"id":2,"price":2.5,"ok":"yes","tags":[],"geo":{"lat":2,"lon":3},"mix":[1,"a"]}"#,
                r#"{"id":3,"big":18446744073709551615,"empty":{},"nums":[[1],[2.5]]}{"late":1}"#,
                "not json",
                "[1,2]",
            ],
        );
        assert_eq!(
            got,
            "id bigint\nprice double\nok string\nname string\ntags array<string>\n\
             geo struct<lat:double,lon:bigint>\nn string\nmix array<string>\nbig double\n\
             empty string\nnums array<array<double>>\nlate bigint"
        );
    }

    #[test]
    fn names_are_the_keys_as_the_deserializer_matches_them() {
        let openx = Deserializer::OpenX {
            case_insensitive: true,
            convert_dots_to_underscores: true,
            column_to_json_key: HashMap::from([("ts".to_string(), "@timestamp".to_string())]),
        };
        let got = infer(
            &openx,
            &parquet(),
            &[r#"{"ID":1,"id":2,"a.b":1,"@timestamp":"2025-01-01","bad key":1,"S":{"X":1,"-":2}}"#],
        );
        assert_eq!(got, "id bigint\na_b bigint\nts string\ns struct<x:bigint>");
        // Case-sensitive matching keeps names; of two names one case apart, the first one wins.
        let sensitive = Deserializer::OpenX {
            case_insensitive: false,
            convert_dots_to_underscores: false,
            column_to_json_key: HashMap::new(),
        };
        let got = infer(&sensitive, &parquet(), &[r#"{"Id":1,"id":"x","a.b":1}"#]);
        assert_eq!(got, "Id bigint");
    }

    /// A value nested deeper than a type may nest is a `string` from that depth on, so the
    /// pinned schema always reads back (serde_json itself reads up to 128 levels).
    #[test]
    fn values_nested_deeper_than_types_may_are_strings() {
        let deep = |n: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        let d = Deserializer::default();
        let got = infer(&d, &parquet(), &[&deep(100)]);
        let ty = got.strip_prefix("a ").unwrap();
        assert_eq!(ty.matches("array<").count(), MAX_DEPTH, "{ty}");
        assert!(ty.contains("array<string>"), "{ty}");
        assert!(ColumnType::parse(ty).is_ok(), "{ty}");
        let within = infer(&d, &parquet(), &[&deep(MAX_DEPTH)]);
        assert!(within.contains("array<bigint>"), "{within}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let pin = SchemaPin::open(path.clone(), d.clone(), parquet(), 1).unwrap();
        let schema = pinned(pin.sample(deep(100).as_bytes()));
        let again = SchemaPin::open(path, d, parquet(), 1).unwrap();
        assert_eq!(again.conversion().map(|c| &c.schema), Some(&schema));
    }

    /// A mapped column reads only its mapped key, so a key spelled like the column is no column.
    #[test]
    fn a_mapped_column_takes_no_other_key() {
        for case_insensitive in [true, false] {
            let openx = Deserializer::OpenX {
                case_insensitive,
                convert_dots_to_underscores: false,
                column_to_json_key: HashMap::from([("ts".to_string(), "@timestamp".to_string())]),
            };
            let got = infer(
                &openx,
                &parquet(),
                &[r#"{"Ts":1,"ts":true,"@timestamp":"x"}"#],
            );
            assert_eq!(got, "ts string", "case_insensitive: {case_insensitive}");
        }
    }

    #[test]
    fn orc_output_infers_flat_columns() {
        let orc = OutputFormat::Orc(OrcOptions::default());
        let got = infer(
            &Deserializer::default(),
            &orc,
            &[r#"{"a":[1],"b":{"c":1},"d":1.5}"#],
        );
        assert_eq!(got, "a string\nb string\nd double");
    }

    #[test]
    fn records_without_usable_keys_give_no_schema() {
        let got = infer(
            &Deserializer::default(),
            &parquet(),
            &["[1]", "\"x\"", "{}", r#"{"bad key":1}"#, "{"],
        );
        assert!(got.starts_with("error: no schema can be inferred"), "{got}");
    }

    /// The field limit holds at its edge, nested fields counted: a record of exactly the limit
    /// keeps every field, and a field beyond it (new column or new nested field) is left out.
    #[test]
    fn the_field_limit_holds_at_its_edge() {
        let d = Deserializer::default();
        let wide = |n: usize, extra: &str| {
            let mut fields: Vec<String> = (0..n).map(|i| format!("\"c{i}\":1")).collect();
            fields.push(format!("\"s\":{{\"x\":1{extra}}}"));
            format!("{{{}}}", fields.join(","))
        };
        let mut inference = Inference::new(&d, &parquet());
        // `s` and `s.x` are two fields: exactly at the limit.
        inference.observe(wide(MAX_INFERRED_FIELDS - 2, "").as_bytes());
        let schema = inference.schema().unwrap();
        assert_eq!(schema.columns.len(), MAX_INFERRED_FIELDS - 1);
        inference.observe(wide(MAX_INFERRED_FIELDS - 2, ",\"y\":2").as_bytes());
        inference.observe(br#"{"one_more":1}"#);
        let again = inference.schema().unwrap();
        assert_eq!(again, schema, "fields beyond the limit are left out");
        let mut inference = Inference::new(&d, &parquet());
        inference.observe(wide(MAX_INFERRED_FIELDS - 3, "").as_bytes());
        inference.observe(br#"{"one_more":1,"two_more":1}"#);
        let names: Vec<_> = inference
            .schema()
            .unwrap()
            .columns
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), MAX_INFERRED_FIELDS - 1);
        assert_eq!(names.last().map(String::as_str), Some("one_more"));
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-zA-Z0-9 é\"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-dA-D_.]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_record() -> impl Strategy<Value = String> {
        // `id` makes sure of a key usable as a column; the others may not be.
        let others = proptest::collection::btree_map("[a-eA-E_.]{1,3}", any_json(), 0..6);
        (any_json(), others).prop_map(|(id, others)| {
            let mut object: serde_json::Map<_, _> = others.into_iter().collect();
            object.insert("id".into(), id);
            serde_json::Value::Object(object).to_string()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// With the OpenX SerDe, every record of the sample converts under the schema inferred
        /// from it, by the reference deserializer and by the writer's decoder alike, for Parquet
        /// and ORC.
        #[test]
        fn every_sampled_record_fits_its_inferred_schema(
            records in proptest::collection::vec(any_record(), 1..12),
        ) {
            let d = Deserializer::default();
            for output in [parquet(), OutputFormat::Orc(OrcOptions::default())] {
                let mut inference = Inference::new(&d, &output);
                for r in &records {
                    inference.observe(r.as_bytes());
                }
                let conversion = FormatConversion {
                    schema: inference.schema().unwrap(),
                    deserializer: d.clone(),
                    output,
                };
                let mut writer = ColumnarWriter::new(Vec::new(), &conversion).unwrap();
                for r in &records {
                    prop_assert!(conversion.rows(r.as_bytes()).is_ok(), "{} under {:?}", r, conversion.schema);
                    prop_assert!(writer.push_record(r.as_bytes()).is_ok(), "{} under {:?}", r, conversion.schema);
                }
                prop_assert!(writer.finish().is_ok());
            }
        }
    }

    #[test]
    fn a_pin_is_persisted_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schemas").join("s.json");
        let open = || SchemaPin::open(path.clone(), Deserializer::default(), parquet(), 3).unwrap();
        let pin = open();
        assert!(pin.conversion().is_none());
        // Sampling on until the sample has 3 records, then pinned from all three.
        assert!(more(pin.sample(br#"{"a":1}"#)));
        assert!(more(pin.sample(br#"{"b":"x"}"#)));
        let want = TableSchema::from_columns([("a", "double"), ("b", "string")]).unwrap();
        assert_eq!(pinned(pin.sample(br#"{"a":1.5}"#)), want);
        // Once pinned, nothing is inferred again: not from more records, not after a restart.
        assert_eq!(pinned(pin.sample(br#"{"z":1}"#)), want);
        let restarted = open();
        assert_eq!(restarted.conversion().map(|c| &c.schema), Some(&want));
        assert_eq!(restarted.pin().unwrap().schema, want);
        // The pinned file is a schema file; nothing written aside is left.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"name\": \"a\"") && text.contains("\"type\": \"double\""),
            "{text}"
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    /// A buffer that must write before the sample is full pins from the sample so far; a sample
    /// that gives no schema is dropped, and the next records are sampled afresh.
    #[test]
    fn an_early_pin_takes_the_sample_so_far_and_a_useless_sample_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let pin = SchemaPin::open(path.clone(), Deserializer::default(), parquet(), 100).unwrap();
        assert!(more(pin.sample(b"[1]")));
        assert!(matches!(pin.pin(), Err(InferError::NoColumns(_))));
        assert!(!path.exists());
        assert!(more(pin.sample(br#"{"k":true}"#)));
        let schema = &pin.pin().unwrap().schema;
        assert_eq!(
            schema,
            &TableSchema::from_columns([("k", "boolean")]).unwrap()
        );
        assert!(path.exists());
    }

    /// The sample ends at its byte bound even before its record count.
    #[test]
    fn the_sample_ends_at_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let pin = SchemaPin::open(
            dir.path().join("s.json"),
            Deserializer::default(),
            parquet(),
            100,
        )
        .unwrap();
        let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(MAX_SAMPLE_BYTES / 2 - 8));
        assert_eq!(big.len(), MAX_SAMPLE_BYTES / 2);
        assert!(more(pin.sample(big.as_bytes())));
        assert!(
            more(pin.sample(&big.as_bytes()[..big.len() - 1])),
            "one byte short"
        );
        let schema = pinned(pin.sample(b"{}"));
        assert_eq!(
            schema,
            TableSchema::from_columns([("s", "string")]).unwrap()
        );
    }

    #[test]
    fn an_unusable_pinned_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"columns":[{"name":"a","type":"nope"}]}"#).unwrap();
        let e = SchemaPin::open(path.clone(), Deserializer::default(), parquet(), 10).unwrap_err();
        assert!(matches!(e, InferError::Invalid { .. }), "{e}");
        assert!(
            e.to_string().contains("s.json") && e.to_string().contains("fix or delete"),
            "{e}"
        );
        // A nested schema pinned for Parquet cannot be written as ORC.
        std::fs::write(&path, r#"{"columns":[{"name":"a","type":"array<int>"}]}"#).unwrap();
        let orc = OutputFormat::Orc(OrcOptions::default());
        let e = SchemaPin::open(path, Deserializer::default(), orc, 10).unwrap_err();
        assert!(e.to_string().contains("ORC"), "{e}");
    }
}
