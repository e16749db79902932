//! Parsers for command-line values that are not plain ids: `K=V` pairs, the route team
//! (`_` or a team id), DLQ codes, and points in time (RFC 3339 or an age like `15m`).

use std::time::Duration;

use switchyard_dlq::DlqCode;
use switchyard_keys::RouteTeam;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A `K=V` pair, split at the first `=`; the key must not be empty.
pub fn key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// The team part of a route: `_` is the tenant-wide default, anything else a team id.
pub fn route_team(raw: &str) -> Result<RouteTeam, String> {
    if raw == "_" {
        Ok(RouteTeam::Any)
    } else {
        raw.parse()
            .map(RouteTeam::Team)
            .map_err(|e| format!("{e} (or `_` for the tenant's default route)"))
    }
}

/// A DLQ code; the error lists every valid code.
pub fn dlq_code(raw: &str) -> Result<DlqCode, String> {
    raw.parse().map_err(|_| {
        let all: Vec<&str> = DlqCode::ALL.iter().map(|c| c.as_str()).collect();
        format!(
            "unknown dlq code {raw:?}: expected one of {}",
            all.join(", ")
        )
    })
}

/// An age like `30s`, `15m`, `2h`, `3d` or `1w`.
pub fn age(raw: &str) -> Option<Duration> {
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    number.checked_mul(seconds).map(Duration::from_secs)
}

/// A point in time relative to `now`: RFC 3339, or an age (`15m` means 15 minutes ago).
pub fn time_at(raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    age(raw)
        .and_then(|age| now.checked_sub(time::Duration::try_from(age).ok()?))
        .ok_or_else(|| {
            format!(
                "invalid time {raw:?}: expected RFC 3339 (2026-01-02T15:04:05Z) or an age like 30s, 15m, 2h, 3d, 1w"
            )
        })
}

/// [`time_at`] relative to the current time (for clap).
pub fn time(raw: &str) -> Result<OffsetDateTime, String> {
    time_at(raw, OffsetDateTime::now_utc())
}

/// A time for people and tables: RFC 3339 in UTC, to the second (the same rendering a DLQ
/// selection describes itself with).
pub use switchyard_dlq_ops::show_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals() {
        assert_eq!(
            key_value("X-Env=a=b").unwrap(),
            ("X-Env".into(), "a=b".into())
        );
        assert!(key_value("novalue").is_err());
        assert!(key_value("=v").is_err());
    }

    #[test]
    fn route_team_accepts_underscore_and_ids() {
        assert_eq!(route_team("_").unwrap(), RouteTeam::Any);
        assert!(matches!(route_team("ops").unwrap(), RouteTeam::Team(_)));
        assert!(route_team("Ops").unwrap_err().contains("`_`"));
    }

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = OffsetDateTime::parse("2026-01-02T15:00:00Z", &Rfc3339).unwrap();
        let ago = |raw| show_time(time_at(raw, now).unwrap());
        assert_eq!(ago("15m"), "2026-01-02T14:45:00Z");
        assert_eq!(ago("2h"), "2026-01-02T13:00:00Z");
        assert_eq!(ago("3d"), "2025-12-30T15:00:00Z");
        assert_eq!(ago("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00Z");
        for bad in ["", "15", "m", "15x", "-3d", "yesterday"] {
            assert!(time_at(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_codes_list_the_valid_ones() {
        assert_eq!(dlq_code("no_route").unwrap(), DlqCode::NoRoute);
        assert!(dlq_code("boom").unwrap_err().contains("retries_exhausted"));
    }
}
