//! Idle timeouts: how long a session's tunnels may go without input from the browser before the edge
//! closes them. This module owns how one is read (a request's ask, a tenant's limit, a session file's
//! option) and the rule for which one a session or a share gets; the edge enforces it, from the session's
//! record.
//!
//! The rule: what the session asks for, else the default (the tenant's `idle_timeout`, or for a share the
//! session it joins); cut to the ceiling (the tenant's `max_idle_timeout`, and for a share the session's
//! own), which is also what it gets when nothing names one. An ask that is not a duration, or is under
//! [`MIN_IDLE_TIMEOUT`], is refused; a longer one is cut rather than refused, as lifetimes are, and the
//! answer says so.

use std::time::Duration;

use crate::defaults::{LONGEST_IDLE_TIMEOUT, MIN_IDLE_TIMEOUT};

/// Why an idle timeout is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIdleTimeout {
    #[error("idle timeout {text:?} is not a duration like `15m` or `1h`: {reason}")]
    Unreadable { text: String, reason: String },
    #[error(
        "idle timeout {0:?} is shorter than {min}: the tunnel would close before anyone could use it",
        min = humantime::format_duration(MIN_IDLE_TIMEOUT)
    )]
    TooShort(String),
    #[error(
        "idle timeout {0:?} is longer than {max}, the longest a session lives",
        max = humantime::format_duration(LONGEST_IDLE_TIMEOUT)
    )]
    TooLong(String),
}

/// An idle timeout a session asks for (`15m`, `1h 30m`): refused when unreadable or under
/// [`MIN_IDLE_TIMEOUT`], not yet cut to any ceiling.
pub fn parse(text: &str) -> Result<Duration, BadIdleTimeout> {
    let duration = humantime::parse_duration(text).map_err(|error| BadIdleTimeout::Unreadable {
        text: text.to_owned(),
        reason: error.to_string(),
    })?;
    if duration < MIN_IDLE_TIMEOUT {
        return Err(BadIdleTimeout::TooShort(text.to_owned()));
    }
    Ok(duration)
}

/// An idle timeout the operator configures (a tenant's limits, a session file's line): also refused over
/// [`LONGEST_IDLE_TIMEOUT`], since there a longer one is a typo, and kept to whole milliseconds, as
/// records store it.
pub fn parse_bounded(text: &str) -> Result<Duration, BadIdleTimeout> {
    let duration = parse(text)?;
    if duration > LONGEST_IDLE_TIMEOUT {
        return Err(BadIdleTimeout::TooLong(text.to_owned()));
    }
    Ok(whole_ms(duration))
}

/// What a session or share gets: its idle timeout (none: never idle), and whether that is less than it
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub idle_timeout: Option<Duration>,
    pub capped: bool,
}

/// The module's rule (see the top): `requested` as the request wrote it, `default` when it names none,
/// cut to `ceiling` (none: only [`LONGEST_IDLE_TIMEOUT`]), which is also the answer when neither names one.
pub fn grant(
    requested: Option<&str>,
    default: Option<Duration>,
    ceiling: Option<Duration>,
) -> Result<Granted, BadIdleTimeout> {
    let asked = requested.map(parse).transpose()?;
    let chosen = match (asked.or(default), ceiling) {
        (Some(chosen), Some(ceiling)) => Some(chosen.min(ceiling)),
        (None, ceiling) => ceiling,
        (chosen, None) => chosen,
    };
    let granted = chosen.map(|d| d.min(LONGEST_IDLE_TIMEOUT));
    // Compared before rounding, so that an ask finer than a millisecond is not said to be cut.
    let capped = asked.zip(granted).is_some_and(|(asked, got)| got < asked);
    Ok(Granted {
        idle_timeout: granted.map(whole_ms),
        capped,
    })
}

/// `duration` to the millisecond below, as records store it; at most [`LONGEST_IDLE_TIMEOUT`] here.
fn whole_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A tenant's idle timeout limit in JSON, written as `15m`, `1h` (`#[serde(with = …)]`): between
/// [`MIN_IDLE_TIMEOUT`] and [`LONGEST_IDLE_TIMEOUT`], or absent.
pub mod limit {
    use std::time::Duration;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => {
                serializer.serialize_some(&humantime::format_duration(*duration).to_string())
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| super::parse_bounded(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::Limits;

    const MINUTE: Duration = Duration::from_secs(60);

    fn granted(idle_timeout: Option<Duration>, capped: bool) -> Result<Granted, BadIdleTimeout> {
        Ok(Granted {
            idle_timeout,
            capped,
        })
    }

    #[test]
    fn asks_are_read_as_durations_of_at_least_the_minimum() {
        assert_eq!(parse("15m"), Ok(15 * MINUTE));
        assert_eq!(parse("1h 30m"), Ok(90 * MINUTE));
        assert_eq!(parse("10s"), Ok(MIN_IDLE_TIMEOUT));
        for short in ["0s", "9s", "9999ms"] {
            assert_eq!(parse(short), Err(BadIdleTimeout::TooShort(short.into())));
        }
        for garbage in ["soon", "", "15", "-5m", "99999999999999999999999y"] {
            assert!(
                matches!(parse(garbage), Err(BadIdleTimeout::Unreadable { .. })),
                "{garbage}"
            );
        }
        assert_eq!(
            parse("300000000000y").map(|d| d > LONGEST_IDLE_TIMEOUT),
            Ok(true)
        );
    }

    #[test]
    fn what_the_operator_configures_is_bounded_and_in_whole_milliseconds() {
        assert_eq!(parse_bounded("1y"), Ok(LONGEST_IDLE_TIMEOUT));
        assert_eq!(
            parse_bounded("10s 1500us"),
            Ok(Duration::from_millis(10_001))
        );
        for long in ["2y", "300000000000y"] {
            assert_eq!(
                parse_bounded(long),
                Err(BadIdleTimeout::TooLong(long.into()))
            );
        }
        assert_eq!(
            parse_bounded("5s"),
            Err(BadIdleTimeout::TooShort("5s".into()))
        );
    }

    #[test]
    fn a_session_gets_its_ask_else_the_default_cut_to_the_ceiling() {
        let (default, max) = (Some(15 * MINUTE), Some(60 * MINUTE));
        assert_eq!(grant(None, None, None), granted(None, false), "none at all");
        assert_eq!(grant(None, default, None), granted(default, false));
        assert_eq!(
            grant(Some("30m"), default, max),
            granted(Some(30 * MINUTE), false)
        );
        assert_eq!(grant(Some("2h"), default, max), granted(max, true));
        assert_eq!(
            grant(None, None, max),
            granted(max, false),
            "with a ceiling, none asked and none by default is the ceiling"
        );
        assert_eq!(
            grant(None, Some(2 * 60 * MINUTE), max),
            granted(max, false),
            "a default above the ceiling is cut, unasked"
        );
        assert_eq!(
            grant(Some("300000000000y"), None, None),
            granted(Some(LONGEST_IDLE_TIMEOUT), true),
            "no ceiling is still at most a year"
        );
        assert_eq!(
            grant(Some("30m 1ns"), None, None),
            granted(Some(30 * MINUTE), false),
            "rounding to the millisecond is not a cut"
        );
        assert_eq!(
            grant(Some("5s"), default, max),
            Err(BadIdleTimeout::TooShort("5s".into()))
        );
        assert!(grant(Some("soon"), default, max).is_err());
    }

    #[test]
    fn limits_read_from_json_within_bounds() {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        struct Limit(#[serde(with = "limit")] Option<Duration>);
        let read = |json: &str| serde_json::from_str::<Limit>(json).map(|limit| limit.0);
        assert_eq!(read(r#""15m""#).unwrap(), Some(15 * MINUTE));
        assert_eq!(read("null").unwrap(), None);
        for refused in [r#""5s""#, r#""2y""#, r#""soon""#, "900"] {
            assert!(read(refused).is_err(), "{refused}");
        }
        let shown = serde_json::to_string(&Limit(Some(90 * MINUTE))).unwrap();
        assert_eq!(shown, r#""1h 30m""#);
    }

    #[test]
    fn a_tenants_limits_read_and_show_them_as_durations() {
        let limits = |json: &str| serde_json::from_str::<Limits>(json);
        let read = limits(r#"{"idle_timeout":"15m","max_idle_timeout":"1h"}"#).unwrap();
        let minute = Duration::from_secs(60);
        assert_eq!(read.idle_timeout, Some(15 * minute));
        assert_eq!(read.max_idle_timeout, Some(60 * minute));
        let shown = serde_json::to_value(&read).unwrap();
        assert_eq!(
            (&shown["idle_timeout"], &shown["max_idle_timeout"]),
            (&"15m".into(), &"1h".into())
        );
        let none = serde_json::to_value(Limits::default()).unwrap();
        assert!(none.get("idle_timeout").is_none(), "{none}");
        for refused in [
            r#"{"idle_timeout":"5s"}"#,
            r#"{"max_idle_timeout":"2y"}"#,
            r#"{"idle_timeout":"soon"}"#,
            r#"{"idle_timeout_max":"1h"}"#,
        ] {
            assert!(limits(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_share_keeps_the_idle_timeout_of_its_session_or_a_shorter_one() {
        let minute = Duration::from_secs(60);
        let limits = Limits {
            idle_timeout: Some(5 * minute),
            max_idle_timeout: Some(60 * minute),
            ..Limits::default()
        };
        let share = |asked, joined| {
            limits
                .share_idle_timeout(asked, joined)
                .map(|g| (g.idle_timeout, g.capped))
        };
        let joined = Some(30 * minute);
        assert_eq!(share(None, joined), Ok((joined, false)), "not the default");
        assert_eq!(share(Some("10m"), joined), Ok((Some(10 * minute), false)));
        assert_eq!(share(Some("45m"), joined), Ok((joined, true)));
        assert_eq!(
            share(None, None),
            Ok((Some(60 * minute), false)),
            "a session with none (a session file's) is shared within the tenant's max"
        );
        assert!(share(Some("1s"), joined).is_err());
        assert_eq!(
            Limits::default().share_idle_timeout(None, None),
            Ok(Granted {
                idle_timeout: None,
                capped: false
            })
        );
    }
}
