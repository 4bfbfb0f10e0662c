//! JSON written exactly as Python's `json.dumps(obj, sort_keys=True)` writes
//! it with its defaults: separators `", "` and `": "`, `ensure_ascii=True`,
//! keys sorted by code point, floats as `float.__repr__`.

use std::fmt::Write as _;

use serde_json::Value;

/// Deepest nesting of arrays and objects written. serde_json refuses more
/// than 128 levels when parsing, so only values built in code can hit this.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a value has no Python JSON form that vigil will sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalJsonError {
    /// NaN and the infinities are not JSON; Python would write `NaN` or
    /// `Infinity`, which no JSON parser accepts back.
    #[error("{0} is not a finite number")]
    NonFinite(String),
    /// Arrays and objects nest deeper than the limit.
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Appends `s` as a JSON string with `ensure_ascii=True`: printable ASCII
/// as is (including `/`), `"` and `\` escaped, `\n \r \t \b \f` by name,
/// everything else as lowercase `\uXXXX`, with UTF-16 surrogate pairs above
/// U+FFFF.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends `v` as Python's `json.dumps(v, sort_keys=True)` would.
pub(crate) fn write_value(out: &mut String, v: &Value) -> Result<(), CanonicalJsonError> {
    write_value_at(out, v, 0)
}

fn write_value_at(out: &mut String, v: &Value, depth: usize) -> Result<(), CanonicalJsonError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(f) = n.as_f64() {
                write_float(out, f)?;
            } else {
                return Err(CanonicalJsonError::NonFinite(n.to_string()));
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(CanonicalJsonError::TooDeep);
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value_at(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            if depth >= MAX_DEPTH {
                return Err(CanonicalJsonError::TooDeep);
            }
            // Sort here rather than trust the map's order: another crate in
            // the build may turn on serde_json's `preserve_order`. Rust's
            // `str` order is byte order, which for UTF-8 is code point
            // order, which is Python's order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value_at(out, item, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Appends `f` as Python's `float.__repr__`: the shortest digits that read
/// back as the same double, in positional notation when the decimal
/// exponent is in -4..16 (with `.0` added to whole numbers), otherwise as
/// `d[.ddd]e±XX` with at least two exponent digits.
pub(crate) fn write_float(out: &mut String, f: f64) -> Result<(), CanonicalJsonError> {
    if !f.is_finite() {
        return Err(CanonicalJsonError::NonFinite(f.to_string()));
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    if f == 0.0 {
        out.push_str("0.0");
        return Ok(());
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's
    // repr (both pick the closest of the shortest candidates): "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Python's `decpt`: the value is 0.DIGITS × 10^decpt.
    let decpt = exp + 1;
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..-decpt {
            out.push('0');
        }
        out.push_str(&digits);
    } else if decpt >= n {
        out.push_str(&digits);
        for _ in 0..(decpt - n) {
            out.push('0');
        }
        out.push_str(".0");
    } else {
        let (int, frac) = digits.split_at(usize::try_from(decpt).unwrap_or(0));
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    Ok(())
}

/// Checks that every integer literal in a JSON text reads back as the same
/// integer in serde_json as in Python.
///
/// serde_json (without `arbitrary_precision`) reads an integer beyond 64
/// bits, and the integer `-0`, as a float; Python reads both as integers
/// and prints them as such, so the signing bytes would differ. Refusing
/// such input gives a clear error instead of a signature failure. Strings
/// are skipped; the text need not be valid JSON.
pub(crate) fn check_integer_literals(text: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() {
                    match text[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let is_integer = !token.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
                if is_integer && token == b"-0" {
                    return Err(
                        "integer -0 is read as a float here but as 0 by Python; write 0".to_owned(),
                    );
                }
                if is_integer && !fits_64_bits(token) {
                    let shown = String::from_utf8_lossy(&token[..token.len().min(40)]);
                    return Err(format!(
                        "integer {shown} is outside the 64-bit range vigil can sign exactly"
                    ));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn fits_64_bits(token: &[u8]) -> bool {
    // At most 20 digits and a sign; anything longer is out of range (or
    // malformed, which serde_json reports).
    if token.len() > 21 {
        return false;
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse::<i128>().ok())
        .is_none_or(|v| v >= i128::from(i64::MIN) && v <= i128::from(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f).expect("finite");
        s
    }

    fn dumps(v: &Value) -> String {
        let mut s = String::new();
        write_value(&mut s, v).expect("dumps");
        s
    }

    #[test]
    fn floats_print_as_python_repr() {
        // Each pair was printed by CPython 3.11's repr().
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (0.5, "0.5"),
            (100.0, "100.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (0.30000000000000004, "0.30000000000000004"),
            (123456789.123, "123456789.123"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e22, "1e+22"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (2.5e-300, "2.5e-300"),
            (9007199254740993.0, "9007199254740992.0"),
            (1234567890123456.7, "1234567890123456.8"),
            (12345678901234567.0, "1.2345678901234568e+16"),
        ];
        for &(f, want) in cases {
            assert_eq!(float(f), want, "{f:e}");
        }
        assert!(write_float(&mut String::new(), f64::NAN).is_err());
        assert!(write_float(&mut String::new(), f64::INFINITY).is_err());
        assert!(write_float(&mut String::new(), f64::NEG_INFINITY).is_err());
    }

    #[test]
    fn strings_escape_as_ensure_ascii() {
        let mut s = String::new();
        write_str(
            &mut s,
            "a/b \"q\" \\ \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}\u{80}é€\u{2028}😀",
        );
        assert_eq!(
            s,
            r#""a/b \"q\" \\ \n\r\t\b\f\u0000\u001f\u007f\u0080\u00e9\u20ac\u2028\ud83d\ude00""#
        );
    }

    #[test]
    fn nested_objects_are_sorted_and_spaced() {
        let v = json!({"b": {"z": 1, "a": [1.0, null, true, false, "x"]}, "a": {}, "B": []});
        assert_eq!(
            dumps(&v),
            r#"{"B": [], "a": {}, "b": {"a": [1.0, null, true, false, "x"], "z": 1}}"#
        );
        // Code point order, not UTF-16 order: U+FFFF sorts before U+10000.
        let v = json!({"\u{10000}": 1, "\u{ffff}": 2, "é": 3, "z": 4});
        assert_eq!(
            dumps(&v),
            r#"{"z": 4, "\u00e9": 3, "\uffff": 2, "\ud800\udc00": 1}"#
        );
    }

    #[test]
    fn integers_print_as_is() {
        let v: Value = serde_json::from_str(
            "[0, -1, 18446744073709551615, -9223372036854775808, 1e2, 1E2, -0.0, -0e0]",
        )
        .expect("json");
        assert_eq!(
            dumps(&v),
            "[0, -1, 18446744073709551615, -9223372036854775808, 100.0, 100.0, -0.0, -0.0]"
        );
        // serde_json reads the integer `-0` as the float -0.0, which Python
        // reads as the integer 0: the literal is refused before parsing.
        let v: Value = serde_json::from_str("-0").expect("json");
        assert!(v.is_f64());
    }

    #[test]
    fn large_integer_literals_are_found() {
        assert!(check_integer_literals(b"[18446744073709551615, -9223372036854775808]").is_ok());
        assert!(check_integer_literals(b"[18446744073709551616]").is_err());
        assert!(check_integer_literals(b"[-9223372036854775809]").is_err());
        assert!(check_integer_literals(b"[1, -0]").is_err());
        assert!(check_integer_literals(b"[-0.0, -0e0, 0]").is_ok());
        assert!(check_integer_literals(b"[1e400, 123456789012345678901234.5]").is_ok());
        assert!(
            check_integer_literals(
                br#"{"a": "99999999999999999999999 \" 99999999999999999999999"}"#
            )
            .is_ok()
        );
        assert!(check_integer_literals(&[b'9'; 1000]).is_err());
    }

    #[test]
    fn deep_values_are_refused_not_overflowed() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH + 1 {
            v = json!([v]);
        }
        assert_eq!(
            write_value(&mut String::new(), &v),
            Err(CanonicalJsonError::TooDeep)
        );
    }
}
