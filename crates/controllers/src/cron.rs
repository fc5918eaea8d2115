//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day
//! of week) with `*`, `?`, lists, ranges, steps and month and weekday names, or a macro
//! (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`). When
//! both day fields are restricted a day matching either runs, as in cron. Times are found in a
//! time zone, so schedules follow its daylight-saving changes.
//!
//! Written here rather than taken from a cron crate because those bring chrono and a second
//! time-zone database, where jiff (already in the tree through k8s-openapi) has zones.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, names: &[&str], base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(u32::try_from(i).unwrap_or(0) + base);
    }
    s.parse()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// Parses one field into a bit set of the values it allows in `lo..=hi`.
fn field(s: &str, lo: u32, hi: u32, names: &[&str], base: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut any = false;
    for item in s.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid step in {item}"))?,
            ),
            None => (item, 1),
        };
        let (start, end) = if range == "*" || range == "?" {
            any = any || step == 1;
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, base)?, value(b, names, base)?)
        } else {
            let v = value(range, names, base)?;
            (v, if item.contains('/') { hi } else { v })
        };
        if start < lo || end > hi || start > end {
            return Err(format!("value out of range ({lo} - {hi}): {item}"));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong, as upstream's validation does.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec}",
                fields.len()
            ));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, days_any) = field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, 1)?;
        let (mut weekdays, weekdays_any) = field(fields[4], 0, 7, &WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, t: DateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        if self.days_any || self.weekdays_any {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `after` the schedule runs, in `tz`; none within five years.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let bit = |set: u64, v: i8| set & (1 << u32::try_from(v).unwrap_or(63)) != 0;
        let start = after.to_zoned(tz.clone());
        let mut t = start
            .datetime()
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        t = t.checked_add(1.minute()).ok()?;
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if !bit(self.months, t.month()) {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !self.day_matches(t) {
                t = t.checked_add(1.day()).ok()?.start_of_day();
                continue;
            }
            if !bit(self.hours, t.hour()) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !bit(self.minutes, t.minute()) {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let at = t.to_zoned(tz.clone()).ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest time in `(after, now]` the schedule ran, and how many times it ran there
    /// (counting stops at `cap`).
    pub fn last_missed(
        &self,
        after: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
        cap: usize,
    ) -> (Option<Timestamp>, usize) {
        let mut last = None;
        let mut count = 0;
        let mut t = after;
        while let Some(next) = self.next(t, tz) {
            if next > now {
                break;
            }
            last = Some(next);
            count += 1;
            if count >= cap {
                // Jump close to now: only the latest time matters beyond this.
                let skip = now.checked_sub(2.hours()).unwrap_or(now);
                if skip > next {
                    t = skip;
                    continue;
                }
            }
            t = next;
        }
        (last, count)
    }
}

/// A time zone by IANA name; none when unknown.
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {n}")),
    }
}

/// A timestamp written as the API writes times.
pub fn rfc3339(t: Timestamp) -> String {
    Zoned::new(t, TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(spec: &str, after: &str) -> String {
        let s = Schedule::parse(spec).expect("schedule");
        rfc3339(s.next(at(after), &TimeZone::UTC).expect("next"))
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(
            next("*/1 * * * *", "2026-01-01T10:00:30Z"),
            "2026-01-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:16:00Z"),
            "2026-01-01T10:30:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T13:00:00Z"
        );
        assert_eq!(
            next("30 2 * JAN-MAR MON", "2026-01-01T00:00:00Z"),
            "2026-01-05T02:30:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:00:00Z"),
            "2026-01-01T11:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-03-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 15th or any Friday: 2026-01-02 is a Friday.
        assert_eq!(
            next("0 0 15 * FRI", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // A star in one day field means the other alone decides.
        assert_eq!(
            next("0 0 15 * *", "2026-01-01T00:00:00Z"),
            "2026-01-15T00:00:00Z"
        );
    }

    #[test]
    fn schedules_follow_the_time_zone() {
        let s = Schedule::parse("0 9 * * *").expect("schedule");
        let tz = TimeZone::get("Europe/Berlin").expect("zone");
        let t = s.next(at("2026-07-01T00:00:00Z"), &tz).expect("next");
        assert_eq!(rfc3339(t), "2026-07-01T07:00:00Z");
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "@fortnightly",
            "x * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_latest_missed_time_is_found() {
        let s = Schedule::parse("*/1 * * * *").expect("schedule");
        let (last, count) = s.last_missed(
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:03:30Z"),
            &TimeZone::UTC,
            100,
        );
        assert_eq!(last.map(rfc3339).as_deref(), Some("2026-01-01T10:03:00Z"));
        assert_eq!(count, 3);
    }
}
