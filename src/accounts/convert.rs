//! Amount conversion between two peers' assets, in exact integer arithmetic.
//!
//! An asset is a code and a scale (an amount `n` is worth `n / 10^scale` units of the code).
//! Same code: the amount is only shifted by the scale difference. Different codes: it is
//! multiplied by `rate(source) / rate(destination)` (the `rates:` table gives the value of
//! one unit of each code in a common base) and by `1 − spread` (the share the connector
//! keeps). Every factor is an exact decimal, so a pair's factor is one reduced fraction
//! `num / den`, computed once; a packet costs one u128 multiply and divide, rounding down.
//! Invariant: `num` and `den` are below 2^127; with `num` below 2^64 (every realistic pair)
//! `amount × num` fits a u128, else an exact shift-and-subtract division is used.

use std::collections::BTreeMap;

/// A peer's asset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asset {
    pub code: String,
    pub scale: u8,
}

/// The asset of a node with a configured address and no `assetCode` / `assetScale`.
pub const DEFAULT_ASSET_CODE: &str = "XRP";
pub const DEFAULT_ASSET_SCALE: u8 = 9;

/// Largest asset scale accepted (10^18 still fits the factors below 2^64).
pub const MAX_SCALE: u8 = 18;

/// An exact non-negative decimal: `digits / 10^exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    digits: u128,
    exp: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("no exchange rate for {0}")]
    NoRate(String),
    #[error("{0}")]
    BadNumber(String),
    #[error("the rates of {0} and {1} have too many digits to convert exactly")]
    TooPrecise(String, String),
}

impl Decimal {
    pub const ZERO: Decimal = Decimal { digits: 0, exp: 0 };

    /// Parses `"123"`, `"0.0125"`, `"1e-3"` is refused: plain decimals only (at most 18
    /// fraction digits), non-negative.
    pub fn parse(s: &str) -> Result<Decimal, ConvertError> {
        let bad = || ConvertError::BadNumber(format!("{s:?} is not a non-negative decimal"));
        let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 18
            || int.len() > 20
        {
            return Err(bad());
        }
        let mut digits: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            digits = digits
                .checked_mul(10)
                .and_then(|d| d.checked_add(u128::from(b - b'0')))
                .ok_or_else(bad)?;
        }
        Ok(Decimal {
            digits,
            exp: frac.len() as u32,
        })
    }

    pub fn is_zero(&self) -> bool {
        self.digits == 0
    }

    /// `self < 1`.
    pub fn below_one(&self) -> bool {
        self.digits < 10u128.pow(self.exp)
    }
}

/// The factor that converts amounts from one asset to another: `amount × num / den`,
/// rounded down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factor {
    num: u128,
    den: u128,
}

impl Factor {
    pub const ONE: Factor = Factor { num: 1, den: 1 };

    /// The factor from `from` to `to`: `rates` values one unit of each code, `spread` is the
    /// connector's share when the codes differ.
    pub fn between(
        from: &Asset,
        to: &Asset,
        rates: &BTreeMap<String, Decimal>,
        spread: Decimal,
    ) -> Result<Factor, ConvertError> {
        let mut f = Fraction::ONE;
        if from.code != to.code {
            let rate = |code: &str| {
                rates
                    .get(code)
                    .filter(|r| !r.is_zero())
                    .ok_or_else(|| ConvertError::NoRate(format!("{} → {}", from.code, to.code)))
            };
            let (r_from, r_to) = (rate(&from.code)?, rate(&to.code)?);
            // rate_from / rate_to = (d_from / 10^e_from) / (d_to / 10^e_to)
            f = f.times(r_from.digits, 1).times(1, r_to.digits);
            f = f.times(pow10(r_to.exp), pow10(r_from.exp));
            // × (1 − spread) = (10^e − d) / 10^e
            let one = pow10(spread.exp);
            f = f.times(one.saturating_sub(spread.digits), one);
        }
        if to.scale >= from.scale {
            f = f.times(pow10(u32::from(to.scale - from.scale)), 1);
        } else {
            f = f.times(1, pow10(u32::from(from.scale - to.scale)));
        }
        match f {
            Fraction::Exact(num, den) if num < 1 << 127 && den < 1 << 127 => {
                Ok(Factor { num, den })
            }
            _ => Err(ConvertError::TooPrecise(from.code.clone(), to.code.clone())),
        }
    }

    /// `amount × num / den`, rounded down; `None` when the result does not fit a u64.
    #[inline]
    pub fn apply(&self, amount: u64) -> Option<u64> {
        if self.num == self.den {
            return Some(amount);
        }
        if self.num < 1 << 64 {
            // amount < 2^64 and num < 2^64: the product fits a u128.
            return u64::try_from(u128::from(amount) * self.num / self.den).ok();
        }
        // amount × num / den = amount × q + amount × r / den, with num = q × den + r.
        let (q, r) = (self.num / self.den, self.num % self.den);
        let whole = u64::try_from(q).ok()?.checked_mul(amount)?;
        whole.checked_add(mul_div_below(amount, r, self.den))
    }

    /// The largest amount whose conversion fits a u64 (for F08's maximum).
    pub fn max_input(&self) -> u64 {
        // Binary search: `apply` is monotonic in the amount.
        let (mut lo, mut hi) = (0u64, u64::MAX);
        if self.apply(hi).is_some() {
            return hi;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.apply(mid).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// `floor(a × r / d)` for `r < d < 2^127`, exactly, one bit of `a` at a time (the result
/// is below `a`, so it fits a u64; the remainder stays below `d`, so nothing overflows).
fn mul_div_below(a: u64, r: u128, d: u128) -> u64 {
    let (mut q, mut rem) = (0u64, 0u128);
    for bit in (0..64).rev() {
        q <<= 1;
        rem <<= 1;
        if rem >= d {
            rem -= d;
            q |= 1;
        }
        if a >> bit & 1 == 1 {
            rem += r;
            if rem >= d {
                rem -= d;
                q += 1;
            }
        }
    }
    q
}

fn pow10(e: u32) -> u128 {
    10u128.pow(e.min(38))
}

/// A fraction kept reduced while it is built; `Overflow` once it cannot be held exactly.
#[derive(Debug, Clone, Copy)]
enum Fraction {
    Exact(u128, u128),
    Overflow,
}

impl Fraction {
    const ONE: Fraction = Fraction::Exact(1, 1);

    fn times(self, n: u128, d: u128) -> Fraction {
        let Fraction::Exact(a, b) = self else {
            return self;
        };
        // Cross-reduce first so the products stay as small as possible.
        let g1 = gcd(a, d).max(1);
        let g2 = gcd(n, b).max(1);
        match ((a / g1).checked_mul(n / g2), (b / g2).checked_mul(d / g1)) {
            (Some(x), Some(y)) => {
                let g = gcd(x, y).max(1);
                Fraction::Exact(x / g, y / g)
            }
            _ => Fraction::Overflow,
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(code: &str, scale: u8) -> Asset {
        Asset {
            code: code.into(),
            scale,
        }
    }

    fn rates(pairs: &[(&str, &str)]) -> BTreeMap<String, Decimal> {
        pairs
            .iter()
            .map(|(c, r)| (c.to_string(), Decimal::parse(r).unwrap()))
            .collect()
    }

    fn convert(from: (&str, u8), to: (&str, u8), amount: u64, spread: &str) -> Option<u64> {
        let r = rates(&[
            ("USD", "1"),
            ("EUR", "1.08"),
            ("XRP", "0.5"),
            ("JPY", "0.0067"),
        ]);
        Factor::between(
            &asset(from.0, from.1),
            &asset(to.0, to.1),
            &r,
            Decimal::parse(spread).unwrap(),
        )
        .unwrap()
        .apply(amount)
    }

    #[test]
    fn edge_cases_table() {
        let max = u64::MAX;
        // (from, to, amount, spread, expected)
        type Case = (
            (&'static str, u8),
            (&'static str, u8),
            u64,
            &'static str,
            Option<u64>,
        );
        let cases: &[Case] = &[
            // same asset: scale shift only, spread ignored
            (("USD", 2), ("USD", 2), 12345, "0.01", Some(12345)),
            (("USD", 2), ("USD", 2), max, "0", Some(max)),
            (("USD", 0), ("USD", 9), 1, "0", Some(1_000_000_000)),
            (("USD", 9), ("USD", 0), 999_999_999, "0", Some(0)), // rounds down
            (("USD", 9), ("USD", 0), 1_999_999_999, "0", Some(1)),
            (("USD", 0), ("USD", 9), max, "0", None), // does not fit
            (
                ("USD", 0),
                ("USD", 9),
                max / 1_000_000_000,
                "0",
                Some(max / 1_000_000_000 * 1_000_000_000),
            ),
            (("USD", 9), ("USD", 0), max, "0", Some(max / 1_000_000_000)),
            (
                ("USD", 0),
                ("USD", 18),
                18,
                "0",
                Some(18_000_000_000_000_000_000),
            ),
            // zero passes unchanged (protocol packets)
            (("USD", 2), ("EUR", 9), 0, "0.5", Some(0)),
            (("USD", 0), ("USD", 9), 0, "0", Some(0)),
            // different assets
            (("EUR", 2), ("USD", 2), 100, "0", Some(108)),
            (("USD", 2), ("EUR", 2), 108, "0", Some(100)),
            (("USD", 2), ("EUR", 2), 100, "0", Some(92)), // 92.59 → 92
            (("USD", 2), ("XRP", 6), 100, "0", Some(2_000_000)),
            (("USD", 2), ("XRP", 6), 100, "0.01", Some(1_980_000)),
            (("USD", 2), ("XRP", 6), 1, "0.001", Some(19_980)),
            (("XRP", 9), ("USD", 2), 1_000_000_000, "0", Some(50)),
            (("XRP", 9), ("USD", 2), 19_999_999, "0", Some(0)),
            (("USD", 0), ("JPY", 0), 67, "0", Some(10_000)),
            (("XRP", 9), ("USD", 9), max, "0", Some(max / 2)),
            (("USD", 9), ("XRP", 9), max, "0", None), // × 2 does not fit
            (("USD", 2), ("USD", 2), 1, "1", Some(1)),
            (("USD", 2), ("EUR", 2), 1_000_000, "1", Some(0)), // spread 1: all kept
        ];
        for (from, to, amount, spread, want) in cases {
            assert_eq!(
                convert(*from, *to, *amount, spread),
                *want,
                "{from:?} → {to:?}: {amount} spread {spread}"
            );
        }
    }

    #[test]
    fn no_rate_is_an_error() {
        let r = rates(&[("USD", "1")]);
        let e = Factor::between(
            &asset("USD", 2),
            &asset("GBP", 2),
            &r,
            Decimal::parse("0").unwrap(),
        );
        assert_eq!(e, Err(ConvertError::NoRate("USD → GBP".into())));
        let zero = rates(&[("USD", "1"), ("GBP", "0")]);
        assert!(Factor::between(
            &asset("USD", 2),
            &asset("GBP", 2),
            &zero,
            Decimal::parse("0").unwrap()
        )
        .is_err());
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(
            Decimal::parse("1.08").unwrap(),
            Decimal {
                digits: 108,
                exp: 2
            }
        );
        assert_eq!(Decimal::parse("7").unwrap(), Decimal { digits: 7, exp: 0 });
        assert_eq!(Decimal::parse(".5").unwrap(), Decimal { digits: 5, exp: 1 });
        for bad in ["", "-1", "1e3", "1.2.3", "abc", "0.0000000000000000001"] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
        assert!(Decimal::parse("0.99").unwrap().below_one());
        assert!(!Decimal::parse("1.0").unwrap().below_one());
    }

    #[test]
    fn wide_factors_are_exact() {
        // Scale 17 → 0 between different assets: the factor's denominator passes 2^64.
        let r = rates(&[("USD", "1"), ("EUR", "1.08")]);
        let sp = Decimal::parse("0.026").unwrap();
        let f = Factor::between(&asset("USD", 17), &asset("EUR", 0), &r, sp).unwrap();
        assert!(f.den >= 1 << 64);
        // 10^17 USD-units = 1 USD → 0.974 / 1.08 EUR = 0.90185… → 0
        assert_eq!(f.apply(100_000_000_000_000_000), Some(0));
        assert_eq!(f.apply(u64::MAX), Some(166)); // 184.46… USD → 166.36… EUR
        let g = Factor::between(&asset("EUR", 0), &asset("USD", 17), &r, sp).unwrap();
        assert_eq!(g.apply(1), Some(105_192_000_000_000_000)); // 1.08 × 0.974 × 10^17
        assert_eq!(
            mul_div_below(u64::MAX, (1 << 126) - 1, 1 << 126),
            u64::MAX - 1
        );
        assert_eq!(mul_div_below(10, 3, 4), 7);
    }

    #[test]
    fn max_input_is_the_boundary() {
        let r = rates(&[("USD", "1"), ("XRP", "0.5")]);
        let f = Factor::between(
            &asset("USD", 9),
            &asset("XRP", 9),
            &r,
            Decimal::parse("0").unwrap(),
        )
        .unwrap();
        let m = f.max_input();
        assert!(f.apply(m).is_some());
        assert!(f.apply(m + 1).is_none());
    }

    proptest::proptest! {
        /// Converting never panics and never rounds up: the result is at most the exact value.
        #[test]
        fn never_rounds_up(amount: u64, s1 in 0u8..=18, s2 in 0u8..=18, spread in 0u32..1000) {
            let r = rates(&[("USD", "1"), ("EUR", "1.08")]);
            let sp = Decimal::parse(&format!("0.{spread:03}")).unwrap();
            let f = Factor::between(&asset("USD", s1), &asset("EUR", s2), &r, sp).unwrap();
            if let Some(out) = f.apply(amount) {
                // out ≤ amount × num / den  ⇔  out × den ≤ amount × num (in u256 via two u128 checks)
                let lhs = (out as u128).checked_mul(f.den);
                let rhs = (amount as u128).checked_mul(f.num);
                if let (Some(l), Some(r)) = (lhs, rhs) { proptest::prop_assert!(l <= r); }
            }
        }
    }
}
