//! The fast path from JSON bytes to columns: a schema-directed parser that appends each value
//! straight into its column builder, with no JSON tree and no per-value allocation.
//!
//! It implements the same reading as [`Deserializer`] (which stays the reference and the fallback):
//! values of the shape a column expects (a JSON string for a string column, a JSON integer for an
//! int column, ...) are decoded here; any other value (a number for a string column, a string for an
//! int column under the OpenX SerDe, a number as a timestamp, ...) is parsed into a
//! `serde_json::Value` and converted by [`Deserializer`], so both paths agree by construction. A
//! property test checks that they do on generated records. A record that fails anywhere is cut off
//! every column again, so a batch holds only whole records.
//!
//! When a key occurs twice in an object (after case folding), the last occurrence wins, and a map
//! keeps its entries in record order. A record with several bad values is
//! reported with the first of them in the record.

use serde_json::Value;

use super::columnar::{BatchBuilder, ColumnBuilder};
use super::deserializer::{check_int, parse_date, parse_decimal, ConversionError, Deserializer};
use super::schema::{ColumnType, TableSchema};
use super::timestamp::{parse_hive_str, parse_openx_str};

/// Decodes records into a [`BatchBuilder`] for one schema and deserializer.
pub struct RecordDecoder {
    deserializer: Deserializer,
    root: Fields,
    scratch: Vec<u8>,
}

/// The members of an object-shaped type (the table, or a struct) with the JSON key each matches.
struct Fields {
    /// Byte → the byte keys are compared as (case folding, dots to underscores).
    fold: [u8; 256],
    keys: Vec<Vec<u8>>,
    /// Each key in quotes, as it appears in a record that spells it exactly.
    quoted: Vec<Option<Vec<u8>>>,
    types: Vec<ColumnType>,
    nested: Vec<Option<Fields>>,
    names: Vec<String>,
}

impl Fields {
    fn new(members: &[(String, ColumnType)], d: &Deserializer, top: bool) -> Fields {
        let keys: Vec<Vec<u8>> = members
            .iter()
            .map(|(name, _)| {
                let key = match d {
                    Deserializer::OpenX {
                        column_to_json_key, ..
                    } if top => column_to_json_key
                        .get(&name.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_else(|| name.clone()),
                    _ => name.clone(),
                };
                normalize(d, key.as_bytes())
            })
            .collect();
        let mut fold_table = [0u8; 256];
        for (b, f) in fold_table.iter_mut().enumerate() {
            *f = fold(d, b as u8);
        }
        // A key with a quote or backslash is spelled with escapes in JSON: no verbatim match.
        let quoted = keys
            .iter()
            .map(|k: &Vec<u8>| {
                (!k.iter().any(|b| matches!(b, b'"' | b'\\')))
                    .then(|| [&b"\""[..], k, b"\""].concat())
            })
            .collect();
        Fields {
            fold: fold_table,
            quoted,
            keys,
            types: members.iter().map(|(_, t)| t.clone()).collect(),
            nested: members.iter().map(|(_, t)| nested_fields(t, d)).collect(),
            names: members.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// The member a (raw) key names, trying `hint` first (keys tend to come in schema order).
    fn find(&self, key: &[u8], hint: usize) -> Option<usize> {
        let matches = |i: usize| {
            let want = &self.keys[i];
            want.len() == key.len()
                && key
                    .iter()
                    .zip(want)
                    .all(|(k, w)| self.fold[*k as usize] == *w)
        };
        if hint < self.keys.len() && matches(hint) {
            return Some(hint);
        }
        (0..self.keys.len()).find(|&i| matches(i))
    }
}

/// The struct fields of a struct, or of an array's items or a map's values however deeply nested.
fn nested_fields(ty: &ColumnType, d: &Deserializer) -> Option<Fields> {
    match ty {
        ColumnType::Struct(m) => Some(Fields::new(m, d, false)),
        ColumnType::Array(item) => nested_fields(item, d),
        ColumnType::Map(_, v) => nested_fields(v, d),
        _ => None,
    }
}

fn dots(d: &Deserializer) -> bool {
    matches!(
        d,
        Deserializer::OpenX {
            convert_dots_to_underscores: true,
            ..
        }
    )
}

fn fold(d: &Deserializer, b: u8) -> u8 {
    let b = if d.case_insensitive() {
        b.to_ascii_lowercase()
    } else {
        b
    };
    if b == b'.' && dots(d) {
        b'_'
    } else {
        b
    }
}

fn normalize(d: &Deserializer, key: &[u8]) -> Vec<u8> {
    key.iter().map(|b| fold(d, *b)).collect()
}

/// A decoding failure: bad JSON anywhere in the record, or a value that does not fit.
enum Failure {
    Syntax(String),
    Value(ConversionError),
}

type Parsed<T> = std::result::Result<T, Failure>;

impl Failure {
    /// Prefixes the path of a value error with `segment` (errors are built innermost first).
    fn within(self, segment: impl FnOnce() -> String) -> Failure {
        match self {
            Failure::Value(mut e) => {
                e.path = format!("{}{}", segment(), e.path);
                Failure::Value(e)
            }
            syntax => syntax,
        }
    }
}

fn value_error(reason: String) -> Failure {
    Failure::Value(ConversionError {
        path: String::new(),
        reason,
    })
}

impl RecordDecoder {
    pub fn new(schema: &TableSchema, deserializer: &Deserializer) -> RecordDecoder {
        let members: Vec<(String, ColumnType)> = schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.clone()))
            .collect();
        RecordDecoder {
            root: Fields::new(&members, deserializer, true),
            deserializer: deserializer.clone(),
            scratch: Vec::new(),
        }
    }

    /// Appends the rows of one record (concatenated JSON objects) to `batch`; returns how many. On
    /// error `batch` is as it was before.
    pub fn decode(
        &mut self,
        data: &[u8],
        batch: &mut BatchBuilder,
    ) -> Result<usize, ConversionError> {
        let before = batch.len();
        let result = self.decode_all(data, batch);
        match result {
            Ok(rows) => Ok(rows),
            Err(failure) => {
                for c in batch.columns_mut() {
                    c.truncate(before);
                }
                batch.set_len(before);
                Err(match failure {
                    Failure::Value(e) => e,
                    Failure::Syntax(reason) => ConversionError {
                        path: "$".into(),
                        reason: format!("the record is not valid JSON: {reason}"),
                    },
                })
            }
        }
    }

    fn decode_all(&mut self, data: &[u8], batch: &mut BatchBuilder) -> Parsed<usize> {
        let mut p = Parser { s: data, i: 0 };
        let mut rows = 0;
        loop {
            p.ws();
            let Some(c) = p.peek() else { break };
            if c != b'{' {
                p.skip_value(0)?;
                let kind = match c {
                    b'[' => "an array",
                    b'"' => "a string",
                    b't' | b'f' => "a boolean",
                    b'n' => "null",
                    _ => "a number",
                };
                return Err(Failure::Value(ConversionError {
                    path: "$".into(),
                    reason: format!("a record must be a JSON object, not {kind}"),
                }));
            }
            let row = batch.len();
            let d = &self.deserializer;
            object(
                &mut p,
                d,
                &self.root,
                batch.columns_mut(),
                row,
                &mut self.scratch,
                true,
            )?;
            batch.set_len(row + 1);
            rows += 1;
        }
        if rows == 0 {
            return Err(Failure::Value(ConversionError {
                path: "$".into(),
                reason: "the record holds no JSON object".into(),
            }));
        }
        batch.add_bytes(data.len());
        Ok(rows)
    }
}

/// `s.starts_with(prefix)` for the short quoted keys the decoder predicts, without a call into
/// `memcmp`: keys of 4 to 16 bytes are compared as two (possibly overlapping) words each way.
#[inline]
fn begins_with(s: &[u8], prefix: &[u8]) -> bool {
    let n = prefix.len();
    if s.len() < n {
        return false;
    }
    let word = |b: &[u8], at: usize, w: usize| -> u64 {
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(&b[at..at + w]);
        u64::from_le_bytes(a)
    };
    match n {
        4..=8 => word(s, 0, 4) == word(prefix, 0, 4) && word(s, n - 4, 4) == word(prefix, n - 4, 4),
        9..=16 => {
            word(s, 0, 8) == word(prefix, 0, 8) && word(s, n - 8, 8) == word(prefix, n - 8, 8)
        }
        _ => s[..n] == *prefix,
    }
}

/// Decodes an object at `p` into `columns` (each gets exactly one value for row `row`).
fn object(
    p: &mut Parser<'_>,
    d: &Deserializer,
    fields: &Fields,
    columns: &mut [ColumnBuilder],
    row: usize,
    scratch: &mut Vec<u8>,
    top: bool,
) -> Parsed<()> {
    p.expect(b'{')?;
    let mut seen = 0u64;
    let mut seen_more: Vec<bool> = Vec::new();
    let wide = fields.keys.len() > 64;
    if wide {
        seen_more.resize(fields.keys.len(), false);
    }
    let mut hint = 0;
    // Values that did not fit, by column, in record order (a later duplicate key may replace one).
    let mut pending: Vec<(usize, Failure)> = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            // Keys usually arrive in schema order, spelled as the schema spells them: try the
            // next member's key verbatim before scanning and folding the key.
            let found = match fields.quoted.get(hint) {
                Some(Some(q)) if begins_with(&p.s[p.i..], q) => {
                    p.i += q.len();
                    Some(hint)
                }
                _ => fields.find(p.string(scratch)?.as_bytes(), hint),
            };
            p.ws();
            p.expect(b':')?;
            p.ws();
            match found {
                None => p.skip_value(0)?,
                Some(i) => {
                    let again = if wide {
                        std::mem::replace(&mut seen_more[i], true)
                    } else {
                        let bit = 1u64 << i;
                        let was = seen & bit != 0;
                        seen |= bit;
                        was
                    };
                    if again {
                        columns[i].truncate(row);
                    }
                    let name = &fields.names[i];
                    let start = p.i;
                    match value(
                        p,
                        d,
                        &fields.types[i],
                        fields.nested[i].as_ref(),
                        &mut columns[i],
                        scratch,
                    ) {
                        Ok(()) => {
                            if !pending.is_empty() {
                                pending.retain(|(c, _)| *c != i);
                            }
                        }
                        Err(e @ Failure::Value(_)) => {
                            // A later occurrence of the key may still replace this value: keep
                            // the error until the object ends.
                            p.i = start;
                            p.skip_value(0)?;
                            columns[i].truncate(row);
                            pending.retain(|(c, _)| *c != i);
                            let e = e.within(|| {
                                if top {
                                    name.clone()
                                } else {
                                    format!(".{name}")
                                }
                            });
                            pending.push((i, e));
                        }
                        Err(syntax) => return Err(syntax),
                    }
                    hint = i + 1;
                }
            }
            p.ws();
            if !p.more(b'}')? {
                break;
            }
        }
    }
    if let Some((_, e)) = pending.into_iter().next() {
        return Err(e);
    }
    for (i, c) in columns.iter_mut().enumerate() {
        let was = if wide {
            seen_more[i]
        } else {
            seen & (1u64 << i) != 0
        };
        if !was {
            c.append_null();
        }
    }
    Ok(())
}

/// Decodes one value of type `ty` into `col`.
fn value(
    p: &mut Parser<'_>,
    d: &Deserializer,
    ty: &ColumnType,
    nested: Option<&Fields>,
    col: &mut ColumnBuilder,
    scratch: &mut Vec<u8>,
) -> Parsed<()> {
    let start = p.i;
    let c = p.peek().ok_or_else(|| p.syntax("unexpected end"))?;
    if c == b'n' {
        p.literal(b"null")?;
        col.append_null();
        return Ok(());
    }
    let fast = match (ty, c) {
        (ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_), b'"') => {
            let s = p.string(scratch)?;
            let s = match ty {
                ColumnType::Char(n) | ColumnType::Varchar(n) => truncate_chars(s, *n as usize),
                _ => s,
            };
            col.push_bytes(s.as_bytes());
            true
        }
        (
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt,
            b'-' | b'0'..=b'9',
        ) => {
            let short = p.short_number();
            let parsed = match short {
                Some(n) => (n.fraction == 0, Ok(n.integer())),
                None => {
                    let (text, integer) = p.number()?;
                    (integer, text.parse::<i64>())
                }
            };
            match parsed {
                (true, Ok(i)) => {
                    let i = check_int(i, ty).map_err(value_error)?;
                    if let ColumnBuilder::Int(l, _) = col {
                        l.push(i);
                    }
                    true
                }
                _ => false,
            }
        }
        (ColumnType::Double | ColumnType::Float, b'-' | b'0'..=b'9') => {
            let parsed = match p.short_number() {
                Some(n) => Ok(n.decimal()),
                None => {
                    let (text, _) = p.number()?;
                    text.parse::<f64>()
                }
            };
            match parsed {
                Ok(f) if f.is_finite() => {
                    match col {
                        ColumnBuilder::Float64(l) => l.push(f),
                        ColumnBuilder::Float32(l) => l.push(f as f32),
                        _ => {}
                    }
                    true
                }
                _ => false,
            }
        }
        (ColumnType::Boolean, b't' | b'f') => {
            let v = c == b't';
            p.literal(if v { b"true" } else { b"false" })?;
            if let ColumnBuilder::Bool(l) = col {
                l.push(v);
            }
            true
        }
        (ColumnType::Timestamp, b'"') => {
            let s = p.string(scratch)?;
            let micros = match d {
                Deserializer::OpenX { .. } => parse_openx_str(s),
                Deserializer::Hive { timestamp_formats } if timestamp_formats.is_empty() => {
                    parse_hive_str(s)
                }
                Deserializer::Hive { .. } => None,
            };
            match micros {
                Some(t) => {
                    if let ColumnBuilder::Timestamp(l) = col {
                        l.push(t);
                    }
                    true
                }
                None => false,
            }
        }
        (ColumnType::Date, b'"') => {
            let s = p.string(scratch)?;
            match parse_date(s.trim()) {
                Some(days) => {
                    if let ColumnBuilder::Date(l) = col {
                        l.push(days);
                    }
                    true
                }
                None => false,
            }
        }
        (ColumnType::Decimal { precision, scale }, b'-' | b'0'..=b'9') => {
            let (text, _) = p.number()?;
            let v = parse_decimal(text, *precision, *scale).map_err(value_error)?;
            if let ColumnBuilder::Decimal(l, _) = col {
                l.push(v);
            }
            true
        }
        (ColumnType::Binary, b'"') => {
            let s = p.string(scratch)?;
            match base64_simd::STANDARD.decode_to_vec(s.as_bytes()) {
                Ok(bytes) => {
                    col.push_bytes(&bytes);
                    true
                }
                Err(_) => false,
            }
        }
        (ColumnType::Array(item), b'[') => {
            p.i += 1;
            let ColumnBuilder::List {
                offsets,
                valid,
                child,
                ..
            } = col
            else {
                unreachable!("array columns have list builders")
            };
            p.ws();
            let mut n = 0usize;
            if p.peek() == Some(b']') {
                p.i += 1;
            } else {
                loop {
                    p.ws();
                    value(p, d, item, nested, child, scratch)
                        .map_err(|e| e.within(|| format!("[{n}]")))?;
                    n += 1;
                    p.ws();
                    if !p.more(b']')? {
                        break;
                    }
                }
            }
            offsets.push(child.len() as i32);
            valid.push(true);
            true
        }
        (ColumnType::Struct(_), b'{') => {
            let ColumnBuilder::Struct {
                valid, children, ..
            } = col
            else {
                unreachable!("struct columns have struct builders")
            };
            let row = valid.len();
            let fields = nested.expect("struct fields");
            object(p, d, fields, children, row, scratch, false)?;
            valid.push(true);
            true
        }
        (ColumnType::Map(key_ty, value_ty), b'{')
            if matches!(
                **key_ty,
                ColumnType::String | ColumnType::Varchar(_) | ColumnType::Char(_)
            ) =>
        {
            p.i += 1;
            let ColumnBuilder::Map {
                offsets,
                valid,
                keys,
                values,
                ..
            } = col
            else {
                unreachable!("map columns have map builders")
            };
            p.ws();
            if p.peek() == Some(b'}') {
                p.i += 1;
            } else {
                loop {
                    p.ws();
                    let k = p.string(scratch)?.to_string();
                    let k = match &**key_ty {
                        ColumnType::Char(n) | ColumnType::Varchar(n) => {
                            truncate_chars(&k, *n as usize).to_string()
                        }
                        _ => k,
                    };
                    p.ws();
                    p.expect(b':')?;
                    p.ws();
                    keys.push_bytes(k.as_bytes());
                    value(p, d, value_ty, nested, values, scratch)
                        .map_err(|e| e.within(|| format!("[{k:?}]")))?;
                    p.ws();
                    if !p.more(b'}')? {
                        break;
                    }
                }
            }
            offsets.push(keys.len() as i32);
            valid.push(true);
            true
        }
        _ => false,
    };
    if fast {
        return Ok(());
    }
    // Any other shape: the reference deserializer decides (and names the error).
    p.i = start;
    p.skip_value(0)?;
    let v: Value =
        serde_json::from_slice(&p.s[start..p.i]).map_err(|e| Failure::Syntax(e.to_string()))?;
    let cell = d.cell(&v, ty, "").map_err(Failure::Value)?;
    col.append(&cell);
    Ok(())
}

fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether one of the 8 bytes of `w` stops a string scan: `"`, `\\` or a control byte (the
/// [`SPECIAL`] ones). The "has a zero byte" test applied to `w ^ '"'`, `w ^ '\\'` and `w - 0x20`:
/// exact as a yes or no (borrows only happen below a byte that is a hit).
fn stops_in(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let q = w ^ (ONES * u64::from(b'"'));
    let b = w ^ (ONES * u64::from(b'\\'));
    let hits = (q.wrapping_sub(ONES) & !q)
        | (b.wrapping_sub(ONES) & !b)
        | (w.wrapping_sub(ONES * 0x20) & !w);
    hits & HIGHS != 0
}

/// Skips 16 bytes at a time from `from` while none of them stops a string scan (the
/// [`SPECIAL`] bytes); returns where it stopped (at a stop, or with fewer than 16 bytes left) and
/// whether a skipped byte was not ASCII. SSE2, which every x86-64 has; elsewhere it skips nothing
/// and the word loop does the work.
#[inline]
fn plain_run16(s: &[u8], from: usize) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86-64 baseline, so the intrinsics are available; every
        // load reads the 16 bytes of `chunk`, and `_mm_loadu_si128` needs no alignment.
        unsafe {
            let (quote, backslash, control) = (
                _mm_set1_epi8(b'"' as i8),
                _mm_set1_epi8(b'\\' as i8),
                _mm_set1_epi8(0x1f),
            );
            let mut at = from;
            let mut high = 0;
            while let Some(chunk) = s.get(at..at + 16) {
                let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                // A control byte is one that `min(v, 0x1f)` leaves unchanged.
                let stops = _mm_movemask_epi8(_mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    _mm_cmpeq_epi8(_mm_min_epu8(v, control), v),
                ));
                let highs = _mm_movemask_epi8(v);
                if stops != 0 {
                    let before = (1 << stops.trailing_zeros()) - 1;
                    return (
                        at + stops.trailing_zeros() as usize,
                        high | highs & before != 0,
                    );
                }
                high |= highs;
                at += 16;
            }
            (at, high != 0)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    (from, false)
}

/// A number token of at most 15 digits without an exponent (`-?digits[.digits]`), as the usual
/// JSON numbers are, read in the scan that finds its end. Such a value is exact as `f64` digits
/// over a power of ten, and Clinger's fast path applies: one correctly rounded division gives the
/// correctly rounded value, what `str::parse` returns, bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ShortNumber {
    negative: bool,
    mantissa: u64,
    /// Digits after the point (0: an integer).
    fraction: usize,
}

impl ShortNumber {
    /// Digits the fast path takes: below 2^53, so exact in `f64`.
    const MAX_DIGITS: usize = 15;

    fn decimal(self) -> f64 {
        const POW10: [f64; 16] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
        ];
        let v = self.mantissa as f64 / POW10[self.fraction];
        if self.negative {
            -v
        } else {
            v
        }
    }

    /// The value of an integer token (`fraction` 0).
    fn integer(self) -> i64 {
        let v = self.mantissa as i64;
        if self.negative {
            -v
        } else {
            v
        }
    }
}

/// Bytes that end the fast scan of a string: the quote, the backslash and control characters.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The maximum nesting depth of skipped values (serde_json's limit is 128).
const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[cold]
    fn syntax(&self, what: &str) -> Failure {
        Failure::Syntax(format!("{what} at byte {}", self.i))
    }

    #[cold]
    fn expected(&self, c: u8) -> Failure {
        self.syntax(&format!("expected '{}'", c as char))
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// After an item of an object or array: `true` at a comma (more items follow), `false` at
    /// `close` (the container ends), an error otherwise.
    #[inline]
    fn more(&mut self, close: u8) -> Parsed<bool> {
        match self.next() {
            Some(b',') => Ok(true),
            Some(c) if c == close => Ok(false),
            _ => Err(self.expected_more(close)),
        }
    }

    #[cold]
    fn expected_more(&self, close: u8) -> Failure {
        self.syntax(&format!("expected ',' or '{}'", close as char))
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Parsed<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.expected(c))
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Parsed<()> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.syntax("invalid literal"))
        }
    }

    /// A string value (the parser is at its opening quote).
    fn string<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Parsed<&'s str>
    where
        'a: 's,
    {
        self.expect(b'"')?;
        let start = self.i;
        // Fast path: scan to the closing quote or the first escape, eight bytes at a time while
        // none of them stops the scan, then byte by byte through the table.
        let (mut end, sixteens_non_ascii) = plain_run16(self.s, start);
        let mut high = if sixteens_non_ascii { 0x80 } else { 0 };
        let mut wide = 0u64;
        while let Some(word) = self.s.get(end..end + 8) {
            let Ok(word) = <[u8; 8]>::try_from(word) else {
                break;
            };
            let w = u64::from_le_bytes(word);
            if stops_in(w) {
                break;
            }
            wide |= w;
            end += 8;
        }
        while let Some(&b) = self.s.get(end) {
            if SPECIAL[b as usize] {
                break;
            }
            high |= b;
            end += 1;
        }
        let Some(&stop) = self.s.get(end) else {
            return Err(self.syntax("unterminated string"));
        };
        self.i = end;
        if stop < 0x20 {
            return Err(self.syntax("control character in a string"));
        }
        let run = &self.s[start..end];
        let non_ascii = high >= 0x80 || wide & 0x8080_8080_8080_8080 != 0;
        if stop == b'"' {
            self.i += 1;
            return if non_ascii {
                std::str::from_utf8(run)
                    .map_err(|_| Failure::Syntax("invalid UTF-8 in a string".into()))
            } else {
                // SAFETY: every byte of `run` is ASCII.
                Ok(unsafe { std::str::from_utf8_unchecked(run) })
            };
        }
        scratch.clear();
        scratch.extend_from_slice(&self.s[start..self.i]);
        loop {
            let b = *self
                .s
                .get(self.i)
                .ok_or_else(|| self.syntax("unterminated string"))?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self
                        .next()
                        .ok_or_else(|| self.syntax("unterminated escape"))?;
                    match e {
                        b'"' | b'\\' | b'/' => scratch.push(e),
                        b'b' => scratch.push(8),
                        b'f' => scratch.push(12),
                        b'n' => scratch.push(b'\n'),
                        b'r' => scratch.push(b'\r'),
                        b't' => scratch.push(b'\t'),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.syntax("lone surrogate"));
                                }
                                self.i += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.syntax("invalid surrogate pair"));
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&code) {
                                return Err(self.syntax("lone surrogate"));
                            }
                            let ch = char::from_u32(code)
                                .ok_or_else(|| self.syntax("invalid escape"))?;
                            let mut buf = [0u8; 4];
                            scratch.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.syntax("invalid escape")),
                    }
                }
                0..=0x1f => return Err(self.syntax("control character in a string")),
                _ => scratch.push(b),
            }
        }
        std::str::from_utf8(scratch)
            .map_err(|_| Failure::Syntax("invalid UTF-8 in a string".into()))
    }

    fn hex4(&mut self) -> Parsed<u32> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.syntax("short \\u escape"))?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.syntax("invalid \\u escape"));
        }
        let text = std::str::from_utf8(h).map_err(|_| self.syntax("invalid \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| self.syntax("invalid \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    /// A number token: its text, and whether it is an integer (no fraction or exponent).
    /// Reads a [`ShortNumber`] at the cursor, or leaves the cursor and returns `None` for any
    /// other token (longer, with an exponent, or not a valid number: [`Parser::number`] decides).
    #[inline]
    fn short_number(&mut self) -> Option<ShortNumber> {
        let s = self.s;
        let mut i = self.i;
        let negative = s.get(i) == Some(&b'-');
        i += usize::from(negative);
        let first = i;
        let (mut mantissa, mut fraction, mut point) = (0u64, 0usize, None);
        while let Some(&c) = s.get(i) {
            match c {
                b'0'..=b'9' => {
                    // Past 15 digits the value is not used: wrapping only avoids the overflow.
                    mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                    fraction += usize::from(point.is_some());
                }
                b'.' if point.is_none() => point = Some(i),
                _ => break,
            }
            i += 1;
        }
        let digits = i - first - usize::from(point.is_some());
        let well_formed = match point {
            Some(p) => p > first && p + 1 < i,
            None => i > first,
        };
        // JSON has no leading zeros ("01"); an exponent or more digits take the general path.
        let leading_zero = s.get(first) == Some(&b'0') && point.unwrap_or(i) - first > 1;
        if !well_formed
            || leading_zero
            || digits > ShortNumber::MAX_DIGITS
            || matches!(s.get(i), Some(b'e' | b'E'))
        {
            return None;
        }
        self.i = i;
        Some(ShortNumber {
            negative,
            mantissa,
            fraction,
        })
    }

    fn number(&mut self) -> Parsed<(&'a str, bool)> {
        let start = self.i;
        let s = self.s;
        if s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = s.get(self.i) {
                    self.i += 1;
                }
            }
            _ => return Err(self.syntax("invalid number")),
        }
        let mut integer = true;
        if s.get(self.i) == Some(&b'.') {
            integer = false;
            self.i += 1;
            let digits = self.i;
            while let Some(b'0'..=b'9') = s.get(self.i) {
                self.i += 1;
            }
            if self.i == digits {
                return Err(self.syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = s.get(self.i) {
            integer = false;
            self.i += 1;
            if let Some(b'+' | b'-') = s.get(self.i) {
                self.i += 1;
            }
            let digits = self.i;
            while let Some(b'0'..=b'9') = s.get(self.i) {
                self.i += 1;
            }
            if self.i == digits {
                return Err(self.syntax("invalid number"));
            }
        }
        // SAFETY: the bytes were matched as ASCII digits, signs, '.', 'e' and 'E' above.
        let text = unsafe { std::str::from_utf8_unchecked(&s[start..self.i]) };
        Ok((text, integer))
    }

    /// Skips one value, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> Parsed<()> {
        if depth > MAX_DEPTH {
            return Err(self.syntax("nesting too deep"));
        }
        match self.peek().ok_or_else(|| self.syntax("unexpected end"))? {
            b'"' => {
                let mut scratch = Vec::new();
                self.string(&mut scratch)?;
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    let mut scratch = Vec::new();
                    self.string(&mut scratch)?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if !self.more(b'}')? {
                        break;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if !self.more(b']')? {
                        break;
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::columnar::BatchBuilder;
    use crate::format::timestamp::HiveFormat;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashMap;

    const COLUMNS: &[(&str, &str)] = &[
        ("id", "bigint"),
        ("name", "string"),
        ("code", "varchar(3)"),
        ("small", "tinyint"),
        ("ratio", "double"),
        ("f", "float"),
        ("price", "decimal(9,2)"),
        ("ok", "boolean"),
        ("ts", "timestamp"),
        ("day", "date"),
        ("raw", "binary"),
        ("tags", "array<string>"),
        ("geo", "struct<city:string,zip:int,pts:array<double>>"),
        ("counts", "map<string,bigint>"),
        ("evs", "array<struct<kind:string,at:timestamp>>"),
    ];

    fn deserializers() -> Vec<Deserializer> {
        vec![
            Deserializer::default(),
            Deserializer::OpenX {
                case_insensitive: false,
                convert_dots_to_underscores: true,
                column_to_json_key: HashMap::from([("name".into(), "user.name".into())]),
            },
            Deserializer::Hive {
                timestamp_formats: vec![],
            },
            Deserializer::Hive {
                timestamp_formats: vec![HiveFormat::parse("millis").unwrap()],
            },
        ]
    }

    /// Decodes `records` both ways; the batches (or the errors) must be equal.
    fn agree(records: &[Vec<u8>], d: &Deserializer) -> Result<(), String> {
        let schema = TableSchema::from_columns(COLUMNS.iter().copied()).unwrap();
        let reference = FormatConversionRef { schema: &schema, d };
        let mut fast = BatchBuilder::new(&schema);
        let mut slow = BatchBuilder::new(&schema);
        let mut decoder = RecordDecoder::new(&schema, d);
        for r in records {
            let got = decoder.decode(r, &mut fast);
            let want = reference.rows(r);
            match (&got, &want) {
                (Ok(n), Ok(rows)) if *n == rows.len() => {
                    for row in rows {
                        slow.push(row);
                    }
                }
                // A record with several bad values: the decoder names the first in the record,
                // the reference the first in schema order.
                (Err(_), Err(_)) => {}
                _ => {
                    return Err(format!(
                        "{}: fast {got:?}, reference {:?}",
                        String::from_utf8_lossy(r),
                        want.map(|r| r.len())
                    ))
                }
            }
        }
        let (a, b) = (fast.finish(), slow.finish());
        if a != b {
            return Err(format!("batches differ:\nfast {a:?}\nreference {b:?}"));
        }
        Ok(())
    }

    struct FormatConversionRef<'a> {
        schema: &'a TableSchema,
        d: &'a Deserializer,
    }

    impl FormatConversionRef<'_> {
        fn rows(
            &self,
            data: &[u8],
        ) -> std::result::Result<Vec<Vec<crate::format::Cell>>, ConversionError> {
            crate::format::FormatConversion {
                schema: self.schema.clone(),
                deserializer: self.d.clone(),
                output: crate::format::OutputFormat::Parquet(Default::default()),
            }
            .rows(data)
        }
    }

    #[test]
    fn known_records_agree() {
        let records: Vec<Vec<u8>> = [
            json!({"id": 1, "name": "a", "code": "abcdef", "small": -128, "ratio": 1.5, "f": 0.1,
                   "price": 12.345, "ok": true, "ts": "2024-01-02 03:04:05.5", "day": "2024-02-29",
                   "raw": "aGk=", "tags": ["x", null], "geo": {"CITY": "Oslo", "pts": [1, 2.5]},
                   "counts": {"a": 1, "b": null}, "evs": [{"kind": "k", "at": 1700000000}, null]}),
            json!({"ID": "7", "Name": 5, "ratio": "2.5", "ok": "TRUE", "ts": 1700000000123i64,
                   "geo": null, "tags": [], "counts": {}, "user.name": "dotted"}),
            json!({"small": 128}),
            json!({"price": "1234567.891"}),
            json!({"name": {"nested": [1, {"a": null}]}, "code": "é€😀x"}),
            json!({"ts": "2024-01-02T03:04:05Z", "day": "2024-13-01"}),
            json!({"tags": "not a list"}),
            json!({"geo": {"zip": "12"}}),
            json!({"evs": [{"at": "bad"}]}),
        ]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .chain([
            br#"{"id":1}{"id":2} {"id":3}"#.to_vec(),
            br#"{"name":"esc\"aped\u00e9\ud83d\ude00\n"}"#.to_vec(),
            br#"{"id":1, "id":2}"#.to_vec(),
            br#"{"name":"a"} x"#.to_vec(),
            br#"[1]"#.to_vec(),
            b"".to_vec(),
            br#"{"id": 01}"#.to_vec(),
            br#"{"id": 1e400}"#.to_vec(),
            br#"{"ratio": 1e400}"#.to_vec(),
            br#"{"name": "\ud800"}"#.to_vec(),
            b"{\"name\": \"\xff\"}".to_vec(),
            br#"{"geo": {"city": "x", "city": "y"}}"#.to_vec(),
            br#"{"name": "\u+041"}"#.to_vec(),
            br#"{"price": 1234567.995}"#.to_vec(),
        ])
        .collect();
        for d in deserializers() {
            agree(&records, &d).unwrap_or_else(|e| panic!("{d:?}: {e}"));
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 .:\\-é\"\\\\]{0,12}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("2024-02-29 07:08:09.123"),
                Just("2024-02-29T07:08:09Z"),
                Just("2024-02-29"),
                Just("12.5"),
                Just("-3"),
                Just("aGk="),
                Just("true"),
            ]
            .prop_map(serde_json::Value::from),
        ];
        let keys = prop_oneof![
            Just("city"),
            Just("CITY"),
            Just("zip"),
            Just("pts"),
            Just("kind"),
            Just("at"),
            Just("a"),
            Just("other"),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_record() -> impl Strategy<Value = serde_json::Value> {
        let names = prop_oneof![
            Just("id"),
            Just("ID"),
            Just("name"),
            Just("Name"),
            Just("user.name"),
            Just("code"),
            Just("small"),
            Just("ratio"),
            Just("f"),
            Just("price"),
            Just("ok"),
            Just("ts"),
            Just("day"),
            Just("raw"),
            Just("tags"),
            Just("geo"),
            Just("counts"),
            Just("evs"),
            Just("unknown"),
        ];
        proptest::collection::btree_map(names.prop_map(String::from), any_json(), 0..10)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// The word test stops exactly where the byte table does.
        #[test]
        fn word_stops_match_the_byte_table(word in any::<[u8; 8]>(), pick in 0usize..8, byte in 0u8..0x80) {
            let mut word = word;
            for w in [word, { word[pick] = byte; word }] {
                let expected = w.iter().any(|&b| SPECIAL[b as usize]);
                prop_assert_eq!(stops_in(u64::from_le_bytes(w)), expected, "{:?}", w);
            }
        }

        /// The word-wise key test agrees with `starts_with`, at every length and for near misses
        /// (a prefix differing in one byte anywhere).
        #[test]
        fn key_prefix_test_matches_starts_with(
            prefix in proptest::collection::vec(any::<u8>(), 0..24),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
            flip in any::<Option<(usize, u8)>>(),
        ) {
            let mut s = prefix.clone();
            if let Some((at, x)) = flip {
                if !s.is_empty() {
                    let at = at % s.len();
                    s[at] ^= x.max(1);
                }
            }
            s.extend_from_slice(&tail);
            for cut in [s.len(), s.len().min(prefix.len().saturating_sub(1))] {
                let s = &s[..cut];
                prop_assert_eq!(begins_with(s, &prefix), s.starts_with(&prefix));
            }
        }

        /// The 16-byte skip stops exactly at the first byte the byte table stops at (or with
        /// fewer than 16 bytes left) and sees a non-ASCII byte exactly when one was skipped.
        #[test]
        fn sixteen_byte_skip_matches_the_byte_table(
            text in proptest::collection::vec(
                prop_oneof![8 => 0x20u8..0x7f, 1 => any::<u8>()], 0..80),
            from in 0usize..8,
        ) {
            let from = from.min(text.len());
            let (at, non_ascii) = plain_run16(&text, from);
            let stop = text[from..].iter().position(|&b| SPECIAL[b as usize]).map(|k| from + k);
            match stop {
                Some(stop) if stop < at => prop_assert!(false, "skipped the stop at {}", stop),
                Some(stop) if stop > at => prop_assert!(text.len() - at < 16),
                Some(_) => {}
                None => prop_assert!(text.len() - at < 16),
            }
            prop_assert_eq!(non_ascii, text[from..at].iter().any(|&b| b >= 0x80));
        }

        /// The fast path reads a number to the bit that `str::parse` does, to its end, or leaves
        /// the cursor where it was; it takes every JSON number of up to 15 digits without an
        /// exponent.
        #[test]
        fn short_numbers_parse_like_the_standard_library(
            text in "-?[0-9]{1,17}(\\.[0-9]{1,17})?",
            after in prop_oneof![Just(""), Just(","), Just("}"), Just("e5"), Just(".5")],
        ) {
            // A second point ends the token (the caller then finds a syntax error); after an
            // integer it would be the token's own point.
            let after = if after == ".5" && !text.contains('.') { "" } else { after };
            let input = format!("{text}{after}");
            let mut p = Parser { s: input.as_bytes(), i: 0 };
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            let body = text.trim_start_matches('-');
            let json = !(body.len() > 1 && body.starts_with('0') && !body.starts_with("0."));
            match p.short_number() {
                Some(n) => {
                    prop_assert!(json && digits <= ShortNumber::MAX_DIGITS && after != "e5", "{}", input);
                    prop_assert_eq!(p.i, text.len());
                    let standard: f64 = text.parse().unwrap();
                    prop_assert_eq!(n.decimal().to_bits(), standard.to_bits(), "{}", text);
                    if n.fraction == 0 {
                        prop_assert_eq!(n.integer(), text.parse::<i64>().unwrap());
                    }
                }
                None => {
                    prop_assert!(!json || digits > ShortNumber::MAX_DIGITS || after == "e5", "{}", input);
                    prop_assert_eq!(p.i, 0);
                }
            }
        }
    }

    #[test]
    fn short_numbers_cover_the_usual_numbers() {
        let short = |text: &str| {
            Parser {
                s: text.as_bytes(),
                i: 0,
            }
            .short_number()
        };
        for text in [
            "0",
            "-0",
            "224.62",
            "-30.1561",
            "0.1",
            "123456789012345",
            "0.000001",
        ] {
            assert_eq!(
                short(text).map(|n| n.decimal().to_bits()),
                Some(text.parse::<f64>().unwrap().to_bits()),
                "{text}"
            );
        }
        for text in [
            "1234567890123456",
            "1e5",
            "1.5E-3",
            "-",
            "01",
            "-01.5",
            ".5",
            "1.",
            "x",
        ] {
            assert_eq!(short(text), None, "{text}");
        }
        assert_eq!(short("-7").map(ShortNumber::integer), Some(-7));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// The fast decoder and the reference deserializer agree on every record: same rows, or
        /// both reject it at the same column path.
        #[test]
        fn fast_and_reference_agree(records in proptest::collection::vec(any_record(), 1..8)) {
            let bytes: Vec<Vec<u8>> = records.iter().map(|r| r.to_string().into_bytes()).collect();
            for d in deserializers() {
                prop_assert_eq!(agree(&bytes, &d), Ok(()), "{:?}", d);
            }
        }
    }

    /// A map key that converts to null is refused (Parquet and ORC map keys are non-nullable):
    /// the record fails instead of the batch failing to build later.
    #[test]
    fn null_map_keys_are_conversion_errors() {
        let schema = TableSchema::from_columns([("m", "map<int,bigint>")]).unwrap();
        let d = Deserializer::default();
        let mut batch = BatchBuilder::new(&schema);
        let mut decoder = RecordDecoder::new(&schema, &d);
        assert_eq!(
            decoder.decode(br#"{"m":{"1":2,"-3":4}}"#, &mut batch),
            Ok(1)
        );
        let err = decoder
            .decode(br#"{"m":{"1":2,"null":1}}"#, &mut batch)
            .unwrap_err();
        assert!(
            err.path.starts_with("m[") && err.reason.contains("null"),
            "{err}"
        );
        let b = batch.finish();
        assert_eq!(b.num_rows(), 1);
    }
}
