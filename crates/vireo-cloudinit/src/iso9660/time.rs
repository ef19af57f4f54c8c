//! Timestamps in the two ISO 9660 encodings (ECMA-119 8.4.26.1 and 9.1.5), from Unix seconds.
//!
//! Invariant: an [`IsoTimestamp`] always holds a valid UTC civil date between 1900-01-01 and
//! 2155-12-31 (the range the 7-byte directory-record form can express), so both encodings
//! are total.

use std::fmt;

/// A UTC instant with one-second resolution that both ISO 9660 date forms can hold.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IsoTimestamp {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// A Unix time outside what ISO 9660 directory records can express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {unix_seconds} is outside 1900-01-01..=2155-12-31, which ISO 9660 cannot record"
)]
pub struct TimestampOutOfRange {
    pub unix_seconds: i64,
}

const SECONDS_PER_DAY: i64 = 86_400;
const FIRST_YEAR: i64 = 1900;
const LAST_YEAR: i64 = 2155;

impl IsoTimestamp {
    /// Converts seconds since 1970-01-01T00:00:00Z (no leap seconds) to a civil UTC date.
    pub fn from_unix(unix_seconds: i64) -> Result<Self, TimestampOutOfRange> {
        let days = unix_seconds.div_euclid(SECONDS_PER_DAY);
        let secs_of_day = unix_seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        if !(FIRST_YEAR..=LAST_YEAR).contains(&year) {
            return Err(TimestampOutOfRange { unix_seconds });
        }
        // Casts are exact: the year was range-checked, the rest are small by construction.
        Ok(Self {
            year: year as u16,
            month: month as u8,
            day: day as u8,
            hour: (secs_of_day / 3600) as u8,
            minute: (secs_of_day % 3600 / 60) as u8,
            second: (secs_of_day % 60) as u8,
        })
    }

    /// Directory-record form (ECMA-119 9.1.5): years since 1900, month, day, hour, minute,
    /// second, offset from GMT in 15-minute units (always 0: UTC).
    pub fn to_dir_record_bytes(self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// Volume-descriptor form (ECMA-119 8.4.26.1): "YYYYMMDDHHMMSScc" in ASCII digits
    /// followed by the GMT offset byte (0: UTC).
    pub fn to_volume_descriptor_bytes(self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(text.as_bytes());
        out
    }

    /// Parses the directory-record form back (readers, tests); `None` for impossible dates.
    pub fn from_dir_record_bytes(bytes: [u8; 7]) -> Option<Self> {
        let [y, month, day, hour, minute, second, _offset] = bytes;
        let valid = (1..=12).contains(&month)
            && (1..=days_in_month(1900 + i64::from(y), month)).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60;
        valid.then_some(Self {
            year: 1900 + u16::from(y),
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// Seconds since the Unix epoch (the inverse of [`IsoTimestamp::from_unix`]).
    pub fn to_unix(self) -> i64 {
        days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        ) * SECONDS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

impl fmt::Debug for IsoTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01, computed in 400-year eras
/// (146 097 days each) with years starting in March so the leap day is the era's last day.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March … 11 = February
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let march_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * march_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        // Reference values from `date -u -d @N`.
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (-2_208_988_800, "1900-01-01T00:00:00Z"),
            (5_869_583_999, "2155-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                format!("{:?}", IsoTimestamp::from_unix(secs).unwrap()),
                want
            );
        }
        assert!(IsoTimestamp::from_unix(-2_208_988_801).is_err());
        assert!(IsoTimestamp::from_unix(5_869_584_000).is_err());
    }

    #[test]
    fn encodings() {
        let t = IsoTimestamp::from_unix(1_700_000_000).unwrap();
        assert_eq!(t.to_dir_record_bytes(), [123, 11, 14, 22, 13, 20, 0]);
        assert_eq!(&t.to_volume_descriptor_bytes()[..16], b"2023111422132000");
        assert_eq!(t.to_volume_descriptor_bytes()[16], 0);
    }

    proptest! {
        #[test]
        fn round_trips(secs in -2_208_988_800i64..=5_869_583_999) {
            let t = IsoTimestamp::from_unix(secs).unwrap();
            prop_assert_eq!(t.to_unix(), secs);
            prop_assert_eq!(IsoTimestamp::from_dir_record_bytes(t.to_dir_record_bytes()), Some(t));
        }
    }
}
