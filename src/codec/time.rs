//! The two time formats on the wire.
//!
//! - [`Timestamp`]: the ILP Prepare `expiresAt`, 17 ASCII digits `YYYYMMDDHHmmssfff` in UTC, no
//!   prefix. Stored as milliseconds since the Unix epoch so expiry arithmetic is integer math.
//!   Every field is range-checked (no month 13, no hour 24, no second 60), unlike the JS codec.
//! - [`GeneralizedTime`]: the BTP ERROR `triggeredAt`, `YYYYMMDDHHmmss[.f{1,3}]Z`. Decoding
//!   accepts 0-3 fraction digits (trailing zeros allowed) and second 60; encoding always writes
//!   `.fffZ`, the only form the JS reference can read.
//!
//! No format-string parsing and no allocation: digits are read by position.
//!
//! The expiries a connector reads fall within a minute or two of each other, and so do those
//! it writes, so each thread remembers the last minute it read ([`READ_MINUTE`]) and the last
//! it wrote ([`WRITTEN_MINUTE`]): a timestamp in that minute is read or written as its first
//! 12 digits (compared or copied) and the 5 digits `ssfff`, without the calendar arithmetic.
//! Two entries, not one: a Prepare's expiry and the one we forward it with (seconds earlier,
//! or capped at the send timeout) are often in different minutes, and one shared entry then
//! missed on every packet.

use core::fmt;
use std::cell::Cell;

/// Length of an ILP timestamp on the wire.
pub const ILP_TIMESTAMP_LEN: usize = 17;

/// An instant with millisecond precision, as milliseconds since 1970-01-01T00:00:00Z (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Broken-down UTC time. `second` may be 60 only for a [`GeneralizedTime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
}

thread_local! {
    /// The last minute parsed on this thread: its first millisecond since the epoch and its
    /// digits `YYYYMMDDHHmm` (starts as the epoch's minute, a valid entry).
    static READ_MINUTE: Cell<(i64, [u8; 12])> = const { Cell::new((0, *b"197001010000")) };
    /// The same for the last minute written.
    static WRITTEN_MINUTE: Cell<(i64, [u8; 12])> = const { Cell::new((0, *b"197001010000")) };
}

/// The minute a timestamp `t` falls in, as a cache entry: its first millisecond and digits.
fn minute_entry(t: Timestamp, digits: &[u8; ILP_TIMESTAMP_LEN]) -> (i64, [u8; 12]) {
    let mut m = [0u8; 12];
    m.copy_from_slice(&digits[..12]);
    (t.0 - t.0.rem_euclid(60_000), m)
}

/// Milliseconds since the epoch for 0000-01-01 and 9999-12-31T23:59:59.999, the range the
/// 17-digit form can express.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u16, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(i64::from(y)) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`); the
/// reference the fast version is tested against.
#[cfg(test)]
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 (H. Hinnant's `days_from_civil`) for years 0..=9999 in unsigned arithmetic (no `div_euclid`): shifting
/// the year by one 400-year era keeps it positive and changes nothing else in the cycle.
#[inline]
fn days_from_civil_fast(y: i64, m: i64, d: i64) -> i64 {
    debug_assert!((0..=9999).contains(&y));
    let (m, d) = (m as u64, d as u64);
    let y = (y as u64 + 400) - u64::from(m <= 2);
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe) as i64 - 719_468 - 146_097
}

/// Inverse of [`days_from_civil_fast`].
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `N` ASCII digits starting at `at`.
#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

impl CivilTime {
    /// Reads `YYYYMMDDHHmmss` (14 digits) and range-checks it; `max_second` is 59 or 60.
    fn parse_date_time(b: &[u8], max_second: u8) -> Option<CivilTime> {
        let t = CivilTime {
            year: digits(b, 0, 4)? as u16,
            month: digits(b, 4, 2)? as u8,
            day: digits(b, 6, 2)? as u8,
            hour: digits(b, 8, 2)? as u8,
            minute: digits(b, 10, 2)? as u8,
            second: digits(b, 12, 2)? as u8,
            millis: 0,
        };
        t.is_valid(max_second).then_some(t)
    }

    /// Range-checks the date and time-of-day fields (`millis` is at most 999 by construction).
    #[inline]
    fn is_valid(&self, max_second: u8) -> bool {
        (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second <= max_second
    }

    fn write_date_time(&self, out: &mut [u8]) {
        let fields = [
            (u32::from(self.year), 4),
            (u32::from(self.month), 2),
            (u32::from(self.day), 2),
            (u32::from(self.hour), 2),
            (u32::from(self.minute), 2),
            (u32::from(self.second), 2),
        ];
        let mut at = 0;
        for (v, width) in fields {
            write_digits(&mut out[at..at + width], v);
            at += width;
        }
    }

    /// Milliseconds since the epoch; a leap second (60) counts as the next second.
    #[inline]
    pub fn to_timestamp(&self) -> Timestamp {
        let days = days_from_civil_fast(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        Timestamp(secs * 1000 + i64::from(self.millis))
    }
}

fn write_digits(out: &mut [u8], mut v: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl fmt::Display for CivilTime {
    /// ISO-8601 with milliseconds, e.g. `2017-12-24T16:14:32.279Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

impl Timestamp {
    /// From milliseconds since the epoch, clamped to what the 17-digit form can express.
    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms.clamp(MIN_MS, MAX_MS))
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::from_unix_millis(ms)
    }

    /// `self + ms`, saturating at the representable range.
    pub fn add_millis(self, ms: i64) -> Self {
        Self::from_unix_millis(self.0.saturating_add(ms))
    }

    /// Parses the 17-digit ILP form.
    ///
    /// Hot path (one per Prepare): all digits are checked in one branch-free pass, then the
    /// fields are assembled from them.
    pub fn parse_ilp(b: &[u8]) -> Option<Timestamp> {
        let b: &[u8; ILP_TIMESTAMP_LEN] = b.try_into().ok()?;
        let (start, minute) = READ_MINUTE.get();
        if b[..12] == minute {
            // `ssfff` read as one number is the millisecond of the minute; below 60 000 iff
            // the second is at most 59.
            let ms = digits(b, 12, 5)?;
            return (ms < 60_000).then(|| Timestamp(start + i64::from(ms)));
        }
        let t = Self::parse_ilp_uncached(b)?;
        READ_MINUTE.set(minute_entry(t, b));
        Some(t)
    }

    /// [`parse_ilp`](Self::parse_ilp) with the calendar arithmetic, always.
    fn parse_ilp_uncached(b: &[u8; ILP_TIMESTAMP_LEN]) -> Option<Timestamp> {
        let mut d = [0u8; ILP_TIMESTAMP_LEN];
        let mut bad = false;
        for (slot, &c) in d.iter_mut().zip(b) {
            *slot = c.wrapping_sub(b'0');
            bad |= *slot > 9;
        }
        if bad {
            return None;
        }
        let two = |i: usize| d[i] * 10 + d[i + 1];
        let t = CivilTime {
            year: u16::from(d[0]) * 1000
                + u16::from(d[1]) * 100
                + u16::from(d[2]) * 10
                + u16::from(d[3]),
            month: two(4),
            day: two(6),
            hour: two(8),
            minute: two(10),
            second: two(12),
            millis: u16::from(d[14]) * 100 + u16::from(d[15]) * 10 + u16::from(d[16]),
        };
        t.is_valid(59).then(|| t.to_timestamp())
    }

    /// Writes the 17-digit ILP form (always exactly 17 bytes).
    pub fn write_ilp(self, out: &mut [u8; ILP_TIMESTAMP_LEN]) {
        let (start, minute) = WRITTEN_MINUTE.get();
        // Both within the 17-digit range: the difference cannot overflow.
        let of_minute = self.0 - start;
        if (0..60_000).contains(&of_minute) {
            out[..12].copy_from_slice(&minute);
            write_digits(&mut out[12..], of_minute as u32);
            return;
        }
        self.write_ilp_uncached(out);
        WRITTEN_MINUTE.set(minute_entry(self, out));
    }

    /// [`write_ilp`](Self::write_ilp) with the calendar arithmetic, always.
    fn write_ilp_uncached(self, out: &mut [u8; ILP_TIMESTAMP_LEN]) {
        let c = self.to_civil();
        c.write_date_time(&mut out[..14]);
        write_digits(&mut out[14..], u32::from(c.millis));
    }

    pub fn to_ilp_bytes(self) -> [u8; ILP_TIMESTAMP_LEN] {
        let mut out = [0u8; ILP_TIMESTAMP_LEN];
        self.write_ilp(&mut out);
        out
    }

    pub fn to_civil(self) -> CivilTime {
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (y, month, day) = civil_from_days(days);
        CivilTime {
            year: y as u16,
            month,
            day,
            hour: (ms_of_day / 3_600_000) as u8,
            minute: (ms_of_day / 60_000 % 60) as u8,
            second: (ms_of_day / 1000 % 60) as u8,
            millis: (ms_of_day % 1000) as u16,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_civil().fmt(f)
    }
}

/// A BTP `triggeredAt` value. Keeps the civil fields because a leap second is legal here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneralizedTime(pub CivilTime);

/// Length of the form we emit: `YYYYMMDDHHmmss.fffZ`.
pub const GENERALIZED_TIME_LEN: usize = 19;

impl GeneralizedTime {
    pub fn parse(b: &[u8]) -> Option<GeneralizedTime> {
        if b.len() < 15 || b.last() != Some(&b'Z') {
            return None;
        }
        let mut t = CivilTime::parse_date_time(b, 60)?;
        let rest = &b[14..b.len() - 1];
        match rest {
            [] => {}
            [b'.', frac @ ..] if (1..=3).contains(&frac.len()) => {
                let v = digits(frac, 0, frac.len())?;
                t.millis = (v * [100, 10, 1][frac.len() - 1]) as u16;
            }
            _ => return None,
        }
        Some(GeneralizedTime(t))
    }

    /// Writes `YYYYMMDDHHmmss.fffZ`.
    pub fn write(&self, out: &mut [u8; GENERALIZED_TIME_LEN]) {
        self.0.write_date_time(&mut out[..14]);
        out[14] = b'.';
        write_digits(&mut out[15..18], u32::from(self.0.millis));
        out[18] = b'Z';
    }

    pub fn to_bytes(&self) -> [u8; GENERALIZED_TIME_LEN] {
        let mut out = [0u8; GENERALIZED_TIME_LEN];
        self.write(&mut out);
        out
    }
}

impl From<Timestamp> for GeneralizedTime {
    fn from(t: Timestamp) -> Self {
        GeneralizedTime(t.to_civil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_extremes() {
        assert_eq!(Timestamp::parse_ilp(b"19700101000000000").unwrap().0, 0);
        assert_eq!(
            Timestamp::parse_ilp(b"00000101000000000").unwrap().0,
            MIN_MS
        );
        assert_eq!(
            Timestamp::parse_ilp(b"99991231235959999").unwrap().0,
            MAX_MS
        );
        assert_eq!(
            Timestamp::from_unix_millis(MAX_MS).to_ilp_bytes(),
            *b"99991231235959999"
        );
        assert_eq!(
            Timestamp::from_unix_millis(MIN_MS).to_ilp_bytes(),
            *b"00000101000000000"
        );
    }

    #[test]
    fn fast_day_count_matches_reference() {
        for y in [
            0i64, 1, 4, 100, 399, 400, 1582, 1900, 1970, 2000, 2024, 2100, 9999,
        ] {
            for m in 1..=12 {
                for d in [1, 15, 28] {
                    assert_eq!(days_from_civil_fast(y, m, d), days_from_civil(y, m, d));
                }
            }
        }
    }

    /// The minute cache gives what the calendar arithmetic gives, for neighbouring and far
    /// apart times in any order, and refuses a bad second or digit inside a cached minute.
    #[test]
    fn cached_minute_agrees_with_calendar() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = 1_795_000_000_000i64;
        for i in 0..20_000 {
            let t = match i % 3 {
                0 => base + (rand() % 600_000) as i64,
                1 => MIN_MS + (rand() % (MAX_MS - MIN_MS) as u64) as i64,
                _ => base + (i as i64) * 7,
            };
            let t = Timestamp::from_unix_millis(t);
            let mut cached = [0u8; ILP_TIMESTAMP_LEN];
            let mut plain = [0u8; ILP_TIMESTAMP_LEN];
            t.write_ilp(&mut cached);
            t.write_ilp_uncached(&mut plain);
            assert_eq!(cached, plain, "{t:?}");
            assert_eq!(Timestamp::parse_ilp(&plain), Some(t));
            assert_eq!(
                Timestamp::parse_ilp(&plain),
                Timestamp::parse_ilp_uncached(&plain)
            );
        }
        // The minute of the last parse is cached: a bad tail in it is still refused.
        let t = Timestamp::parse_ilp(b"20261128101500123").unwrap();
        assert_eq!(
            Timestamp::parse_ilp(b"20261128101559999").unwrap().0,
            t.0 + 59_876
        );
        assert_eq!(Timestamp::parse_ilp(b"20261128101560000"), None);
        assert_eq!(Timestamp::parse_ilp(b"2026112810150012x"), None);
        assert_eq!(Timestamp::parse_ilp(b"20261128101599999"), None);
        // Reading one minute while writing another (each cache keeps its own minute).
        let read = Timestamp::parse_ilp(b"20261128101500123").unwrap();
        for i in 0..200i64 {
            let mut out = [0u8; ILP_TIMESTAMP_LEN];
            let w = Timestamp::from_unix_millis(read.0 - 20_000 + i * 7);
            w.write_ilp(&mut out);
            let mut plain = [0u8; ILP_TIMESTAMP_LEN];
            w.write_ilp_uncached(&mut plain);
            assert_eq!(out, plain);
            let mut incoming = *b"20261128101500000";
            write_digits(&mut incoming[12..], (i * 97 % 60_000) as u32);
            assert_eq!(
                Timestamp::parse_ilp(&incoming).map(|t| t.0),
                Some(read.0 - 123 + i * 97 % 60_000)
            );
        }
    }

    #[test]
    fn leap_years() {
        assert!(Timestamp::parse_ilp(b"20000229000000000").is_some());
        assert!(Timestamp::parse_ilp(b"19000229000000000").is_none());
        assert!(Timestamp::parse_ilp(b"20240229000000000").is_some());
        assert!(Timestamp::parse_ilp(b"20230229000000000").is_none());
        assert!(Timestamp::parse_ilp(b"20230431000000000").is_none());
        assert!(Timestamp::parse_ilp(b"20230400000000000").is_none());
    }

    #[test]
    fn generalized_time_fraction_scaling() {
        let g = GeneralizedTime::parse(b"20171224161432.27Z").unwrap();
        assert_eq!(g.0.millis, 270);
        assert_eq!(&g.to_bytes(), b"20171224161432.270Z");
        assert!(GeneralizedTime::parse(b"20171224161432.Z").is_none());
    }
}
