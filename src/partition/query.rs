//! Firehose `MetadataExtractionQuery`: a jq query run on every record to get its partition keys.
//!
//! The query is compiled once, when the configuration is loaded, with [jaq] (a jq clone) and jq's
//! standard library, including the time functions (`strftime`, `gmtime`, `mktime`, `todate`, ...,
//! always in UTC except `strflocaltime`/`localtime`), the string functions (`split`,
//! `ascii_downcase`, `tostring`, `ltrimstr`, ...), and regular expressions (`test`, `sub`, `gsub`,
//! `capture`, ...). As in Firehose, the query must turn a record into exactly one object of at most
//! [`MAX_KEYS`] keys whose values are strings, numbers or booleans; each value becomes its string
//! form (numbers as jq 1.6 prints them: `2024`, not `2024.0`).
//!
//! Differences from jq 1.6 that a query may notice:
//! - `env` and `$ENV` are not available (the daemon's environment holds credentials, which must
//!   not end up in object keys), nor are `input`, `inputs`, `import` and `include`.
//! - `halt` and `halt_error` fail the record instead of ending the process.
//! - Integers of up to 64 bits keep every digit (jq 1.6 rounds those beyond 2^53 to a double).
//! - Inside the query, `tostring` and string interpolation print a whole number that is a float
//!   the jaq way: `.ms / 1000 | tostring` is `"1718000000.0"` where jq says `"1718000000"`
//!   (`floor` first gives an integer). Only the final key values use jq's number format.
//! - Regular expressions are jaq's (the `regex-bites` engine), not Oniguruma: no look-around or
//!   back-references.
//!
//! A query that recurses without bound (`def f: f + 1; f`) can overflow the thread's stack, and
//! one that loops forever (`last(repeat(1))`) never returns: the query is trusted configuration.
//!
//! [jaq]: https://github.com/01mf02/jaq

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use jaq_core::load::{self, lex, Arena, File, Loader};
use jaq_core::{compile, data::JustLut, Ctx, Exn, Vars};
use jaq_json::{Num, Val};

/// Most keys a query's object may have (Firehose's limit on partition keys from a query).
pub const MAX_KEYS: usize = 50;

/// Longest query, in characters (Firehose's limit on a processor parameter).
pub const MAX_QUERY_CHARS: usize = 5120;

/// Deepest nesting of `(`, `[` and `{` accepted in a query.
pub const MAX_NESTING: usize = 64;

/// Most syntax levels a query may have, estimated from its tokens (a chain `.a | .b | .c` counts
/// each token, an object's keys or a call's arguments count once each plus the deepest one).
/// jaq evaluates a record by recursing over the syntax tree, so this keeps evaluation well inside
/// a 2 MiB thread stack, even in a debug build.
pub const MAX_DEPTH: usize = 300;

/// Stack for the thread that parses and compiles a query (only the touched part is allocated).
const COMPILE_STACK_BYTES: usize = 256 << 20;

/// Longest runtime error message kept (in bytes): jq's errors can quote a whole record.
const MAX_MESSAGE_BYTES: usize = 512;

/// Native filters left out of the standard library: `env` would expose the daemon's environment.
const DENIED_FUNS: &[&str] = &["env"];

type Data = JustLut<Val>;
type Filter = jaq_core::Filter<Data>;

/// A compiled Firehose `MetadataExtractionQuery` (jq).
///
/// Compiled once at configuration load and evaluated per record. It is `Send + Sync` and its clone
/// is an `Arc` clone, so pipelines on several threads share one (by reference, clone or `Arc`).
#[derive(Clone)]
pub struct MetadataQuery {
    filter: Arc<Filter>,
    /// The query's fast form, when it only picks fields (see [`FieldPicks`]).
    picks: Option<Arc<FieldPicks>>,
}

impl std::fmt::Debug for MetadataQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataQuery").finish_non_exhaustive()
    }
}

/// Why a query does not compile. Lines and columns count from 1; columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query is longer than [`MAX_QUERY_CHARS`].
    #[error("jq query is {chars} characters long, more than the limit of {MAX_QUERY_CHARS}")]
    TooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// The query's syntax tree could be deeper than [`MAX_DEPTH`] (a very long chain of
    /// operators); shorten it or split it into definitions.
    #[error(
        "jq query is too deeply chained (about {depth} levels, more than the limit of {MAX_DEPTH})"
    )]
    TooComplex {
        /// The estimated depth.
        depth: usize,
    },
    /// Brackets nest deeper than [`MAX_NESTING`].
    #[error("jq query nests brackets more than {MAX_NESTING} deep (line {line}, column {column})")]
    TooDeep {
        /// Line of the bracket that went past the limit.
        line: usize,
        /// Column of that bracket.
        column: usize,
    },
    /// The query is not valid jq syntax.
    #[error("jq syntax error at line {line}, column {column}: {detail}")]
    Syntax {
        /// Line of the first error.
        line: usize,
        /// Column of the first error.
        column: usize,
        /// What was expected and what was found there.
        detail: String,
    },
    /// The query names a filter, variable or label that does not exist (or with another arity).
    #[error("jq query uses undefined {kind} `{name}` at line {line}, column {column}")]
    Undefined {
        /// Line of the first undefined name.
        line: usize,
        /// Column of that name.
        column: usize,
        /// `filter`, `variable`, `label` or `module`.
        kind: &'static str,
        /// The name, with `/arity` for a filter (`strftime/0`).
        name: String,
    },
    /// jaq panicked while compiling (a bug in jaq).
    #[error("jq query could not be compiled: jaq panicked: {message}")]
    Internal {
        /// The panic's message.
        message: String,
    },
    /// The query uses `import` or `include`, which cannot load anything here.
    #[error("jq query imports module `{path}`, but modules are not supported")]
    ModulesUnsupported {
        /// The imported path as written.
        path: String,
    },
}

/// Why one record yields no partition keys. Each variant has a Firehose-style error code
/// ([`ExtractError::code`]) for the error output; the record itself is fine to keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The record is not one UTF-8 JSON value.
    #[error("record is not valid JSON: {reason}")]
    NotJson {
        /// The parser's message, with line and column.
        reason: String,
    },
    /// The query raised an error (`error(...)`, a type error, a bad date, `halt`, ...).
    #[error("jq query failed: {message}")]
    QueryFailed {
        /// jq's message, cut to 512 bytes.
        message: String,
    },
    /// The jq engine panicked on this record (a bug in jaq); the record is failed, not the thread.
    #[error("jq query evaluation panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The query produced no value (`empty`, `select(false)`, `.[]` of `[]`).
    #[error("jq query produced no output")]
    NoOutput,
    /// The query produced more than one value (`.a, .b` or `.[]`).
    #[error("jq query produced more than one output")]
    MultipleOutputs,
    /// The query's value is not an object.
    #[error("jq query produced {found}, not an object")]
    NotAnObject {
        /// The jq type of what it produced (`string`, `array`, ...).
        found: &'static str,
    },
    /// The object has more than [`MAX_KEYS`] keys.
    #[error("jq query produced {count} partition keys, more than the limit of {MAX_KEYS}")]
    TooManyKeys {
        /// How many keys it had.
        count: usize,
    },
    /// An object key is not a string (jaq allows `{(1): ...}`).
    #[error("partition key name {found} is not a string")]
    NonStringKey {
        /// The key as jq prints it.
        found: String,
    },
    /// A key's value is null, which is also what a missing field gives (`.no_such_field`).
    #[error("partition key `{key}` is null or missing")]
    NullValue {
        /// The partition key.
        key: String,
    },
    /// A key's value is an array, an object or a byte string, which has no string form.
    #[error("partition key `{key}` is {kind}, not a string, number or boolean")]
    NonScalarValue {
        /// The partition key.
        key: String,
        /// `array`, `object` or `byte string`.
        kind: &'static str,
    },
}

impl ExtractError {
    /// The Firehose-style error code written to the error output with the record:
    /// - `DynamicPartitioning.MetadataExtractionFailed`: the record is not JSON, or the query
    ///   failed, panicked, or did not produce exactly one object;
    /// - `DynamicPartitioning.TooManyPartitionKeys`: more than [`MAX_KEYS`] keys;
    /// - `DynamicPartitioning.PartitionKeyMissing`: a key's value is null or missing;
    /// - `DynamicPartitioning.PartitionKeyInvalid`: a key name is not a string, or a value is an
    ///   array, object or byte string.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson { .. }
            | Self::QueryFailed { .. }
            | Self::Panicked { .. }
            | Self::NoOutput
            | Self::MultipleOutputs
            | Self::NotAnObject { .. } => "DynamicPartitioning.MetadataExtractionFailed",
            Self::TooManyKeys { .. } => "DynamicPartitioning.TooManyPartitionKeys",
            Self::NullValue { .. } => "DynamicPartitioning.PartitionKeyMissing",
            Self::NonStringKey { .. } | Self::NonScalarValue { .. } => {
                "DynamicPartitioning.PartitionKeyInvalid"
            }
        }
    }
}

impl MetadataQuery {
    /// Compiles `query` with jq's standard library (minus `env`); on failure the error gives the
    /// line and column of the first problem and what was expected or undefined there.
    pub fn compile(query: &str) -> Result<MetadataQuery, QueryError> {
        let chars = query.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(QueryError::TooLong { chars });
        }
        check_nesting(query)?;
        // jaq's parser and compiler recurse once per syntax level, several times deeper than
        // evaluation does, so they get a stack of their own; the query is compiled once.
        let spawned = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("jq-compile".to_string())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || compile_caught(query))
                .ok()
                .map(|handle| handle.join())
        });
        match spawned {
            Some(Ok(result)) => result,
            Some(Err(payload)) => Err(QueryError::Internal {
                message: panic_message(payload.as_ref()),
            }),
            None => compile_caught(query),
        }
    }

    /// Evaluates the query on one record (UTF-8 JSON bytes) and returns the partition keys in the
    /// object's order, each value in its string form. Fails, never panics, when the record is not
    /// JSON, the query errs or yields anything but exactly one object of at most [`MAX_KEYS`] keys
    /// with string, number or boolean values.
    pub fn extract(&self, record: &[u8]) -> Result<Vec<(String, String)>, ExtractError> {
        if let Some(keys) = self.picks.as_ref().and_then(|p| p.extract(record)) {
            return Ok(keys);
        }
        self.extract_with_jaq(record)
    }

    /// [`Self::extract`] by jaq alone.
    fn extract_with_jaq(&self, record: &[u8]) -> Result<Vec<(String, String)>, ExtractError> {
        let input: Val = serde_json::from_slice(record).map_err(|e| ExtractError::NotJson {
            reason: e.to_string(),
        })?;
        let output = catch_unwind(AssertUnwindSafe(|| self.run(input))).map_err(|payload| {
            ExtractError::Panicked {
                message: panic_message(payload.as_ref()),
            }
        })??;
        partition_keys(output)
    }

    /// Runs the filter, insisting on exactly one output.
    fn run(&self, input: Val) -> Result<Val, ExtractError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input));
        let first = match outputs.next() {
            None => return Err(ExtractError::NoOutput),
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(query_failed(e)),
        };
        match outputs.next() {
            None => Ok(first),
            Some(Ok(_)) => Err(ExtractError::MultipleOutputs),
            Some(Err(e)) => Err(query_failed(e)),
        }
    }
}

/// The common shape of partitioning queries, `{customer_id: .customer_id, region: .geo.region}`
/// (or the shorthand `{customer_id}`): an object of keys each picking a field path. Evaluated by
/// looking the fields up in the parsed record, about five times faster than jaq; whenever a picked
/// value is not a string, boolean or integer (a float, null, missing, nested) the record goes the
/// jaq way, so results and errors are jaq's exactly (a property test holds the two paths equal).
#[derive(Debug)]
struct FieldPicks(Vec<(String, Vec<String>)>);

/// jq's keywords, which cannot be bare object keys or field names.
const JQ_KEYWORDS: &[&str] = &[
    "if", "then", "elif", "else", "end", "as", "def", "reduce", "foreach", "try", "catch", "label",
    "import", "include", "and", "or", "not", "__loc__",
];

impl FieldPicks {
    /// The picks of `query`, or `None` when it has any other shape.
    fn parse(query: &str) -> Option<FieldPicks> {
        let mut rest = query.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
        let mut picks: Vec<(String, Vec<String>)> = Vec::new();
        while !rest.is_empty() {
            let (key, after) = ident(rest)?;
            rest = after.trim_start();
            let path = if let Some(after) = rest.strip_prefix(':') {
                let mut path = Vec::new();
                rest = after.trim_start();
                while let Some(after) = rest.strip_prefix('.') {
                    let (field, after) = ident(after)?;
                    path.push(field.to_string());
                    rest = after;
                }
                if path.is_empty() {
                    return None;
                }
                rest = rest.trim_start();
                path
            } else {
                vec![key.to_string()]
            };
            if picks.iter().any(|(k, _)| k == key) {
                return None; // jq keeps the last of duplicate keys: leave that to jaq
            }
            picks.push((key.to_string(), path));
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None if rest.is_empty() => {}
                None => return None,
            }
        }
        (!picks.is_empty() && picks.len() <= MAX_KEYS).then_some(FieldPicks(picks))
    }

    /// The keys of `record`, or `None` when jaq must decide (see the type's docs).
    fn extract(&self, record: &[u8]) -> Option<Vec<(String, String)>> {
        let value: serde_json::Value = serde_json::from_slice(record).ok()?;
        self.0
            .iter()
            .map(|(key, path)| {
                let mut v = &value;
                for field in path {
                    v = v.as_object()?.get(field)?;
                }
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                    _ => return None,
                };
                Some((key.clone(), text))
            })
            .collect()
    }
}

/// A jq identifier at the start of `s` (not a keyword), and what follows it.
fn ident(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (id, rest) = s.split_at(end);
    let first = id.chars().next()?;
    (!first.is_ascii_digit() && !JQ_KEYWORDS.contains(&id)).then_some((id, rest))
}

/// [`compile_checked`], with a panic in jaq turned into [`QueryError::Internal`].
fn compile_caught(query: &str) -> Result<MetadataQuery, QueryError> {
    catch_unwind(|| compile_checked(query)).unwrap_or_else(|payload| {
        Err(QueryError::Internal {
            message: panic_message(payload.as_ref()),
        })
    })
}

/// Checks the query's depth, then loads and compiles it with the standard library.
fn compile_checked(query: &str) -> Result<MetadataQuery, QueryError> {
    // On a lex error the loader below reports it with its position.
    if let Ok(tokens) = lex::Lexer::new(query).lex() {
        let depth = token_depth(&tokens, false);
        if depth > MAX_DEPTH {
            return Err(QueryError::TooComplex { depth });
        }
    }
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !DENIED_FUNS.contains(name));
    let arena = Arena::default();
    let file = File {
        code: query,
        path: (),
    };
    let modules = Loader::new(defs)
        .load(&arena, file)
        .map_err(|errs| load_error(query, errs))?;
    let filter = compile::Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| compile_error(query, errs))?;
    Ok(MetadataQuery {
        filter: Arc::new(filter),
        picks: FieldPicks::parse(query).map(Arc::new),
    })
}

/// An upper bound on the depth of the query's syntax tree: every level of the tree takes at least
/// one token, so a run of tokens is at most as deep as it is long. Pieces between `;` (and between
/// `,` in an object) are separate subtrees, so a run counts its pieces plus its deepest piece; a
/// string counts one per part (`"\(a)-\(b)"` is a chain of concatenations). The recursion is
/// bounded by [`MAX_NESTING`].
fn token_depth(tokens: &[lex::Token<&str>], object: bool) -> usize {
    let separates = |t: &lex::Token<&str>| {
        matches!(t.1, lex::Tok::Sym) && (t.0 == ";" || (object && t.0 == ","))
    };
    let (mut pieces, mut deepest) = (0, 0);
    for piece in tokens.split(separates) {
        let inner = piece.iter().map(|token| match &token.1 {
            lex::Tok::Block(children) => token_depth(children, token.0.starts_with('{')),
            lex::Tok::Str(parts) => {
                let terms = parts.iter().map(|part| match part {
                    lex::StrPart::Term(t) => token_depth(std::slice::from_ref(t), false),
                    _ => 0,
                });
                parts.len() + terms.max().unwrap_or(0)
            }
            _ => 0,
        });
        pieces += 1;
        deepest = deepest.max(piece.len() + inner.max().unwrap_or(0));
    }
    pieces + deepest
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Turns the query's output into `(key, value)` pairs.
fn partition_keys(output: Val) -> Result<Vec<(String, String)>, ExtractError> {
    let Val::Obj(map) = output else {
        return Err(ExtractError::NotAnObject {
            found: type_name(&output),
        });
    };
    if map.len() > MAX_KEYS {
        return Err(ExtractError::TooManyKeys { count: map.len() });
    }
    let mut keys = Vec::with_capacity(map.len());
    for (k, v) in map.iter() {
        let Val::TStr(k) = k else {
            return Err(ExtractError::NonStringKey {
                found: truncate(k.to_string()),
            });
        };
        let key = String::from_utf8_lossy(k).into_owned();
        let value = match v {
            Val::TStr(s) => String::from_utf8_lossy(s).into_owned(),
            Val::Bool(b) => b.to_string(),
            Val::Num(n) => match format_num(n) {
                Some(s) => s,
                None => return Err(ExtractError::NullValue { key }),
            },
            Val::Null => return Err(ExtractError::NullValue { key }),
            other => {
                return Err(ExtractError::NonScalarValue {
                    key,
                    kind: type_name(other),
                })
            }
        };
        keys.push((key, value));
    }
    Ok(keys)
}

/// jq's name for a value's type (`byte string` is jaq's own).
fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) => "string",
        Val::BStr(_) => "byte string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// A number as jq 1.6 prints it, or `None` for NaN (which jq 1.6 prints as `null`).
/// Integers keep all their digits.
fn format_num(n: &Num) -> Option<String> {
    match n {
        Num::Int(_) | Num::BigInt(_) => Some(n.to_string()),
        Num::Float(f) => format_f64(*f),
        Num::Dec(s) => match s.parse::<f64>() {
            Ok(f) => format_f64(f),
            Err(_) => Some(s.to_string()),
        },
    }
}

/// A double as jq 1.6's `jvp_dtoa_fmt` prints it: the shortest digits that read back the same,
/// in plain notation unless the decimal exponent is below -4 or far past the digits, then as
/// `d.ddde+XX` (at least two exponent digits). Infinities print as the largest double.
fn format_f64(f: f64) -> Option<String> {
    if f.is_nan() {
        return None;
    }
    let f = f.clamp(f64::MIN, f64::MAX);
    // `{:e}` gives the shortest round-trip digits: "1.5e-7", "2.024e3", "0e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i64 = exp.parse().ok()?;
    let decpt = exp + 1; // position of the decimal point relative to the digits
    let ndigits = digits.len() as i64;
    let mut out = String::with_capacity(digits.len() + 8);
    if f.is_sign_negative() {
        out.push('-');
    }
    if decpt <= -4 || decpt > ndigits + 15 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in decpt..0 {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let point = decpt.min(ndigits) as usize;
        out.push_str(&digits[..point]);
        if point < digits.len() {
            out.push('.');
            out.push_str(&digits[point..]);
        }
        for _ in ndigits..decpt {
            out.push('0');
        }
    }
    Some(out)
}

/// The message of a jaq exception.
fn query_failed(e: Exn<'_, Val>) -> ExtractError {
    let message = match e.get_err() {
        // `error("boom")` carries the string itself: show it unquoted, as jq does
        Ok(err) => match err.into_val() {
            Val::TStr(s) => String::from_utf8_lossy(&s).into_owned(),
            v => v.to_string(),
        },
        Err(e) => match e.get_halt() {
            Ok(code) => format!("halt called with exit code {code}"),
            Err(_) => "break without a matching label".to_string(),
        },
    };
    ExtractError::QueryFailed {
        message: truncate(message),
    }
}

/// Cuts `s` to at most [`MAX_MESSAGE_BYTES`] bytes on a character boundary.
fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Rejects queries whose brackets nest deeper than [`MAX_NESTING`] (counting brackets inside
/// string literals too, which can only make it stricter).
fn check_nesting(query: &str) -> Result<(), QueryError> {
    let mut depth = 0usize;
    for (i, c) in query.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    let (line, column) = line_column(query, i);
                    return Err(QueryError::TooDeep { line, column });
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Byte offset of `part` in `whole`, if `part` is a slice of it (jaq's errors hold such slices).
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(s: &str, offset: usize) -> (usize, usize) {
    let before = s.get(..offset).unwrap_or(s);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Position of `part` in the query, or the end of the query when it cannot be placed.
fn position(query: &str, part: &str) -> (usize, usize) {
    line_column(query, offset_in(query, part).unwrap_or(query.len()))
}

/// A short, quoted view of the text at an error, or "end of query".
fn snippet(text: &str) -> String {
    let t: String = text.chars().take(20).collect();
    match (t.is_empty(), t.len() < text.len()) {
        (true, _) => "end of query".to_string(),
        (false, false) => format!("`{t}`"),
        (false, true) => format!("`{t}…`"),
    }
}

fn lex_expected(e: &lex::Expect<&str>) -> &'static str {
    match e {
        lex::Expect::Digit => "a digit",
        lex::Expect::Ident => "an identifier",
        lex::Expect::Delim("(") => "a closing parenthesis",
        lex::Expect::Delim("[") => "a closing bracket",
        lex::Expect::Delim("{") => "a closing brace",
        lex::Expect::Delim(_) => "a closing quote",
        lex::Expect::Escape => "a string escape sequence",
        lex::Expect::Unicode => "4 hexadecimal digits of a code point",
        _ => "a token",
    }
}

/// The first error from jaq's loader (lexer, parser, or module import).
fn load_error(query: &str, errs: load::Errors<&str, ()>) -> QueryError {
    for (_file, err) in errs {
        match err {
            load::Error::Lex(es) => {
                if let Some((expect, rest)) = es.first() {
                    let (line, column) = position(query, rest);
                    let opened = match expect {
                        lex::Expect::Delim(open) => {
                            let (l, c) = position(query, open);
                            format!(" for the `{open}` at line {l}, column {c}")
                        }
                        _ => String::new(),
                    };
                    let detail = format!(
                        "expected {}{opened}, found {}",
                        lex_expected(expect),
                        snippet(rest)
                    );
                    return QueryError::Syntax {
                        line,
                        column,
                        detail,
                    };
                }
            }
            load::Error::Parse(es) => {
                if let Some((expect, found)) = es.first() {
                    let (line, column) = position(query, found);
                    let detail = format!("expected {}, found {}", expect.as_str(), snippet(found));
                    return QueryError::Syntax {
                        line,
                        column,
                        detail,
                    };
                }
            }
            load::Error::Io(es) => {
                if let Some((path, _)) = es.first() {
                    return QueryError::ModulesUnsupported {
                        path: path.to_string(),
                    };
                }
            }
        }
    }
    QueryError::Syntax {
        line: 1,
        column: 1,
        detail: "the query could not be parsed".to_string(),
    }
}

/// The first undefined name reported by jaq's compiler.
fn compile_error(query: &str, errs: compile::Errors<&str, ()>) -> QueryError {
    let first = errs.into_iter().flat_map(|(_file, es)| es).next();
    match first {
        Some((name, undefined)) => {
            let (line, column) = position(query, name);
            let name = match undefined {
                compile::Undefined::Filter(arity) => format!("{name}/{arity}"),
                _ => name.to_string(),
            };
            QueryError::Undefined {
                line,
                column,
                kind: undefined.as_str(),
                name,
            }
        }
        None => QueryError::Syntax {
            line: 1,
            column: 1,
            detail: "the query could not be compiled".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str) -> MetadataQuery {
        match MetadataQuery::compile(query) {
            Ok(q) => q,
            Err(e) => panic!("{query}: {e}"),
        }
    }

    fn keys(query: &str, record: &str) -> Vec<(String, String)> {
        match q(query).extract(record.as_bytes()) {
            Ok(k) => k,
            Err(e) => panic!("{query} on {record}: {e}"),
        }
    }

    fn one(query: &str, record: &str) -> String {
        let k = keys(&format!("{{k: ({query})}}"), record);
        assert_eq!(k.len(), 1);
        k[0].1.clone()
    }

    fn err(query: &str, record: &str) -> ExtractError {
        match q(query).extract(record.as_bytes()) {
            Ok(k) => panic!("{query} on {record}: expected an error, got {k:?}"),
            Err(e) => e,
        }
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn send_sync_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<MetadataQuery>();
        let a = q("{a: .a}");
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.filter, &b.filter));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || b.extract(format!(r#"{{"a":{i}}}"#).as_bytes()))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().ok(), Some(Ok(pairs(&[("a", &i.to_string())]))));
        }
    }

    #[test]
    fn three_key_query_from_the_docs() {
        let query = r#"{customer_id: .customer_id, year: (.ts | strftime("%Y")), month: (.ts|strftime("%m"))}"#;
        let got = keys(query, r#"{"customer_id": "c-42", "ts": 1718000000}"#);
        assert_eq!(
            got,
            pairs(&[("customer_id", "c-42"), ("year", "2024"), ("month", "06")])
        );
    }

    #[test]
    fn keys_keep_the_object_order() {
        let got = keys("{z: 1, a: 2, m: 3}", "{}");
        assert_eq!(got, pairs(&[("z", "1"), ("a", "2"), ("m", "3")]));
    }

    #[test]
    fn strftime_formats_epoch_seconds_in_utc() {
        let r = r#"{"ts": 1718000000}"#; // 2024-06-10T06:13:20Z
        assert_eq!(one(r#".ts | strftime("%Y")"#, r), "2024");
        assert_eq!(one(r#".ts | strftime("%m")"#, r), "06");
        assert_eq!(one(r#".ts | strftime("%d")"#, r), "10");
        assert_eq!(one(r#".ts | strftime("%H")"#, r), "06");
        assert_eq!(one(r#".ts | strftime("%Y/%m/%d/%H")"#, r), "2024/06/10/06");
        // fractional seconds and milliseconds divided down
        assert_eq!(
            one(
                r#".ts | strftime("%Y-%m-%dT%H")"#,
                r#"{"ts": 1718000000.75}"#
            ),
            "2024-06-10T06"
        );
        assert_eq!(
            one(r#".ms / 1000 | strftime("%H")"#, r#"{"ms": 1718000000123}"#),
            "06"
        );
        // gmtime array input, as in jq
        assert_eq!(one(r#".ts | gmtime | strftime("%d")"#, r), "10");
    }

    #[test]
    fn todate_gmtime_mktime_fromdate() {
        let r = r#"{"ts": 1718000000, "iso": "2024-06-10T06:13:20Z"}"#;
        assert_eq!(one(".ts | todate", r), "2024-06-10T06:13:20Z");
        assert_eq!(one(".ts | gmtime | .[0]", r), "2024");
        assert_eq!(one(".ts | gmtime | .[1]", r), "5"); // months count from 0
        assert_eq!(one(".ts | gmtime | mktime", r), "1718000000");
        assert_eq!(one(".iso | fromdate", r), "1718000000");
        assert_eq!(
            one(r#".iso | strptime("%Y-%m-%dT%H:%M:%SZ") | mktime"#, r),
            "1718000000"
        );
    }

    #[test]
    fn string_functions() {
        let r = r#"{"a": "Foo-Bar", "b": 7, "path": "x/y/z"}"#;
        assert_eq!(one(".a | ascii_downcase", r), "foo-bar");
        assert_eq!(one(".a | ascii_upcase", r), "FOO-BAR");
        assert_eq!(one(r#".path | split("/") | .[1]"#, r), "y");
        assert_eq!(one(r#".path | split("/") | last"#, r), "z");
        assert_eq!(one(".b | tostring", r), "7");
        assert_eq!(one(".a | tostring", r), "Foo-Bar");
        assert_eq!(one(r#""\(.a)-\(.b)""#, r), "Foo-Bar-7");
        assert_eq!(one(r#".a | ltrimstr("Foo-")"#, r), "Bar");
        assert_eq!(one(".a | length", r), "7");
    }

    #[test]
    fn alternative_operator() {
        let r = r#"{"a": null, "b": "fallback", "c": false}"#;
        assert_eq!(one(r#".a // .b"#, r), "fallback");
        assert_eq!(one(r#".missing // "none""#, r), "none");
        assert_eq!(one(r#".c // "was-false""#, r), "was-false");
    }

    #[test]
    fn regular_expressions() {
        let r = r#"{"host": "web-01.eu-west-1.example.com"}"#;
        assert_eq!(one(r#".host | test("^web-\\d+")"#, r), "true");
        assert_eq!(one(r#".host | test("^db")"#, r), "false");
        assert_eq!(one(r#".host | sub("\\..*$"; "")"#, r), "web-01");
        assert_eq!(
            one(r#".host | gsub("-"; "_")"#, r),
            "web_01.eu_west_1.example.com"
        );
        assert_eq!(
            one(r#".host | capture("^(?<role>[a-z]+)") | .role"#, r),
            "web"
        );
    }

    #[test]
    fn scalar_values_become_strings() {
        let r = r#"{"i": 2024, "f": 2024.0, "x": 1.5, "t": true, "neg": -3, "big": 100000000000000000000}"#;
        let got = keys("{i: .i, f: .f, x: .x, t: .t, neg: .neg, big: .big}", r);
        assert_eq!(
            got,
            pairs(&[
                ("i", "2024"),
                ("f", "2024"),
                ("x", "1.5"),
                ("t", "true"),
                ("neg", "-3"),
                ("big", "1e+20"),
            ])
        );
        assert_eq!(one(".i / 2", r), "1012");
        assert_eq!(one(".i / 3 | floor", r), "674");
        assert_eq!(one("1 / 3", r), "0.3333333333333333");
        assert_eq!(one("9007199254740993", r), "9007199254740993");
        assert_eq!(one(r#""1.50" | tonumber"#, r), "1.5");
        // the documented difference: inside the query, float-typed whole numbers keep ".0"
        let ms = r#"{"ms": 1718000000000}"#;
        assert_eq!(one(".ms / 1000", ms), "1718000000");
        assert_eq!(one(".ms / 1000 | tostring", ms), "1718000000.0");
        assert_eq!(one(r#""\(.ms / 1000)""#, ms), "1718000000.0");
        assert_eq!(one(".ms / 1000 | floor | tostring", ms), "1718000000");
        assert_eq!(one("2024.0 | tostring", ms), "2024.0");
    }

    #[test]
    fn jq_number_format() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (2024.0, "2024"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000"),
            (1e16, "1e+16"),
            (1.2345e16, "12345000000000000"),
            (1e100, "1e+100"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::INFINITY, "1.7976931348623157e+308"),
            (f64::NEG_INFINITY, "-1.7976931348623157e+308"),
            (1718000000.0, "1718000000"),
            (123.456, "123.456"),
        ];
        for (f, want) in cases {
            assert_eq!(format_f64(*f).as_deref(), Some(*want), "{f:e}");
        }
        assert_eq!(format_f64(f64::NAN), None);
    }

    #[test]
    fn fifty_keys_pass_fifty_one_fail() {
        let obj = |n: usize| {
            let fields: Vec<String> = (0..n).map(|i| format!("k{i}: {i}")).collect();
            format!("{{{}}}", fields.join(", "))
        };
        let got = keys(&obj(MAX_KEYS), "{}");
        assert_eq!(got.len(), 50);
        assert_eq!(got[49], ("k49".to_string(), "49".to_string()));
        let e = err(&obj(MAX_KEYS + 1), "{}");
        assert_eq!(e, ExtractError::TooManyKeys { count: 51 });
        assert_eq!(e.code(), "DynamicPartitioning.TooManyPartitionKeys");
    }

    #[test]
    fn record_not_json() {
        for record in [
            &b"not json"[..],
            b"{\"a\":1",
            b"{\"a\":1} {\"a\":2}",
            b"",
            b"\xff\xfe",
        ] {
            let e = match q("{a: .a}").extract(record) {
                Err(e) => e,
                Ok(k) => panic!("{record:?}: {k:?}"),
            };
            assert!(matches!(e, ExtractError::NotJson { .. }), "{e}");
            assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
        }
        // jaq's own parser would take these; Firehose records are strict JSON
        for record in ["NaN", "# comment\n{}", "{\"a\": +1}"] {
            assert!(matches!(
                err("{a: 1}", record),
                ExtractError::NotJson { .. }
            ));
        }
        // deep nesting is refused by the JSON parser, not a stack overflow
        let deep = "[".repeat(100_000);
        assert!(matches!(err("{a: 1}", &deep), ExtractError::NotJson { .. }));
    }

    #[test]
    fn query_runtime_errors() {
        for (query, record) in [
            (r#"{a: error("boom")}"#, "{}"),
            ("{a: (.a + 1)}", r#"{"a": "x"}"#),
            (r#"{a: (.ts | strftime("%Y"))}"#, r#"{"ts": "yesterday"}"#),
            ("{a: .a.b}", r#"{"a": 5}"#),
            ("{a: (.a | halt)}", "{}"),
            (r#"{a: ("x" | halt_error)}"#, "{}"),
        ] {
            let e = err(query, record);
            assert!(
                matches!(e, ExtractError::QueryFailed { .. }),
                "{query}: {e}"
            );
            assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
        }
        let e = err(r#"{a: error("boom")}"#, "{}");
        assert_eq!(e.to_string(), "jq query failed: boom");
        // long messages are cut
        let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(10_000));
        let ExtractError::QueryFailed { message } = err("{a: error(.s)}", &big) else {
            panic!("expected QueryFailed");
        };
        assert!(message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn output_count_and_shape() {
        let e = err("empty", "{}");
        assert_eq!(e, ExtractError::NoOutput);
        assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
        assert_eq!(err("select(.a)", r#"{"a": false}"#), ExtractError::NoOutput);

        let e = err("{a: 1}, {a: 2}", "{}");
        assert_eq!(e, ExtractError::MultipleOutputs);
        assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
        assert_eq!(
            err("{a: .x[]}", r#"{"x": [1, 2]}"#),
            ExtractError::MultipleOutputs
        );
        // an unbounded generator stops after the second output
        assert_eq!(
            err("{a: range(infinite)}", "{}"),
            ExtractError::MultipleOutputs
        );
        // an error in the second output is the query's error
        assert!(matches!(
            err(r#"{a: 1}, error("x")"#, "{}"),
            ExtractError::QueryFailed { .. }
        ));

        let e = err(".a", r#"{"a": "x"}"#);
        assert_eq!(e, ExtractError::NotAnObject { found: "string" });
        assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
        assert_eq!(
            err(".", "[1]"),
            ExtractError::NotAnObject { found: "array" }
        );
        assert_eq!(err(".a", "{}"), ExtractError::NotAnObject { found: "null" });
        assert_eq!(keys("{}", "{}"), vec![]);
    }

    #[test]
    fn null_missing_and_non_scalar_values() {
        let e = err("{a: .a}", "{}");
        assert_eq!(e, ExtractError::NullValue { key: "a".into() });
        assert_eq!(e.code(), "DynamicPartitioning.PartitionKeyMissing");
        assert_eq!(
            err("{a: .a}", r#"{"a": null}"#),
            ExtractError::NullValue { key: "a".into() }
        );
        assert_eq!(
            err("{a: nan}", "{}"),
            ExtractError::NullValue { key: "a".into() }
        );

        let e = err("{a: .a}", r#"{"a": {"b": 1}}"#);
        assert_eq!(
            e,
            ExtractError::NonScalarValue {
                key: "a".into(),
                kind: "object"
            }
        );
        assert_eq!(e.code(), "DynamicPartitioning.PartitionKeyInvalid");
        assert_eq!(
            err("{a: .a}", r#"{"a": [1]}"#),
            ExtractError::NonScalarValue {
                key: "a".into(),
                kind: "array"
            }
        );
        assert_eq!(
            err(r#"{a: ("x" | tobytes)}"#, "{}"),
            ExtractError::NonScalarValue {
                key: "a".into(),
                kind: "byte string"
            }
        );
        let e = err("{(1): 2}", "{}");
        assert_eq!(e, ExtractError::NonStringKey { found: "1".into() });
        assert_eq!(e.code(), "DynamicPartitioning.PartitionKeyInvalid");
    }

    #[test]
    fn panics_in_jaq_become_errors() {
        // jaq-std 3.0.4 computes `seconds * 1_000_000` unchecked; debug builds panic on overflow
        let r = q(r#"{a: (.ts | strftime("%Y"))}"#).extract(br#"{"ts": 100000000000000000}"#);
        match r {
            Err(ExtractError::Panicked { message }) => assert!(message.contains("overflow")),
            Err(e) => assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed"),
            Ok(k) => panic!("{k:?}"),
        }
        let e = ExtractError::Panicked {
            message: "x".into(),
        };
        assert_eq!(e.code(), "DynamicPartitioning.MetadataExtractionFailed");
    }

    #[test]
    fn compile_errors_say_where() {
        let cases: &[(&str, &str)] = &[
            (
                "{a: .a",
                "jq syntax error at line 1, column 7: expected a closing brace for the `{` at line 1, column 1, found end of query",
            ),
            (
                "{a: .a | }",
                "jq syntax error at line 1, column 10: expected term, found `}`",
            ),
            ("", "jq syntax error at line 1, column 1: expected term, found end of query"),
            (
                "{a: .a}\n | nosuch(1)",
                "jq query uses undefined filter `nosuch/1` at line 2, column 4",
            ),
            (
                "{a: strftime}",
                "jq query uses undefined filter `strftime/0` at line 1, column 5",
            ),
            ("{a: $x}", "jq query uses undefined variable `$x` at line 1, column 5"),
            ("{a: env.HOME}", "jq query uses undefined filter `env/0` at line 1, column 5"),
            ("{a: $ENV.HOME}", "jq query uses undefined variable `$ENV` at line 1, column 5"),
            (
                r#"import "foo" as f; {a: 1}"#,
                "jq query imports module `foo`, but modules are not supported",
            ),
            (
                r#"{a: "\q"}"#,
                "jq syntax error at line 1, column 7: expected a string escape sequence, found `q\"}`",
            ),
        ];
        for (query, want) in cases {
            match MetadataQuery::compile(query) {
                Ok(_) => panic!("{query} compiled"),
                Err(e) => assert_eq!(e.to_string(), *want, "{query}"),
            }
        }
    }

    #[test]
    fn long_or_deep_queries_are_refused_at_compile() {
        let long = format!("{{a: \"{}\"}}", "x".repeat(MAX_QUERY_CHARS));
        assert_eq!(
            MetadataQuery::compile(&long).err(),
            Some(QueryError::TooLong { chars: 5127 })
        );
        let chain = |n: usize| format!("{{a: (1{})}}", "+1".repeat(n));
        assert_eq!(keys(&chain(100), "{}"), pairs(&[("a", "101")]));
        let e = MetadataQuery::compile(&chain(1000)).err();
        assert!(matches!(e, Some(QueryError::TooComplex { .. })), "{e:?}");
        // 50 keys with real expressions stay far below the limit
        let wide: Vec<String> = (0..MAX_KEYS)
            .map(|i| format!(r#"k{i}: (.ts | strftime("%Y-%m-%d") | split("-") | .[0] // "x")"#))
            .collect();
        let wide = format!("{{{}}}", wide.join(", "));
        assert_eq!(keys(&wide, r#"{"ts": 1718000000}"#).len(), MAX_KEYS);
    }

    #[test]
    fn depth_estimate() {
        let depth = |q: &str| match lex::Lexer::new(q).lex() {
            Ok(t) => token_depth(&t, false),
            Err(_) => panic!("{q}"),
        };
        // tokens of the run plus its number of pieces
        assert_eq!(depth(".a"), 2);
        assert_eq!(depth(".a | .b"), 4);
        assert_eq!(depth(".a | .b | .c"), 6);
        // object pairs are pieces: one more per pair, not three
        assert_eq!(depth("{a: 1, b: 2}"), 8);
        assert_eq!(depth("{a: 1, b: 2, c: 3}"), 9);
        // a string: one per part plus its deepest interpolation
        assert_eq!(depth(r#""\(.a)-\(.b)""#), 10);
    }

    #[test]
    fn deep_nesting_is_refused_at_compile() {
        let ok = format!("{{a: {}1{}}}", "(".repeat(60), ")".repeat(60));
        assert_eq!(keys(&ok, "{}"), pairs(&[("a", "1")]));
        let deep = format!("{}1{}", "(".repeat(1_000), ")".repeat(1_000));
        assert_eq!(
            MetadataQuery::compile(&deep).err(),
            Some(QueryError::TooDeep {
                line: 1,
                column: 65
            })
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn extract_never_panics_on_bytes(record in proptest::collection::vec(any::<u8>(), 0..64)) {
                let query = q(r#"{a: (.a // "x" | tostring), b: (.ts // 0 | strftime("%Y"))}"#);
                let _ = query.extract(&record);
            }

            #[test]
            fn extract_never_panics_on_json(a in ".*", n in any::<f64>(), i in any::<i64>()) {
                let record = serde_json::json!({"a": a, "n": n, "i": i, "arr": [a.clone()]});
                let record = record.to_string();
                let query = q(r#"{a: .a, n: (.n // 0), i: .i, s: (.a | ascii_downcase | split("/") | first // "e"), t: (.i | tostring)}"#);
                let _ = query.extract(record.as_bytes());
            }

            #[test]
            fn compile_never_panics(query in ".{0,40}") {
                let _ = MetadataQuery::compile(&query);
            }

            #[test]
            fn strings_pass_through(s in "\\PC*") {
                let record = serde_json::json!({"s": s}).to_string();
                prop_assert_eq!(keys("{s: .s}", &record), vec![("s".to_string(), s)]);
            }

            #[test]
            fn number_format_reads_back(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
                let s = format_f64(f).unwrap_or_default();
                prop_assert_eq!(s.parse::<f64>().ok(), Some(f));
            }

            #[test]
            fn integers_print_exactly(i in any::<i64>()) {
                prop_assert_eq!(one(".i", &format!(r#"{{"i": {i}}}"#)), i.to_string());
            }
        }
    }

    /// `cargo test --release -- --ignored --nocapture bench_extract`
    #[test]
    #[ignore]
    fn bench_extract() {
        use std::time::Instant;
        let query = q(
            r#"{customer_id: .customer_id, year: (.ts | strftime("%Y")), month: (.ts|strftime("%m"))}"#,
        );
        let records: Vec<Vec<u8>> = (0..200_000u64)
            .map(|i| {
                format!(
                    r#"{{"customer_id":"cust-{}","ts":{},"amount":{}.25,"tags":["a","b"],"note":"some text here"}}"#,
                    i % 977,
                    1_700_000_000 + i * 37,
                    i % 1000
                )
                .into_bytes()
            })
            .collect();
        let bytes: usize = records.iter().map(Vec::len).sum();
        let per = |start: Instant| start.elapsed().as_nanos() / records.len() as u128;

        let start = Instant::now();
        let mut n = 0usize;
        for r in &records {
            n += query.extract(r).map(|k| k.len()).unwrap_or(0);
        }
        let total = per(start);
        assert_eq!(n, 3 * records.len());

        let start = Instant::now();
        for r in &records {
            let v: Result<Val, _> = serde_json::from_slice(r);
            std::hint::black_box(v.is_ok());
        }
        let parse_serde = per(start);

        let start = Instant::now();
        for r in &records {
            let v = jaq_json::read::parse_single(r);
            std::hint::black_box(v.is_ok());
        }
        let parse_jaq = per(start);

        let start = Instant::now();
        for r in &records {
            let v: Result<serde_json::Value, _> = serde_json::from_slice(r);
            std::hint::black_box(v.is_ok());
        }
        let parse_value = per(start);

        let parsed: Vec<Val> = records
            .iter()
            .filter_map(|r| serde_json::from_slice(r).ok())
            .collect();
        let start = Instant::now();
        for v in parsed {
            std::hint::black_box(query.run(v).is_ok());
        }
        let eval = per(start);

        println!(
            "{} records, {} B avg: extract {total} ns/record = parse (serde_json -> Val) {parse_serde} \
             + run {eval} + keys; jaq_json::read::parse_single {parse_jaq} ns; serde_json::Value {parse_value} ns",
            records.len(),
            bytes / records.len()
        );
    }

    #[test]
    fn field_pick_queries_are_recognised() {
        for (query, fast) in [
            ("{customer_id: .customer_id}", true),
            ("{ a : .x.y , b: .z }", true),
            ("{a, b}", true),
            ("{a: .x, a: .y}", false),
            ("{if: .x}", false),
            ("{a: .x | tostring}", false),
            ("{a: .x[0]}", false),
            ("{a: .}", false),
            ("{\"a\": .x}", false),
            ("{}", false),
            (".a", false),
        ] {
            assert_eq!(FieldPicks::parse(query).is_some(), fast, "{query}");
        }
    }

    proptest::proptest! {
        /// The fast path for field picks gives exactly what jaq gives, whatever the values.
        #[test]
        fn field_picks_agree_with_jaq(
            a in value_strategy(),
            c in value_strategy(),
            wrap_b in proptest::bool::ANY,
            drop_a in proptest::bool::ANY,
        ) {
            let mut record = serde_json::Map::new();
            if !drop_a {
                record.insert("a".into(), a);
            }
            let b = if wrap_b { serde_json::json!({"c": c}) } else { c };
            record.insert("b".into(), b);
            let bytes = serde_json::to_vec(&serde_json::Value::Object(record)).unwrap();
            for query in ["{a: .a, c: .b.c}", "{a}", "{x: .b, y: .a}"] {
                let q = MetadataQuery::compile(query).unwrap();
                assert!(q.picks.is_some(), "{query}");
                let fast = q.extract(&bytes);
                let slow = q.extract_with_jaq(&bytes);
                proptest::prop_assert_eq!(
                    format!("{fast:?}"),
                    format!("{slow:?}"),
                    "{} on {}",
                    query,
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    fn value_strategy() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            Just(serde_json::json!([1, "x"])),
            Just(serde_json::json!({"k": 1})),
        ]
    }
}
