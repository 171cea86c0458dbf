//! S3 key prefixes with Firehose's `!{namespace:value}` expressions, and object key naming.
//!
//! Supported: `!{timestamp:<Java DateTimeFormatter pattern>}` (evaluated, in UTC, at the arrival time of
//! the oldest record in the object; every timestamp in one prefix uses the same instant) and
//! `!{firehose:random-string}` (11 characters). As in Firehose, a prefix without a timestamp expression
//! gets `!{timestamp:yyyy/MM/dd/HH/}` appended, `!{` is reserved, configured prefixes are at most 1,024
//! characters and evaluated ones at most 512.
//!
//! The random string is derived from the object's identity rather than drawn at random, so that a
//! replay after a crash writes the same key and exactly-once holds.
//!
//! Dynamic partitioning adds `!{partitionKeyFromQuery:k}` and `!{partitionKeyFromLambda:k}` (not in
//! error output prefixes). Key values are encoded so that none can leave its place in the key: bytes
//! outside S3's safe set `0-9 a-z A-Z ! - _ . * ' ( )` are percent-encoded as UTF-8 (`/` is `%2F`,
//! a space `%20`, `=` `%3D`), a value of only dots has them encoded (`%2E`), and an empty value is
//! refused (the record goes to the error output).

use std::fmt::Write as _;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::time::UtcDateTime;

/// Longest configured prefix.
pub const MAX_PREFIX_CHARS: usize = 1024;
/// Longest evaluated prefix.
pub const MAX_EVALUATED_PREFIX_CHARS: usize = 512;

/// A parsed prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Timestamp(Vec<Token>),
    RandomString,
    /// `!{firehose:error-output-type}`: only in error output prefixes.
    ErrorOutputType,
    /// `!{partitionKeyFromQuery:k}` / `!{partitionKeyFromLambda:k}`.
    PartitionKey(KeySource, String),
}

/// Where a partition key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySource {
    /// The `metadata_extraction` jq query.
    Query,
    /// A transformation plugin's result metadata.
    Lambda,
}

impl KeySource {
    /// The expression namespace, as written in prefixes.
    pub fn namespace(self) -> &'static str {
        match self {
            KeySource::Query => "partitionKeyFromQuery",
            KeySource::Lambda => "partitionKeyFromLambda",
        }
    }
}

/// Evaluated partition key values of one partition, already encoded (see the module docs), in the
/// order the prefix names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PartitionKeys(pub Vec<(KeySource, String, String)>);

impl PartitionKeys {
    fn get(&self, source: KeySource, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(s, n, _)| *s == source && n == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// A stable identity of the partition, used in checkpoints and object ids.
    pub fn id(&self) -> String {
        let mut id = String::new();
        for (source, name, value) in &self.0 {
            let _ = write!(id, "{}:{name}={value}/", source.namespace());
        }
        id
    }
}

/// Encodes a partition key value for a key (see the module docs); `None` for an empty value.
pub fn encode_key_value(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    encode_key_value_into(value, &mut out).then_some(out)
}

/// [`encode_key_value`], appending to `out`; `false` (and nothing appended) for an empty value.
pub fn encode_key_value_into(value: &str, out: &mut String) -> bool {
    if value.is_empty() {
        return false;
    }
    let only_dots = value.bytes().all(|b| b == b'.');
    for b in value.bytes() {
        let safe =
            b.is_ascii_alphanumeric() || b"!-_*'()".contains(&b) || (b == b'.' && !only_dots);
        if safe {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    true
}

/// The longest built-in object extension, for bounding key lengths.
const LONGEST_EXTENSION: &str = ".parquet";

/// The longest error output type, for bounding evaluated error prefixes.
const LONGEST_ERROR_TYPE: &str = "AmazonOpenSearchService-failed";

/// One element of a date-time pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// A field and the number of pattern letters (its minimum width).
    Field(Field, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Month,
    Day,
    DayOfYear,
    Hour,
    Minute,
    Second,
    Fraction,
}

impl Default for PrefixTemplate {
    fn default() -> Self {
        PrefixTemplate::parse("").expect("the empty prefix is valid")
    }
}

impl<'de> Deserialize<'de> for PrefixTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PrefixTemplate::parse(&s).map_err(de::Error::custom)
    }
}

impl PrefixTemplate {
    /// Parses and validates a prefix; the error says what is wrong and where.
    pub fn parse(s: &str) -> Result<PrefixTemplate, String> {
        PrefixTemplate::parse_as(s, false)
    }

    /// Parses an error output prefix: `!{firehose:error-output-type}` is allowed, and required
    /// when the prefix has any expression (Firehose's rule).
    pub fn parse_error_prefix(s: &str) -> Result<PrefixTemplate, String> {
        let template = PrefixTemplate::parse_as(s, true)?;
        if s.contains("!{") && !template.parts.contains(&Part::ErrorOutputType) {
            return Err(
                "an error output prefix with expressions must contain !{firehose:error-output-type}"
                    .into(),
            );
        }
        Ok(template)
    }

    /// The error output prefix Firehose uses when none is configured: `<prefix><type>/` and the
    /// hourly timestamp. Only for prefixes without expressions.
    pub fn default_error_prefix(&self) -> Option<PrefixTemplate> {
        if self.has_expressions() {
            return None;
        }
        PrefixTemplate::parse_error_prefix(&format!(
            "{}!{{firehose:error-output-type}}/",
            self.source
        ))
        .ok()
    }

    /// Whether the configured prefix has `!{...}` expressions.
    pub fn has_expressions(&self) -> bool {
        self.source.contains("!{")
    }

    fn parse_as(s: &str, error_prefix: bool) -> Result<PrefixTemplate, String> {
        if s.chars().count() > MAX_PREFIX_CHARS {
            return Err(format!(
                "prefix is longer than {MAX_PREFIX_CHARS} characters"
            ));
        }
        if s.starts_with('/') {
            return Err("prefix must not start with '/'".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let body = &rest[start + 2..];
            let end = body.find('}').ok_or_else(|| {
                format!("unterminated expression in prefix at {:?}", &rest[start..])
            })?;
            let expr = &body[..end];
            let (ns, value) = expr.split_once(':').ok_or_else(|| {
                format!("expression !{{{expr}}} needs the form !{{namespace:value}}")
            })?;
            parts.push(match (ns, value) {
                ("timestamp", pattern) => Part::Timestamp(parse_pattern(pattern)?),
                ("partitionKeyFromQuery" | "partitionKeyFromLambda", _) if error_prefix => {
                    return Err(format!(
                        "!{{{ns}:...}} is not allowed in error_output_prefix (Firehose's rule)"
                    ))
                }
                ("partitionKeyFromQuery" | "partitionKeyFromLambda", "") => {
                    return Err(format!("!{{{ns}:}} needs a key name"))
                }
                ("partitionKeyFromQuery", key) => Part::PartitionKey(KeySource::Query, key.into()),
                ("partitionKeyFromLambda", key) => {
                    Part::PartitionKey(KeySource::Lambda, key.into())
                }
                ("firehose", "random-string") => Part::RandomString,
                ("firehose", "error-output-type") if error_prefix => Part::ErrorOutputType,
                ("firehose", "error-output-type") => {
                    return Err(
                        "!{firehose:error-output-type} is only allowed in error_output_prefix"
                            .into(),
                    )
                }
                _ => {
                    return Err(format!(
                        "unsupported expression !{{{expr}}}: prefixes support !{{timestamp:<pattern>}}, !{{firehose:random-string}}, !{{partitionKeyFromQuery:key}} and !{{partitionKeyFromLambda:key}}"
                    ))
                }
            });
            rest = &body[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        for part in &parts {
            if let Part::Literal(l) = part {
                if l.split('/').any(|seg| seg == ".." || seg == ".") {
                    return Err("prefix must not contain '.' or '..' path segments".into());
                }
            }
        }
        if !parts.iter().any(|p| matches!(p, Part::Timestamp(_))) {
            parts.push(Part::Timestamp(parse_pattern("yyyy/MM/dd/HH/")?));
        }
        let template = PrefixTemplate {
            source: s.to_string(),
            parts,
        };
        // Numeric fields have fixed widths, so one evaluation bounds them all (partition key
        // values, of one character here, are checked again per partition: `check_keys`).
        let sample_keys = PartitionKeys(
            template
                .partition_keys()
                .map(|(s, n)| (s, n.to_string(), "x".to_string()))
                .collect(),
        );
        template.check_keys(&sample_keys, Some(LONGEST_ERROR_TYPE), LONGEST_EXTENSION)?;
        Ok(template)
    }

    /// Checks that the prefix still makes valid keys with `extension` (a configured
    /// `file_extension` may be longer than the built-in ones).
    pub fn check_extension(&self, extension: &str) -> Result<(), String> {
        let sample_keys = PartitionKeys(
            self.partition_keys()
                .map(|(s, n)| (s, n.to_string(), "x".to_string()))
                .collect(),
        );
        self.check_keys(&sample_keys, Some(LONGEST_ERROR_TYPE), extension)
    }

    /// The partition keys the prefix names, in order.
    pub fn partition_keys(&self) -> impl Iterator<Item = (KeySource, &str)> {
        self.parts.iter().filter_map(|p| match p {
            Part::PartitionKey(s, n) => Some((*s, n.as_str())),
            _ => None,
        })
    }

    /// Checks that the prefix with these key values makes valid, writable keys at any time: at
    /// most 512 characters evaluated, and a full key that stores and filesystems accept.
    /// `extension` is the objects' extension (the key's last segment must fit too).
    pub fn check_keys(
        &self,
        keys: &PartitionKeys,
        error_type: Option<&str>,
        extension: &str,
    ) -> Result<(), String> {
        let sample = self.render_with(
            &UtcDateTime::from_epoch_ms(253_402_300_799_000),
            "x",
            error_type,
            keys,
        );
        if sample.chars().count() > MAX_EVALUATED_PREFIX_CHARS {
            return Err(format!(
                "prefix evaluates to more than {MAX_EVALUATED_PREFIX_CHARS} characters"
            ));
        }
        // Every key the prefix can produce must be writable: check a full sample key (the longest
        // stream name and extension) with the stores' own rules, and the 255-byte name limit of
        // filesystems (the local lake, and S3-compatible stores backed by one).
        let id = object_id("i", "s", 0, 0);
        let key = object_key(
            &sample,
            &"s".repeat(64),
            1,
            &UtcDateTime::from_epoch_ms(0),
            &id,
            extension,
        );
        crate::sink::check_key(&key).map_err(|e| format!("prefix cannot form valid keys: {e}"))?;
        if key.split('/').any(|seg| seg.len() > 255) {
            return Err(
                "a path segment of the keys this prefix forms (between '/') would exceed 255 bytes"
                    .into(),
            );
        }
        Ok(())
    }

    /// The prefix as configured (without the appended default timestamp).
    pub fn as_configured(&self) -> &str {
        &self.source
    }

    /// Evaluates the prefix for an object whose oldest record arrived at `at`; `seed` (the object's
    /// identity) determines `!{firehose:random-string}`.
    pub fn render(&self, at: &UtcDateTime, seed: &str) -> String {
        self.render_with(at, seed, None, &PartitionKeys::default())
    }

    /// Evaluates the prefix of a partition's object: as [`Self::render`], with its key values.
    pub fn render_partition(&self, at: &UtcDateTime, seed: &str, keys: &PartitionKeys) -> String {
        self.render_with(at, seed, None, keys)
    }

    /// Evaluates an error output prefix for records that failed with `error_type`.
    pub fn render_error(&self, at: &UtcDateTime, seed: &str, error_type: &str) -> String {
        self.render_with(at, seed, Some(error_type), &PartitionKeys::default())
    }

    fn render_with(
        &self,
        at: &UtcDateTime,
        seed: &str,
        error_type: Option<&str>,
        keys: &PartitionKeys,
    ) -> String {
        let mut out = String::new();
        let mut randoms = 0u32;
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Timestamp(tokens) => format_tokens(&mut out, tokens, at),
                Part::RandomString => {
                    out.push_str(&stable_random_string(seed, randoms));
                    randoms += 1;
                }
                Part::ErrorOutputType => out.push_str(error_type.unwrap_or_default()),
                Part::PartitionKey(source, name) => {
                    out.push_str(keys.get(*source, name).unwrap_or_default())
                }
            }
        }
        out
    }
}

/// 11 lowercase alphanumeric characters derived from `seed` and the occurrence index.
fn stable_random_string(seed: &str, n: u32) -> String {
    use md5::{Digest, Md5};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let digest = Md5::digest(format!("{seed}\0random\0{n}").as_bytes());
    digest[..11]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Parses the subset of Java's `DateTimeFormatter` patterns that prefixes use: y, M, d, D, H, m, s,
/// S, 'quoted literals' ('' is a quote), and any non-letter as itself.
fn parse_pattern(p: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut lit = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated quote in timestamp pattern {p:?}")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        lit.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        lit.push(ch);
                        i += 1;
                    }
                }
            }
            if lit.is_empty() {
                lit.push('\'');
            }
            tokens.push(Token::Literal(lit));
        } else if c.is_ascii_alphabetic() {
            let run = chars[i..].iter().take_while(|&&x| x == c).count();
            let field = match c {
                'y' | 'u' => Field::Year,
                'M' => Field::Month,
                'd' => Field::Day,
                'D' => Field::DayOfYear,
                'H' => Field::Hour,
                'm' => Field::Minute,
                's' => Field::Second,
                'S' => Field::Fraction,
                other => {
                    return Err(format!(
                        "timestamp pattern letter {other:?} is not supported (use y M d D H m s S and 'quoted' text)"
                    ))
                }
            };
            if field == Field::Fraction && run > 3 {
                return Err("timestamp pattern supports at most SSS (milliseconds)".into());
            }
            tokens.push(Token::Field(field, run));
            i += run;
        } else {
            tokens.push(Token::Literal(c.to_string()));
            i += 1;
        }
    }
    Ok(tokens)
}

fn format_tokens(out: &mut String, tokens: &[Token], at: &UtcDateTime) {
    for token in tokens {
        match token {
            Token::Literal(l) => out.push_str(l),
            Token::Field(Field::Year, 2) => {
                let _ = write!(out, "{:02}", at.year.rem_euclid(100));
            }
            Token::Field(Field::Fraction, n) => {
                let ms = format!("{:03}", at.millis);
                out.push_str(&ms[..*n]);
            }
            Token::Field(field, width) => {
                let v = match field {
                    Field::Year => at.year as i64,
                    Field::Month => at.month as i64,
                    Field::Day => at.day as i64,
                    Field::DayOfYear => at.day_of_year as i64,
                    Field::Hour => at.hour as i64,
                    Field::Minute => at.minute as i64,
                    Field::Second => at.second as i64,
                    Field::Fraction => unreachable!("handled above"),
                };
                let _ = write!(out, "{v:0width$}");
            }
        }
    }
}

/// The Firehose object name: `<prefix><stream>-<version>-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<id><ext>`.
pub fn object_key(
    prefix: &str,
    stream: &str,
    version: u32,
    oldest_arrival: &UtcDateTime,
    id: &str,
    extension: &str,
) -> String {
    let t = oldest_arrival;
    format!(
        "{prefix}{stream}-{version}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{id}{extension}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A UUID-shaped id that is a pure function of what the object holds (the daemon instance whose log
/// holds the records, stream, shard, first sequence number), so that a replayed object lands under
/// the same key, while two daemons with separate data directories never collide in a shared lake.
pub fn object_id(instance: &str, stream: &str, shard: u32, first_sequence: u64) -> String {
    crate::fs::guid(&format!("{instance}\0{stream}\0{shard}\0{first_sequence}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> UtcDateTime {
        // 2024-02-29T07:08:09.123Z
        UtcDateTime::from_epoch_ms(1_709_190_489_123)
    }

    #[test]
    fn empty_prefix_gets_default_hourly_layout() {
        let p = PrefixTemplate::parse("").unwrap();
        assert_eq!(p.render(&at(), "s"), "2024/02/29/07/");
        let p = PrefixTemplate::parse("logs/").unwrap();
        assert_eq!(p.render(&at(), "s"), "logs/2024/02/29/07/");
    }

    #[test]
    fn timestamp_patterns_and_literals() {
        let p = PrefixTemplate::parse("y=!{timestamp:yyyy}/m=!{timestamp:MM}/d=!{timestamp:dd}/!{timestamp:HH'h'mm.ss.SSS'' D yy}/").unwrap();
        assert_eq!(
            p.render(&at(), "s"),
            "y=2024/m=02/d=29/07h08.09.123' 60 24/"
        );
    }

    #[test]
    fn random_string_is_11_chars_and_stable_per_seed() {
        let p = PrefixTemplate::parse("!{firehose:random-string}/").unwrap();
        let a = p.render(&at(), "seed");
        assert_eq!(a.len(), 11 + "/2024/02/29/07/".len());
        assert_eq!(a, p.render(&at(), "seed"));
        assert_ne!(a, p.render(&at(), "other"));
    }

    #[test]
    fn invalid_prefixes_are_rejected() {
        for bad in [
            "!{timestamp:yyyy",
            "!{nope}",
            "!{partitionKeyFromQuery:}/",
            "!{timestamp:QQ}",
            "a/../b/",
            "/abs/",
            "!{timestamp:'open}",
        ] {
            assert!(PrefixTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PrefixTemplate::parse(&"a".repeat(1025)).is_err());
        assert!(
            PrefixTemplate::parse(&"a".repeat(600)).is_err(),
            "evaluates over 512"
        );
        PrefixTemplate::parse(&format!("{}/{}", "a".repeat(250), "b".repeat(240))).unwrap();
        assert!(
            PrefixTemplate::parse(&"a".repeat(256)).is_err(),
            "segment over 255 bytes"
        );
        assert!(PrefixTemplate::parse("a//b/").is_err());
        assert!(
            PrefixTemplate::parse("!{timestamp:'..'}/x/").is_err(),
            "a literal '..' segment"
        );
        assert!(
            PrefixTemplate::parse(&format!("{}!{{timestamp:yyyy}}", "a".repeat(140))).is_err(),
            "object name appended to a long last segment"
        );
    }

    #[test]
    fn error_output_prefixes_follow_firehose_rules() {
        let p = PrefixTemplate::parse_error_prefix(
            "errors/!{firehose:error-output-type}/!{timestamp:yyyy}/",
        )
        .unwrap();
        assert_eq!(
            p.render_error(&at(), "s", "s3-failed"),
            "errors/s3-failed/2024/"
        );
        assert!(
            PrefixTemplate::parse("x/!{firehose:error-output-type}/").is_err(),
            "data prefixes cannot name the error type"
        );
        assert!(
            PrefixTemplate::parse_error_prefix("errors/!{timestamp:yyyy}/").is_err(),
            "expressions require the error type"
        );
        let plain = PrefixTemplate::parse_error_prefix("errors/").unwrap();
        assert_eq!(
            plain.render_error(&at(), "s", "s3-failed"),
            "errors/2024/02/29/07/"
        );
        let data = PrefixTemplate::parse("events/").unwrap();
        let default = data.default_error_prefix().unwrap();
        assert_eq!(
            default.render_error(&at(), "s", "s3-failed"),
            "events/s3-failed/2024/02/29/07/"
        );
        assert!(PrefixTemplate::parse("e/!{timestamp:yyyy}/")
            .unwrap()
            .default_error_prefix()
            .is_none());
    }

    #[test]
    fn object_key_has_firehose_shape() {
        let id = object_id("i1", "events", 3, 42);
        assert_eq!(id, object_id("i1", "events", 3, 42));
        assert_ne!(id, object_id("i1", "events", 3, 43));
        assert_ne!(
            id,
            object_id("i2", "events", 3, 42),
            "another data directory, another id"
        );
        let key = object_key("2024/02/29/07/", "events", 1, &at(), &id, ".gz");
        assert_eq!(
            key,
            format!("2024/02/29/07/events-1-2024-02-29-07-08-09-{id}.gz")
        );
        assert_eq!(id.len(), 36);
    }
}
