//! Human byte sizes ("1GiB", "512MiB", "4G", "1073741824") as operators type them.
//!
//! Binary units only (K/Ki = 1024); a bare number is bytes. Overflow is an error, never a wrap.

/// Why a size string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size {0:?} is not a number followed by an optional unit (B, KiB, MiB, GiB, TiB)")]
    Syntax(String),
    #[error("size {0:?} does not fit in 64 bits")]
    Overflow(String),
}

/// Parses a size in bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::Syntax(input.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_string()))?;
    let shift = match unit.trim() {
        "" | "B" | "b" => 0,
        "K" | "k" | "KiB" | "KB" | "kB" => 10,
        "M" | "m" | "MiB" | "MB" => 20,
        "G" | "g" | "GiB" | "GB" => 30,
        "T" | "t" | "TiB" | "TB" => 40,
        _ => return Err(SizeError::Syntax(input.to_string())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(input.to_string()))
}

/// Formats bytes with the largest binary unit that divides it exactly (or one decimal place).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{}{name}", bytes / unit);
            }
            return format!("{:.1}{name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size(" 2 TiB ").unwrap(), 2 << 40);
        assert!(matches!(parse_size("GiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("1 PiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Syntax(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for b in [0u64, 1, 1023, 1024, 1 << 20, 3 << 30, 5 << 40] {
            let s = format_size(b);
            assert_eq!(parse_size(&s).unwrap(), b, "{s}");
        }
        assert_eq!(format_size(1536), "1.5KiB");
    }
}
