//! Timestamps in JSON records, as Firehose's deserializers read them, to microseconds since the
//! Unix epoch (UTC).
//!
//! OpenX JSON SerDe: `yyyy-MM-dd'T'HH:mm:ss[.f]'Z'`, `yyyy-[M]M-[d]d HH:mm:ss[.f]` (up to 9 fraction
//! digits), epoch seconds and epoch milliseconds as integers (a magnitude of 10¹¹ or more is read as
//! milliseconds: 10¹¹ seconds is the year 5138), and float epoch seconds.
//! Hive JSON SerDe: the configured `timestamp_formats` (Joda-style patterns, or `millis` for epoch
//! milliseconds), tried in order; without any, `java.sql.Timestamp.valueOf`'s
//! `yyyy-[m]m-[d]d hh:mm:ss[.f...]`.

use serde_json::Value;

use crate::time::days_from_civil;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Microseconds since the epoch of a civil UTC date and time; `None` if a field is out of range.
fn civil_micros(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, nanos: i64) -> Option<i64> {
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=9999).contains(&y)
        || !(1..=days_in_month).contains(&d)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..60).contains(&s)
    {
        return None;
    }
    let days = days_from_civil(y as i32, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(secs * MICROS_PER_SECOND + nanos / 1000)
}

/// A cursor over timestamp text.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    /// Reads `min..=max` digits.
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.i;
        while self.i < self.s.len() && self.i - start < max && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        if self.i - start < min {
            return None;
        }
        self.s[start..self.i].iter().try_fold(0i64, |n, d| {
            n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
    }
    fn lit(&mut self, c: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }
    /// `.f` with 1 to 9 digits, as nanoseconds; absent is 0.
    fn fraction(&mut self) -> Option<i64> {
        if self.lit(b'.').is_none() {
            return Some(0);
        }
        let start = self.i;
        let f = self.digits(1, 9)?;
        Some(f * 10i64.pow(9 - (self.i - start) as u32))
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// `yyyy-[M]M-[d]d` then `sep` then `HH:mm:ss[.f]`.
fn date_time(s: &str, sep: u8, month_day_min: usize) -> Option<(Scan<'_>, i64)> {
    let mut c = Scan {
        s: s.as_bytes(),
        i: 0,
    };
    let y = c.digits(4, 4)?;
    c.lit(b'-')?;
    let mo = c.digits(month_day_min, 2)?;
    c.lit(b'-')?;
    let d = c.digits(month_day_min, 2)?;
    c.lit(sep)?;
    let h = c.digits(1, 2)?;
    c.lit(b':')?;
    let mi = c.digits(2, 2)?;
    c.lit(b':')?;
    let sec = c.digits(2, 2)?;
    let nanos = c.fraction()?;
    let micros = civil_micros(y, mo, d, h, mi, sec, nanos)?;
    Some((c, micros))
}

/// A timestamp as the OpenX JSON SerDe reads it.
pub fn parse_openx(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() >= 100_000_000_000 {
                    i.checked_mul(1000)
                } else {
                    i.checked_mul(MICROS_PER_SECOND)
                }
            } else {
                let f = n.as_f64()?;
                let micros = (f * MICROS_PER_SECOND as f64).round();
                (micros.is_finite() && micros.abs() < 9.2e18).then_some(micros as i64)
            }
        }
        Value::String(s) => parse_openx_str(s),
        _ => None,
    }
}

/// `yyyy-MM-dd'T'HH:mm:ss[.f]'Z'` with every field at its fixed place: the usual form, read
/// without the general scanner's loops (it was 6 % of a Parquet conversion). `None` for anything
/// else, which the general scanner then reads; what this accepts, that accepts the same.
fn iso_utc_fixed(s: &[u8]) -> Option<i64> {
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1, b'T', h0, h1, b':', i0, i1, b':', s0, s1, rest @ ..] =
        s
    else {
        return None;
    };
    let [fraction @ .., b'Z'] = rest else {
        return None;
    };
    let digit = |c: &u8| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then_some(i64::from(d))
    };
    let two = |a: &u8, b: &u8| Some(digit(a)? * 10 + digit(b)?);
    let nanos = match fraction {
        [] => 0,
        [b'.', f @ ..] if (1..=9).contains(&f.len()) => {
            let n = f.iter().try_fold(0i64, |n, c| Some(n * 10 + digit(c)?))?;
            n * 10i64.pow(9 - f.len() as u32)
        }
        _ => return None,
    };
    civil_micros(
        two(y0, y1)? * 100 + two(y2, y3)?,
        two(m0, m1)?,
        two(d0, d1)?,
        two(h0, h1)?,
        two(i0, i1)?,
        two(s0, s1)?,
        nanos,
    )
}

/// A timestamp string as the OpenX JSON SerDe reads it.
pub fn parse_openx_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(micros) = iso_utc_fixed(s.as_bytes()) {
        return Some(micros);
    }
    if let Some((mut c, micros)) = date_time(s, b'T', 2) {
        c.lit(b'Z')?;
        return c.done().then_some(micros);
    }
    let (c, micros) = date_time(s, b' ', 1)?;
    c.done().then_some(micros)
}

/// A timestamp string in the Hive JSON SerDe's default form (`java.sql.Timestamp.valueOf`).
pub fn parse_hive_str(s: &str) -> Option<i64> {
    let (c, micros) = date_time(s.trim(), b' ', 1)?;
    c.done().then_some(micros)
}

/// One Hive `timestamp.formats` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiveFormat {
    /// Epoch milliseconds (`millis`).
    Millis,
    /// A Joda-style pattern.
    Pattern(Vec<Token>),
}

/// A piece of a Joda-style pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Literal(String),
    /// Field letter and count.
    Field(char, usize),
}

impl HiveFormat {
    /// Parses `millis` or a pattern of `y M d H m s S` letters, `'quoted'` literals and other
    /// non-letters as themselves.
    pub fn parse(text: &str) -> Result<HiveFormat, String> {
        if text == "millis" {
            return Ok(HiveFormat::Millis);
        }
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or_else(|| format!("unterminated quote in timestamp format {text:?}"))?;
                let lit: String = chars[i + 1..i + 1 + end].iter().collect();
                tokens.push(Token::Literal(if lit.is_empty() {
                    "'".into()
                } else {
                    lit
                }));
                i += end + 2;
            } else if c.is_ascii_alphabetic() {
                if !"yMdHmsS".contains(c) {
                    return Err(format!(
                        "timestamp format letter {c:?} is not supported (use y M d H m s S, 'quoted' text, or millis)"
                    ));
                }
                let n = chars[i..].iter().take_while(|&&x| x == c).count();
                tokens.push(Token::Field(c, n));
                i += n;
            } else {
                tokens.push(Token::Literal(c.to_string()));
                i += 1;
            }
        }
        if !tokens.iter().any(|t| matches!(t, Token::Field('y', _))) {
            return Err(format!("timestamp format {text:?} has no year (y)"));
        }
        Ok(HiveFormat::Pattern(tokens))
    }

    fn apply(&self, v: &Value) -> Option<i64> {
        match self {
            HiveFormat::Millis => match v {
                Value::Number(n) => n.as_i64()?.checked_mul(1000),
                Value::String(s) => s.trim().parse::<i64>().ok()?.checked_mul(1000),
                _ => None,
            },
            HiveFormat::Pattern(tokens) => {
                let Value::String(s) = v else { return None };
                let mut c = Scan {
                    s: s.as_bytes(),
                    i: 0,
                };
                let (mut y, mut mo, mut d, mut h, mut mi, mut sec, mut nanos) =
                    (1970, 1, 1, 0, 0, 0, 0);
                for t in tokens {
                    match t {
                        Token::Literal(l) => {
                            for b in l.bytes() {
                                c.lit(b)?;
                            }
                        }
                        Token::Field('S', n) => {
                            let start = c.i;
                            let f = c.digits(*n, 9)?;
                            nanos = f * 10i64.pow(9 - (c.i - start) as u32);
                        }
                        Token::Field(letter, n) => {
                            let max = if *letter == 'y' { 4 } else { 2 };
                            let v = c.digits((*n).min(max), max.max(*n))?;
                            match letter {
                                'y' => y = v,
                                'M' => mo = v,
                                'd' => d = v,
                                'H' => h = v,
                                'm' => mi = v,
                                _ => sec = v,
                            }
                        }
                    }
                }
                if !c.done() {
                    return None;
                }
                civil_micros(y, mo, d, h, mi, sec, nanos)
            }
        }
    }
}

/// A timestamp as the Hive JSON SerDe reads it: the first of `formats` that matches, or
/// `Timestamp.valueOf`'s form when there are none.
pub fn parse_hive(v: &Value, formats: &[HiveFormat]) -> Option<i64> {
    if formats.is_empty() {
        let Value::String(s) = v else { return None };
        return parse_hive_str(s);
    }
    formats.iter().find_map(|f| f.apply(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // 2024-02-29T07:08:09.123456Z
    const T: i64 = 1_709_190_489_123_456;

    #[test]
    fn openx_forms() {
        assert_eq!(parse_openx(&json!("2024-02-29T07:08:09.123456Z")), Some(T));
        assert_eq!(
            parse_openx(&json!("2024-02-29T07:08:09.123456789Z")),
            Some(T),
            "nanoseconds truncate to µs"
        );
        assert_eq!(
            parse_openx(&json!("2024-02-29T07:08:09Z")),
            Some(T - 123_456)
        );
        assert_eq!(
            parse_openx(&json!("2024-2-9 07:08:09.5")),
            Some(1_707_462_489_500_000)
        );
        assert_eq!(
            parse_openx(&json!("2024-02-29 07:08:09")),
            Some(T - 123_456)
        );
        assert_eq!(
            parse_openx(&json!(1_709_190_489)),
            Some(T - 123_456),
            "epoch seconds"
        );
        assert_eq!(
            parse_openx(&json!(1_709_190_489_123i64)),
            Some(T - 456),
            "epoch milliseconds"
        );
        assert_eq!(
            parse_openx(&json!(1_709_190_489.5)),
            Some(1_709_190_489_500_000),
            "float seconds"
        );
        for bad in [
            json!("2024-02-30 00:00:00"),
            json!("2024-02-29T07:08:09"),
            json!("yesterday"),
            json!(true),
            json!("2024-02-29T07:08:09.1234567890Z"),
        ] {
            assert_eq!(parse_openx(&bad), None, "{bad}");
        }
    }

    #[test]
    fn hive_forms() {
        assert_eq!(
            parse_hive(&json!("2024-02-29 07:08:09.123456"), &[]),
            Some(T)
        );
        assert_eq!(
            parse_hive(&json!("2024-02-29T07:08:09Z"), &[]),
            None,
            "default is Timestamp.valueOf"
        );
        let formats = [
            HiveFormat::parse("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").unwrap(),
            HiveFormat::parse("dd/MM/yyyy HH:mm").unwrap(),
            HiveFormat::parse("millis").unwrap(),
        ];
        assert_eq!(
            parse_hive(&json!("2024-02-29T07:08:09.123Z"), &formats),
            Some(T - 456)
        );
        assert_eq!(
            parse_hive(&json!("29/02/2024 07:08"), &formats),
            Some(1_709_190_480_000_000)
        );
        assert_eq!(
            parse_hive(&json!(1_709_190_489_123i64), &formats),
            Some(T - 456)
        );
        assert_eq!(parse_hive(&json!("nope"), &formats), None);
        assert!(HiveFormat::parse("yyyy-QQ").is_err());
        assert!(HiveFormat::parse("HH:mm").is_err(), "a format needs a year");
        assert!(HiveFormat::parse("yyyy'open").is_err());
    }

    proptest! {
        /// Any instant formatted as OpenX ISO text parses back to itself (µs precision).
        #[test]
        fn iso_round_trip(micros in 0i64..253_402_300_799_999_999) {
            let t = crate::time::UtcDateTime::from_epoch_ms(micros.div_euclid(1000));
            let text = format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", t.year, t.month, t.day, t.hour, t.minute, t.second, micros.rem_euclid(1_000_000));
            prop_assert_eq!(parse_openx(&Value::String(text)), Some(micros));
        }

        /// The fixed-place reading of the usual form agrees with the general scanner on strings
        /// of its shape and on near misses.
        #[test]
        fn fixed_iso_agrees_with_the_general_scanner(
            s in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?Z?",
            junk in "[0-9TZ:. -]{0,30}",
        ) {
            for text in [s.as_str(), junk.as_str()] {
                let general = date_time(text, b'T', 2)
                    .and_then(|(mut c, micros)| c.lit(b'Z').and_then(|()| c.done().then_some(micros)));
                if let Some(fixed) = iso_utc_fixed(text.as_bytes()) {
                    prop_assert_eq!(Some(fixed), general, "{}", text);
                }
            }
        }

        /// Arbitrary strings never panic either parser.
        #[test]
        fn garbage_never_panics(s in "[0-9T:. Z/-]{0,40}") {
            let _ = parse_openx(&Value::String(s.clone()));
            let _ = parse_hive(&Value::String(s), &[]);
        }
    }
}
