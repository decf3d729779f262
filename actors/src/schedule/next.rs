//! The SyncManager's decision of its next time: a retry, a pending
//! `run_once_at`, or the regular time — a plain component over the time,
//! the last sync's outcome and the plan, unit-tested without actors.
//!
//! [`NextSync`] carries the same decision into a sync (it is decided when
//! the sync ends, by whoever runs it, and recorded in its last event);
//! [`next_time`] is the decision itself, and [`after_sync`] how the
//! manager turns a sync's answer and what it decided into its next time.

use std::{sync::Arc, time::SystemTime};

use parking_lot::Mutex;

use super::plan::{Plan, SyncPolicy};
use crate::timing::Clock;

/// Why the manager syncs next (as `NextDue` and `repo.status` say it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The regular time: the cron schedule or the node's interval.
    Schedule,
    /// The spec's `run_once_at`, not served yet.
    RunOnce,
    /// The last sync failed (or did not run): the retry delay of its
    /// class, or a sooner regular/one-time sync.
    Retry,
}

impl Reason {
    /// `"schedule"`, `"run-once"` or `"retry"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schedule => "schedule",
            Reason::RunOnce => "run-once",
            Reason::Retry => "retry",
        }
    }
}

/// How the last sync ended, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastSync<'a> {
    /// No sync told anything newer (a new manager, a changed spec): plan
    /// from the spec.
    Planned,
    /// It succeeded.
    Succeeded,
    /// It failed with this error class (`network`, `auth`, …); a sync that
    /// did not even run counts as `other`.
    Failed(&'a str),
}

/// The next sync: when, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextTime {
    /// When.
    pub at: SystemTime,
    /// Why.
    pub reason: Reason,
}

impl NextTime {
    /// The reason of a time `at` decided after a success (or planned): the
    /// pending `run_once_at` when `at` is it, else the regular time.
    pub fn after_success(
        at: SystemTime,
        now: SystemTime,
        once_pending: Option<SystemTime>,
    ) -> Self {
        let reason = if Some(at) == once_pending.map(|once| once.max(now)) {
            Reason::RunOnce
        } else {
            Reason::Schedule
        };
        Self { at, reason }
    }
}

/// Decides the next sync at `now`, after `last`, for `plan` under `policy`,
/// with `once_pending` the `run_once_at` not yet served and `jitter` the
/// delay drawn for a regular time (none is added to a retry).
pub fn next_time(
    plan: &Plan,
    policy: &SyncPolicy,
    now: SystemTime,
    once_pending: Option<SystemTime>,
    jitter: std::time::Duration,
    last: LastSync<'_>,
) -> NextTime {
    match last {
        LastSync::Failed(class) => NextTime {
            at: plan.after_failure(policy, now, once_pending, class),
            reason: Reason::Retry,
        },
        LastSync::Planned | LastSync::Succeeded => NextTime::after_success(
            plan.after_success(policy, now, once_pending, jitter),
            now,
            once_pending,
        ),
    }
}

/// How a sync the manager asked for ended, as the manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// It answered a report.
    Succeeded,
    /// It answered an error: it failed (recorded as `SyncFailed`), or did
    /// not run at all (the actor is gone, the store refused).
    Failed,
}

/// The next time after a sync that ended with `outcome`, given what the
/// sync `decided` (and recorded in its last event), if it got that far:
/// - failed, with a decided time: a retry at that time;
/// - failed without one (it did not even run): a retry as class `other`,
///   decided now by `undecided`;
/// - succeeded: the time it decided, with its reason (decided now by
///   `undecided` when the sync was asked outside a plan).
///
/// `undecided` decides with the manager's plan at the current time.
pub fn after_sync(
    outcome: SyncOutcome,
    decided: Option<NextTime>,
    undecided: impl FnOnce(LastSync<'static>) -> NextTime,
) -> NextTime {
    match (outcome, decided) {
        (SyncOutcome::Failed, Some(decided)) => NextTime {
            at: decided.at,
            reason: Reason::Retry,
        },
        (SyncOutcome::Failed, None) => undecided(LastSync::Failed("other")),
        (SyncOutcome::Succeeded, Some(decided)) => decided,
        (SyncOutcome::Succeeded, None) => undecided(LastSync::Succeeded),
    }
}

/// How a sync finds its next time: the manager's plan as of the request,
/// decided by the RepositoryActor when the sync ends (success or the
/// failure's class) and remembered — time and reason — for the manager.
#[derive(Debug)]
pub struct NextSync {
    clock: Arc<dyn Clock>,
    plan: Plan,
    policy: Arc<SyncPolicy>,
    once_pending: Option<SystemTime>,
    jitter: std::time::Duration,
    decided: Mutex<Option<NextTime>>,
}

impl NextSync {
    /// The plan as of now (`once_pending`: the `run_once_at` not yet
    /// served; `jitter`: drawn for this sync).
    pub fn new(
        clock: Arc<dyn Clock>,
        plan: Plan,
        policy: Arc<SyncPolicy>,
        once_pending: Option<SystemTime>,
        jitter: std::time::Duration,
    ) -> Self {
        Self {
            clock,
            plan,
            policy,
            once_pending,
            jitter,
            decided: Mutex::new(None),
        }
    }

    /// Decides the next time now, for a sync that succeeded
    /// (`failure: None`) or failed with class `failure`; remembers it.
    pub fn decide(&self, failure: Option<&str>) -> SystemTime {
        self.decide_after(failure.map_or(LastSync::Succeeded, LastSync::Failed))
            .at
    }

    /// Decides the next time now after `last`; remembers it.
    pub fn decide_after(&self, last: LastSync<'_>) -> NextTime {
        let next = next_time(
            &self.plan,
            &self.policy,
            self.clock.now(),
            self.once_pending,
            self.jitter,
            last,
        );
        *self.decided.lock() = Some(next);
        next
    }

    /// What [`NextSync::decide`] decided (time and reason), if it ran.
    pub fn decided(&self) -> Option<NextTime> {
        *self.decided.lock()
    }

    /// The manager's next time after its sync ended with `outcome`
    /// ([`after_sync`] over what this decided). Decides when the sync did
    /// not: off the arbiter, then ([`NextSync::after_decided`] first).
    pub fn after(&self, outcome: SyncOutcome) -> NextTime {
        after_sync(outcome, self.decided(), |last| self.decide_after(last))
    }

    /// [`NextSync::after`] when the sync decided (nothing to compute),
    /// else `None`.
    pub fn after_decided(&self, outcome: SyncOutcome) -> Option<NextTime> {
        let decided = self.decided()?;
        Some(after_sync(outcome, Some(decided), |_| decided))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_events::v1::SyncSpec;

    use super::*;
    use crate::schedule::RetryDelays;

    /// 2026-11-21T10:00:00Z.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy() -> SyncPolicy {
        SyncPolicy {
            interval: secs(60),
            jitter: secs(5),
            max_concurrent: 2,
            retry: RetryDelays {
                network: secs(11),
                timeout: secs(12),
                auth: secs(13),
                missing: secs(14),
                other: secs(15),
            },
        }
    }

    fn plan(schedule: &str, once: Option<SystemTime>) -> Plan {
        Plan::of(Some(&SyncSpec {
            schedule: schedule.into(),
            run_once_at: once.map(|t| {
                let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                pbjson_types::Timestamp {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                }
            }),
        }))
    }

    fn when(plan: &Plan, once: Option<SystemTime>, jitter: u64, last: LastSync<'_>) -> NextTime {
        next_time(plan, &policy(), t0(), once, secs(jitter), last)
    }

    #[test]
    fn given_no_spec_when_planned_or_succeeded_then_the_interval_plus_jitter() {
        for last in [LastSync::Planned, LastSync::Succeeded] {
            assert_eq!(
                when(&Plan::default(), None, 2, last),
                NextTime {
                    at: t0() + secs(62),
                    reason: Reason::Schedule
                }
            );
        }
    }

    #[test]
    fn given_a_cron_schedule_when_succeeded_then_its_next_occurrence() {
        assert_eq!(
            when(&plan("*/15 * * * *", None), None, 0, LastSync::Succeeded),
            NextTime {
                at: t0() + secs(15 * 60),
                reason: Reason::Schedule
            }
        );
    }

    #[test]
    fn given_a_pending_run_once_at_when_it_is_sooner_then_run_once() {
        let once = t0() + secs(20);
        assert_eq!(
            when(&plan("", Some(once)), Some(once), 3, LastSync::Succeeded),
            NextTime {
                at: once,
                reason: Reason::RunOnce
            }
        );
        // Past: due now.
        let past = t0() - secs(3600);
        assert_eq!(
            when(&plan("", Some(past)), Some(past), 3, LastSync::Planned),
            NextTime {
                at: t0(),
                reason: Reason::RunOnce
            }
        );
        // Later than the regular time: the regular time first.
        let late = t0() + secs(600);
        assert_eq!(
            when(&plan("", Some(late)), Some(late), 0, LastSync::Planned),
            NextTime {
                at: t0() + secs(60),
                reason: Reason::Schedule
            }
        );
        // Served (not pending): the regular time.
        assert_eq!(
            when(&plan("", Some(once)), None, 0, LastSync::Succeeded),
            NextTime {
                at: t0() + secs(60),
                reason: Reason::Schedule
            }
        );
    }

    #[test]
    fn given_a_failure_then_a_retry_after_its_class_delay_without_jitter() {
        for (class, delay) in [("network", 11), ("auth", 13), ("invalid", 15)] {
            assert_eq!(
                when(&Plan::default(), None, 4, LastSync::Failed(class)),
                NextTime {
                    at: t0() + secs(delay),
                    reason: Reason::Retry
                },
                "{class}"
            );
        }
        // A sooner run_once_at wins, still a retry.
        let once = t0() + secs(5);
        assert_eq!(
            when(
                &plan("", Some(once)),
                Some(once),
                4,
                LastSync::Failed("auth")
            ),
            NextTime {
                at: once,
                reason: Reason::Retry
            }
        );
    }

    #[test]
    fn next_sync_records_what_it_decided() {
        let clock = Arc::new(crate::timing::ManualClock::new(t0()));
        let next = NextSync::new(clock, Plan::default(), Arc::new(policy()), None, secs(1));
        assert_eq!(next.decided(), None);
        assert_eq!(next.after_decided(SyncOutcome::Succeeded), None);
        assert_eq!(next.decide(Some("timeout")), t0() + secs(12));
        assert_eq!(
            next.decided(),
            Some(NextTime {
                at: t0() + secs(12),
                reason: Reason::Retry
            })
        );
        assert_eq!(next.decide(None), t0() + secs(61));
        assert_eq!(
            next.decided(),
            Some(NextTime {
                at: t0() + secs(61),
                reason: Reason::Schedule
            })
        );
        assert_eq!(
            next.after_decided(SyncOutcome::Failed),
            Some(NextTime {
                at: t0() + secs(61),
                reason: Reason::Retry
            })
        );
        assert_eq!(
            Reason::RunOnce.as_str(),
            "run-once",
            "the names NextDue answers"
        );
    }

    /// `undecided` as the manager's plan decides at `t0()` (no
    /// `run_once_at`, jitter 2 s), and whether it was asked.
    fn undecided(asked: &std::cell::Cell<bool>) -> impl FnOnce(LastSync<'static>) -> NextTime + '_ {
        move |last| {
            asked.set(true);
            when(&Plan::default(), None, 2, last)
        }
    }

    #[test]
    fn given_a_failed_sync_that_decided_a_time_then_a_retry_at_that_time() {
        let asked = std::cell::Cell::new(false);
        let decided = NextTime {
            at: t0() + secs(13),
            reason: Reason::Retry,
        };
        assert_eq!(
            after_sync(SyncOutcome::Failed, Some(decided), undecided(&asked)),
            decided
        );
        // Decided as a success, then failed (its last append): still a retry.
        let regular = NextTime {
            at: t0() + secs(61),
            reason: Reason::Schedule,
        };
        assert_eq!(
            after_sync(SyncOutcome::Failed, Some(regular), undecided(&asked)),
            NextTime {
                at: t0() + secs(61),
                reason: Reason::Retry
            }
        );
        assert!(!asked.get(), "nothing decided again");
    }

    #[test]
    fn given_a_sync_that_did_not_run_then_a_retry_as_other() {
        let asked = std::cell::Cell::new(false);
        assert_eq!(
            after_sync(SyncOutcome::Failed, None, undecided(&asked)),
            NextTime {
                at: t0() + secs(15),
                reason: Reason::Retry
            }
        );
        assert!(asked.get());
    }

    #[test]
    fn given_a_successful_sync_then_the_time_and_reason_it_decided() {
        let asked = std::cell::Cell::new(false);
        // The reason as decided (not recomputed at a later time).
        let once = NextTime {
            at: t0() + secs(20),
            reason: Reason::RunOnce,
        };
        assert_eq!(
            after_sync(SyncOutcome::Succeeded, Some(once), undecided(&asked)),
            once
        );
        assert!(!asked.get());
        // Asked outside a plan: decided now.
        assert_eq!(
            after_sync(SyncOutcome::Succeeded, None, undecided(&asked)),
            NextTime {
                at: t0() + secs(62),
                reason: Reason::Schedule
            }
        );
        assert!(asked.get());
    }

    #[test]
    fn next_sync_keeps_the_whole_decision_for_the_manager() {
        // A run_once_at 20 s away, decided at t0 as the next time; the
        // manager looks 30 s later (past it): still run-once, as decided.
        let once = t0() + secs(20);
        let clock = Arc::new(crate::timing::ManualClock::new(t0()));
        let next = NextSync::new(
            clock.clone(),
            plan("", Some(once)),
            Arc::new(policy()),
            Some(once),
            secs(0),
        );
        assert_eq!(next.decide(None), once);
        clock.advance(secs(30));
        assert_eq!(
            next.after(SyncOutcome::Succeeded),
            NextTime {
                at: once,
                reason: Reason::RunOnce
            }
        );
        // Not decided by the sync: the manager decides, at its time.
        let next = NextSync::new(clock, Plan::default(), Arc::new(policy()), None, secs(0));
        assert_eq!(
            next.after(SyncOutcome::Failed),
            NextTime {
                at: t0() + secs(30 + 15),
                reason: Reason::Retry
            }
        );
    }
}
