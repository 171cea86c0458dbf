//! From a JSON record to one typed cell per schema column, as Firehose's deserializers read it.
//!
//! OpenX JSON SerDe (the default): keys match columns case-insensitively unless `case_insensitive`
//! is off; `convert_dots_in_json_keys_to_underscores` turns `a.b` into `a_b`;
//! `column_to_json_key_mappings` names the JSON key of a column; numbers and booleans may arrive as
//! strings, and an object or array in a string column is kept as its JSON text.
//! Hive JSON SerDe: numbers given as strings are rejected, nested values are not stringified, and
//! timestamps follow its `timestamp_formats`.
//! A record that does not fit the schema is an error naming the column path, so that it goes to the
//! `format-conversion-failed` output while the rest of its batch is converted.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::schema::{ColumnType, TableSchema};
use super::timestamp::{parse_hive, parse_openx, HiveFormat};

/// Which deserializer, with its options.
#[derive(Debug, Clone)]
pub enum Deserializer {
    OpenX {
        case_insensitive: bool,
        convert_dots_to_underscores: bool,
        /// Column name (lowercase) → JSON key.
        column_to_json_key: HashMap<String, String>,
    },
    Hive {
        timestamp_formats: Vec<HiveFormat>,
    },
}

impl Default for Deserializer {
    fn default() -> Self {
        Deserializer::OpenX {
            case_insensitive: true,
            convert_dots_to_underscores: false,
            column_to_json_key: HashMap::new(),
        }
    }
}

/// A value converted to its column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    /// Every integer width.
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Unscaled value of a decimal column.
    Decimal(i128),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
    /// Days since the epoch.
    Date(i32),
    List(Vec<Cell>),
    Map(Vec<(Cell, Cell)>),
    Struct(Vec<Cell>),
}

/// Why a record does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConversionError {
    /// Column path, e.g. `geo.city` or `tags[2]`.
    pub path: String,
    pub reason: String,
}

impl Deserializer {
    /// Converts one JSON record into a row of cells, one per schema column, in order.
    pub fn row(&self, record: &Value, schema: &TableSchema) -> Result<Vec<Cell>, ConversionError> {
        let Value::Object(object) = record else {
            return Err(ConversionError {
                path: "$".into(),
                reason: format!("a record must be a JSON object, not {}", kind(record)),
            });
        };
        let object = self.normalize_keys(object);
        schema
            .columns
            .iter()
            .map(|column| {
                let key = match self {
                    Deserializer::OpenX {
                        column_to_json_key, ..
                    } => column_to_json_key
                        .get(&column.name.to_ascii_lowercase())
                        .map(|k| self.normalize_key(k))
                        .unwrap_or_else(|| self.normalize_key(&column.name)),
                    Deserializer::Hive { .. } => column.name.to_ascii_lowercase(),
                };
                let value = object.get(&key).copied().unwrap_or(&Value::Null);
                self.cell(value, &column.ty, &column.name)
            })
            .collect()
    }

    /// Whether keys match columns ignoring case (Hive always does).
    pub(crate) fn case_insensitive(&self) -> bool {
        match self {
            Deserializer::OpenX {
                case_insensitive, ..
            } => *case_insensitive,
            Deserializer::Hive { .. } => true,
        }
    }

    /// A JSON key as it is matched against column and field names.
    pub(crate) fn normalize_key(&self, key: &str) -> String {
        let key = match self {
            Deserializer::OpenX {
                convert_dots_to_underscores: true,
                ..
            } => key.replace('.', "_"),
            _ => key.to_string(),
        };
        if self.case_insensitive() {
            key.to_ascii_lowercase()
        } else {
            key
        }
    }

    fn normalize_keys<'a>(&self, object: &'a Map<String, Value>) -> HashMap<String, &'a Value> {
        object
            .iter()
            .map(|(k, v)| (self.normalize_key(k), v))
            .collect()
    }

    fn lenient(&self) -> bool {
        matches!(self, Deserializer::OpenX { .. })
    }

    pub(crate) fn cell(
        &self,
        v: &Value,
        ty: &ColumnType,
        path: &str,
    ) -> Result<Cell, ConversionError> {
        let fail = |reason: String| ConversionError {
            path: path.to_string(),
            reason,
        };
        let mismatch = || fail(format!("expected {ty}, found {}", kind(v)));
        if v.is_null() {
            return Ok(Cell::Null);
        }
        Ok(match ty {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) if self.lenient() => v.to_string(),
                    Value::Object(_) | Value::Array(_) if self.lenient() => v.to_string(),
                    _ => return Err(mismatch()),
                };
                match ty {
                    ColumnType::Char(n) | ColumnType::Varchar(n) => {
                        Cell::Str(s.chars().take(*n as usize).collect())
                    }
                    _ => Cell::Str(s),
                }
            }
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => {
                let i = match v {
                    Value::Number(n) => n.as_i64().ok_or_else(mismatch)?,
                    Value::String(s) if self.lenient() => {
                        s.trim().parse::<i64>().map_err(|_| mismatch())?
                    }
                    _ => return Err(mismatch()),
                };
                Cell::Int(check_int(i, ty).map_err(fail)?)
            }
            ColumnType::Float | ColumnType::Double => match v {
                Value::Number(n) => Cell::Float(n.as_f64().ok_or_else(mismatch)?),
                Value::String(s) if self.lenient() => {
                    Cell::Float(s.trim().parse::<f64>().map_err(|_| mismatch())?)
                }
                _ => return Err(mismatch()),
            },
            ColumnType::Decimal { precision, scale } => {
                let text = match v {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) if self.lenient() => s.trim().to_string(),
                    _ => return Err(mismatch()),
                };
                Cell::Decimal(parse_decimal(&text, *precision, *scale).map_err(fail)?)
            }
            ColumnType::Boolean => match v {
                Value::Bool(b) => Cell::Bool(*b),
                Value::String(s) if self.lenient() && s.eq_ignore_ascii_case("true") => {
                    Cell::Bool(true)
                }
                Value::String(s) if self.lenient() && s.eq_ignore_ascii_case("false") => {
                    Cell::Bool(false)
                }
                _ => return Err(mismatch()),
            },
            ColumnType::Timestamp => {
                let micros = match self {
                    Deserializer::OpenX { .. } => parse_openx(v),
                    Deserializer::Hive { timestamp_formats } => parse_hive(v, timestamp_formats),
                };
                Cell::Timestamp(micros.ok_or_else(|| {
                    fail(format!("{v} is not a timestamp this deserializer reads"))
                })?)
            }
            ColumnType::Date => {
                let Value::String(s) = v else {
                    return Err(mismatch());
                };
                Cell::Date(
                    parse_date(s.trim())
                        .ok_or_else(|| fail(format!("{s:?} is not a date (yyyy-MM-dd)")))?,
                )
            }
            ColumnType::Binary => {
                let Value::String(s) = v else {
                    return Err(mismatch());
                };
                Cell::Bytes(
                    base64_simd::STANDARD
                        .decode_to_vec(s.as_bytes())
                        .map_err(|_| fail("binary values must be base64".into()))?,
                )
            }
            ColumnType::Array(item) => {
                let Value::Array(items) = v else {
                    return Err(mismatch());
                };
                Cell::List(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| self.cell(x, item, &format!("{path}[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            ColumnType::Map(key_ty, value_ty) => {
                let Value::Object(entries) = v else {
                    return Err(mismatch());
                };
                let mut out = Vec::with_capacity(entries.len());
                for (k, x) in entries {
                    let key_path = format!("{path}[{k:?}]");
                    // JSON keys are strings; map<int,...> keys are converted from their text.
                    let key = match self.cell(&Value::String(k.clone()), key_ty, &key_path) {
                        Ok(key) => key,
                        Err(_)
                            if !matches!(
                                **key_ty,
                                ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_)
                            ) =>
                        {
                            let parsed: Value =
                                serde_json::from_str(k).map_err(|_| ConversionError {
                                    path: key_path.clone(),
                                    reason: format!("map key {k:?} is not a {key_ty}"),
                                })?;
                            Deserializer::default().cell(&parsed, key_ty, &key_path)?
                        }
                        Err(e) => return Err(e),
                    };
                    // Parquet and ORC map keys cannot be null (`{"null": 1}` in a map<int,…>).
                    if key == Cell::Null {
                        return Err(ConversionError {
                            path: key_path,
                            reason: format!("map key {k:?} is null, and map keys cannot be"),
                        });
                    }
                    out.push((key, self.cell(x, value_ty, &key_path)?));
                }
                Cell::Map(out)
            }
            ColumnType::Struct(fields) => {
                let Value::Object(object) = v else {
                    return Err(mismatch());
                };
                let object = self.normalize_keys(object);
                Cell::Struct(
                    fields
                        .iter()
                        .map(|(name, fty)| {
                            let x = object
                                .get(&self.normalize_key(name))
                                .copied()
                                .unwrap_or(&Value::Null);
                            self.cell(x, fty, &format!("{path}.{name}"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that `i` fits the integer column type `ty` (tinyint, smallint, int or bigint).
pub(crate) fn check_int(i: i64, ty: &ColumnType) -> Result<i64, String> {
    let (lo, hi) = match ty {
        ColumnType::TinyInt => (i8::MIN as i64, i8::MAX as i64),
        ColumnType::SmallInt => (i16::MIN as i64, i16::MAX as i64),
        ColumnType::Int => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    };
    if (lo..=hi).contains(&i) {
        Ok(i)
    } else {
        Err(format!("{i} is out of range for {ty}"))
    }
}

/// Parses decimal text (`-12.345`, `1e3`) to an unscaled value with `scale` digits, rounding half
/// away from zero, and checks that it fits `precision` digits.
pub(crate) fn parse_decimal(text: &str, precision: u8, scale: u8) -> Result<i128, String> {
    let bad = || format!("{text:?} is not a decimal");
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| bad())?),
        None => (text, 0),
    };
    let (neg, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // All digits, and where the decimal point sits after applying the exponent.
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = int_part.len() as i64 + exp as i64;
    let keep = point + scale as i64; // digits that stay left of the cut
    let mut value: i128 = 0;
    for i in 0..keep.max(0) {
        let d = all.get(i as usize).copied().unwrap_or(0) as i128;
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| format!("{text} does not fit decimal({precision},{scale})"))?;
        if i > 60 {
            return Err(format!("{text} does not fit decimal({precision},{scale})"));
        }
    }
    if keep >= 0 && all.get(keep as usize).is_some_and(|&d| d >= 5) {
        value = value
            .checked_add(1)
            .ok_or_else(|| format!("{text} does not fit decimal({precision},{scale})"))?;
    }
    if value >= 10i128.pow(precision as u32) {
        return Err(format!("{text} does not fit decimal({precision},{scale})"));
    }
    Ok(if neg { -value } else { value })
}

/// `yyyy-MM-dd` to days since the epoch.
pub(crate) fn parse_date(s: &str) -> Option<i32> {
    let mut parts = s.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = crate::time::days_from_civil(y, m, d);
    // Reject days past the month's end (e.g. 02-30) by a round trip through the calendar.
    let t = crate::time::UtcDateTime::from_epoch_ms(days * 86_400_000);
    ((t.year, t.month, t.day) == (y, m, d)).then_some(days as i32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_rounding_at_the_i128_edge_is_an_error_not_an_overflow() {
        let text = "170141183460469231731687303715884105727.5";
        assert!(parse_decimal(text, 38, 0).is_err());
        assert!(parse_decimal("99999999999999999999999999999999999999.5", 38, 0).is_err());
        assert_eq!(parse_decimal("9.994", 3, 2), Ok(999));
        assert!(parse_decimal("9.995", 3, 2).is_err());
    }

    use super::*;
    use serde_json::json;

    fn schema(cols: &[(&str, &str)]) -> TableSchema {
        TableSchema::from_columns(cols.iter().copied()).unwrap()
    }

    #[test]
    fn openx_defaults_are_lenient_and_case_insensitive() {
        let s = schema(&[
            ("customer_id", "string"),
            ("qty", "int"),
            ("amount", "decimal(10,2)"),
            ("ok", "boolean"),
            ("geo", "string"),
        ]);
        let row = Deserializer::default()
            .row(&json!({"Customer_ID": 42, "QTY": "7", "amount": 12.345, "ok": "TRUE", "geo": {"city": "Berlin"}}), &s)
            .unwrap();
        assert_eq!(
            row,
            vec![
                Cell::Str("42".into()),
                Cell::Int(7),
                Cell::Decimal(1235),
                Cell::Bool(true),
                Cell::Str(r#"{"city":"Berlin"}"#.into()),
            ]
        );
    }

    #[test]
    fn openx_key_options() {
        let s = schema(&[("a_b", "int"), ("ts", "timestamp")]);
        let d = Deserializer::OpenX {
            case_insensitive: true,
            convert_dots_to_underscores: true,
            column_to_json_key: HashMap::from([("ts".to_string(), "Event.Time".to_string())]),
        };
        let row = d
            .row(&json!({"a.b": 1, "event.time": 1_700_000_000}), &s)
            .unwrap();
        assert_eq!(
            row,
            vec![Cell::Int(1), Cell::Timestamp(1_700_000_000_000_000)]
        );
        let strict = Deserializer::OpenX {
            case_insensitive: false,
            convert_dots_to_underscores: false,
            column_to_json_key: HashMap::new(),
        };
        assert_eq!(
            strict.row(&json!({"A_B": 1}), &s).unwrap()[0],
            Cell::Null,
            "case-sensitive keys do not match"
        );
    }

    #[test]
    fn hive_is_strict() {
        let s = schema(&[("qty", "int"), ("name", "string")]);
        let hive = Deserializer::Hive {
            timestamp_formats: vec![],
        };
        let err = hive.row(&json!({"qty": "7"}), &s).unwrap_err();
        assert_eq!(err.path, "qty");
        let err = hive
            .row(&json!({"qty": 1, "name": {"x": 1}}), &s)
            .unwrap_err();
        assert_eq!(err.path, "name");
        assert_eq!(
            hive.row(&json!({"QTY": 3}), &s).unwrap(),
            vec![Cell::Int(3), Cell::Null]
        );
    }

    #[test]
    fn nested_types_and_error_paths() {
        let s = schema(&[
            ("tags", "array<string>"),
            ("geo", "struct<city:string,zip:int>"),
            ("counts", "map<int,bigint>"),
        ]);
        let d = Deserializer::default();
        let row = d.row(&json!({"tags": ["a", "b"], "geo": {"City": "Oslo", "zip": 150}, "counts": {"1": 10, "2": 20}}), &s).unwrap();
        assert_eq!(
            row[0],
            Cell::List(vec![Cell::Str("a".into()), Cell::Str("b".into())])
        );
        assert_eq!(
            row[1],
            Cell::Struct(vec![Cell::Str("Oslo".into()), Cell::Int(150)])
        );
        assert_eq!(
            row[2],
            Cell::Map(vec![
                (Cell::Int(1), Cell::Int(10)),
                (Cell::Int(2), Cell::Int(20))
            ])
        );
        let err = d.row(&json!({"geo": {"zip": "north"}}), &s).unwrap_err();
        assert_eq!(err.path, "geo.zip");
        let err = d
            .row(&json!({"tags": ["a", ["nested"]], "counts": {}}), &s)
            .unwrap();
        assert_eq!(
            err[0],
            Cell::List(vec![
                Cell::Str("a".into()),
                Cell::Str(r#"["nested"]"#.into())
            ])
        );
        let err = d.row(&json!({"counts": {"x": 1}}), &s).unwrap_err();
        assert!(err.path.starts_with("counts["), "{err}");
        assert!(d.row(&json!([1, 2]), &s).is_err(), "arrays are not records");
    }

    #[test]
    fn limits_and_ranges() {
        let s = schema(&[
            ("t", "tinyint"),
            ("v", "varchar(3)"),
            ("d", "date"),
            ("b", "binary"),
        ]);
        let d = Deserializer::default();
        assert_eq!(d.row(&json!({"t": 128}), &s).unwrap_err().path, "t");
        let row = d
            .row(
                &json!({"t": -128, "v": "abcdef", "d": "2024-02-29", "b": "aGk="}),
                &s,
            )
            .unwrap();
        assert_eq!(
            row,
            vec![
                Cell::Int(-128),
                Cell::Str("abc".into()),
                Cell::Date(19_782),
                Cell::Bytes(b"hi".to_vec())
            ]
        );
        assert!(d.row(&json!({"d": "2023-02-29"}), &s).is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("12.345", 10, 2), Ok(1235));
        assert_eq!(parse_decimal("-12.344", 10, 2), Ok(-1234));
        assert_eq!(parse_decimal("1e3", 10, 2), Ok(100_000));
        assert_eq!(parse_decimal("0.005", 3, 2), Ok(1));
        assert_eq!(parse_decimal(".5", 3, 0), Ok(1));
        assert!(parse_decimal("1000", 3, 0).is_err(), "precision");
        assert!(
            parse_decimal("99.995", 4, 2).is_err(),
            "rounds up past the precision"
        );
        assert!(parse_decimal("1e400", 38, 0).is_err());
        assert!(parse_decimal("abc", 10, 2).is_err());
        assert!(parse_decimal("-", 10, 2).is_err());
    }
}
