//! When a cron trigger fires: the ticks of a five-field cron expression in
//! a named time zone (DST as the zone has it: a 02:30 tick fires at 03:00
//! on the night clocks skip 02:00–03:00, and once on the night they repeat
//! it), and which ticks are due after downtime.
//!
//! Pure: time comes in as milliseconds since the epoch; the zone rules are
//! compiled in (jiff's bundled tz database), so the answer does not depend
//! on the machine's `/usr/share/zoneinfo`.

use crate::run::Millis;

/// A tick this recent is due even if no process ran when it came (a
/// restart that takes a few seconds does not skip it).
pub const GRACE_MS: Millis = 60_000;
/// The most missed ticks a trigger may catch up on (`trigger.catch_up`).
pub const MAX_CATCH_UP: u32 = 100;
/// Missed ticks counted (for the log) before the count stops.
const COUNT_LIMIT: u64 = 100_000;

/// A parsed cron trigger.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
}

impl CronSchedule {
    /// `expression` as validation accepts it; `zone` an IANA name (`None`: UTC).
    pub fn parse(expression: &str, zone: Option<&str>) -> Result<CronSchedule, String> {
        let cron = crate::validate::stream_fields::parse_cron(expression)
            .map_err(|(message, _)| format!("cron expression `{expression}`: {message}"))?;
        let zone = time_zone(zone)?;
        Ok(CronSchedule { cron, zone })
    }

    /// The last tick at or before `at` (`inclusive`) or strictly before it.
    fn previous(&self, at: Millis, inclusive: bool) -> Option<Millis> {
        let start = jiff::Timestamp::from_millisecond(at)
            .ok()?
            .to_zoned(self.zone.clone());
        let previous = self.cron.find_previous_occurrence(&start, inclusive).ok()?;
        Some(previous.timestamp().as_millisecond())
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let start = jiff::Timestamp::from_millisecond(after)
            .ok()?
            .to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }
}

/// The time zone an IANA name names (`None` or empty: UTC).
pub fn time_zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, String> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(jiff::tz::TimeZone::UTC),
        Some(name) => jiff::tz::db()
            .get(name)
            .map_err(|_| format!("`{name}` is not a time zone of the IANA database (e.g. `Europe/Paris`, `America/New_York`, `UTC`)")),
    }
}

/// What a trigger does now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// Ticks to fire, oldest first.
    pub fire: Vec<Millis>,
    /// Missed ticks passed over (beyond `catch_up`; counted up to 100,000).
    pub skipped: u64,
}

/// The ticks due at `now`, given the last tick fired (`None`: never; there
/// is nothing to catch up before the first firing). Ticks within
/// [`GRACE_MS`] of `now` always fire; of the older, missed ones only the
/// `catch_up` most recent do (0: none — skip them).
pub fn due(schedule: &CronSchedule, last_fired: Option<Millis>, now: Millis, catch_up: u32) -> Due {
    let after = last_fired.unwrap_or(now - GRACE_MS);
    let keep = catch_up.min(MAX_CATCH_UP) as usize;
    // Newest first, walking back from now: the work is bounded by what is
    // fired, not by how long the trigger was down.
    let mut fire = Vec::new();
    let mut missed = 0usize;
    let mut skipped = 0u64;
    let mut tick = schedule.previous(now, true);
    while let Some(t) = tick.filter(|&t| t > after) {
        if t >= now - GRACE_MS {
            fire.push(t);
        } else if missed < keep {
            fire.push(t);
            missed += 1;
        } else {
            skipped += 1;
            if skipped >= COUNT_LIMIT {
                break;
            }
        }
        tick = schedule.previous(t, false);
    }
    fire.reverse();
    Due { fire, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Millis {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn daily(zone: Option<&str>) -> CronSchedule {
        CronSchedule::parse("0 6 * * *", zone).unwrap()
    }

    #[test]
    fn ticks_follow_the_zone_and_its_daylight_saving() {
        // 06:00 in Paris is 05:00 UTC in winter and 04:00 UTC in summer.
        let paris = daily(Some("Europe/Paris"));
        assert_eq!(
            paris.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-10T05:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-07-10T00:00:00Z")),
            Some(at("2026-07-10T04:00:00Z"))
        );
        assert_eq!(
            daily(None).next_after(at("2026-07-10T00:00:00Z")),
            Some(at("2026-07-10T06:00:00Z"))
        );
        // 02:30 does not exist in Paris on 2026-03-29 (02:00 -> 03:00): the
        // next 02:30 after the night before is the day after.
        let half_past_two = CronSchedule::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let next = half_past_two
            .next_after(at("2026-03-28T12:00:00Z"))
            .unwrap();
        assert_eq!(
            next,
            at("2026-03-29T01:00:00Z"),
            "fired at 03:00, the first instant after the gap"
        );
        // On the night clocks repeat 02:00–03:00 (2026-10-25), 02:30 fires once.
        let first = half_past_two
            .next_after(at("2026-10-24T12:00:00Z"))
            .unwrap();
        let second = half_past_two.next_after(first).unwrap();
        assert!(second - first > 23 * 3_600_000, "{first} {second}");
    }

    #[test]
    fn bad_zones_and_expressions_are_named() {
        assert!(
            time_zone(Some("Mars/Olympus"))
                .unwrap_err()
                .contains("Mars/Olympus")
        );
        assert!(
            CronSchedule::parse("every tuesday lol", None)
                .unwrap_err()
                .contains("every tuesday lol")
        );
        assert_eq!(time_zone(Some("")).unwrap(), jiff::tz::TimeZone::UTC);
    }

    #[test]
    fn the_current_tick_fires_and_a_fired_one_does_not_again() {
        let every_minute = CronSchedule::parse("* * * * *", None).unwrap();
        let now = at("2026-12-05T10:00:20Z");
        // Never fired: only the tick within the grace.
        assert_eq!(
            due(&every_minute, None, now, 0).fire,
            [at("2026-12-05T10:00:00Z")]
        );
        // Fired it: nothing until the next minute.
        assert_eq!(
            due(&every_minute, Some(at("2026-12-05T10:00:00Z")), now, 0),
            Due::default()
        );
        let later = at("2026-12-05T10:01:00Z");
        assert_eq!(
            due(&every_minute, Some(at("2026-12-05T10:00:00Z")), later, 0).fire,
            [later]
        );
    }

    #[test]
    fn missed_ticks_are_skipped_or_caught_up_boundedly() {
        let daily = daily(None);
        let last = at("2026-12-01T06:00:00Z");
        // Down from the 1st to the 5th at 06:00:30: the 2nd, 3rd and 4th
        // were missed; the 5th is current.
        let now = at("2026-12-05T06:00:30Z");
        let skip = due(&daily, Some(last), now, 0);
        assert_eq!(skip.fire, [at("2026-12-05T06:00:00Z")]);
        assert_eq!(skip.skipped, 3);
        let two = due(&daily, Some(last), now, 2);
        assert_eq!(
            two.fire,
            [
                at("2026-12-03T06:00:00Z"),
                at("2026-12-04T06:00:00Z"),
                at("2026-12-05T06:00:00Z")
            ]
        );
        assert_eq!(two.skipped, 1);
        let all = due(&daily, Some(last), now, 50);
        assert_eq!(all.fire.len(), 4);
        assert_eq!(all.skipped, 0);
        // Back at 09:00 instead: today's 06:00 is missed too, not current.
        let late = due(&daily, Some(last), at("2026-12-05T09:00:00Z"), 1);
        assert_eq!(late.fire, [at("2026-12-05T06:00:00Z")]);
        assert_eq!(late.skipped, 3);
        // A year of a minutely trigger down is bounded work.
        let minutely = CronSchedule::parse("* * * * *", None).unwrap();
        let year = due(&minutely, Some(at("2025-12-05T06:00:00Z")), now, 100);
        assert_eq!(year.fire.len(), 101);
        assert_eq!(*year.fire.last().unwrap(), at("2026-12-05T06:00:00Z"));
        assert_eq!(year.skipped, COUNT_LIMIT, "counted up to the limit");
    }
}
