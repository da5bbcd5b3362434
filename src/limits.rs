//! The checks every configuration shares (more than zero, at most a century, at most 2^20 items)
//! and the deadline arithmetic they make safe: used by the core's, the cluster's and the
//! transports' settings alike, so that none of them depends on another's module.

use std::time::Duration;

use web_time::Instant;

use crate::error::ConfigError;

/// The longest duration a deadline may be away: `Instant` plus a century fits on every platform.
pub(crate) const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest queue, in items, that a setting may ask for: 2^20. The channels that transports
/// build from these settings panic at capacities near `usize::MAX`, and a queue this long is
/// already far more than a bound (the defaults are 256 and 4,096).
pub(crate) const MAX_QUEUE: usize = 1 << 20;

/// Refuses `value` above `limit`.
pub(crate) fn at_most(field: &'static str, value: usize, limit: usize) -> Result<(), ConfigError> {
    if value > limit {
        return Err(ConfigError::TooLarge {
            field,
            value: u64::try_from(value).unwrap_or(u64::MAX),
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Refuses `value` below `other_value`, the value of the setting `other` that it must hold (a
/// byte bound smaller than the largest frame, say).
pub(crate) fn at_least<T>(
    field: &'static str,
    value: T,
    other: &'static str,
    other_value: T,
) -> Result<(), ConfigError>
where
    T: PartialOrd + Copy,
    u64: TryFrom<T>,
{
    if value < other_value {
        return Err(ConfigError::Below {
            field,
            value: u64::try_from(value).unwrap_or(u64::MAX),
            other,
            other_value: u64::try_from(other_value).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Refuses the type's zero (its `Default`).
pub(crate) fn nonzero<T: Default + PartialEq>(field: &'static str, value: T) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(ConfigError::Zero { field });
    }
    Ok(())
}

/// An IPv6 prefix length: at most 128 bits.
pub(crate) fn source_prefix(field: &'static str, bits: u8) -> Result<(), ConfigError> {
    if bits > 128 {
        return Err(ConfigError::TooLarge { field, value: u64::from(bits), limit: 128 });
    }
    Ok(())
}

/// Refuses a zero duration and one longer than [`CENTURY`].
pub(crate) fn duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Zero { field });
    }
    if value > CENTURY {
        return Err(ConfigError::TooLong { field, value });
    }
    Ok(())
}

/// `now + wait`, where a wait too long for the clock means "not in this process's lifetime": a
/// century. (No platform's `Instant` fails to add a century; if one did, the deadline would be
/// `now`, and the connection would expire rather than the server panic.)
pub(crate) fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}
