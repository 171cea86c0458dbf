//! UTC calendar arithmetic for object names and prefixes (no time-zone database needed for UTC).

/// A UTC calendar instant broken into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub day_of_year: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl UtcDateTime {
    /// Breaks milliseconds since the Unix epoch into calendar fields (proleptic Gregorian).
    pub fn from_epoch_ms(ms: i64) -> UtcDateTime {
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        UtcDateTime {
            year,
            month,
            day,
            day_of_year: (days - jan1 + 1) as u32,
            hour: (in_day / 3_600_000) as u32,
            minute: (in_day / 60_000 % 60) as u32,
            second: (in_day / 1000 % 60) as u32,
            millis: (in_day % 1000) as u32,
        }
    }
}

/// A prefix's time zone (Firehose `CustomTimeZone`): UTC, or an IANA zone from the time-zone
/// database bundled into the binary (so a container without `/usr/share/zoneinfo` works the same).
#[derive(Debug, Clone, PartialEq)]
pub struct TimeZone {
    name: String,
    zone: jiff::tz::TimeZone,
}

impl TimeZone {
    /// Looks up an IANA zone name (at most 50 characters, as Firehose allows).
    pub fn parse(name: &str) -> Result<TimeZone, String> {
        if name.is_empty() || name.chars().count() > 50 {
            return Err("custom_time_zone must be 1 to 50 characters".into());
        }
        let zone = jiff::tz::db().get(name).map_err(|_| {
            format!(
                "custom_time_zone {name:?} is not an IANA time zone name (e.g. America/New_York)"
            )
        })?;
        Ok(TimeZone {
            name: name.to_string(),
            zone,
        })
    }

    /// The zone's name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wall-clock fields of `ms` (milliseconds since the epoch) in this zone.
    pub fn calendar(&self, ms: i64) -> UtcDateTime {
        let offset_s = jiff::Timestamp::from_millisecond(ms)
            .map(|t| self.zone.to_offset(t).seconds())
            .unwrap_or(0);
        UtcDateTime::from_epoch_ms(ms + i64::from(offset_s) * 1000)
    }
}

impl<'de> serde::Deserialize<'de> for TimeZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor, so that the error points at the value's line.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TimeZone;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an IANA time zone name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TimeZone, E> {
                TimeZone::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_shift_wall_clock_fields() {
        // 2024-07-01T03:30:00Z is 23:30 the day before in New York (EDT, UTC-4).
        let ms = 1_719_804_600_000;
        let ny = TimeZone::parse("America/New_York").unwrap();
        let t = ny.calendar(ms);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2024, 6, 30, 23, 30)
        );
        // In January it is UTC-5.
        let t = ny.calendar(1_704_079_800_000); // 2024-01-01T03:30:00Z
        assert_eq!((t.month, t.day, t.hour), (12, 31, 22));
        let t = TimeZone::parse("Asia/Kolkata").unwrap().calendar(ms);
        assert_eq!((t.hour, t.minute), (9, 0));
        assert!(TimeZone::parse("Mars/Olympus").is_err());
        assert!(TimeZone::parse(&"A".repeat(51)).is_err());
        assert!(TimeZone::parse("").is_err());
    }
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let t = UtcDateTime::from_epoch_ms(0);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.day_of_year),
            (1970, 1, 1, 0, 1)
        );
        let t = UtcDateTime::from_epoch_ms(1_709_190_489_123); // 2024-02-29T07:08:09.123Z
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis),
            (2024, 2, 29, 7, 8, 9, 123)
        );
        assert_eq!(t.day_of_year, 60);
        let t = UtcDateTime::from_epoch_ms(1_735_689_599_999); // 2024-12-31T23:59:59.999Z
        assert_eq!((t.year, t.month, t.day, t.day_of_year), (2024, 12, 31, 366));
    }

    proptest! {
        #[test]
        fn days_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
