//! Wall-clock time in the units the format stores (Unix milliseconds).

/// Current Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Absolute expiry for a time-to-live starting now (never 0, which means "no expiry").
pub(crate) fn expiry_after(ttl: std::time::Duration) -> u64 {
    now_ms()
        .saturating_add(ttl.as_millis().min(u128::from(u64::MAX)) as u64)
        .max(1)
}
