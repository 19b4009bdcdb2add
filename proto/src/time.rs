//! Times and durations as the contract carries them
//! (`google.protobuf.Timestamp`, `google.protobuf.Duration`) to and from the
//! milliseconds the daemon records, with the checks the API applies to a
//! value a client sent.

use prost_types::{Duration, Timestamp};

/// Milliseconds since the Unix epoch as a Timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A Timestamp as milliseconds since the Unix epoch (sub-millisecond parts
/// are dropped); a malformed one (nanos outside 0..1e9) is refused naming `field`.
pub fn timestamp_ms(field: &str, t: &Timestamp) -> Result<i64, String> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(format!("{field}: nanos {} is outside 0..999999999", t.nanos));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .ok_or_else(|| format!("{field}: {} seconds is out of range", t.seconds))
}

/// Milliseconds as a Duration.
pub fn duration(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000).min(i64::MAX as u64) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A non-negative Duration as milliseconds (sub-millisecond parts are
/// dropped, huge ones saturate); a negative or malformed one is refused
/// naming `field`.
pub fn duration_ms(field: &str, d: &Duration) -> Result<u64, String> {
    if !(0..1_000_000_000).contains(&d.nanos) || d.seconds < 0 {
        return Err(format!(
            "{field}: must be a non-negative duration, not {}s {}ns",
            d.seconds, d.nanos
        ));
    }
    Ok((d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add((d.nanos / 1_000_000) as u64))
}

/// An optional Duration (as a proto3 message field is) as milliseconds, 0
/// when absent; see [`duration_ms`].
pub fn optional_duration_ms(field: &str, d: Option<&Duration>) -> Result<u64, String> {
    d.map_or(Ok(0), |d| duration_ms(field, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_milliseconds() {
        for ms in [0, 1, 999, 1_714_564_800_250, -1, -1_500] {
            assert_eq!(timestamp_ms("t", &timestamp(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(
            timestamp(-1_500),
            Timestamp {
                seconds: -2,
                nanos: 500_000_000
            }
        );
        for ms in [0, 1, 3_500, 7 * 24 * 3600 * 1000] {
            assert_eq!(duration_ms("d", &duration(ms)), Ok(ms));
        }
    }

    #[test]
    fn malformed_values_are_refused_naming_the_field() {
        let e = duration_ms("since", &Duration { seconds: -1, nanos: 0 }).unwrap_err();
        assert!(e.starts_with("since: must be a non-negative duration"), "{e}");
        assert!(duration_ms("since", &Duration { seconds: 1, nanos: -1 }).is_err());
        assert!(duration_ms(
            "since",
            &Duration {
                seconds: 1,
                nanos: 1_000_000_000
            }
        )
        .is_err());
        assert!(timestamp_ms("at", &Timestamp { seconds: 1, nanos: -5 })
            .unwrap_err()
            .starts_with("at: nanos"));
        assert!(timestamp_ms(
            "at",
            &Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }
        )
        .is_err());
        assert_eq!(optional_duration_ms("since", None), Ok(0));
        assert_eq!(
            duration_ms(
                "d",
                &Duration {
                    seconds: i64::MAX,
                    nanos: 0
                }
            ),
            Ok(u64::MAX)
        );
    }
}
