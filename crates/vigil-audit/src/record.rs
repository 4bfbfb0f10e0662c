//! The record format: canonical encoding, hashing and the check of one line.
//!
//! The crate docs define the format; this module is its only implementation,
//! used both to write records and to check them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::hash::RecordHash;
use crate::problem::ProblemKind;

/// The fixed tail of every line: `,"hash":"` + 64 hex digits + `"}`.
pub(crate) const HASH_MEMBER_LEN: usize = 9 + 64 + 2;

// ---------------------------------------------------------------------------
// Canonical JSON

/// Appends the canonical encoding of `value` to `out`.
///
/// Objects: members sorted by key (byte order of the UTF-8 key), no
/// whitespace. Strings: see [`encode_str`]. Numbers: see [`encode_number`].
pub(crate) fn encode_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => encode_number(n, out),
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => encode_object(map, out),
    }
}

/// Appends the canonical encoding of an object. Keys are sorted here rather
/// than relying on `serde_json::Map`'s order, which changes to insertion
/// order when any crate in the build enables serde_json's `preserve_order`.
pub(crate) fn encode_object(map: &Map<String, Value>, out: &mut String) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode_str(key, out);
        out.push(':');
        encode_value(value, out);
    }
    out.push('}');
}

/// Appends a JSON string: `"` and `\` escaped with a backslash; U+0008,
/// U+0009, U+000A, U+000C, U+000D as `\b \t \n \f \r`; other characters
/// below U+0020 as `\u00xx` (lowercase hex); everything else as itself in
/// UTF-8 (`/`, U+007F and non-ASCII are not escaped).
pub(crate) fn encode_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a number: an integer that fits in `u64` or `i64` in decimal;
/// any other number as the `f64` it denotes, written as ECMAScript's
/// `Number.prototype.toString` writes it (shortest round-trip digits;
/// `1` not `1.0`, `1e+21`, `1e-7`, `0.000001`; `-0` as `0`).
pub(crate) fn encode_number(n: &Number, out: &mut String) {
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else {
        // Without serde_json's `arbitrary_precision`, every other number is
        // a finite f64; with it, this is the nearest f64.
        encode_f64(n.as_f64().unwrap_or(0.0), out);
    }
}

fn encode_f64(x: f64, out: &mut String) {
    if x == 0.0 || !x.is_finite() {
        // -0 is written 0; JSON has no NaN or infinity, so serde_json never
        // hands one over.
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest digits that round-trip: "1.2345e2".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i64 = exp.parse().unwrap_or(0);
    let k = digits.len() as i64;
    // value = 0.DIGITS × 10^n
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

// ---------------------------------------------------------------------------
// Time

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, microseconds.
pub(crate) fn format_time(t: SystemTime) -> String {
    let (secs, micros) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros() as i64),
        Err(e) => {
            // A clock before 1970: count back from the epoch.
            let d = e.duration();
            let total = -(d.as_micros() as i64);
            (total.div_euclid(1_000_000), total.rem_euclid(1_000_000))
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Whether `s` has the shape this crate writes: `YYYY-MM-DDTHH:MM:SS.ffffffZ`
/// with plausible field values.
pub(crate) fn is_valid_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 27 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| {
        b[r].iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z';
    shape
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        // 60 for a leap second written by a clock that shows one.
        && num(17..19) <= 60
}

// ---------------------------------------------------------------------------
// Records

/// Appends the hashed body of a record to `out`:
/// `{"seq":N,"time":"T","kind":K,"details":D,"prev":"P"}`, where `details`
/// is already canonical JSON.
pub(crate) fn encode_body(
    seq: u64,
    time: &str,
    kind: &str,
    details: &str,
    prev: &RecordHash,
    out: &mut String,
) {
    out.push_str("{\"seq\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"time\":");
    encode_str(time, out);
    out.push_str(",\"kind\":");
    encode_str(kind, out);
    out.push_str(",\"details\":");
    out.push_str(details);
    out.push_str(",\"prev\":\"");
    out.push_str(&prev.to_hex());
    out.push_str("\"}");
}

/// Turns a body (ending in `}`) into a full line with its hash and a
/// newline; returns the hash.
pub(crate) fn finish_line(body: &mut String) -> RecordHash {
    let hash = RecordHash::of(body.as_bytes());
    body.pop();
    body.push_str(",\"hash\":\"");
    body.push_str(&hash.to_hex());
    body.push_str("\"}\n");
    hash
}

/// The fields of one line, as parsed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    seq: u64,
    time: String,
    kind: String,
    details: Map<String, Value>,
    prev: String,
    hash: String,
}

/// What a line that is a well-formed, self-consistent record holds.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) seq: u64,
    pub(crate) prev: RecordHash,
    pub(crate) hash: RecordHash,
    pub(crate) kind: String,
    pub(crate) details: Map<String, Value>,
}

/// A line that could not be taken as a record: why, and the seq it claims
/// when that much could be read.
#[derive(Debug)]
pub(crate) struct LineError {
    pub(crate) seq: Option<u64>,
    /// The `hash` the line states, when it could be read.
    pub(crate) hash: Option<RecordHash>,
    pub(crate) kind: ProblemKind,
}

/// Checks one line (without its newline) on its own: it parses, its fields
/// have the right shapes, its `hash` is the SHA-256 of its body, and it is
/// in canonical form. Chain checks (seq, prev) are the caller's.
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed, Box<LineError>> {
    let malformed = |seq, reason: String| {
        Box::new(LineError {
            seq,
            hash: None,
            kind: ProblemKind::Malformed { reason },
        })
    };
    if line.is_empty() {
        return Err(malformed(None, "empty line".into()));
    }
    let raw: RawRecord = serde_json::from_slice(line).map_err(|e| {
        malformed(
            None,
            format!("not a record: {}", e.to_string().replace('\n', " ")),
        )
    })?;
    let seq = Some(raw.seq);
    if raw.seq == 0 {
        return Err(malformed(seq, "seq starts at 1".into()));
    }
    let hash: RecordHash = raw
        .hash
        .parse()
        .map_err(|_| malformed(seq, "hash is not 64 lowercase hex digits".into()))?;
    let prev: RecordHash = raw
        .prev
        .parse()
        .map_err(|_| malformed(seq, "prev is not 64 lowercase hex digits".into()))?;
    if !is_valid_time(&raw.time) {
        return Err(malformed(
            seq,
            "time is not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ)".into(),
        ));
    }
    // The hash covers the line up to its last member, closed with `}`.
    // A parsed record is at least this long, but a line with the members in
    // another order may not end with the hash member: the canonical check
    // below catches that.
    let computed = if line.len() > HASH_MEMBER_LEN {
        let mut body = Vec::with_capacity(line.len() - HASH_MEMBER_LEN + 1);
        body.extend_from_slice(&line[..line.len() - HASH_MEMBER_LEN]);
        body.push(b'}');
        RecordHash::of(&body)
    } else {
        RecordHash::ZERO
    };
    if computed != hash {
        return Err(Box::new(LineError {
            seq,
            hash: Some(hash),
            kind: ProblemKind::HashMismatch {
                stored: hash,
                computed,
            },
        }));
    }
    let mut details = String::new();
    encode_object(&raw.details, &mut details);
    let mut canonical = String::with_capacity(line.len() + 1);
    encode_body(
        raw.seq,
        &raw.time,
        &raw.kind,
        &details,
        &prev,
        &mut canonical,
    );
    finish_line(&mut canonical);
    canonical.pop(); // the newline
    if canonical.as_bytes() != line {
        return Err(Box::new(LineError {
            seq,
            hash: Some(hash),
            kind: ProblemKind::NotCanonical,
        }));
    }
    Ok(Parsed {
        seq: raw.seq,
        prev,
        hash,
        kind: raw.kind,
        details: raw.details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn f64_text(x: f64) -> String {
        let mut out = String::new();
        encode_f64(x, &mut out);
        out
    }

    #[test]
    fn floats_are_written_as_ecmascript_writes_them() {
        for (x, text) in [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123.456, "123.456"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-0.0, "0"),
            (4.5, "4.5"),
            (333333333.3333333, "333333333.3333333"),
        ] {
            assert_eq!(f64_text(x), text, "{x:e}");
        }
    }

    #[test]
    fn strings_escape_exactly_the_documented_characters() {
        let mut out = String::new();
        encode_str(
            "a\"b\\c/\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}é\u{1F600}\u{2028}",
            &mut out,
        );
        assert_eq!(
            out,
            "\"a\\\"b\\\\c/\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}é\u{1F600}\u{2028}\""
        );
    }

    #[test]
    fn objects_are_sorted_by_key_bytes() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[1,2,{"y":null,"x":true}],"é":"","Z":0}}"#)
                .expect("json");
        let mut out = String::new();
        encode_value(&v, &mut out);
        assert_eq!(
            out,
            r#"{"a":{"Z":0,"z":[1,2,{"x":true,"y":null}],"é":""},"b":1}"#
        );
    }

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        for (secs, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000001Z"),
            (1_700_000_000, 123_456, "2023-11-14T22:13:20.123456Z"),
            (4_102_444_799, 999_999, "2099-12-31T23:59:59.999999Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            let s = format_time(t);
            assert_eq!(s, text);
            assert!(is_valid_time(&s));
        }
        let before = UNIX_EPOCH - Duration::from_micros(1);
        assert_eq!(format_time(before), "1969-12-31T23:59:59.999999Z");
        for bad in [
            "2023-11-14T22:13:20.123456",
            "2023-11-14T22:13:20Z",
            "2023-13-14T22:13:20.123456Z",
            "2023-11-14 22:13:20.123456Z",
            "2023-11-14T22:13:20.123456+00:00",
        ] {
            assert!(!is_valid_time(bad), "{bad}");
        }
    }

    #[test]
    fn hashes_parse_only_in_canonical_form() {
        let h = RecordHash::of(b"x");
        assert_eq!(h.to_hex().parse::<RecordHash>(), Ok(h));
        assert!(h.to_hex().to_uppercase().parse::<RecordHash>().is_err());
        assert!("00".parse::<RecordHash>().is_err());
        assert_eq!("0".repeat(64).parse::<RecordHash>(), Ok(RecordHash::ZERO));
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            r#"[\\"/\x00-\x1fa-zé😀]{0,8}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the writer writes, the checker accepts: encoding is a
        /// fixed point of parsing and encoding again.
        #[test]
        fn every_written_line_passes_the_check(
            details in proptest::collection::btree_map(proptest::prelude::any::<String>(), json_value(), 0..6),
            seq in 1..u64::MAX,
        ) {
            let details: Map<String, Value> = details.into_iter().collect();
            let mut encoded = String::new();
            encode_object(&details, &mut encoded);
            let mut line = String::new();
            encode_body(seq, "2026-01-01T00:00:00.000000Z", "k", &encoded, &RecordHash::ZERO, &mut line);
            finish_line(&mut line);
            line.pop();
            let parsed = parse_line(line.as_bytes());
            proptest::prop_assert!(parsed.is_ok(), "{line}: {parsed:?}");
        }
    }

    #[test]
    fn a_written_line_parses_back() {
        let mut details = String::new();
        encode_value(&serde_json::json!({"hash": "x", "n": 1.0}), &mut details);
        let mut line = String::new();
        encode_body(
            7,
            "2023-11-14T22:13:20.123456Z",
            "command.issued",
            &details,
            &RecordHash::ZERO,
            &mut line,
        );
        let hash = finish_line(&mut line);
        assert!(line.ends_with("\"}\n"));
        let parsed = parse_line(line.trim_end_matches('\n').as_bytes()).expect("valid");
        assert_eq!(
            (parsed.seq, parsed.prev, parsed.hash),
            (7, RecordHash::ZERO, hash)
        );
    }
}
