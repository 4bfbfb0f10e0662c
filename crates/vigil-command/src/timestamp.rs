//! Timestamps as CIRIS writes and signs them.
//!
//! A [`Timestamp`] is parsed from the strict ISO-8601 form
//! `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, keeps its UTC offset,
//! and prints back exactly as Python's `datetime.isoformat()` prints the
//! parsed value. That printed form is what goes into the signing bytes, so it
//! must be byte-exact.
//!
//! The grammar is parsed here by hand rather than with `time`'s RFC 3339
//! parser, because that parser accepts things Python's `fromisoformat` does
//! not (lowercase `t`/`z`, a leap second `:60`) and cannot tell "no offset"
//! apart from other syntax errors; the CIRIS endpoint answers the former
//! with its own status (400). `time` still holds the value: it validates the
//! calendar date and does the arithmetic.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Longest timestamp text accepted, in bytes. The longest useful form,
/// `YYYY-MM-DDTHH:MM:SS.ffffff+HH:MM`, has 32; extra fraction digits are
/// allowed (and cut), up to this bound.
pub const MAX_TIMESTAMP_LEN: usize = 64;

/// Why a timestamp could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// The time has no UTC offset (`Z`, `+HH:MM` or `-HH:MM`). CIRIS answers
    /// this with 400, unlike other malformed input.
    #[error("timestamp {input:?} has no UTC offset (add Z or +HH:MM)")]
    MissingOffset {
        /// The text (cut to [`MAX_TIMESTAMP_LEN`] bytes).
        input: String,
    },
    /// The text does not follow `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
    #[error("timestamp {input:?} is not YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM): {detail}")]
    Syntax {
        /// The text (cut to [`MAX_TIMESTAMP_LEN`] bytes).
        input: String,
        /// What was expected where.
        detail: &'static str,
    },
    /// A field is out of its range (month 13, February 30, hour 24, ...).
    #[error("timestamp {input:?}: {detail}")]
    OutOfRange {
        /// The text (cut to [`MAX_TIMESTAMP_LEN`] bytes).
        input: String,
        /// Which field.
        detail: &'static str,
    },
}

/// A point in time with the UTC offset it was written with, at microsecond
/// precision (as a Python `datetime`).
///
/// Equality is representational: the same instant written with two
/// different offsets gives two different timestamps, because they sign
/// differently. Compare instants with [`Timestamp::unix_nanos`].
#[derive(Clone, Copy)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
    ///
    /// Fractions longer than six digits are cut to microseconds, as Python
    /// does. Years run from 1 to 9999, as Python's.
    ///
    /// ```
    /// use vigil_command::Timestamp;
    /// let t = Timestamp::parse("2025-01-01T12:00:00.5Z")?;
    /// assert_eq!(t.isoformat(), "2025-01-01T12:00:00.500000+00:00");
    /// # Ok::<(), vigil_command::TimestampError>(())
    /// ```
    pub fn parse(input: &str) -> Result<Timestamp, TimestampError> {
        Parser::new(input).parse()
    }

    /// This timestamp as Python's `datetime.isoformat()` prints it:
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`, with the fraction only when the
    /// microseconds are not zero.
    pub fn isoformat(&self) -> String {
        let mut out = String::with_capacity(32);
        self.write_isoformat(&mut out);
        out
    }

    pub(crate) fn write_isoformat(&self, out: &mut String) {
        use fmt::Write as _;
        let d = self.0;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        );
        let micros = d.microsecond();
        if micros != 0 {
            let _ = write!(out, ".{micros:06}");
        }
        let total = d.offset().whole_minutes();
        let sign = if total < 0 { '-' } else { '+' };
        let abs = total.unsigned_abs();
        let _ = write!(out, "{sign}{:02}:{:02}", abs / 60, abs % 60);
    }

    /// The timestamp for `t`, in UTC, cut to microseconds.
    pub fn from_system_time(t: SystemTime) -> Result<Timestamp, TimestampError> {
        let nanos = system_time_nanos(t);
        let micros_nanos = nanos.div_euclid(1000) * 1000;
        OffsetDateTime::from_unix_timestamp_nanos(micros_nanos)
            .ok()
            .filter(|d| (1..=9999).contains(&d.year()))
            .map(Timestamp)
            .ok_or_else(|| TimestampError::OutOfRange {
                input: format!("{t:?}"),
                detail: "year outside 1..=9999",
            })
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(&self) -> SystemTime {
        nanos_to_system_time(self.unix_nanos())
    }

    /// Nanoseconds since the Unix epoch (always a whole number of
    /// microseconds).
    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// The UTC offset, in minutes east of UTC.
    pub fn offset_minutes(&self) -> i16 {
        self.0.offset().whole_minutes()
    }

    /// This timestamp plus `d` (cut to microseconds), keeping the offset;
    /// `None` past year 9999.
    pub fn checked_add(&self, d: Duration) -> Option<Timestamp> {
        let micros = i64::try_from(d.as_micros()).ok()?;
        self.0
            .checked_add(time::Duration::microseconds(micros))
            .filter(|d| d.year() <= 9999)
            .map(Timestamp)
    }

    /// The underlying `time` value.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }
}

impl PartialEq for Timestamp {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 && self.0.offset() == other.0.offset()
    }
}

impl Eq for Timestamp {}

impl std::hash::Hash for Timestamp {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.unix_nanos().hash(state);
        self.offset_minutes().hash(state);
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.isoformat())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.isoformat())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.isoformat())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO-8601 timestamp with a UTC offset")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Nanoseconds since the Unix epoch, negative before it.
pub(crate) fn system_time_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

/// The inverse of [`system_time_nanos`], saturating at what `SystemTime`
/// can hold.
pub(crate) fn nanos_to_system_time(nanos: i128) -> SystemTime {
    let abs = nanos.unsigned_abs();
    let secs = u64::try_from(abs / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(abs % 1_000_000_000).unwrap_or(0);
    let d = Duration::new(secs, sub);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

/// A strict left-to-right reader over the timestamp's bytes.
struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            bytes: input.as_bytes(),
            pos: 0,
        }
    }

    fn shown(&self) -> String {
        let mut end = self.input.len().min(MAX_TIMESTAMP_LEN);
        while !self.input.is_char_boundary(end) {
            end -= 1;
        }
        self.input[..end].to_owned()
    }

    fn syntax(&self, detail: &'static str) -> TimestampError {
        TimestampError::Syntax {
            input: self.shown(),
            detail,
        }
    }

    fn range(&self, detail: &'static str) -> TimestampError {
        TimestampError::OutOfRange {
            input: self.shown(),
            detail,
        }
    }

    fn digits(&mut self, n: usize, what: &'static str) -> Result<u32, TimestampError> {
        let end = self.pos + n;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.syntax(what))?;
        let mut v = 0u32;
        for &b in slice {
            if !b.is_ascii_digit() {
                return Err(self.syntax(what));
            }
            v = v * 10 + u32::from(b - b'0');
        }
        self.pos = end;
        Ok(v)
    }

    fn byte(&mut self, want: u8, what: &'static str) -> Result<(), TimestampError> {
        if self.bytes.get(self.pos) == Some(&want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    fn parse(mut self) -> Result<Timestamp, TimestampError> {
        if self.input.len() > MAX_TIMESTAMP_LEN {
            return Err(self.syntax("too long"));
        }
        let year = self.digits(4, "a four-digit year")?;
        self.byte(b'-', "'-' after the year")?;
        let month = self.digits(2, "a two-digit month")?;
        self.byte(b'-', "'-' after the month")?;
        let day = self.digits(2, "a two-digit day")?;
        self.byte(b'T', "'T' between date and time")?;
        let hour = self.digits(2, "a two-digit hour")?;
        self.byte(b':', "':' after the hour")?;
        let minute = self.digits(2, "two-digit minutes")?;
        self.byte(b':', "':' after the minutes")?;
        let second = self.digits(2, "two-digit seconds")?;

        let mut micros = 0u32;
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            let start = self.pos;
            while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            let frac = &self.bytes[start..self.pos];
            if frac.is_empty() {
                return Err(self.syntax("digits after '.'"));
            }
            // Python keeps the first six digits and pads shorter fractions.
            for i in 0..6 {
                let d = frac.get(i).map_or(0, |b| u32::from(b - b'0'));
                micros = micros * 10 + d;
            }
        }

        let offset_minutes: i32 = match self.bytes.get(self.pos) {
            None => {
                return Err(TimestampError::MissingOffset {
                    input: self.shown(),
                });
            }
            Some(b'Z') => {
                self.pos += 1;
                0
            }
            Some(&sign @ (b'+' | b'-')) => {
                self.pos += 1;
                let oh = self.digits(2, "a two-digit offset hour")?;
                self.byte(b':', "':' in the offset (+HH:MM)")?;
                let om = self.digits(2, "two-digit offset minutes")?;
                if oh > 23 {
                    return Err(self.range("offset hour above 23"));
                }
                if om > 59 {
                    return Err(self.range("offset minutes above 59"));
                }
                // Both parts are small: no overflow.
                let total = i32::try_from(oh * 60 + om).unwrap_or(0);
                if sign == b'-' { -total } else { total }
            }
            Some(_) => return Err(self.syntax("Z, +HH:MM or -HH:MM after the time")),
        };
        if self.pos != self.bytes.len() {
            return Err(self.syntax("nothing after the offset"));
        }

        if !(1..=9999).contains(&year) {
            return Err(self.range("year outside 1..=9999"));
        }
        let month = u8::try_from(month)
            .ok()
            .and_then(|m| Month::try_from(m).ok())
            .ok_or_else(|| self.range("month outside 1..=12"))?;
        // Year and day were read as at most four and two digits.
        let year = i32::try_from(year).unwrap_or(0);
        let day = u8::try_from(day).unwrap_or(0);
        let date = Date::from_calendar_date(year, month, day)
            .map_err(|_| self.range("no such day in that month"))?;
        let (h, m, s) = (
            u8::try_from(hour).unwrap_or(u8::MAX),
            u8::try_from(minute).unwrap_or(u8::MAX),
            u8::try_from(second).unwrap_or(u8::MAX),
        );
        if h > 23 {
            return Err(self.range("hour above 23"));
        }
        if m > 59 {
            return Err(self.range("minutes above 59"));
        }
        if s > 59 {
            return Err(self.range("seconds above 59"));
        }
        let time = Time::from_hms_micro(h, m, s, micros)
            .map_err(|_| self.range("time of day out of range"))?;
        let offset = UtcOffset::from_whole_seconds(offset_minutes * 60)
            .map_err(|_| self.range("offset out of range"))?;
        Ok(Timestamp(
            PrimitiveDateTime::new(date, time).assume_offset(offset),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(input: &str) -> String {
        Timestamp::parse(input)
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .isoformat()
    }

    #[test]
    fn prints_as_python_isoformat() {
        let cases = [
            ("2025-01-01T12:00:00Z", "2025-01-01T12:00:00+00:00"),
            ("2025-01-01T12:00:00+00:00", "2025-01-01T12:00:00+00:00"),
            ("2025-01-01T12:00:00-00:00", "2025-01-01T12:00:00+00:00"),
            ("2025-01-01T12:00:00+05:30", "2025-01-01T12:00:00+05:30"),
            ("2025-01-01T12:00:00-03:30", "2025-01-01T12:00:00-03:30"),
            ("2025-01-01T12:00:00-00:30", "2025-01-01T12:00:00-00:30"),
            (
                "2025-01-01T12:00:00.123Z",
                "2025-01-01T12:00:00.123000+00:00",
            ),
            (
                "2025-01-01T12:00:00.1+01:00",
                "2025-01-01T12:00:00.100000+01:00",
            ),
            ("2025-01-01T12:00:00.000000Z", "2025-01-01T12:00:00+00:00"),
            ("2025-01-01T12:00:00.0000009Z", "2025-01-01T12:00:00+00:00"),
            (
                "2025-01-01T12:00:00.123456789Z",
                "2025-01-01T12:00:00.123456+00:00",
            ),
            (
                "2025-01-01T12:00:00.000001Z",
                "2025-01-01T12:00:00.000001+00:00",
            ),
            ("0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00+23:59"),
            (
                "9999-12-31T23:59:59.999999-23:59",
                "9999-12-31T23:59:59.999999-23:59",
            ),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00+00:00"),
        ];
        for (input, want) in cases {
            assert_eq!(iso(input), want, "{input}");
        }
    }

    #[test]
    fn missing_offset_is_its_own_error() {
        for input in ["2025-01-01T12:00:00", "2025-01-01T12:00:00.123456"] {
            assert!(
                matches!(
                    Timestamp::parse(input),
                    Err(TimestampError::MissingOffset { .. })
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_what_python_or_the_grammar_refuses() {
        let syntax = [
            "",
            "2025-01-01",
            "2025-01-01 12:00:00Z",
            "2025-01-01t12:00:00Z",
            "2025-01-01T12:00:00z",
            "2025-01-01T12:00Z",
            "2025-1-01T12:00:00Z",
            "2025-01-01T12:00:00.Z",
            "2025-01-01T12:00:00+0530",
            "2025-01-01T12:00:00+05",
            "2025-01-01T12:00:00+05:30:00",
            "2025-01-01T12:00:00Z ",
            " 2025-01-01T12:00:00Z",
            "2025-01-01T12:00:00ZZ",
            "+2025-01-01T12:00:00Z",
            "２０２５-01-01T12:00:00Z",
        ];
        for input in syntax {
            assert!(
                matches!(Timestamp::parse(input), Err(TimestampError::Syntax { .. })),
                "{input}: {:?}",
                Timestamp::parse(input)
            );
        }
        let range = [
            "0000-01-01T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-00-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-32T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T23:60:00Z",
            "2016-12-31T23:59:60Z",
            "2025-01-01T00:00:00+24:00",
            "2025-01-01T00:00:00+05:60",
        ];
        for input in range {
            assert!(
                matches!(
                    Timestamp::parse(input),
                    Err(TimestampError::OutOfRange { .. })
                ),
                "{input}: {:?}",
                Timestamp::parse(input)
            );
        }
        let long = format!("2025-01-01T12:00:00.{}Z", "1".repeat(100));
        assert!(Timestamp::parse(&long).is_err());
    }

    #[test]
    fn equality_is_representational() {
        let a = Timestamp::parse("2025-01-01T12:00:00Z").expect("a");
        let b = Timestamp::parse("2025-01-01T17:30:00+05:30").expect("b");
        assert_eq!(a.unix_nanos(), b.unix_nanos());
        assert_ne!(a, b);
        assert_eq!(a, Timestamp::parse("2025-01-01T12:00:00+00:00").expect("c"));
    }

    #[test]
    fn system_time_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_735_732_800, 123_456_789);
        let ts = Timestamp::from_system_time(t).expect("ts");
        assert_eq!(ts.isoformat(), "2025-01-01T12:00:00.123456+00:00");
        assert_eq!(
            ts.to_system_time(),
            UNIX_EPOCH + Duration::new(1_735_732_800, 123_456_000)
        );
        let before = UNIX_EPOCH - Duration::from_micros(1);
        let ts = Timestamp::from_system_time(before).expect("before");
        assert_eq!(ts.isoformat(), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(ts.to_system_time(), before);
    }

    #[test]
    fn serde_uses_isoformat() {
        let t: Timestamp = serde_json::from_str("\"2025-01-01T12:00:00.5Z\"").expect("parse");
        assert_eq!(
            serde_json::to_string(&t).expect("json"),
            "\"2025-01-01T12:00:00.500000+00:00\""
        );
        let e =
            serde_json::from_str::<Timestamp>("\"2025-01-01T12:00:00\"").expect_err("no offset");
        assert!(e.to_string().contains("no UTC offset"), "{e}");
    }
}
