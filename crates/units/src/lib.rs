//! Byte sizes and rates as people write them on a command line ("50G", "512MiB", "200MB/s"): the one
//! parser and formatter of the workspace, so that a size means the same to every command.
//!
//! A size is a decimal number (a fraction is allowed: "1.5G") with an optional suffix, case-insensitive,
//! with or without a space before it:
//!
//! | suffix | meaning |
//! |---|---|
//! | none, `B` | bytes |
//! | `k`, `M`, `G`, `T`, also written `kB`, `MB`, `GB`, `TB` | SI: 10³, 10⁶, 10⁹, 10¹² bytes |
//! | `Ki`, `Mi`, `Gi`, `Ti`, also written `KiB`, `MiB`, `GiB`, `TiB` | binary: 2¹⁰, 2²⁰, 2³⁰, 2⁴⁰ bytes |
//!
//! A fraction of a byte is dropped ("0.5k" is 500, "1.1KiB" is 1126). A rate is a size per second, with
//! an optional `/s` ("200MB/s" = "200MB" = 200,000,000 bytes per second), and is never zero.

#![deny(missing_docs)]

/// Why a size or rate was not accepted. Every message quotes the text and says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    /// The text holds no number.
    #[error("{0:?} is not a size: expected a number with an optional suffix (e.g. 50G, 512MiB, 1000000)")]
    NotANumber(String),
    /// The suffix is none of the known ones.
    #[error("{text:?}: unknown size suffix {suffix:?} (use k, M, G, T for powers of 10, Ki, Mi, Gi, Ti for powers of 2, optionally followed by B)")]
    UnknownSuffix {
        /// The whole text.
        text: String,
        /// The suffix found.
        suffix: String,
    },
    /// The size does not fit in 64 bits.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// A rate of zero bytes per second.
    #[error("{0:?}: a rate must be more than 0 bytes per second")]
    ZeroRate(String),
}

/// The multiplier of a suffix (already lower-cased, without a trailing `b`).
fn multiplier(suffix: &str) -> Option<u64> {
    Some(match suffix {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return None,
    })
}

/// Parses a byte size (see the crate documentation for the suffixes).
pub fn parse_size(text: &str) -> Result<u64, UnitsError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits_ok(fraction) {
        return Err(UnitsError::NotANumber(text.to_string()));
    }
    let lower = suffix.trim().to_ascii_lowercase();
    let unit = lower.strip_suffix('b').unwrap_or(&lower);
    let mult = multiplier(unit).ok_or_else(|| UnitsError::UnknownSuffix {
        text: text.to_string(),
        suffix: suffix.trim().to_string(),
    })?;
    let too_large = || UnitsError::TooLarge(text.to_string());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    // The fraction's digits beyond what can matter for a u64 multiplier are dropped.
    let fraction = &fraction[..fraction.len().min(20)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let bytes = whole
        .checked_mul(u128::from(mult))
        .and_then(|w| w.checked_add(fraction * u128::from(mult) / scale))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a rate in bytes per second: a size with an optional `/s`, more than zero.
pub fn parse_rate(text: &str) -> Result<u64, UnitsError> {
    let t = text.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(size) {
        Ok(0) => Err(UnitsError::ZeroRate(text.to_string())),
        Ok(n) => Ok(n),
        Err(UnitsError::NotANumber(_)) => Err(UnitsError::NotANumber(text.to_string())),
        Err(UnitsError::TooLarge(_)) => Err(UnitsError::TooLarge(text.to_string())),
        Err(e) => Err(e),
    }
}

/// A size for people, in binary units with one decimal: "512 B", "1.5 KiB", "50.0 GiB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_suffixes_are_powers_of_ten() {
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1M"), Ok(1_000_000));
        assert_eq!(parse_size("1mb"), Ok(1_000_000));
        assert_eq!(parse_size("50G"), Ok(50_000_000_000));
        assert_eq!(parse_size("2 TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("64K"), Ok(64_000));
    }

    #[test]
    fn binary_suffixes_are_powers_of_two() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1Mi"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
    }

    #[test]
    fn plain_numbers_fractions_and_bytes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("123B"), Ok(123));
        assert_eq!(parse_size(" 7 "), Ok(7));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("0.5k"), Ok(500));
        assert_eq!(parse_size(".5k"), Ok(500));
        assert_eq!(parse_size("1.1KiB"), Ok(1126));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        assert!(matches!(parse_size(""), Err(UnitsError::NotANumber(_))));
        assert!(matches!(parse_size("G"), Err(UnitsError::NotANumber(_))));
        assert!(matches!(parse_size("-1"), Err(UnitsError::NotANumber(_))));
        assert!(matches!(
            parse_size("1.2.3"),
            Err(UnitsError::NotANumber(_))
        ));
        assert!(matches!(
            parse_size("12X"),
            Err(UnitsError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            parse_size("1KB/s"),
            Err(UnitsError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            parse_size("20000000T"),
            Err(UnitsError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(UnitsError::TooLarge(_))
        ));
        let message = parse_size("3 parsecs").unwrap_err().to_string();
        assert!(
            message.contains("\"parsecs\"") && message.contains("powers of 10"),
            "{message}"
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200MB/s"), Ok(200_000_000));
        assert_eq!(parse_rate("200MB"), Ok(200_000_000));
        assert_eq!(parse_rate("1GiB/s"), Ok(1 << 30));
        assert!(matches!(parse_rate("0/s"), Err(UnitsError::ZeroRate(_))));
        assert!(matches!(parse_rate("/s"), Err(UnitsError::NotANumber(_))));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(50 << 30), "50.0 GiB");
        assert_eq!(format_size(u64::MAX), "16777216.0 TiB");
    }
}
