//! Money is integer micro-units (1 USD = 1,000,000). These helpers convert the
//! decimal strings people type into micro-units and back, without floats.

pub const MICROS_PER_UNIT: i64 = 1_000_000;
/// The largest amount AEGIS accepts anywhere: a billion units.
pub const MAX_MICROS: i64 = 1_000_000_000 * MICROS_PER_UNIT;

/// Parses "12", "12.5" or "0.000001" (at most six decimals, no sign) into micro-units.
pub fn parse_units(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() || !digits_only(whole) || !digits_only(frac) {
        return Err(format!("{text:?} is not an amount like 12.50"));
    }
    if frac.len() > 6 {
        return Err("amounts have at most six decimal places".into());
    }
    let whole: i64 =
        if whole.is_empty() { 0 } else { whole.parse().map_err(|_| "amount is too large".to_string())? };
    let frac_micros: i64 = format!("{frac:0<6}").parse().unwrap_or(0);
    whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|w| w.checked_add(frac_micros))
        .filter(|m| *m <= MAX_MICROS)
        .ok_or_else(|| "amount is too large".to_string())
}

/// Micro-units as dollars: "$12.50".
pub fn dollars(micros: i64) -> String {
    format!("${}", format_units(micros))
}

/// Formats micro-units as "12.50" (at least two decimals, trailing zeros trimmed).
pub fn format_units(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS_PER_UNIT as u64;
    let frac = format!("{:06}", abs % MICROS_PER_UNIT as u64);
    let frac = frac.trim_end_matches('0');
    let frac = format!("{frac:0<2}");
    format!("{sign}{whole}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_amounts_exactly() {
        assert_eq!(parse_units("12"), Ok(12_000_000));
        assert_eq!(parse_units("12.5"), Ok(12_500_000));
        assert_eq!(parse_units(" 0.000001 "), Ok(1));
        assert_eq!(parse_units(".25"), Ok(250_000));
        assert_eq!(parse_units("1000000000"), Ok(MAX_MICROS));
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        for bad in ["", ".", "-1", "1e3", "1.0000001", "12,5", "abc", "1000000000.01", "99999999999999999999"]
        {
            assert!(parse_units(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_micros() {
        assert_eq!(format_units(12_500_000), "12.50");
        assert_eq!(format_units(1), "0.000001");
        assert_eq!(format_units(0), "0.00");
        assert_eq!(format_units(-2_000_000), "-2.00");
    }
}
