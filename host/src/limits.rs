//! Resource limits given to nodes: how many bytes one result may take.

/// The allocation limit: `LATENTFLOW_ALLOC_LIMIT` (bytes, or with a `K`/`M`/`G`/`T` suffix)
/// when set, else half of physical memory (16 GiB where it cannot be read).
pub fn default_alloc_limit() -> u64 {
    if let Some(v) = std::env::var("LATENTFLOW_ALLOC_LIMIT")
        .ok()
        .and_then(|s| parse_size(&s))
    {
        return v;
    }
    physical_memory().map(|m| m / 2).unwrap_or(16 << 30)
}

/// `512M`, `2G`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Total physical memory in bytes (Linux: `/proc/meminfo`).
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }
}
