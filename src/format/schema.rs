//! Table schemas as Glue and Hive write them: `bigint`, `decimal(10,2)`, `array<string>`,
//! `map<string,int>`, `struct<a:int,b:array<double>>`, ... parsed case-insensitively, printed in
//! canonical lowercase, and mapped to Arrow types for the columnar writers.
//!
//! Mapping: string / char(n) / varchar(n) → Utf8; tinyint/smallint/int/bigint → Int8/16/32/64;
//! float/double → Float32/64; decimal(p,s) → Decimal128(p,s) (default (10,0) as in Hive);
//! boolean; date → Date32; timestamp → Timestamp(µs, UTC) (what Athena, Spark and DuckDB read as a
//! timestamp, and the only timestamp ORC writers accept); binary; array → List; map → Map; struct
//! → Struct. Every column and nested value is nullable, as in Hive.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

/// Deepest nesting accepted: schemas are configuration, but a hostile one must not overflow the
/// parser's stack.
pub const MAX_DEPTH: usize = 32;

/// A schema error, with the byte offset in the type text where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid type {text:?} at offset {offset}: {reason}")]
pub struct SchemaError {
    pub text: String,
    pub offset: usize,
    pub reason: String,
}

/// A Glue / Hive column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Char(u32),
    Varchar(u32),
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal { precision: u8, scale: u8 },
    Boolean,
    Timestamp,
    Date,
    Binary,
    Array(Box<ColumnType>),
    Map(Box<ColumnType>, Box<ColumnType>),
    Struct(Vec<(String, ColumnType)>),
}

impl ColumnType {
    /// Parses a type such as `struct<id:bigint,tags:array<string>>`.
    pub fn parse(text: &str) -> Result<ColumnType, SchemaError> {
        let mut p = Parser { text, pos: 0 };
        let ty = p.parse_type(0)?;
        p.skip_ws();
        if p.pos != text.len() {
            return Err(p.error("unexpected text after the type"));
        }
        Ok(ty)
    }

    /// Whether this is a primitive (not array, map or struct): map keys must be.
    pub fn is_primitive(&self) -> bool {
        !matches!(
            self,
            ColumnType::Array(_) | ColumnType::Map(..) | ColumnType::Struct(_)
        )
    }

    /// The Arrow type the columnar writers use.
    pub fn to_arrow(&self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => DataType::Utf8,
            ColumnType::TinyInt => DataType::Int8,
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Float => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Decimal { precision, scale } => {
                DataType::Decimal128(*precision, *scale as i8)
            }
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Date => DataType::Date32,
            ColumnType::Binary => DataType::Binary,
            ColumnType::Array(item) => {
                DataType::List(Arc::new(Field::new("item", item.to_arrow(), true)))
            }
            ColumnType::Map(key, value) => DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", key.to_arrow(), false),
                        Field::new("value", value.to_arrow(), true),
                    ])),
                    false,
                )),
                false,
            ),
            ColumnType::Struct(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|(name, ty)| Field::new(name, ty.to_arrow(), true))
                    .collect::<Vec<_>>(),
            )),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Char(n) => write!(f, "char({n})"),
            ColumnType::Varchar(n) => write!(f, "varchar({n})"),
            ColumnType::TinyInt => f.write_str("tinyint"),
            ColumnType::SmallInt => f.write_str("smallint"),
            ColumnType::Int => f.write_str("int"),
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Float => f.write_str("float"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Binary => f.write_str("binary"),
            ColumnType::Array(item) => write!(f, "array<{item}>"),
            ColumnType::Map(k, v) => write!(f, "map<{k},{v}>"),
            ColumnType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (name, ty)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{name}:{ty}")?;
                }
                f.write_str(">")
            }
        }
    }
}

/// A named column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// The columns of the output files, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// Builds a schema from (name, type text) pairs; names must be valid and unique
    /// (case-insensitively, as Hive and Glue compare them).
    pub fn from_columns<'a>(
        columns: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TableSchema, String> {
        let columns = columns
            .into_iter()
            .map(|(name, ty)| {
                let ty = ColumnType::parse(ty).map_err(|e| format!("column {name:?}: {e}"))?;
                Ok(Column {
                    name: name.to_string(),
                    ty,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        TableSchema::new(columns)
    }

    /// A schema of `columns`; names must be valid and unique (case-insensitively), and there must
    /// be at least one.
    pub fn new(columns: Vec<Column>) -> Result<TableSchema, String> {
        for (i, c) in columns.iter().enumerate() {
            check_name(&c.name)?;
            if columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(format!("column {:?} is defined twice", c.name));
            }
        }
        if columns.is_empty() {
            return Err("a schema needs at least one column".into());
        }
        Ok(TableSchema { columns })
    }

    /// The Arrow schema of the output files.
    pub fn to_arrow(&self) -> Schema {
        Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.to_arrow(), true))
                .collect::<Vec<_>>(),
        )
    }
}

/// Column and field names: letters, digits and underscores, 1 to 255 bytes (Glue's rule, which
/// also keeps them valid in Parquet, ORC and SQL engines without quoting).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("column name {name:?} must be 1 to 255 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "column name {name:?} has {c:?}; use letters, digits and '_'"
        ));
    }
    Ok(())
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> SchemaError {
        SchemaError {
            text: self.text.to_string(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(|c: char| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        while self.text[self.pos..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), SchemaError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(format!("expected '{c}'")))
        }
    }

    fn number(&mut self) -> Result<u32, SchemaError> {
        let w = self.word().to_string();
        w.parse::<u32>()
            .map_err(|_| self.error(format!("expected a number, found {w:?}")))
    }

    fn parse_type(&mut self, depth: usize) -> Result<ColumnType, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("types nest deeper than {MAX_DEPTH} levels")));
        }
        let start = self.pos;
        let word = self.word().to_ascii_lowercase();
        Ok(match word.as_str() {
            "string" => ColumnType::String,
            "tinyint" => ColumnType::TinyInt,
            "smallint" => ColumnType::SmallInt,
            "int" | "integer" => ColumnType::Int,
            "bigint" => ColumnType::BigInt,
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "boolean" => ColumnType::Boolean,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            "binary" => ColumnType::Binary,
            "char" | "varchar" => {
                self.expect('(')?;
                let n = self.number()?;
                self.expect(')')?;
                let max = if word == "char" { 255 } else { 65_535 };
                if !(1..=max).contains(&n) {
                    return Err(self.error(format!("{word} length must be 1 to {max}, got {n}")));
                }
                if word == "char" {
                    ColumnType::Char(n)
                } else {
                    ColumnType::Varchar(n)
                }
            }
            "decimal" => {
                let (precision, scale) = if self.eat('(') {
                    let p = self.number()?;
                    let s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                    (p, s)
                } else {
                    (10, 0)
                };
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(self.error(format!(
                        "decimal({precision},{scale}): precision must be 1 to 38 and scale at most the precision"
                    )));
                }
                ColumnType::Decimal {
                    precision: precision as u8,
                    scale: scale as u8,
                }
            }
            "array" => {
                self.expect('<')?;
                let item = self.parse_type(depth + 1)?;
                self.expect('>')?;
                ColumnType::Array(Box::new(item))
            }
            "map" => {
                self.expect('<')?;
                let key_at = self.pos;
                let key = self.parse_type(depth + 1)?;
                if !key.is_primitive() {
                    self.pos = key_at;
                    return Err(self.error("map keys must be primitive types"));
                }
                self.expect(',')?;
                let value = self.parse_type(depth + 1)?;
                self.expect('>')?;
                ColumnType::Map(Box::new(key), Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(String, ColumnType)> = Vec::new();
                loop {
                    let name_at = self.pos;
                    let name = self.word().to_string();
                    if let Err(reason) = check_name(&name) {
                        self.pos = name_at;
                        return Err(self.error(reason));
                    }
                    if fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                        self.pos = name_at;
                        self.skip_ws();
                        return Err(self.error(format!("struct field {name:?} is defined twice")));
                    }
                    self.expect(':')?;
                    fields.push((name, self.parse_type(depth + 1)?));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                ColumnType::Struct(fields)
            }
            "" => return Err(self.error("expected a type")),
            other => {
                self.pos = start;
                return Err(self.error(format!(
                    "unknown type {other:?}; expected string, char(n), varchar(n), tinyint, smallint, int, bigint, float, double, decimal(p,s), boolean, timestamp, date, binary, array<...>, map<...,...> or struct<...>"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_glue_types_case_insensitively_with_spaces() {
        let t = ColumnType::parse(
            " STRUCT< id : BIGINT , tags: array<String>, m:map<string, decimal(12, 2)> > ",
        )
        .unwrap();
        assert_eq!(
            t.to_string(),
            "struct<id:bigint,tags:array<string>,m:map<string,decimal(12,2)>>"
        );
        assert_eq!(ColumnType::parse("integer").unwrap(), ColumnType::Int);
        assert_eq!(
            ColumnType::parse("decimal").unwrap(),
            ColumnType::Decimal {
                precision: 10,
                scale: 0
            }
        );
        assert_eq!(
            ColumnType::parse("varchar(65535)").unwrap(),
            ColumnType::Varchar(65_535)
        );
    }

    #[test]
    fn rejects_bad_types_with_offsets() {
        for (bad, offset) in [
            ("strin", 0),
            ("array<int", 9),
            ("map<array<int>,int>", 4),
            ("decimal(39,0)", 13),
            ("decimal(5,6)", 12),
            ("char(0)", 7),
            ("struct<a:int,A:int>", 13),
            ("struct<a-b:int>", 8),
            ("int int", 4),
            ("", 0),
        ] {
            let err = ColumnType::parse(bad).unwrap_err();
            assert_eq!(err.offset, offset, "{bad:?}: {err}");
        }
        let deep = format!("{}int{}", "array<".repeat(40), ">".repeat(40));
        assert!(ColumnType::parse(&deep)
            .unwrap_err()
            .reason
            .contains("nest deeper"));
    }

    #[test]
    fn maps_to_arrow() {
        assert_eq!(
            ColumnType::parse("timestamp").unwrap().to_arrow(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(
            ColumnType::parse("decimal(12,2)").unwrap().to_arrow(),
            DataType::Decimal128(12, 2)
        );
        let DataType::Map(entries, false) =
            ColumnType::parse("map<string,int>").unwrap().to_arrow()
        else {
            panic!("not a map")
        };
        let DataType::Struct(kv) = entries.data_type() else {
            panic!("no entries struct")
        };
        assert!(!kv[0].is_nullable() && kv[1].is_nullable());
        let schema = TableSchema::from_columns([("id", "bigint"), ("ts", "timestamp")])
            .unwrap()
            .to_arrow();
        assert_eq!(schema.fields().len(), 2);
        assert!(TableSchema::from_columns([("id", "int"), ("ID", "int")]).is_err());
        assert!(TableSchema::from_columns([("bad name", "int")]).is_err());
        assert!(TableSchema::from_columns(std::iter::empty()).is_err());
    }

    fn column_type() -> impl Strategy<Value = ColumnType> {
        let leaf = prop_oneof![
            Just(ColumnType::String),
            (1u32..=255).prop_map(ColumnType::Char),
            (1u32..=65_535).prop_map(ColumnType::Varchar),
            Just(ColumnType::TinyInt),
            Just(ColumnType::SmallInt),
            Just(ColumnType::Int),
            Just(ColumnType::BigInt),
            Just(ColumnType::Float),
            Just(ColumnType::Double),
            (1u8..=38)
                .prop_flat_map(|p| (Just(p), 0..=p))
                .prop_map(|(precision, scale)| ColumnType::Decimal { precision, scale }),
            Just(ColumnType::Boolean),
            Just(ColumnType::Timestamp),
            Just(ColumnType::Date),
            Just(ColumnType::Binary),
        ];
        leaf.clone().prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| ColumnType::Array(Box::new(t))),
                (leaf.clone(), inner.clone())
                    .prop_map(|(k, v)| ColumnType::Map(Box::new(k), Box::new(v))),
                proptest::collection::vec(inner, 1..4).prop_map(|types| ColumnType::Struct(
                    types
                        .into_iter()
                        .enumerate()
                        .map(|(i, t)| (format!("f{i}"), t))
                        .collect()
                )),
            ]
        })
    }

    proptest! {
        /// Printing and parsing back gives the same type.
        #[test]
        fn display_round_trips(t in column_type()) {
            prop_assert_eq!(ColumnType::parse(&t.to_string()).unwrap(), t);
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn garbage_never_panics(s in "[a-z<>(),: 0-9]{0,64}") {
            let _ = ColumnType::parse(&s);
        }
    }
}
