//! Firehose record deaggregation (dynamic partitioning's `RecordDeAggregation` processor): one
//! incoming record holding several sub-records is split into them, either as concatenated JSON
//! objects or by a delimiter.
//!
//! Both splitters return byte ranges into their input, to be cut out with
//! [`super::SubRecord::from_ranges`]. Both pass a record holding more than `max_records`
//! sub-records (Firehose: [`super::MAX_SUB_RECORDS`]) on whole, as one range, since Firehose does
//! not deaggregate such a record.

use std::ops::Range;

use memchr::{memchr2, memmem};

use super::ProcessError;

/// Deepest nesting of objects and arrays that [`split_json`] accepts: the most that serde_json,
/// which validates each object, parses (its recursion limit is 128, exclusive).
pub const MAX_JSON_DEPTH: usize = 127;

/// A record passed on whole: one range.
fn single(range: Range<usize>) -> Vec<Range<usize>> {
    std::iter::once(range).collect()
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(data: &[u8], mut pos: usize) -> usize {
    while data.get(pos).is_some_and(|&b| is_json_ws(b)) {
        pos += 1;
    }
    pos
}

/// Index just past the string whose opening quote precedes `pos`.
fn skip_string(data: &[u8], mut pos: usize, object_start: usize) -> Result<usize, ProcessError> {
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        match memchr2(b'"', b'\\', rest) {
            Some(i) if rest[i] == b'"' => return Ok(pos + i + 1),
            // A backslash escapes the next byte; `\uXXXX` needs no more care for splitting.
            Some(i) => pos += i + 2,
            None => {
                return Err(ProcessError::JsonInvalid {
                    offset: object_start,
                    reason: "unterminated string".to_string(),
                })
            }
        }
    }
}

/// Index just past the object (or bracket-balanced run) opening at `start`, found by counting
/// brackets outside strings; well-formedness is left to serde_json.
fn scan_object(data: &[u8], start: usize) -> Result<usize, ProcessError> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = data.get(i) {
        match b {
            b'"' => {
                i = skip_string(data, i + 1, start)?;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ProcessError::JsonTooDeep {
                        offset: i,
                        limit: MAX_JSON_DEPTH,
                    });
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(ProcessError::JsonInvalid {
        offset: start,
        reason: "unterminated object".to_string(),
    })
}

/// JSON deaggregation: the byte ranges of the top-level JSON objects in `data`, which holds
/// concatenated objects (`{..}{..}`) or JSON lines. JSON whitespace (space, tab, CR, LF) before,
/// between and after objects is dropped: the ranges exclude it.
///
/// If `data` holds more than `max_records` objects it is not deaggregated: the result is then a
/// single range from the first object's start to the last one's end (the input less its outer
/// whitespace), as Firehose passes such a record on whole. Every object is validated in either
/// case.
///
/// Errors: [`ProcessError::JsonNotObject`] for a top-level array or scalar;
/// [`ProcessError::JsonTooDeep`] for nesting deeper than [`MAX_JSON_DEPTH`];
/// [`ProcessError::JsonInvalid`] for malformed JSON, invalid UTF-8, anything else between
/// objects, or input holding no object at all (empty or only whitespace).
pub fn split_json(data: &[u8], max_records: usize) -> Result<Vec<Range<usize>>, ProcessError> {
    let text = std::str::from_utf8(data).map_err(|e| ProcessError::JsonInvalid {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8".to_string(),
    })?;
    let mut ranges = Vec::new();
    let mut pos = skip_ws(data, 0);
    while let Some(&b) = data.get(pos) {
        match b {
            b'{' => {}
            b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                return Err(ProcessError::JsonNotObject { offset: pos })
            }
            _ => {
                return Err(ProcessError::JsonInvalid {
                    offset: pos,
                    reason: format!("expected '{{', found byte 0x{b:02x}"),
                })
            }
        }
        let end = scan_object(data, pos)?;
        // `pos` and `end` sit next to ASCII brackets, so this never fails.
        let object = text.get(pos..end).unwrap_or_default();
        serde_json::from_str::<serde::de::IgnoredAny>(object).map_err(|e| {
            ProcessError::JsonInvalid {
                offset: pos,
                reason: e.to_string(),
            }
        })?;
        ranges.push(pos..end);
        pos = skip_ws(data, end);
    }
    match (ranges.first(), ranges.last()) {
        (None, _) | (_, None) => Err(ProcessError::JsonInvalid {
            offset: data.len(),
            reason: "no JSON object in record".to_string(),
        }),
        (Some(first), Some(last)) if ranges.len() > max_records => {
            Ok(single(first.start..last.end))
        }
        _ => Ok(ranges),
    }
}

/// Delimiter deaggregation: the byte ranges of the pieces of `data` between occurrences of
/// `delimiter` (non-overlapping, left to right), excluding the delimiters.
///
/// Every piece is kept, empty ones included (`a,,b` gives `a`, ``, `b`; a leading delimiter gives
/// an empty first piece), except that a trailing delimiter ends the last record rather than
/// starting an empty one (`a,b,` gives `a`, `b`). Empty `data` gives no range. An empty
/// `delimiter` splits nothing: `data` is one range. More than `max_records` pieces: one range
/// covering all of `data`, as Firehose passes such a record on whole.
pub fn split_delimited(data: &[u8], delimiter: &[u8], max_records: usize) -> Vec<Range<usize>> {
    let whole = single(0..data.len());
    if data.is_empty() {
        return Vec::new();
    }
    if delimiter.is_empty() {
        return whole;
    }
    let mut ranges = Vec::new();
    let mut start = 0;
    for at in memmem::find_iter(data, delimiter) {
        if ranges.len() == max_records {
            return whole;
        }
        ranges.push(start..at);
        start = at + delimiter.len();
    }
    if start < data.len() {
        if ranges.len() == max_records {
            return whole;
        }
        ranges.push(start..data.len());
    }
    ranges
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn pieces<'a>(data: &'a [u8], ranges: &[Range<usize>]) -> Vec<&'a [u8]> {
        ranges.iter().map(|r| &data[r.clone()]).collect()
    }

    fn split_json_str(s: &str) -> Result<Vec<&str>, ProcessError> {
        split_json(s.as_bytes(), 500).map(|rs| rs.into_iter().map(|r| &s[r]).collect())
    }

    #[test]
    fn json_concatenated_and_lines() {
        assert_eq!(
            split_json_str(r#"{"a":1}{"b":"}{"}"#).unwrap(),
            [r#"{"a":1}"#, r#"{"b":"}{"}"#]
        );
        assert_eq!(
            split_json_str("\n {\"a\":[1,{\"x\":\"\\\"}\"}]}\r\n\t{}\n\n{ \"c\" : null }\n")
                .unwrap(),
            ["{\"a\":[1,{\"x\":\"\\\"}\"}]}", "{}", "{ \"c\" : null }"]
        );
        assert_eq!(
            split_json_str(r#"{"s":"\\"}{}"#).unwrap(),
            [r#"{"s":"\\"}"#, "{}"]
        );
        assert_eq!(
            split_json_str("{\"\u{e9}\u{1f600}\":\"\u{e9}\"}").unwrap(),
            ["{\"\u{e9}\u{1f600}\":\"\u{e9}\"}"]
        );
    }

    #[test]
    fn json_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "Deaggregation.InvalidJson"),
            (b" \n ", "Deaggregation.InvalidJson"),
            (b"[1,2]", "Deaggregation.NotJsonObject"),
            (b"{} 5", "Deaggregation.NotJsonObject"),
            (b"\"str\"", "Deaggregation.NotJsonObject"),
            (b"true", "Deaggregation.NotJsonObject"),
            (b"null", "Deaggregation.NotJsonObject"),
            (b"{},{}", "Deaggregation.InvalidJson"),
            (b"{}]", "Deaggregation.InvalidJson"),
            (b"{", "Deaggregation.InvalidJson"),
            (b"{\"a\":\"", "Deaggregation.InvalidJson"),
            (b"{\"a\":\"\\", "Deaggregation.InvalidJson"),
            (b"{\"a\":1,}", "Deaggregation.InvalidJson"),
            (b"{\"a\":[}]", "Deaggregation.InvalidJson"),
            (b"{\"a\" 1}", "Deaggregation.InvalidJson"),
            (b"{a:1}", "Deaggregation.InvalidJson"),
            (b"{\"a\":\"\x01\"}", "Deaggregation.InvalidJson"),
            (b"{\"a\":\"\xff\"}", "Deaggregation.InvalidJson"),
            (b"\xef\xbb\xbf{}", "Deaggregation.InvalidJson"),
            (b"{}\x00", "Deaggregation.InvalidJson"),
        ];
        for (input, code) in cases {
            let err = split_json(input, 500).unwrap_err();
            assert_eq!(err.code(), *code, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(err.output_type(), super::super::PROCESSING_FAILED);
        }
        assert_eq!(
            split_json(b"{}\n[]", 500),
            Err(ProcessError::JsonNotObject { offset: 3 })
        );
    }

    #[test]
    fn json_depth_limit() {
        let nested = |depth: usize| {
            let mut s = "{\"a\":".to_string();
            s.push_str(&"[".repeat(depth - 1));
            s.push_str(&"]".repeat(depth - 1));
            s.push('}');
            s
        };
        let ok = nested(MAX_JSON_DEPTH);
        assert_eq!(split_json(ok.as_bytes(), 500), Ok(vec![0..ok.len()]));
        let deep = nested(MAX_JSON_DEPTH + 1);
        assert_eq!(
            split_json(deep.as_bytes(), 500),
            Err(ProcessError::JsonTooDeep {
                offset: 5 + MAX_JSON_DEPTH - 1,
                limit: MAX_JSON_DEPTH
            })
        );
        // A million open brackets: no recursion, a clean error.
        let huge = format!("{{\"a\":{}", "[".repeat(1_000_000));
        assert_eq!(
            split_json(huge.as_bytes(), 500).unwrap_err().code(),
            "Deaggregation.NestingTooDeep"
        );
    }

    #[test]
    fn json_too_many_records_is_passed_whole() {
        let three = " {\"a\":1}\n{}\n{\"b\":2} \n";
        assert_eq!(split_json(three.as_bytes(), 3).unwrap().len(), 3);
        assert_eq!(
            split_json(three.as_bytes(), 2),
            Ok(vec![1..three.len() - 2])
        );
        // Still validated.
        assert!(split_json(b"{}{}{]", 1).is_err());
        let many = "{}\n".repeat(501);
        assert_eq!(
            split_json(many.as_bytes(), 500),
            Ok(vec![0..many.len() - 1])
        );
        assert_eq!(split_json(many.as_bytes(), 501).unwrap().len(), 501);
    }

    #[test]
    fn delimited() {
        let d = |data: &str, delim: &str, max: usize| {
            let ranges = split_delimited(data.as_bytes(), delim.as_bytes(), max);
            ranges
                .into_iter()
                .map(|r| data[r].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(d("a,b,c", ",", 500), ["a", "b", "c"]);
        assert_eq!(d("a,b,", ",", 500), ["a", "b"]);
        assert_eq!(d("a,,b", ",", 500), ["a", "", "b"]);
        assert_eq!(d(",a", ",", 500), ["", "a"]);
        assert_eq!(d(",", ",", 500), [""]);
        assert_eq!(d("abc", ",", 500), ["abc"]);
        assert_eq!(d("", ",", 500), Vec::<String>::new());
        assert_eq!(d("a||b|||c", "||", 500), ["a", "b", "|c"]);
        assert_eq!(d("a\r\nb\r\n", "\r\n", 500), ["a", "b"]);
        assert_eq!(d("a,b", "", 500), ["a,b"]);
        assert_eq!(d("a,b,c", ",", 3), ["a", "b", "c"]);
        assert_eq!(d("a,b,c,", ",", 3), ["a", "b", "c"]);
        assert_eq!(d("a,b,c", ",", 2), ["a,b,c"]);
        assert_eq!(d("a,b,c,", ",", 2), ["a,b,c,"]);
        assert_eq!(d("a", ",", 0), ["a"]);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(".*", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = String> {
        (
            proptest::collection::btree_map(".*", arb_json(), 0..5),
            any::<bool>(),
        )
            .prop_map(|(m, pretty)| {
                let v = Value::Object(m.into_iter().collect());
                if pretty {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                } else {
                    v.to_string()
                }
            })
    }

    proptest! {
        #[test]
        fn prop_json_round_trip(
            objects in proptest::collection::vec(arb_object(), 1..10),
            seps in proptest::collection::vec("[ \t\r\n]{0,3}", 11),
        ) {
            let mut data = seps[10].clone();
            for (o, sep) in objects.iter().zip(&seps) {
                data.push_str(o);
                data.push_str(sep);
            }
            let ranges = split_json(data.as_bytes(), 500).unwrap();
            prop_assert_eq!(pieces(data.as_bytes(), &ranges), objects.iter().map(|o| o.as_bytes()).collect::<Vec<_>>());
            if objects.len() > 1 {
                let whole = split_json(data.as_bytes(), objects.len() - 1).unwrap();
                prop_assert_eq!(whole, vec![ranges[0].start..ranges[ranges.len() - 1].end]);
            }
        }

        #[test]
        fn prop_json_agrees_with_serde(data in proptest::collection::vec(
            prop_oneof![Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b'\\'),
                        Just(b':'), Just(b','), Just(b' '), Just(b'\n'), Just(b'1'), any::<u8>()], 0..60)) {
            // Whatever serde_json's stream parser accepts as a sequence of objects, split_json
            // accepts with the same boundaries, and the other way round.
            let mut want = Vec::new();
            let mut stream = serde_json::Deserializer::from_slice(&data).into_iter::<Value>();
            let mut ok = true;
            loop {
                let start = skip_ws(&data, stream.byte_offset());
                match stream.next() {
                    None => break,
                    Some(Ok(Value::Object(_))) => want.push(start..stream.byte_offset()),
                    Some(_) => { ok = false; break; }
                }
            }
            // serde's stream parser also needs no separator after an object, like split_json.
            let ok = ok && !want.is_empty() && std::str::from_utf8(&data).is_ok();
            match split_json(&data, 500) {
                Ok(got) => { prop_assert!(ok); prop_assert_eq!(got, want); }
                Err(_) => prop_assert!(!ok),
            }
        }

        #[test]
        fn prop_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..5) {
            if let Ok(ranges) = split_json(&data, max) {
                prop_assert!(!ranges.is_empty() && ranges.len() <= max.max(1));
                for r in ranges {
                    prop_assert!(r.start < r.end && r.end <= data.len());
                }
            }
        }

        #[test]
        fn prop_delimited_round_trip(
            records in proptest::collection::vec("[a-c]{0,4}", 0..20),
            delim in "[,;|]{1,3}",
            trailing in any::<bool>(),
        ) {
            // Records hold no delimiter byte, so they come back as they were.
            let mut data = records.join(delim.as_str());
            if trailing && !records.is_empty() {
                data.push_str(&delim);
            }
            let ranges = split_delimited(data.as_bytes(), delim.as_bytes(), 500);
            let got: Vec<&str> = ranges.iter().map(|r| &data[r.clone()]).collect();
            let mut want: Vec<&str> = records.iter().map(String::as_str).collect();
            // Without a trailing delimiter, a final empty record reads as a trailing delimiter
            // (or, alone, as empty data): it is not produced.
            if !trailing && want.last() == Some(&"") {
                want.pop();
            }
            prop_assert_eq!(&got, &want);
            if got.len() > 1 {
                prop_assert_eq!(split_delimited(data.as_bytes(), delim.as_bytes(), got.len() - 1), vec![0..data.len()]);
            }
        }

        #[test]
        fn prop_delimited_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            delim in proptest::collection::vec(any::<u8>(), 0..3),
            max in 0usize..5,
        ) {
            let ranges = split_delimited(&data, &delim, max);
            prop_assert!(ranges.len() <= max.max(1));
            for r in &ranges {
                prop_assert!(r.start <= r.end && r.end <= data.len());
                if !delim.is_empty() && ranges.len() > 1 {
                    prop_assert!(memmem::find(&data[r.clone()], &delim).is_none());
                }
            }
        }
    }
}
