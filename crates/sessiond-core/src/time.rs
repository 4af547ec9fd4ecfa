use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as whole milliseconds since the Unix epoch.
///
/// The core never reads a clock: callers pass `now` in, which keeps every decision a pure
/// function and lets tests move time freely.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch (negative: before).
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Converts a wall-clock reading (taken by the caller, not here).
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating instead of overflowing.
    pub fn minus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(ms))
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, whole seconds), formatted without allocating or
    /// going through `fmt` (it is on the path of every `GET /api/session`). Outside years
    /// 0000–9999, which RFC 3339 cannot write, the nearest of its limits.
    pub fn to_rfc3339(self) -> Rfc3339 {
        const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
        const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let secs = self.0.div_euclid(1000).clamp(MIN, MAX);
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Days since the epoch to a proleptic Gregorian date (H. Hinnant, "chrono-Compatible
        // Low-Level Date Algorithms", civil_from_days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut b = *b"0000-00-00T00:00:00Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, sod / 3600);
        put(14, 2, sod / 60 % 60);
        put(17, 2, sod % 60);
        Rfc3339(b)
    }
}

/// A timestamp written as RFC 3339 (see [`Timestamp::to_rfc3339`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339([u8; 20]);

impl Rfc3339 {
    /// The text, `YYYY-MM-DDThh:mm:ssZ`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0000-00-00T00:00:00Z")
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_and_minus_saturate() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(
            t.minus(Duration::from_secs(5)),
            Timestamp::from_millis(5_000)
        );
        assert_eq!(
            t.plus(Duration::from_secs(5)),
            Timestamp::from_millis(15_000)
        );
        assert_eq!(
            Timestamp::from_millis(i64::MIN + 1).minus(Duration::from_secs(1)),
            Timestamp::from_millis(i64::MIN)
        );
        assert_eq!(
            Timestamp::from_millis(i64::MAX - 1).plus(Duration::from_secs(1)),
            Timestamp::from_millis(i64::MAX)
        );
    }

    #[test]
    fn rfc3339_of_known_instants_and_the_limits() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (999, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_709_164_799_000, "2024-02-28T23:59:59Z"),
            (1_709_251_199_000, "2024-02-29T23:59:59Z"),
            (1_795_657_534_000, "2026-11-26T01:45:34Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00Z"),
            (253_402_300_799_000, "9999-12-31T23:59:59Z"),
            (i64::MAX, "9999-12-31T23:59:59Z"),
            (-62_167_219_200_000, "0000-01-01T00:00:00Z"),
            (i64::MIN, "0000-01-01T00:00:00Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(
                Timestamp::from_millis(ms).to_rfc3339().as_str(),
                want,
                "{ms}"
            );
        }
        assert_eq!(
            Timestamp::from_millis(0).to_rfc3339().to_string(),
            "1970-01-01T00:00:00Z"
        );
    }
}
