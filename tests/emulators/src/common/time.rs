//! The UTC calendar, for the timestamps the emulators write.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment in UTC, split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utc {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u64,
    pub(crate) minute: u64,
    pub(crate) second: u64,
    /// Below the second.
    pub(crate) nanos: u32,
}

impl Utc {
    /// The moment `since_epoch` after 1970-01-01T00:00:00Z.
    pub(crate) fn at(since_epoch: Duration) -> Utc {
        let secs = since_epoch.as_secs();
        let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
        let rem = secs % 86_400;
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            nanos: since_epoch.subsec_nanos(),
        }
    }

    pub(crate) fn now() -> Utc {
        Utc::at(since_epoch())
    }

    /// `YYYY-MM-DDTHH:MM:SS.<fraction>Z` with `fraction_digits` digits (1 to 9) of the second.
    pub(crate) fn iso8601(&self, fraction_digits: u32) -> String {
        let digits = fraction_digits.clamp(1, 9);
        let fraction = self.nanos / 10u32.pow(9 - digits);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{fraction:0width$}Z",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            width = digits as usize
        )
    }
}

/// The time since 1970-01-01T00:00:00Z (zero if the clock is before it).
pub(crate) fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since 1970-01-01T00:00:00Z of an RFC 3339 timestamp
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T`/`Z` in either case), the fraction dropped;
/// `None` when it is not one.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let sep = |at: usize, c: u8| b.get(at).is_some_and(|x| x.eq_ignore_ascii_case(&c));
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i..)? {
        [z] if z.eq_ignore_ascii_case(&b'Z') => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && b[i + 3] == b':' => {
            let minutes = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// (year, month, day) of the proleptic Gregorian calendar to days since 1970-01-01 (Howard
/// Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T13:14:15.123456789Z"),
            Some(19_782 * 86_400 + 13 * 3600 + 14 * 60 + 15)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:14:15+01:00"),
            parse_rfc3339("2024-02-29T13:14:15Z")
        );
        assert_eq!(
            parse_rfc3339("2024-02-29t12:44:15-00:30"),
            parse_rfc3339("2024-02-29T13:14:15Z")
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T13:14:15",
            "2024-13-01T00:00:00Z",
            "2024-02-29T13:14:15.Z",
            "2024-02-29T13:14:15+0100",
            "2024-02-29 13:14:15Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn splits_a_moment() {
        // 2024-02-29T13:14:15.123456789Z
        let at = Duration::new(19_782 * 86_400 + 13 * 3600 + 14 * 60 + 15, 123_456_789);
        assert_eq!(
            Utc::at(at),
            Utc {
                year: 2024,
                month: 2,
                day: 29,
                hour: 13,
                minute: 14,
                second: 15,
                nanos: 123_456_789,
            }
        );
        assert_eq!(Utc::at(at).iso8601(3), "2024-02-29T13:14:15.123Z");
        assert_eq!(Utc::at(at).iso8601(7), "2024-02-29T13:14:15.1234567Z");
        let early = Utc::at(Duration::new(61, 5_000_000));
        assert_eq!(early.iso8601(3), "1970-01-01T00:01:01.005Z");
    }
}
