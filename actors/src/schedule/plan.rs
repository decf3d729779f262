//! When a repository syncs next: plain functions of the time, the
//! repository's `sync` spec and the node's policy, unit-tested without
//! actors.
//!
//! - After a sync that succeeded (or when nothing ran yet): the next time
//!   of the cron `schedule` when there is one, else now + the node's
//!   interval; plus a jitter drawn uniformly from `[0, jitter]` so
//!   repositories registered together do not all fetch together. A
//!   schedule with no time within the horizon ([`super::cron`]; only a
//!   stored one can be like that, requests are refused) gets the interval
//!   too. Finding a schedule's next time is bounded but CPU work: the
//!   callers ([`super::SyncManager`], the repository's sync) run these
//!   functions off the arbiter.
//! - A pending `run_once_at` comes first when it is earlier; one in the
//!   past is due at once. It stays pending until a sync starts at or after
//!   it.
//! - After a failure: now + the retry delay of the failure's class
//!   (`network`, `timeout`, `auth`, `missing`, anything else `other`), no
//!   jitter — or the regular time, when that is sooner.

use std::time::{Duration, SystemTime};

use cairn_events::v1::SyncSpec;
use tracing::warn;

pub use super::cron::{BadSchedule, Schedule};

/// The node's sync policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Time between syncs of a repository without a schedule.
    pub interval: Duration,
    /// Largest random delay added to a scheduled time.
    pub jitter: Duration,
    /// Syncs running at once on the node.
    pub max_concurrent: usize,
    /// Delay before retrying a failed sync, by error class.
    pub retry: RetryDelays,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            jitter: Duration::from_secs(10),
            max_concurrent: 4,
            retry: RetryDelays::default(),
        }
    }
}

/// Retry delays by error class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelays {
    /// The upstream could not be reached.
    pub network: Duration,
    /// The upstream did not answer in time.
    pub timeout: Duration,
    /// Credentials were refused or missing.
    pub auth: Duration,
    /// The branch or the repository does not exist.
    pub missing: Duration,
    /// Anything else.
    pub other: Duration,
}

impl Default for RetryDelays {
    fn default() -> Self {
        Self {
            network: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            auth: Duration::from_secs(600),
            missing: Duration::from_secs(120),
            other: Duration::from_secs(60),
        }
    }
}

impl RetryDelays {
    /// The delay for a failure of class `class`.
    pub fn for_class(&self, class: &str) -> Duration {
        match class {
            "network" => self.network,
            "timeout" => self.timeout,
            "auth" => self.auth,
            "missing" => self.missing,
            _ => self.other,
        }
    }
}

/// A repository's `sync` spec, parsed.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    schedule: Option<Schedule>,
    run_once_at: Option<SystemTime>,
}

/// Parses a 5-field cron expression (the syntax of [`super::cron`]).
pub fn parse_schedule(expression: &str) -> Result<Schedule, BadSchedule> {
    Schedule::parse(expression)
}

impl Plan {
    /// The plan of `spec` (`None`: the node's interval only). The schedule
    /// was validated on the way in; one that no longer parses (accepted
    /// before the syntax of [`super::cron`] was enforced) is ignored, with a
    /// warning. Parsing is linear in at most 512 bytes: fine on the
    /// arbiter; finding its times is not ([`Plan::regular`]).
    pub fn of(spec: Option<&SyncSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        let schedule = (!spec.schedule.is_empty())
            .then(|| {
                parse_schedule(&spec.schedule)
                    .inspect_err(|e| {
                        warn!(schedule = %spec.schedule, error = %e, "stored schedule ignored: the node's interval applies");
                    })
                    .ok()
            })
            .flatten();
        let run_once_at = spec.run_once_at.as_ref().and_then(|t| {
            let nanos = u32::try_from(t.nanos).ok()?;
            let seconds = u64::try_from(t.seconds).ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos))
        });
        Self {
            schedule,
            run_once_at,
        }
    }

    /// The one-time sync of the spec, if any.
    pub fn run_once_at(&self) -> Option<SystemTime> {
        self.run_once_at
    }

    /// The regular time after `now`: the schedule's next time, else (no
    /// schedule, or none of its times within the horizon) `now +
    /// interval`; plus `jitter`. Bounded by the horizon; off the arbiter.
    pub fn regular(&self, policy: &SyncPolicy, now: SystemTime, jitter: Duration) -> SystemTime {
        let scheduled = self.schedule.as_ref().and_then(|schedule| {
            let next = schedule.next_after(now);
            if next.is_none() {
                warn!(
                    schedule = schedule.expression(),
                    horizon_days = super::cron::HORIZON_DAYS,
                    "no time of the schedule within the horizon: the node's interval applies"
                );
            }
            next
        });
        scheduled.unwrap_or(now + policy.interval) + jitter
    }

    /// The next sync after one that succeeded at `now` (or before the
    /// first), with `once_pending` the `run_once_at` not yet served.
    pub fn after_success(
        &self,
        policy: &SyncPolicy,
        now: SystemTime,
        once_pending: Option<SystemTime>,
        jitter: Duration,
    ) -> SystemTime {
        let regular = self.regular(policy, now, jitter);
        match once_pending {
            Some(once) => once.max(now).min(regular),
            None => regular,
        }
    }

    /// The next sync after one that failed at `now` with class `class`.
    pub fn after_failure(
        &self,
        policy: &SyncPolicy,
        now: SystemTime,
        once_pending: Option<SystemTime>,
        class: &str,
    ) -> SystemTime {
        let retry = now + policy.retry.for_class(class);
        self.after_success(policy, now, once_pending, Duration::ZERO)
            .min(retry)
    }
}

/// A jitter drawn uniformly from `[0, max]` (millisecond steps).
pub fn jitter(max: Duration, rng: &mut impl rand::Rng) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=max_ms))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// 2026-11-21T10:00:00Z.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
    }

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap())
    }

    fn policy() -> SyncPolicy {
        SyncPolicy {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(5),
            max_concurrent: 2,
            retry: RetryDelays {
                network: Duration::from_secs(11),
                timeout: Duration::from_secs(12),
                auth: Duration::from_secs(13),
                missing: Duration::from_secs(14),
                other: Duration::from_secs(15),
            },
        }
    }

    fn spec(schedule: &str, once: Option<SystemTime>) -> SyncSpec {
        SyncSpec {
            schedule: schedule.into(),
            run_once_at: once.map(|t| {
                let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                pbjson_types::Timestamp {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                }
            }),
        }
    }

    #[test]
    fn t0_is_the_documented_time() {
        assert_eq!(t0(), at("2026-11-21T10:00:00Z"));
    }

    #[test]
    fn without_a_schedule_the_node_interval_applies() {
        let plan = Plan::of(None);
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::ZERO),
            t0() + Duration::from_secs(60)
        );
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::from_millis(1500)),
            t0() + Duration::from_millis(61_500)
        );
    }

    #[test]
    fn a_cron_schedule_gives_its_next_time() {
        let plan = Plan::of(Some(&spec("*/15 * * * *", None)));
        assert_eq!(
            plan.after_success(&policy(), at("2026-11-21T10:07:30Z"), None, Duration::ZERO),
            at("2026-11-21T10:15:00Z")
        );
        // Strictly after now: a sync at 10:15:00 next runs at 10:30.
        assert_eq!(
            plan.after_success(&policy(), at("2026-11-21T10:15:00Z"), None, Duration::ZERO),
            at("2026-11-21T10:30:00Z")
        );
        let plan = Plan::of(Some(&spec("30 2 * * MON", None)));
        // 2026-11-21 is a Saturday.
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::ZERO),
            at("2026-11-23T02:30:00Z")
        );
    }

    #[test]
    fn schedules_are_five_fields() {
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert_eq!(
            parse_schedule("0 */5 * * * *").unwrap_err().to_string(),
            "\"0 */5 * * * *\" has 6 fields; expected 5 (minute hour day-of-month month day-of-week)"
        );
        assert!(parse_schedule("61 * * * *")
            .unwrap_err()
            .to_string()
            .starts_with("\"61 * * * *\" is not a valid cron expression"));
    }

    #[test]
    fn a_stored_schedule_with_no_time_within_the_horizon_gets_the_interval() {
        // Refused in requests; a log written before that check can hold it.
        let plan = Plan::of(Some(&spec("0 0 30 2 *", None)));
        assert!(plan.schedule.is_some());
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::from_secs(2)),
            t0() + Duration::from_secs(62)
        );
        // One that no longer parses (`L` as a minute, which croner took):
        // ignored, the interval.
        let plan = Plan::of(Some(&spec("L * * * *", None)));
        assert!(plan.schedule.is_none());
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::ZERO),
            t0() + Duration::from_secs(60)
        );
    }

    #[test]
    fn run_once_at_in_the_future_comes_first_when_earlier() {
        let once = t0() + Duration::from_secs(20);
        let plan = Plan::of(Some(&spec("", Some(once))));
        assert_eq!(plan.run_once_at(), Some(once));
        assert_eq!(
            plan.after_success(&policy(), t0(), Some(once), Duration::ZERO),
            once
        );
        // Later than the regular time: the regular sync runs first.
        let late = t0() + Duration::from_secs(600);
        assert_eq!(
            plan.after_success(&policy(), t0(), Some(late), Duration::ZERO),
            t0() + Duration::from_secs(60)
        );
        // Served: the regular time only.
        assert_eq!(
            plan.after_success(&policy(), t0(), None, Duration::ZERO),
            t0() + Duration::from_secs(60)
        );
    }

    #[test]
    fn run_once_at_in_the_past_is_due_at_once() {
        let once = t0() - Duration::from_secs(3600);
        let plan = Plan::of(Some(&spec("*/15 * * * *", Some(once))));
        assert_eq!(
            plan.after_success(&policy(), t0(), Some(once), Duration::ZERO),
            t0()
        );
    }

    #[test]
    fn failures_retry_after_the_delay_of_their_class() {
        let plan = Plan::of(None);
        for (class, secs) in [
            ("network", 11),
            ("timeout", 12),
            ("auth", 13),
            ("missing", 14),
            ("other", 15),
            ("invalid", 15),
        ] {
            assert_eq!(
                plan.after_failure(&policy(), t0(), None, class),
                t0() + Duration::from_secs(secs),
                "{class}"
            );
        }
        // A sooner regular time wins over a long retry delay.
        let mut short = policy();
        short.interval = Duration::from_secs(5);
        assert_eq!(
            plan.after_failure(&short, t0(), None, "auth"),
            t0() + Duration::from_secs(5)
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let max = Duration::from_secs(5);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(max, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 500, "{} distinct draws", distinct.len());
        assert!(draws.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(4)));
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
