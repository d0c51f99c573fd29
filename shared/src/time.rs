//! Time as the registry's records store it: milliseconds since the Unix epoch, so that every node and
//! Redis read the same instant the same way, and durations in milliseconds too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for an earlier time).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Optional times as optional Unix milliseconds in stored records (`#[serde(with = …)]`).
pub mod unix_ms_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_some(&super::unix_ms(*time)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let ms = Option::<u64>::deserialize(deserializer)?;
        Ok(ms.map(super::from_unix_ms))
    }
}

/// Optional durations as optional milliseconds in stored records (`#[serde(with = …)]`): whatever is finer
/// is dropped, and a duration past `u64::MAX` milliseconds (585 million years) is stored as that.
pub mod ms_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => {
                let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                serializer.serialize_some(&ms)
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let ms = Option::<u64>::deserialize(deserializer)?;
        Ok(ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let time = from_unix_ms(1_700_000_000_123);
        assert_eq!(unix_ms(time), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn durations_are_whole_milliseconds_and_saturate() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Record(#[serde(with = "ms_option")] Option<Duration>);
        let json = |d| serde_json::to_string(&Record(d)).unwrap();
        assert_eq!(json(Some(Duration::from_micros(1_500_999))), "1500");
        assert_eq!(json(Some(Duration::MAX)), u64::MAX.to_string());
        assert_eq!(json(None), "null");
        let read = |text: &str| serde_json::from_str::<Record>(text).unwrap().0;
        assert_eq!(read("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(read("null"), None);
    }
}
