//! Property tests: no input panics, and what is printed reads back.

use proptest::prelude::*;
use vigil_command::{SignedCommand, Timestamp};

proptest! {
    #[test]
    fn timestamp_parse_never_panics(s in "\\PC{0,40}") {
        let _ = Timestamp::parse(&s);
    }

    #[test]
    fn isoformat_reads_back_as_the_same_timestamp(
        y in 1i32..=9999, mo in 1u8..=12, d in 1u8..=28, h in 0u8..24, mi in 0u8..60,
        s in 0u8..60, us in prop_oneof![Just(0u32), 0u32..1_000_000], off in -1439i32..=1439,
    ) {
        let sign = if off < 0 { '-' } else { '+' };
        let text = format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{sign}{:02}:{:02}",
            off.unsigned_abs() / 60,
            off.unsigned_abs() % 60
        );
        let t = Timestamp::parse(&text).expect("valid");
        let again = Timestamp::parse(&t.isoformat()).expect("isoformat parses");
        prop_assert_eq!(t, again);
        prop_assert_eq!(again.isoformat(), t.isoformat());
    }

    #[test]
    fn command_parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SignedCommand::from_json(&body);
    }

    #[test]
    fn float_args_sign_as_numbers_that_read_back(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let mut cmd = vigil_command::UnsignedCommand::new(
            "c", "EXEC", "wa", Timestamp::parse("2025-01-01T12:00:00Z").expect("ts"), "r",
        );
        cmd.args = Some(serde_json::json!([x]));
        let bytes = cmd.signing_bytes().expect("finite floats sign");
        let text = String::from_utf8(bytes).expect("ascii");
        let start = text.find("\"args\": [").expect("args") + "\"args\": [".len();
        let end = start + text[start..].find(']').expect("]");
        let printed = &text[start..end];
        let back: f64 = printed.parse().expect("a number");
        prop_assert_eq!(back.to_bits(), x.to_bits(), "{} printed as {}", x, printed);
    }
}
