//! [`Timestamp`]: an envelope's time as Go's `time.Time` parses and prints it.
//!
//! Owns: the instant and the UTC offset it was written with (Go keeps the offset: a time read
//! as `…+02:00` is written back as `…+02:00`), Go's RFC 3339 parsing (`time.Parse` with
//! `time.RFC3339`, which the Go SDK reaches through `time.Time`'s `UnmarshalJSON`), Go's
//! `RFC3339Nano` printing (its `MarshalJSON`), and Go's zero time (what an envelope without a
//! timestamp holds).
//!
//! The parsing is Go 1.19's, the version the tests' Go peer runs, and the case table generated
//! by it checks every rule: exactly 4-digit years, 2-digit months, days, minutes and seconds, a
//! 1- or 2-digit hour, a fraction after `.` or `,` of any length (digits past the ninth are
//! dropped), `Z` or `±hh:mm` with hours and minutes of two digits each (any value up to 99),
//! days checked against the month, no leap second, nothing before or after.
//!
//! Invariants: parsing never panics; the offset of a parsed time is a whole number of minutes;
//! printing never fails (a time Go could not print as RFC 3339 is refused where envelopes are
//! encoded, see [`Timestamp::encodable`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc};

/// A point in time and the UTC offset it is shown in, as Go's `time.Time` holds them.
///
/// Two timestamps are equal when both the instant and the offset are (the same text); compare
/// [`Timestamp::utc`] for the instant alone. Ordering is by instant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    utc: DateTime<Utc>,
    offset_seconds: i32,
}

/// Why text is not an RFC 3339 time as Go reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time as Go reads it: {reason}")]
pub struct TimestampError {
    reason: &'static str,
}

impl TimestampError {
    fn new(reason: &'static str) -> Self {
        TimestampError { reason }
    }
}

impl Timestamp {
    /// The current time, in UTC.
    pub fn now() -> Timestamp {
        Timestamp::from_utc(Utc::now())
    }

    /// Go's zero time, `0001-01-01T00:00:00Z`: what an envelope without a timestamp (or with
    /// `null`) decodes to in Go, and here.
    pub fn zero() -> Timestamp {
        let midnight = NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or(NaiveDateTime::MIN);
        Timestamp::from_utc(midnight.and_utc())
    }

    /// Whether this is Go's zero instant (whatever the offset), as Go's `IsZero`.
    pub fn is_zero(&self) -> bool {
        self.utc == Timestamp::zero().utc
    }

    /// `utc`, shown in UTC (`Z`).
    pub fn from_utc(utc: DateTime<Utc>) -> Timestamp {
        Timestamp { utc, offset_seconds: 0 }
    }

    /// The instant `utc`, shown at `offset_seconds` east of UTC.
    pub fn with_offset(utc: DateTime<Utc>, offset_seconds: i32) -> Timestamp {
        Timestamp { utc, offset_seconds }
    }

    /// The instant.
    pub fn utc(&self) -> DateTime<Utc> {
        self.utc
    }

    /// The offset from UTC it is shown in, in seconds east.
    pub fn offset_seconds(&self) -> i32 {
        self.offset_seconds
    }

    /// Parses RFC 3339 text as Go 1.19's `time.Parse(time.RFC3339, text)` does (see the module
    /// header for its rules).
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        parse_rfc3339(text.as_bytes())
    }

    /// Reads the raw JSON of an envelope's `timestamp` as Go's `time.Time.UnmarshalJSON`
    /// (1.19) does: `null` is `None` (the field keeps its value); anything else must be a
    /// string holding the time, its escapes not decoded (`"…\u005a"` is not `…Z`).
    pub(crate) fn from_go_json(raw: &[u8]) -> Result<Option<Timestamp>, TimestampError> {
        if raw == b"null" {
            return Ok(None);
        }
        let text = raw
            .strip_prefix(b"\"")
            .and_then(|r| r.strip_suffix(b"\""))
            .ok_or(TimestampError::new("not a JSON string"))?;
        parse_rfc3339(text).map(Some)
    }

    /// The date and time as shown at the offset; `None` only beyond chrono's range.
    fn local(&self) -> Option<NaiveDateTime> {
        self.utc.naive_utc().checked_add_signed(TimeDelta::seconds(self.offset_seconds.into()))
    }

    /// Why Go could not print this timestamp, if it could not: Go's `MarshalJSON` (Go 1.20
    /// and later) refuses years outside 0 to 9999 (as shown at the offset) and an offset of 24
    /// hours or more; an offset that is not whole minutes prints as text that is not the same
    /// time.
    pub(crate) fn encodable(&self) -> Result<(), &'static str> {
        let year = self.local().map(|l| l.year());
        if !year.is_some_and(|y| (0..=9999).contains(&y)) {
            return Err("year outside of range [0,9999]");
        }
        if self.offset_seconds.unsigned_abs() >= 24 * 3600 {
            return Err("timezone hour outside of range [0,23]");
        }
        if self.offset_seconds % 60 != 0 {
            return Err("UTC offset cannot be written as RFC 3339 (±hh:mm)");
        }
        Ok(())
    }
}

impl Default for Timestamp {
    /// Go's zero time.
    fn default() -> Self {
        Timestamp::zero()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(utc: DateTime<Utc>) -> Self {
        Timestamp::from_utc(utc)
    }
}

impl From<DateTime<FixedOffset>> for Timestamp {
    fn from(time: DateTime<FixedOffset>) -> Self {
        Timestamp::with_offset(time.to_utc(), time.offset().local_minus_utc())
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// As [`Timestamp::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl fmt::Display for Timestamp {
    /// Go's `RFC3339Nano`: `2006-01-02T15:04:05.999999999Z07:00`, the fraction without
    /// trailing zeros (none at all for a whole second), `Z` for a zero offset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Beyond chrono's range (a quarter of a million years) there is no local time to show:
        // show the instant in UTC.
        let (local, offset) = match self.local() {
            Some(local) => (local, self.offset_seconds),
            None => (self.utc.naive_utc(), 0),
        };
        let year = local.year();
        if year < 0 {
            write!(f, "-{:04}", year.unsigned_abs())?;
        } else {
            write!(f, "{year:04}")?;
        }
        write!(
            f,
            "-{:02}-{:02}T{:02}:{:02}:{:02}",
            local.month(),
            local.day(),
            local.hour(),
            local.minute(),
            local.second()
        )?;
        let nanos = local.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let digits = format!("{nanos:09}");
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        if offset == 0 {
            return f.write_str("Z");
        }
        // Go: zone := offset / 60 (minutes, truncated), sign from the zone, then hours and
        // minutes with at least two digits each.
        let zone = offset / 60;
        let sign = if zone < 0 { '-' } else { '+' };
        let zone = zone.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", zone / 60, zone % 60)
    }
}

/// Go's `time.Parse(time.RFC3339, …)` over bytes (they may come straight from JSON, unescaped).
fn parse_rfc3339(text: &[u8]) -> Result<Timestamp, TimestampError> {
    let mut p = Parser { rest: text };
    let year = p.year()?;
    p.literal(b'-')?;
    let month = p.number(true)?;
    if !(1..=12).contains(&month) {
        return Err(TimestampError::new("month out of range"));
    }
    p.literal(b'-')?;
    let day = p.number(true)?;
    p.literal(b'T')?;
    let hour = p.number(false)?;
    if hour >= 24 {
        return Err(TimestampError::new("hour out of range"));
    }
    p.literal(b':')?;
    let minute = p.number(true)?;
    if minute >= 60 {
        return Err(TimestampError::new("minute out of range"));
    }
    p.literal(b':')?;
    let second = p.number(true)?;
    if second >= 60 {
        return Err(TimestampError::new("second out of range"));
    }
    let nanos = p.fraction();
    let offset_seconds = p.offset()?;
    if !p.rest.is_empty() {
        return Err(TimestampError::new("extra text after the time"));
    }
    if day < 1 || day > days_in_month(month, year) {
        return Err(TimestampError::new("day out of range"));
    }
    let local = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_nano_opt(hour, minute, second, nanos))
        .ok_or(TimestampError::new("date out of range"))?;
    let utc = local
        .checked_sub_signed(TimeDelta::seconds(offset_seconds.into()))
        .ok_or(TimestampError::new("date out of range"))?;
    Ok(Timestamp::with_offset(utc.and_utc(), offset_seconds))
}

/// Go's `daysIn`: 28 or 29 days in February by the Gregorian leap-year rule (year 0 is a leap
/// year), 30 or 31 otherwise.
fn days_in_month(month: u32, year: i32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

struct Parser<'a> {
    rest: &'a [u8],
}

impl Parser<'_> {
    fn digit(&self, at: usize) -> Option<u32> {
        self.rest.get(at).filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0'))
    }

    fn advance(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }

    fn literal(&mut self, expected: u8) -> Result<(), TimestampError> {
        if self.rest.first() != Some(&expected) {
            return Err(TimestampError::new("does not match the RFC 3339 layout"));
        }
        self.advance(1);
        Ok(())
    }

    /// Go's `stdLongYear`: four bytes, all digits (no sign).
    fn year(&mut self) -> Result<i32, TimestampError> {
        let mut year = 0;
        for at in 0..4 {
            let d = self.digit(at).ok_or(TimestampError::new("year is not four digits"))?;
            year = year * 10 + d;
        }
        self.advance(4);
        // At most 9999: lossless.
        Ok(year as i32)
    }

    /// Go's `getnum`: two digits, or one when not `fixed` and the next byte is not a digit.
    fn number(&mut self, fixed: bool) -> Result<u32, TimestampError> {
        let first = self.digit(0).ok_or(TimestampError::new("expected a digit"))?;
        match self.digit(1) {
            Some(second) => {
                self.advance(2);
                Ok(first * 10 + second)
            }
            None if fixed => Err(TimestampError::new("expected two digits")),
            None => {
                self.advance(1);
                Ok(first)
            }
        }
    }

    /// A fraction of a second after `.` or `,` (only when a digit follows): every digit is
    /// read, the first nine count.
    fn fraction(&mut self) -> u32 {
        let starts = matches!(self.rest.first(), Some(b'.' | b','));
        if !starts || self.digit(1).is_none() {
            return 0;
        }
        let mut nanos = 0;
        let mut scale = 100_000_000;
        let mut at = 1;
        while let Some(d) = self.digit(at) {
            nanos += d * scale;
            scale /= 10;
            at += 1;
        }
        self.advance(at);
        nanos
    }

    /// `Z`, or `±hh:mm` with two digits each, in seconds east. As Go's `time.Parse` (Go 1.20
    /// and later): hours up to 24 and minutes up to 60 (24:00 and 01:60 read, 24:01 too).
    fn offset(&mut self) -> Result<i32, TimestampError> {
        if self.rest.first() == Some(&b'Z') {
            self.advance(1);
            return Ok(0);
        }
        let bad = || TimestampError::new("UTC offset is not Z or ±hh:mm");
        if self.rest.len() < 6 || self.rest.get(3) != Some(&b':') {
            return Err(bad());
        }
        let two = |a: usize| -> Option<u32> { Some(self.digit(a)? * 10 + self.digit(a + 1)?) };
        let (hours, minutes) = two(1).zip(two(4)).ok_or_else(bad)?;
        if hours > 24 {
            return Err(TimestampError::new("time zone offset hour out of range"));
        }
        if minutes > 60 {
            return Err(TimestampError::new("time zone offset minute out of range"));
        }
        // At most (24 * 60 + 60) * 60 = 90,000 seconds: lossless.
        let seconds = ((hours * 60 + minutes) * 60) as i32;
        let offset = match self.rest.first() {
            Some(b'+') => seconds,
            Some(b'-') => -seconds,
            _ => return Err(bad()),
        };
        self.advance(6);
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_go_prints() {
        for text in [
            "2024-03-01T12:34:56Z",
            "2024-03-01T12:34:56.1Z",
            "2024-03-01T14:34:56.123456789+02:00",
            "2024-03-01T07:04:56-05:30",
            "0000-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(Timestamp::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Timestamp::parse("2024-03-01T12:34:56+00:00").unwrap().to_string(),
            "2024-03-01T12:34:56Z"
        );
        assert_eq!(
            Timestamp::parse("2024-03-01T12:34:56,5-00:00").unwrap().to_string(),
            "2024-03-01T12:34:56.5Z"
        );
        assert_eq!(
            Timestamp::parse("2024-03-01T12:34:56+01:60").unwrap().to_string(),
            "2024-03-01T12:34:56+02:00"
        );
        assert!(Timestamp::parse("2024-03-01T12:34:56+99:99").is_err(), "minute out of range");
        assert!(Timestamp::parse("2024-03-01T12:34:56-25:00").is_err(), "hour out of range");
        assert_eq!(Timestamp::zero().to_string(), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn keeps_the_instant_and_the_offset() {
        let t = Timestamp::parse("2024-03-01T14:34:56.5+02:00").unwrap();
        assert_eq!(t.utc().to_rfc3339(), "2024-03-01T12:34:56.500+00:00");
        assert_eq!(t.offset_seconds(), 7200);
        assert_ne!(t, Timestamp::parse("2024-03-01T12:34:56.5Z").unwrap());
        assert_eq!(t.utc(), Timestamp::parse("2024-03-01T12:34:56.5Z").unwrap().utc());
    }

    #[test]
    fn encodable_only_as_go_reads_back() {
        assert!(Timestamp::parse("2024-03-01T12:34:56-23:59").unwrap().encodable().is_ok());
        assert!(Timestamp::parse("2024-03-01T12:34:56+24:00").unwrap().encodable().is_err());
        assert!(Timestamp::parse("2024-03-01T12:34:56+23:60").unwrap().encodable().is_err());
        let utc = Timestamp::zero().utc();
        assert!(Timestamp::with_offset(utc, 30).encodable().is_err(), "not whole minutes");
        let year_0 = Timestamp::parse("0000-01-01T00:00:00Z").unwrap().utc();
        assert!(Timestamp::with_offset(year_0, -60).encodable().is_err(), "year -1 at -00:01");
        assert!(Timestamp::with_offset(year_0, 60).encodable().is_ok());
    }
}
