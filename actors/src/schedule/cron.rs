//! A repository's cron `schedule`: the exact syntax cairn accepts
//! ([`Schedule::parse`]) and its next time ([`Schedule::next_after`]),
//! found by a search bounded by [`HORIZON_DAYS`].
//!
//! # Syntax (UTC)
//! Five fields separated by blanks: minute `0-59`, hour `0-23`, day of
//! month `1-31`, month `1-12`, day of week `0-7` (0 and 7 are Sunday).
//! A field is `*` (`?` too, in day of month and day of week) or a
//! comma-separated list of items:
//! - `N` a value, `A-B` a range (`A` ≤ `B`; in day of week a range may
//!   end on Sunday: `FRI-SUN`, `5-0`, `5-7`);
//! - `*/S`, `A/S` (from `A` to the field's largest value), `A-B/S`: every
//!   `S`-th value, `S` from 1 to the field's largest value;
//! - names, any case: `JAN`-`DEC` in month, `SUN`-`SAT` in day of week;
//! - day of month only: `L` the month's last day; `NW` the weekday nearest
//!   day `N` (day `N` itself when a weekday, else the Friday before a
//!   Saturday or the Monday after a Sunday — which may lie in the adjacent
//!   month, and then counts only when that month is scheduled);
//! - day of week only: `DL` the month's last `D` (`5L`, `FRIL`), `D#K` its
//!   `K`-th `D`, `K` 1-5 (`MON#1`).
//!
//! When day of month and day of week are both restricted (neither is `*`
//! nor `?`), a day matches when either matches (as Vixie cron does).
//! Not accepted: a seconds or a year field, `@daily` and the like, `LW`,
//! `L`/`W`/`#` elsewhere than above, ranges or steps with `L`, `W` or `#`,
//! time zones. An expression is at most [`SCHEDULE_MAX_BYTES`] long.
//!
//! # Horizon
//! A schedule must have a time within [`HORIZON_DAYS`] (8 years of 366
//! days) of now, or it is refused ([`BadSchedule::NoTimeWithin`]): that
//! catches what can never happen (`0 0 30 2 *`, `0 0 31 4 *`) while
//! keeping every schedule that fires at least every 8 years — the longest
//! gap between two February 29ths (2096 to 2104) included. The search
//! walks days, not minutes: at most [`HORIZON_DAYS`] day matches, then one
//! lookup in the hours and minutes the schedule allows, so a next time
//! costs microseconds to about a millisecond (it still runs off the
//! arbiter: [`super`]). A stored schedule with no time within the
//! horizon (accepted before this check existed, or a rare one whose next
//! time drifted further) gets `None`, and the plan falls back to the
//! node's interval ([`super::plan`]).
//!
//! # Why croner, and this search
//! croner parses and matches (its `day_match` knows `L`, `W`, `#` and the
//! Vixie day rule), but its own `find_next_occurrence` walks hour by hour
//! (or day by day) up to the year 5000 when nothing matches — 3.7 s of CPU
//! for `L * * * *`, which croner (2.x and 4.x alike) takes as a minute
//! field with no minute. Newer croner bounds the walk by a fixed count of
//! steps (still seconds of CPU) and pulls in proc-macro crates; `cron`
//! wants a seconds field and has no `L`/`W`/`#`; `saffron` has not been
//! released since 2021. So the items are checked here first (each field's
//! own syntax, with errors naming the field), croner gets a normalised
//! expression (names as numbers, `7L` as `0L`: croner never matches `7L`),
//! and the walk over days is ours, bounded, over croner's matchers.

use std::time::SystemTime;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};

/// Longest schedule expression accepted, in bytes.
pub const SCHEDULE_MAX_BYTES: usize = 512;

/// The horizon in years, as error messages say it.
pub const HORIZON_YEARS: u32 = 8;

/// How far ahead a next time is searched, in days (8 years of 366 days).
pub const HORIZON_DAYS: u32 = HORIZON_YEARS * 366;

/// Why a `sync.schedule` is refused. Each is the client's to fix; the
/// service answers 400 naming `sync.schedule`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSchedule {
    /// Longer than [`SCHEDULE_MAX_BYTES`]: the client sends a shorter one.
    #[error("{bytes} bytes, at most {max_bytes} allowed")]
    TooLong {
        /// Its length.
        bytes: usize,
        /// [`SCHEDULE_MAX_BYTES`].
        max_bytes: usize,
    },
    /// Not five fields: the client sends minute hour day-of-month month
    /// day-of-week.
    #[error("{expression:?} has {fields} {}; expected 5 (minute hour day-of-month month day-of-week)", if *fields == 1 { "field" } else { "fields" })]
    FieldCount {
        /// The expression.
        expression: String,
        /// How many fields it has.
        fields: usize,
    },
    /// An item of a field is outside the syntax (see the module docs): the
    /// client fixes that item.
    #[error("{expression:?} is not a valid cron expression: {field} {item:?}: {why}")]
    Item {
        /// The expression.
        expression: String,
        /// The field (`minute`, `hour`, `day-of-month`, `month`,
        /// `day-of-week`).
        field: &'static str,
        /// The item as given.
        item: String,
        /// What is wrong with it.
        why: String,
    },
    /// croner refused the normalised expression although every item
    /// passed (a gap between the two checks): the client picks another
    /// form of the same schedule.
    #[error("{expression:?} is not a valid cron expression: {message}")]
    Rejected {
        /// The expression.
        expression: String,
        /// croner's message.
        message: String,
    },
    /// No time within [`HORIZON_DAYS`] of now (a day that does not exist,
    /// or day rules that never meet): the client fixes the schedule.
    #[error("{expression:?} has no time in the next {years} years (a day that does not exist, like 30 2, or day rules that never meet)")]
    NoTimeWithin {
        /// The expression.
        expression: String,
        /// [`HORIZON_YEARS`].
        years: u32,
    },
}

/// A parsed schedule: the expression as given, croner's pattern of its
/// normalised form, and the hours and minutes it allows (ascending).
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: croner::Cron,
    hours: Vec<u32>,
    minutes: Vec<u32>,
}

/// What one field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const FIELDS: [Field; 5] = [
    Field::Minute,
    Field::Hour,
    Field::DayOfMonth,
    Field::Month,
    Field::DayOfWeek,
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    fn range(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    /// Its names and the value of the first.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            Field::Month => Some((&MONTHS, 1)),
            Field::DayOfWeek => Some((&WEEKDAYS, 0)),
            _ => None,
        }
    }

    fn is_day(self) -> bool {
        matches!(self, Field::DayOfMonth | Field::DayOfWeek)
    }

    /// A value: a number in range, or a name where the field has names.
    fn value(self, text: &str) -> Result<u32, String> {
        let (min, max) = self.range();
        if !text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = text
                .parse()
                .map_err(|_| format!("{text:?} is not a number"))?;
            return if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is out of range {min}-{max}"))
            };
        }
        if let Some((names, first)) = self.names() {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
                return Ok(first + i as u32);
            }
            return Err(format!(
                "{text:?} is neither a number {min}-{max} nor a name {}-{}",
                names[0],
                names[names.len() - 1]
            ));
        }
        Err(format!("{text:?} is not a number {min}-{max}"))
    }

    /// One item of a list, normalised for croner.
    fn item(self, text: &str) -> Result<String, String> {
        let upper = text.to_ascii_uppercase();
        if upper.is_empty() {
            return Err("empty item".to_owned());
        }
        if upper == "*" || upper == "?" {
            return Err(format!("{upper} must be the whole field"));
        }
        if upper.contains('#') {
            if self != Field::DayOfWeek {
                return Err("# is allowed only in day-of-week (D#K)".to_owned());
            }
            let (day, nth) = upper.split_once('#').unwrap_or_default();
            let day = self.value(day)? % 7;
            return match nth.parse::<u32>() {
                Ok(k) if (1..=5).contains(&k) => Ok(format!("{day}#{k}")),
                _ => Err(format!("{nth:?} in D#K must be 1-5")),
            };
        }
        if upper == "L" {
            return match self {
                Field::DayOfMonth => Ok("L".to_owned()),
                Field::DayOfWeek => Err("L alone is allowed only in day-of-month; in day-of-week say which day: DL (5L, FRIL)".to_owned()),
                _ => Err("L is allowed only in day-of-month (L) and day-of-week (DL)".to_owned()),
            };
        }
        let names = self.names().is_some();
        // `DL` (not a name ending in L: there is none among SUN-SAT).
        if self == Field::DayOfWeek && !upper.contains(['-', '/']) {
            if let Some(day) = upper.strip_suffix('L') {
                // croner matches `0L` but never `7L`: Sunday as 0.
                return Ok(format!("{}L", self.value(day)? % 7));
            }
        }
        if upper.ends_with('W') {
            if self != Field::DayOfMonth || upper.contains(['-', '/']) {
                return Err("W is allowed only in day-of-month, after a single day (NW)".to_owned());
            }
            return Ok(format!("{}W", self.value(&upper[..upper.len() - 1])?));
        }
        if upper.contains('L') && !names {
            return Err(match self {
                Field::DayOfMonth => "L stands alone in day-of-month (the month's last day)",
                _ => "L is allowed only in day-of-month (L) and day-of-week (DL)",
            }
            .to_owned());
        }
        let (base, step) = match upper.split_once('/') {
            Some((base, step)) => {
                let (_, max) = self.range();
                match step.parse::<u32>() {
                    Ok(s) if (1..=max).contains(&s) => (base, Some(s)),
                    _ => return Err(format!("step {step:?} must be 1-{max}")),
                }
            }
            None => (upper.as_str(), None),
        };
        let base = if base == "*" {
            if step.is_none() {
                return Err("* must be the whole field".to_owned());
            }
            "*".to_owned()
        } else if let Some((a, b)) = base.split_once('-') {
            let a = self.value(a)?;
            let mut b = self.value(b)?;
            if self == Field::DayOfWeek && b == 0 && a > 0 {
                b = 7; // FRI-SUN
            }
            if a > b {
                return Err(format!("range {a}-{b} goes backwards"));
            }
            format!("{a}-{b}")
        } else {
            self.value(base)?.to_string()
        };
        Ok(match step {
            Some(s) => format!("{base}/{s}"),
            None => base,
        })
    }

    /// A whole field, normalised for croner.
    fn normalise(self, text: &str, expression: &str) -> Result<String, BadSchedule> {
        if text == "*" || (self.is_day() && text == "?") {
            return Ok("*".to_owned());
        }
        text.split(',')
            .map(|item| {
                self.item(item).map_err(|why| BadSchedule::Item {
                    expression: expression.to_owned(),
                    field: self.name(),
                    item: item.to_owned(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(","))
    }
}

impl Schedule {
    /// Parses `expression` (the syntax of the module docs). Cheap: linear
    /// in its length, at most [`SCHEDULE_MAX_BYTES`].
    pub fn parse(expression: &str) -> Result<Self, BadSchedule> {
        if expression.len() > SCHEDULE_MAX_BYTES {
            return Err(BadSchedule::TooLong {
                bytes: expression.len(),
                max_bytes: SCHEDULE_MAX_BYTES,
            });
        }
        let parts: Vec<&str> = expression.split_whitespace().collect();
        if parts.len() != FIELDS.len() {
            return Err(BadSchedule::FieldCount {
                expression: expression.to_owned(),
                fields: parts.len(),
            });
        }
        let normalised = FIELDS
            .iter()
            .zip(&parts)
            .map(|(field, text)| field.normalise(text, expression))
            .collect::<Result<Vec<_>, _>>()?
            .join(" ");
        let cron = croner::Cron::new(&normalised)
            .parse()
            .map_err(|e| BadSchedule::Rejected {
                expression: expression.to_owned(),
                message: e.to_string(),
            })?;
        let hours = (0..24)
            .filter(|h| cron.pattern.hour_match(*h).unwrap_or(false))
            .collect();
        let minutes = (0..60)
            .filter(|m| cron.pattern.minute_match(*m).unwrap_or(false))
            .collect();
        Ok(Self {
            expression: expression.to_owned(),
            cron,
            hours,
            minutes,
        })
    }

    /// [`Schedule::parse`], refusing a schedule with no time within
    /// [`HORIZON_DAYS`] of `now` (what a request's schedule must pass).
    /// Searches up to the horizon: call it off the arbiter.
    pub fn checked(expression: &str, now: SystemTime) -> Result<Self, BadSchedule> {
        let schedule = Self::parse(expression)?;
        match schedule.next_after(now) {
            Some(_) => Ok(schedule),
            None => Err(BadSchedule::NoTimeWithin {
                expression: expression.to_owned(),
                years: HORIZON_YEARS,
            }),
        }
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first time strictly after `now` that the schedule matches (a
    /// whole minute, UTC), if there is one within [`HORIZON_DAYS`]. At most
    /// [`HORIZON_DAYS`] + 1 days are looked at, one day match each.
    pub fn next_after(&self, now: SystemTime) -> Option<SystemTime> {
        let (Some(&first_hour), Some(&first_minute)) = (self.hours.first(), self.minutes.first())
        else {
            return None;
        };
        let now = DateTime::<Utc>::from(now).naive_utc();
        // The first whole minute after now.
        let start = now
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(Duration::minutes(1))?;
        let last = start
            .date()
            .checked_add_signed(Duration::days(i64::from(HORIZON_DAYS)))?;
        let pattern = &self.cron.pattern;
        let mut day = start.date();
        while day <= last {
            if !pattern.month_match(day.month()).unwrap_or(false) {
                // The first day of the next month.
                day = first_of_next_month(day)?;
                continue;
            }
            if pattern
                .day_match(day.year(), day.month(), day.day())
                .unwrap_or(false)
            {
                let time = if day == start.date() {
                    self.first_time_from(start.hour(), start.minute())
                } else {
                    Some((first_hour, first_minute))
                };
                if let Some((hour, minute)) = time {
                    let at = NaiveDateTime::new(day, NaiveTime::from_hms_opt(hour, minute, 0)?);
                    return Some(SystemTime::from(at.and_utc()));
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// The first allowed hour and minute at or after `hour:minute` of a
    /// day, if any.
    fn first_time_from(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        let first_minute = *self.minutes.first()?;
        self.hours.iter().filter(|h| **h >= hour).find_map(|&h| {
            if h > hour {
                Some((h, first_minute))
            } else {
                self.minutes.iter().find(|m| **m >= minute).map(|&m| (h, m))
            }
        })
    }
}

fn first_of_next_month(day: NaiveDate) -> Option<NaiveDate> {
    let (year, month) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(rfc3339).unwrap())
    }

    fn next(expression: &str, now: &str) -> Option<SystemTime> {
        Schedule::parse(expression).unwrap().next_after(at(now))
    }

    fn refused(expression: &str) -> String {
        Schedule::parse(expression).unwrap_err().to_string()
    }

    #[test]
    fn next_times_follow_each_kind_of_item() {
        // 2026-11-21 is a Saturday.
        let now = "2026-11-21T10:07:30Z";
        for (expression, expected) in [
            ("*/15 * * * *", "2026-11-21T10:15:00Z"),
            ("7 * * * *", "2026-11-21T11:07:00Z"),
            ("8 10 * * *", "2026-11-21T10:08:00Z"),
            ("0 9 * * *", "2026-11-22T09:00:00Z"),
            ("30 2 * * MON", "2026-11-23T02:30:00Z"),
            ("30 2 * * mon-fri", "2026-11-23T02:30:00Z"),
            ("0 0 * * FRI-SUN", "2026-11-22T00:00:00Z"),
            ("0 0 * * 7", "2026-11-22T00:00:00Z"),
            ("0 0 L * *", "2026-11-30T00:00:00Z"),
            ("0 0 L FEB *", "2027-02-28T00:00:00Z"),
            ("0 0 29 2 *", "2028-02-29T00:00:00Z"),
            ("0 0 * * 5L", "2026-11-27T00:00:00Z"),
            ("0 0 * * SUNL", "2026-11-29T00:00:00Z"),
            // croner never matches 7L: normalised to 0L.
            ("0 0 * * 7L", "2026-11-29T00:00:00Z"),
            ("0 0 * * MON#1", "2026-12-07T00:00:00Z"),
            ("0 0 15W * *", "2026-12-15T00:00:00Z"),
            // 2026-11-22 is a Sunday: the Monday after.
            ("0 0 22W * *", "2026-11-23T00:00:00Z"),
            // Both days restricted: either.
            ("0 0 1 * MON", "2026-11-23T00:00:00Z"),
            ("0 12 ? * ?", "2026-11-21T12:00:00Z"),
            ("5/20 10 * * *", "2026-11-21T10:25:00Z"),
            ("0 1-3/2 * * *", "2026-11-22T01:00:00Z"),
            ("0 0 1 JAN,jul *", "2027-01-01T00:00:00Z"),
        ] {
            assert_eq!(next(expression, now), Some(at(expected)), "{expression}");
        }
    }

    #[test]
    fn next_is_strictly_after_now() {
        assert_eq!(
            next("*/15 * * * *", "2026-11-21T10:15:00Z"),
            Some(at("2026-11-21T10:30:00Z"))
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-21T10:14:59.500Z"),
            Some(at("2026-11-21T10:15:00Z"))
        );
        assert_eq!(
            next("59 23 31 12 *", "2026-12-31T23:59:00Z"),
            Some(at("2027-12-31T23:59:00Z"))
        );
    }

    #[test]
    fn the_same_times_as_croners_own_search() {
        let starts = [
            "2026-11-21T10:07:30Z",
            "2027-02-28T23:59:59Z",
            "2028-12-31T23:59:00Z",
        ];
        for expression in [
            "*/7 */5 * * *",
            "0 0 L * *",
            "0 0 29 2 *",
            "15 3 * * 1#2",
            "0 0 * 2 5L",
            "0 0 1W * *",
            "0 0 31W * *",
            "0 0 13 * FRI",
            "0 22 * 6-8 SAT,SUN",
        ] {
            let schedule = Schedule::parse(expression).unwrap();
            for start in starts {
                let croner = schedule
                    .cron
                    .find_next_occurrence(&DateTime::<Utc>::from(at(start)), false)
                    .unwrap();
                assert_eq!(
                    schedule.next_after(at(start)),
                    Some(SystemTime::from(croner)),
                    "{expression} after {start}"
                );
            }
        }
    }

    #[test]
    fn the_horizon_keeps_leap_days_and_refuses_what_never_happens() {
        // The longest gap between two February 29ths.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00Z"),
            Some(at("2104-02-29T00:00:00Z"))
        );
        let now = at("2026-11-21T10:00:00Z");
        for never in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *"] {
            assert_eq!(
                Schedule::checked(never, now).unwrap_err().to_string(),
                format!("{never:?} has no time in the next 8 years (a day that does not exist, like 30 2, or day rules that never meet)")
            );
        }
        assert!(Schedule::checked("0 0 29 2 *", now).is_ok());
        // A fifth Monday in February: 2044, then 2072. Refused from 2026;
        // from 2040 it is found (and after 2044 the next is beyond the
        // horizon again: the plan's interval, see `plan`).
        assert!(matches!(
            Schedule::checked("0 0 * 2 MON#5", now),
            Err(BadSchedule::NoTimeWithin { years: 8, .. })
        ));
        assert_eq!(
            next("0 0 * 2 MON#5", "2040-01-01T00:00:00Z"),
            Some(at("2044-02-29T00:00:00Z"))
        );
        assert_eq!(next("0 0 * 2 MON#5", "2044-03-01T00:00:00Z"), None);
    }

    #[test]
    fn a_search_with_no_answer_is_bounded() {
        // Every day of the horizon is looked at: still well under a
        // second even unoptimised (croner's own search: 3.7 s for
        // `L * * * *`, refused here by its syntax).
        let schedule = Schedule::parse("0 0 30 2 *").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(schedule.next_after(at("2026-11-21T10:00:00Z")), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn items_outside_the_syntax_are_refused_naming_the_field() {
        for (expression, message) in [
            ("L * * * *", "\"L * * * *\" is not a valid cron expression: minute \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
            ("* L * * *", "\"* L * * *\" is not a valid cron expression: hour \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
            ("0 0 * L *", "\"0 0 * L *\" is not a valid cron expression: month \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
            ("0 0 * * L", "\"0 0 * * L\" is not a valid cron expression: day-of-week \"L\": L alone is allowed only in day-of-month; in day-of-week say which day: DL (5L, FRIL)"),
            ("61 * * * *", "\"61 * * * *\" is not a valid cron expression: minute \"61\": 61 is out of range 0-59"),
            ("0 0 0 * *", "\"0 0 0 * *\" is not a valid cron expression: day-of-month \"0\": 0 is out of range 1-31"),
            ("MON * * * *", "\"MON * * * *\" is not a valid cron expression: minute \"MON\": \"MON\" is not a number 0-59"),
            ("0 0 * FOO *", "\"0 0 * FOO *\" is not a valid cron expression: month \"FOO\": \"FOO\" is neither a number 1-12 nor a name JAN-DEC"),
            ("0 0 1,,2 * *", "\"0 0 1,,2 * *\" is not a valid cron expression: day-of-month \"\": empty item"),
            ("*/0 * * * *", "\"*/0 * * * *\" is not a valid cron expression: minute \"*/0\": step \"0\" must be 1-59"),
            ("0 5-1 * * *", "\"0 5-1 * * *\" is not a valid cron expression: hour \"5-1\": range 5-1 goes backwards"),
            ("0 0 * * MON#6", "\"0 0 * * MON#6\" is not a valid cron expression: day-of-week \"MON#6\": \"6\" in D#K must be 1-5"),
            ("0 0 1#2 * *", "\"0 0 1#2 * *\" is not a valid cron expression: day-of-month \"1#2\": # is allowed only in day-of-week (D#K)"),
            ("0 0 * * 1W", "\"0 0 * * 1W\" is not a valid cron expression: day-of-week \"1W\": W is allowed only in day-of-month, after a single day (NW)"),
            ("0 0 LW * *", "\"0 0 LW * *\" is not a valid cron expression: day-of-month \"LW\": \"L\" is not a number 1-31"),
            ("0 0 L-2 * *", "\"0 0 L-2 * *\" is not a valid cron expression: day-of-month \"L-2\": L stands alone in day-of-month (the month's last day)"),
            ("5L * * * *", "\"5L * * * *\" is not a valid cron expression: minute \"5L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
            ("0 0 * * 1-5L", "\"0 0 * * 1-5L\" is not a valid cron expression: day-of-week \"1-5L\": \"5L\" is neither a number 0-7 nor a name SUN-SAT"),
            ("0 0 *,1 * *", "\"0 0 *,1 * *\" is not a valid cron expression: day-of-month \"*\": * must be the whole field"),
            ("? * * * *", "\"? * * * *\" is not a valid cron expression: minute \"?\": ? must be the whole field"),
            ("@daily", "\"@daily\" has 1 field; expected 5 (minute hour day-of-month month day-of-week)"),
            ("0 */5 * * * *", "\"0 */5 * * * *\" has 6 fields; expected 5 (minute hour day-of-month month day-of-week)"),
        ] {
            assert_eq!(refused(expression), message, "{expression}");
        }
        let long = format!("0 0 * * {}", "1,".repeat(300));
        assert_eq!(
            refused(&long),
            format!("{} bytes, at most 512 allowed", long.len())
        );
    }
}
