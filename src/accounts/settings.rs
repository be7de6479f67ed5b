//! The accounting part of the configuration: per-peer `maxPacketAmount` and `balance`, the
//! node's `assetCode`/`assetScale` defaults, `rates`, `spread` and `journal`. Numbers beyond
//! 2^53 may be written as strings (YAML and JSON readers lose precision on large numbers).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::convert::Decimal;

/// An integer given as a YAML number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "NumberRepr")]
pub struct Int(pub i128);

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberRepr {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Text(String),
}

impl TryFrom<NumberRepr> for Int {
    type Error = String;
    fn try_from(r: NumberRepr) -> Result<Int, String> {
        match r {
            NumberRepr::Signed(v) => Ok(Int(v.into())),
            NumberRepr::Unsigned(v) => Ok(Int(v.into())),
            NumberRepr::Float(f) => Err(format!("{f} is not an integer")),
            NumberRepr::Text(s) => s
                .trim()
                .parse::<i128>()
                .map(Int)
                .map_err(|_| format!("{s:?} is not an integer")),
        }
    }
}

/// A non-negative decimal given as a YAML number or a string (`rates`, `spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "NumberRepr")]
pub struct Dec(pub Decimal);

impl TryFrom<NumberRepr> for Dec {
    type Error = String;
    fn try_from(r: NumberRepr) -> Result<Dec, String> {
        let text = match r {
            NumberRepr::Signed(v) => v.to_string(),
            NumberRepr::Unsigned(v) => v.to_string(),
            // Rust prints the shortest text that reads back as the same f64: `1.08` stays
            // `1.08`. Write long rates as strings to keep every digit.
            NumberRepr::Float(f) => f.to_string(),
            NumberRepr::Text(s) => s,
        };
        Decimal::parse(&text).map(Dec).map_err(|e| e.to_string())
    }
}

/// A peer's balance limits, in the peer's units. Balance = what the peer owes us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalanceConfig {
    /// Lowest balance (≤ 0): how much we may owe the peer. Absent: no limit.
    #[serde(default)]
    pub minimum: Option<Int>,
    /// Highest balance (≥ 0): how much credit we extend to the peer. Absent: no limit.
    #[serde(default)]
    pub maximum: Option<Int>,
    /// At or below this the account is flagged for settlement.
    #[serde(default)]
    pub settle_threshold: Option<Int>,
    /// What a settlement should bring the balance back to.
    #[serde(default)]
    pub settle_to: Option<Int>,
}

/// Checked limits as the node uses them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
    pub settle_threshold: Option<i64>,
    pub settle_to: Option<i64>,
}

impl BalanceConfig {
    /// Checks minimum ≤ 0 ≤ maximum and that settleTo and settleThreshold lie between them.
    pub fn limits(&self) -> Result<Limits, String> {
        let fit = |name: &str, v: Option<Int>| -> Result<Option<i64>, String> {
            v.map(|Int(v)| i64::try_from(v).map_err(|_| format!("{name} {v} is outside ±2^63")))
                .transpose()
        };
        let l = Limits {
            minimum: fit("minimum", self.minimum)?,
            maximum: fit("maximum", self.maximum)?,
            settle_threshold: fit("settleThreshold", self.settle_threshold)?,
            settle_to: fit("settleTo", self.settle_to)?,
        };
        if l.minimum.is_some_and(|m| m > 0) {
            return Err("minimum must be ≤ 0".into());
        }
        if l.maximum.is_some_and(|m| m < 0) {
            return Err("maximum must be ≥ 0".into());
        }
        let lo = l.minimum.unwrap_or(i64::MIN);
        let hi = l.maximum.unwrap_or(i64::MAX);
        for (name, v) in [
            ("settleTo", l.settle_to),
            ("settleThreshold", l.settle_threshold),
        ] {
            if let Some(v) = v {
                if v < lo || v > hi {
                    return Err(format!("{name} {v} must lie between minimum and maximum"));
                }
            }
        }
        if let (Some(t), Some(to)) = (l.settle_threshold, l.settle_to) {
            if to < t {
                return Err("settleTo must be ≥ settleThreshold".into());
            }
        }
        Ok(l)
    }
}

/// `rateLimit`: Prepares per second from the peer, `burst` at once (default: one second's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub packets_per_second: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

/// `throughput`: amount per second from the peer (its units), a second's worth at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThroughputConfig {
    pub amount_per_second: Int,
}

impl ThroughputConfig {
    pub fn amount_per_second(&self) -> Result<u64, String> {
        u64::try_from(self.amount_per_second.0)
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| format!("{} is not a positive amount", self.amount_per_second.0))
    }
}

/// When a committed balance change is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A Fulfill goes upstream only once its balance record is on disk (fdatasync).
    #[default]
    Strict,
    /// Records reach the disk within `syncIntervalMs`; answers are not held.
    Relaxed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JournalConfig {
    pub dir: String,
    #[serde(default)]
    pub durability: Durability,
    /// Relaxed mode: the longest a committed change waits to be written and synced.
    #[serde(default = "d_sync_interval")]
    pub sync_interval_ms: u64,
}

fn d_sync_interval() -> u64 {
    100
}

/// Rates by asset code: the value of one unit of each code in a common base.
pub type Rates = BTreeMap<String, Dec>;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> Result<Limits, String> {
        serde_yaml_ng::from_str::<BalanceConfig>(yaml)
            .map_err(|e| e.to_string())?
            .limits()
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            limits(
                "{minimum: -100, maximum: \"9007199254740993\", settleThreshold: -50, settleTo: 0}"
            ),
            Ok(Limits {
                minimum: Some(-100),
                maximum: Some(9_007_199_254_740_993),
                settle_threshold: Some(-50),
                settle_to: Some(0)
            })
        );
        for bad in [
            "{minimum: 1}",
            "{maximum: -1}",
            "{minimum: -10, settleTo: -11}",
            "{maximum: 10, settleThreshold: 11}",
            "{settleThreshold: 5, settleTo: 4}",
            "{maximum: \"99999999999999999999\"}",
            "{maximum: 1.5}",
            "{maximum: \"ten\"}",
        ] {
            assert!(limits(bad).is_err(), "{bad}");
        }
    }
}
