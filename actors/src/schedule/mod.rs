//! Scheduled background sync: one SyncManager actor per repository.
//!
//! A SyncManager decides *when* its repository syncs and never writes
//! state itself: it sends [`RunSync`] to its repository (a
//! `Recipient<RunSync>`: this module knows nothing of the actor behind it)
//! and arms a timer for the next time. Each request carries a
//! [`NextSync`], with which the repository records the next time in the
//! sync's last event (`SyncSucceeded.next_sync_at`, `SyncFailed.retry_at`);
//! the manager then sleeps until exactly that time, so the status a client
//! reads and the timer agree.
//!
//! # Layout
//! - [`cron`] — a cron `schedule`: the exact syntax accepted, its next
//!   time by a search bounded to a horizon of 8 years.
//! - [`plan`] — when: the node's interval or the repository's cron
//!   `schedule`, a pending `run_once_at`, jitter, retry delays by error
//!   class.
//! - [`next`] — the decision between a retry, a `run_once_at` and the
//!   regular time ([`next_time`]), [`NextSync`] that carries it into a
//!   sync and keeps what it decided, and [`after_sync`]: a sync's answer
//!   and that decision as the manager's next time.
//! - [`error`] — [`ScheduleError`] (the repository could not be asked),
//!   mapped once into [`ServiceError`]; the messages answer
//!   [`ServiceError`] as before.
//! - [`messages`] — [`SyncNow`], [`PlanFor`], [`Replan`], [`NextDue`], [`StopManager`],
//!   and [`RunSync`] / [`SyncReport`] (manager → repository).
//! - Time and the node-wide cap live in [`crate::timing`] (re-exported
//!   here: [`Clock`], [`ManualClock`], [`SyncSlots`], …).
//!
//! Manual syncs (`repo.sync`), the sync at registration and the one at
//! start-up go through the manager too ([`SyncNow`]), so whatever ran last
//! sets the next time.
//!
//! Deciding a time may compute a cron schedule's next time — bounded
//! ([`cron::HORIZON_DAYS`]) but CPU work — so it never runs on the
//! arbiter: the manager hands it to the blocking pool and arms the timer
//! when the answer is back, unless something newer (a sync, a replan)
//! happened meanwhile; [`NextDue`] waits for it. The repository decides
//! its sync's time off the arbiter too (`repository/sync.rs`).
//!
//! Each message is handled in a span of its own (`schedule.sync`,
//! `schedule.replan`), a child of the span it carries; [`RunSync`] carries
//! it on to the repository.

pub mod cron;
pub mod error;
pub mod messages;
pub mod next;
pub mod plan;

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use actix::prelude::*;
use cairn_events::{envelope::Metadata, v1::SyncSpec};
use tracing::{debug, warn, Instrument};

pub use cron::{BadSchedule, Schedule};
pub use error::ScheduleError;
pub use messages::{NextDue, PlanFor, Replan, RunSync, StopManager, SyncNow, SyncReport};
pub use next::{after_sync, next_time, LastSync, NextSync, NextTime, Reason, SyncOutcome};
pub use plan::{Plan, RetryDelays, SyncPolicy};

pub use crate::timing::{Clock, ManualClock, SlotState, SyncSlot, SyncSlots, SystemClock};
use crate::ServiceError;

/// What a manager needs from the node.
#[derive(Debug, Clone)]
pub struct Scheduling {
    /// The node's policy.
    pub policy: Arc<SyncPolicy>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// The SyncManager of one repository.
#[derive(Debug)]
pub struct SyncManager {
    repository: Recipient<RunSync>,
    key: String,
    scheduling: Scheduling,
    plan: Plan,
    /// The spec's `run_once_at` while no sync started at or after it.
    once_pending: Option<SystemTime>,
    /// Sync at once when started, with this trigger.
    first: Option<&'static str>,
    due: Option<(SystemTime, &'static str)>,
    timer: Option<SpawnHandle>,
    /// Counts decisions handed off the arbiter and syncs started: a
    /// decision arms the timer only if it is still the latest.
    generation: u64,
    in_flight: usize,
    /// [`NextDue`] asked while a sync ran.
    waiters: Vec<tokio::sync::oneshot::Sender<(SystemTime, &'static str)>>,
}

impl SyncManager {
    /// A manager for `repository` (`namespace/name` in `key`) with sync spec
    /// `spec`. `last_sync_at` (from the repository's status) tells whether
    /// the spec's `run_once_at` was served before a restart. With `first`,
    /// it syncs at once on start (trigger `first`, e.g. "startup");
    /// otherwise it waits for the planned time.
    pub fn new(
        repository: Recipient<RunSync>,
        key: String,
        spec: Option<SyncSpec>,
        scheduling: Scheduling,
        last_sync_at: Option<SystemTime>,
        first: Option<&'static str>,
    ) -> Self {
        let plan = Plan::of(spec.as_ref());
        let once_pending = plan
            .run_once_at()
            .filter(|once| last_sync_at.is_none_or(|last| last < *once));
        Self {
            repository,
            key,
            scheduling,
            plan,
            once_pending,
            first,
            due: None,
            timer: None,
            generation: 0,
            in_flight: 0,
            waiters: Vec::new(),
        }
    }

    fn jitter(&self) -> std::time::Duration {
        plan::jitter(self.scheduling.policy.jitter, &mut rand::rng())
    }

    fn next_sync(&self) -> Arc<NextSync> {
        Arc::new(NextSync::new(
            self.scheduling.clock.clone(),
            self.plan.clone(),
            self.scheduling.policy.clone(),
            self.once_pending,
            self.jitter(),
        ))
    }

    /// Arms the timer for `next` (replacing any other).
    fn arm(&mut self, ctx: &mut Context<Self>, next: NextTime) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let (at, trigger) = (next.at, next.reason.as_str());
        self.due = Some((at, trigger));
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send((at, trigger));
        }
        debug!(repo = %self.key, trigger, in_ms = at.duration_since(self.scheduling.clock.now()).unwrap_or_default().as_millis() as u64, "next sync armed");
        let sleep = self.scheduling.clock.sleep_until(at);
        self.timer = Some(ctx.spawn(sleep.into_actor(self).map(move |_, act, ctx| {
            act.timer = None;
            act.sync_in_background(ctx, trigger);
        })));
    }

    /// A sync the manager itself starts (schedule, retry, start-up); its
    /// outcome is recorded and sets the next time.
    fn sync_in_background(&mut self, ctx: &mut Context<Self>, trigger: &'static str) {
        let metadata = Metadata::command("cairn").normalized();
        let span = tracing::info_span!(
            "command",
            endpoint = "schedule",
            stream = %format_args!("repo/{}", self.key),
            principal = %metadata.principal,
            correlation_id = %metadata.correlation_id,
            trigger,
        );
        let run = self.sync(ctx, trigger.to_owned(), Instant::now(), metadata, span);
        ctx.spawn(run.map(|_, _, _| ()));
    }

    /// Decides the next time with `decide` in the blocking pool and arms
    /// it, unless a sync started or another decision was asked for
    /// meanwhile. Until then nothing is armed and [`NextDue`] waits.
    fn arm_off_arbiter(
        &mut self,
        ctx: &mut Context<Self>,
        decide: impl FnOnce() -> NextTime + Send + 'static,
    ) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.due = None;
        self.generation += 1;
        let generation = self.generation;
        let decided = tokio::task::spawn_blocking(decide);
        ctx.spawn(decided.into_actor(self).map(move |decided, act, ctx| {
            if act.generation != generation || act.in_flight > 0 {
                return; // superseded
            }
            let next = decided.unwrap_or_else(|e| {
                // The pool is shutting down (or the decision panicked):
                // the interval, computed here (no schedule involved).
                warn!(repo = %act.key, error = %e, "next sync time not decided");
                NextTime {
                    at: act.scheduling.clock.now() + act.scheduling.policy.interval,
                    reason: Reason::Schedule,
                }
            });
            act.arm(ctx, next);
        }));
    }

    /// Plans from the spec (no sync has told us anything newer).
    fn arm_planned(&mut self, ctx: &mut Context<Self>) {
        let (plan, policy) = (self.plan.clone(), self.scheduling.policy.clone());
        let (now, once_pending, jitter) = (
            self.scheduling.clock.now(),
            self.once_pending,
            self.jitter(),
        );
        self.arm_off_arbiter(ctx, move || {
            next_time(&plan, &policy, now, once_pending, jitter, LastSync::Planned)
        });
    }

    /// Asks the repository to sync; arms the next time from its answer.
    fn sync(
        &mut self,
        ctx: &mut Context<Self>,
        trigger: String,
        asked_at: Instant,
        metadata: Metadata,
        span: tracing::Span,
    ) -> ResponseActFuture<Self, Result<SyncReport, ServiceError>> {
        // This message's own span, a child of the command's (or timer's).
        let span = tracing::info_span!(parent: &span, "schedule.sync", repo = %self.key, trigger = %trigger);
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.due = None;
        // A decision still in the pool is superseded by this sync's.
        self.generation += 1;
        let now = self.scheduling.clock.now();
        if self.once_pending.is_some_and(|once| now >= once) {
            self.once_pending = None;
        }
        let next = self.next_sync();
        self.in_flight += 1;
        let request = self.repository.send(RunSync {
            trigger,
            asked_at,
            metadata,
            next: Some(next.clone()),
            span: span.clone(),
        });
        Box::pin(
            async move {
                request
                    .await
                    .map_err(|e| ServiceError::from(ScheduleError::from(e)))
                    .and_then(|r| r)
            }
            .instrument(span)
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.in_flight -= 1;
                if act.in_flight == 0 {
                    let outcome = match &result {
                        Ok(_) => SyncOutcome::Succeeded,
                        Err(e) => {
                            if next.decided().is_none() {
                                // Not even started (the actor is gone,
                                // or the store refused).
                                warn!(repo = %act.key, error = %e, "sync did not run");
                            }
                            SyncOutcome::Failed
                        }
                    };
                    match next.after_decided(outcome) {
                        Some(decided) => act.arm(ctx, decided),
                        None => act.arm_off_arbiter(ctx, move || next.after(outcome)),
                    }
                }
                result
            }),
        )
    }
}

impl Actor for SyncManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.first.take() {
            Some(trigger) => self.sync_in_background(ctx, trigger),
            None => self.arm_planned(ctx),
        }
    }
}

impl Handler<SyncNow> for SyncManager {
    type Result = ResponseActFuture<Self, Result<SyncReport, ServiceError>>;

    fn handle(&mut self, msg: SyncNow, ctx: &mut Self::Context) -> Self::Result {
        self.sync(ctx, msg.trigger, msg.asked_at, msg.metadata, msg.span)
    }
}

impl Handler<Replan> for SyncManager {
    type Result = ();

    fn handle(&mut self, msg: Replan, ctx: &mut Self::Context) {
        let _span =
            tracing::info_span!(parent: &msg.span, "schedule.replan", repo = %self.key).entered();
        let plan = Plan::of(msg.sync.as_ref());
        self.once_pending = self.once_pending_under(&plan);
        self.plan = plan;
        if self.in_flight == 0 {
            match msg.next {
                Some(next) => {
                    // Supersedes any decision still in the pool.
                    self.generation += 1;
                    self.arm(ctx, next);
                }
                None => self.arm_planned(ctx),
            }
        }
    }
}

impl SyncManager {
    /// The pending `run_once_at` under `plan`: a new one is pending; the
    /// same one keeps its state.
    fn once_pending_under(&self, plan: &Plan) -> Option<SystemTime> {
        if plan.run_once_at() != self.plan.run_once_at() {
            plan.run_once_at()
        } else {
            self.once_pending
        }
    }
}

impl Handler<PlanFor> for SyncManager {
    type Result = ResponseFuture<NextTime>;

    fn handle(&mut self, msg: PlanFor, _ctx: &mut Self::Context) -> Self::Result {
        let plan = Plan::of(msg.sync.as_ref());
        let once_pending = self.once_pending_under(&plan);
        let (policy, now, jitter) = (
            self.scheduling.policy.clone(),
            self.scheduling.clock.now(),
            self.jitter(),
        );
        // A cron schedule's next time is CPU work: off the arbiter.
        let fallback = NextTime {
            at: now + policy.interval,
            reason: Reason::Schedule,
        };
        let decided = tokio::task::spawn_blocking(move || {
            next_time(&plan, &policy, now, once_pending, jitter, LastSync::Planned)
        });
        Box::pin(async move { decided.await.unwrap_or(fallback) })
    }
}

impl Handler<NextDue> for SyncManager {
    type Result = ResponseFuture<Option<(SystemTime, &'static str)>>;

    fn handle(&mut self, _msg: NextDue, _ctx: &mut Self::Context) -> Self::Result {
        match self.due {
            Some(due) if self.in_flight == 0 => Box::pin(futures::future::ready(Some(due))),
            _ => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.waiters.push(tx);
                Box::pin(async move { rx.await.ok() })
            }
        }
    }
}

impl Handler<StopManager> for SyncManager {
    type Result = ();

    fn handle(&mut self, _msg: StopManager, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
