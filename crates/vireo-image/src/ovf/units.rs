//! Numbers and allocation units of OVF envelopes (DSP0004 programmatic units and the legacy
//! names producers still write).
//!
//! Invariant: every conversion is overflow-checked and a scale factor of zero is refused, so a
//! hostile envelope yields an error, never a wrapped or zero size.

use super::invalid;
use crate::error::ImageError;

/// Bytes per allocation unit: DSP0004 programmatic units (`byte`, `byte * 2^20`,
/// `byte * 1024`, `byte * 10^3`) and the legacy names (`KiloBytes`, `MegaBytes`,
/// `GigaBytes`, `KB`, `MB`, `GB`).
pub fn allocation_unit_bytes(units: &str) -> Result<u64, ImageError> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let legacy = match compact.to_ascii_lowercase().as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if let Some(v) = legacy {
        return Ok(v);
    }
    let mut parts = compact.split('*');
    if !parts.next().is_some_and(|b| b.eq_ignore_ascii_case("byte")) {
        return Err(invalid(format!("allocation units {units:?} are not bytes")));
    }
    let mut total: u64 = 1;
    for factor in parts {
        let value = if let Some((base, exp)) = factor.split_once('^') {
            let base: u64 = base
                .parse()
                .map_err(|_| invalid(format!("allocation units {units:?}")))?;
            let exp: u32 = exp
                .parse()
                .map_err(|_| invalid(format!("allocation units {units:?}")))?;
            base.checked_pow(exp)
        } else {
            factor.parse().ok()
        };
        total = value
            .and_then(|v| total.checked_mul(v))
            .filter(|&t| t > 0)
            .ok_or_else(|| invalid(format!("allocation units {units:?}")))?;
    }
    Ok(total)
}

pub(super) fn parse_u64(what: &str, text: &str) -> Result<u64, ImageError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(format!("{what} {text:?} is not a number")))
}

pub(super) fn scaled(what: &str, quantity: &str, units: &str) -> Result<u64, ImageError> {
    parse_u64(what, quantity)?
        .checked_mul(allocation_unit_bytes(units)?)
        .ok_or_else(|| invalid(format!("{what} {quantity} {units} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_units() {
        assert_eq!(allocation_unit_bytes("byte * 2^20").unwrap(), 1 << 20);
        assert_eq!(allocation_unit_bytes("byte*2^30").unwrap(), 1 << 30);
        assert_eq!(allocation_unit_bytes("byte * 1024").unwrap(), 1024);
        assert_eq!(allocation_unit_bytes("byte * 10^3").unwrap(), 1000);
        assert_eq!(allocation_unit_bytes("MegaBytes").unwrap(), 1 << 20);
        assert_eq!(allocation_unit_bytes("GB").unwrap(), 1 << 30);
        assert_eq!(allocation_unit_bytes("byte").unwrap(), 1);
        assert!(allocation_unit_bytes("hertz * 10^6").is_err());
        assert!(allocation_unit_bytes("byte * 2^99").is_err());
        assert!(allocation_unit_bytes("byte * 0").is_err());
        assert!(allocation_unit_bytes("byte * x").is_err());
    }
}
