//! Resource quantities (`100m`, `1.5`, `64Mi`, `1e3`, `2G`) as Kubernetes writes them, read into
//! numbers: CPU in millicores, memory and storage in bytes, counts as they are.

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct ParseError(pub String);

/// The value of a quantity in base units (cores, bytes, items).
pub fn parse(s: &str) -> Result<f64, ParseError> {
    let err = || ParseError(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    Ok(value * multiplier)
}

/// A quantity in thousandths (millicores for CPU), rounded up as Kubernetes does.
pub fn milli(s: &str) -> Result<i64, ParseError> {
    parse(s).map(|v| (v * 1000.0).ceil() as i64)
}

/// A quantity in whole units (bytes for memory), rounded up.
pub fn units(s: &str) -> Result<i64, ParseError> {
    parse(s).map(|v| v.ceil() as i64)
}

/// A quantity in thousandths written back in upstream's canonical form: thousandths that are
/// not whole as `1500m`, whole values with the largest suffix that keeps them whole, binary
/// (`Ki`, `Mi`, ...) when `binary` and the value is a multiple of 1024, decimal (`k`, `M`, ...)
/// otherwise: `2`, `200m`, `100Mi`, `1k`.
pub fn format_milli(milli: i64, binary: bool) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let v = milli / 1000;
    if v == 0 {
        return "0".into();
    }
    let (base, suffixes): (i64, [&str; 6]) = if binary && v % 1024 == 0 {
        (1024, ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
    } else {
        (1000, ["k", "M", "G", "T", "P", "E"])
    };
    let (mut n, mut suffix) = (v, "");
    for s in suffixes {
        if n % base != 0 {
            break;
        }
        n /= base;
        suffix = s;
    }
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_reads_them() {
        assert_eq!(milli("100m"), Ok(100));
        assert_eq!(milli("1.5"), Ok(1500));
        assert_eq!(milli("2"), Ok(2000));
        assert_eq!(units("64Mi"), Ok(64 << 20));
        assert_eq!(units("1Gi"), Ok(1 << 30));
        assert_eq!(units("1G"), Ok(1_000_000_000));
        assert_eq!(units("128974848"), Ok(128974848));
        assert_eq!(units("129e6"), Ok(129_000_000));
        assert_eq!(units("123Ki"), Ok(125952));
        assert!(parse("12x").is_err());
        assert!(parse("").is_err());
        assert!(parse("Mi").is_err());
    }

    #[test]
    fn quantities_written_back_canonically() {
        assert_eq!(format_milli(0, false), "0");
        assert_eq!(format_milli(200, false), "200m");
        assert_eq!(format_milli(1500, false), "1500m");
        assert_eq!(format_milli(2000, false), "2");
        assert_eq!(format_milli(1_000_000, false), "1k");
        assert_eq!(format_milli((100 << 20) * 1000, true), "100Mi");
        assert_eq!(format_milli((1 << 30) * 1000, true), "1Gi");
        assert_eq!(format_milli(1_000_000_000_000, true), "1G");
        assert_eq!(format_milli(1_500_000, true), "1500");
    }
}
