//! Scheduled background sync: one SyncManager actor per repository.
//!
//! A SyncManager decides *when* its repository syncs and never writes
//! state itself: it asks its RepositoryActor ([`crate::repository::Sync`])
//! and arms a timer for the next time. Each request carries a
//! [`NextSync`], with which the RepositoryActor records the next time in
//! the sync's last event (`SyncSucceeded.next_sync_at`,
//! `SyncFailed.retry_at`); the manager then sleeps until exactly that time,
//! so the status a client reads and the timer agree.
//!
//! - When: [`plan`] — the node's interval or the repository's cron
//!   `schedule`, a pending `run_once_at`, jitter, retry delays by error
//!   class.
//! - Time: [`clock`] — the system clock in a node; tests move a
//!   [`ManualClock`] instead of waiting.
//! - How many at once: [`slots`] — the node-wide cap, taken by the
//!   RepositoryActor around every sync, whoever asked for it.
//!
//! Manual syncs (`repo.sync`), the sync at registration and the one at
//! start-up go through the manager too ([`SyncNow`]), so whatever ran last
//! sets the next time.

pub mod clock;
pub mod plan;
pub mod slots;

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use actix::prelude::*;
use cairn_events::{envelope::Metadata, v1::SyncSpec};
use parking_lot::Mutex;
use tracing::{debug, warn};

pub use clock::{Clock, ManualClock, SystemClock};
pub use plan::{Plan, RetryDelays, SyncPolicy};
pub use slots::{SlotState, SyncSlot, SyncSlots};

use crate::{
    repository::{RepositoryActor, Sync, SyncReport},
    ServiceError,
};

/// How a sync finds its next time: the manager's plan as of the request,
/// decided by the RepositoryActor when the sync ends (success or the
/// failure's class) and remembered for the manager.
#[derive(Debug)]
pub struct NextSync {
    clock: Arc<dyn Clock>,
    plan: Plan,
    policy: Arc<SyncPolicy>,
    once_pending: Option<SystemTime>,
    jitter: std::time::Duration,
    decided: Mutex<Option<SystemTime>>,
}

impl NextSync {
    /// Decides the next time now, for a sync that succeeded
    /// (`failure: None`) or failed with class `failure`.
    pub fn decide(&self, failure: Option<&str>) -> SystemTime {
        let now = self.clock.now();
        let at = match failure {
            None => self
                .plan
                .after_success(&self.policy, now, self.once_pending, self.jitter),
            Some(class) => self
                .plan
                .after_failure(&self.policy, now, self.once_pending, class),
        };
        *self.decided.lock() = Some(at);
        at
    }

    /// What [`NextSync::decide`] decided, if it ran.
    pub fn decided(&self) -> Option<SystemTime> {
        *self.decided.lock()
    }
}

/// Syncs now (manual, at registration, …) and sets the next time from it.
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncReport, ServiceError>")]
pub struct SyncNow {
    /// What asked: "manual", "register", …
    pub trigger: String,
    /// When it was asked (a fetch that finished later serves it).
    pub asked_at: Instant,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
}

/// The repository's `sync` spec changed (`repo.update`): plan again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Replan {
    /// The new spec.
    pub sync: Option<SyncSpec>,
}

/// When the manager will sync next, and why; asked while a sync runs, it
/// answers once that sync has set the next time.
#[derive(Debug, Message)]
#[rtype(result = "Option<(SystemTime, &'static str)>")]
pub struct NextDue;

/// Stops the manager (unregister, shutdown); a sync in flight finishes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopManager;

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
    repository: Addr<RepositoryActor>,
    key: String,
    scheduling: Scheduling,
    plan: Plan,
    /// The spec's `run_once_at` while no sync started at or after it.
    once_pending: Option<SystemTime>,
    /// Sync at once when started, with this trigger.
    first: Option<&'static str>,
    due: Option<(SystemTime, &'static str)>,
    timer: Option<SpawnHandle>,
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
        repository: Addr<RepositoryActor>,
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
            in_flight: 0,
            waiters: Vec::new(),
        }
    }

    fn next_sync(&self) -> Arc<NextSync> {
        Arc::new(NextSync {
            clock: self.scheduling.clock.clone(),
            plan: self.plan.clone(),
            policy: self.scheduling.policy.clone(),
            once_pending: self.once_pending,
            jitter: plan::jitter(self.scheduling.policy.jitter, &mut rand::rng()),
            decided: Mutex::new(None),
        })
    }

    /// Arms the timer for `at` (replacing any other).
    fn arm(&mut self, ctx: &mut Context<Self>, at: SystemTime, trigger: &'static str) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
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
        let run = self.sync(
            ctx,
            trigger.to_owned(),
            Instant::now(),
            Metadata::command("cairn").normalized(),
        );
        ctx.spawn(run.map(|_, _, _| ()));
    }

    /// Plans from the spec (no sync has told us anything newer).
    fn arm_planned(&mut self, ctx: &mut Context<Self>) {
        let now = self.scheduling.clock.now();
        let jitter = plan::jitter(self.scheduling.policy.jitter, &mut rand::rng());
        let at = self
            .plan
            .after_success(&self.scheduling.policy, now, self.once_pending, jitter);
        let trigger = if Some(at) == self.once_pending.map(|o| o.max(now)) {
            "run-once"
        } else {
            "schedule"
        };
        self.arm(ctx, at, trigger);
    }

    /// Asks the repository to sync; arms the next time from its answer.
    fn sync(
        &mut self,
        ctx: &mut Context<Self>,
        trigger: String,
        asked_at: Instant,
        metadata: Metadata,
    ) -> ResponseActFuture<Self, Result<SyncReport, ServiceError>> {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.due = None;
        let now = self.scheduling.clock.now();
        if self.once_pending.is_some_and(|once| now >= once) {
            self.once_pending = None;
        }
        let next = self.next_sync();
        self.in_flight += 1;
        let request = self.repository.send(Sync {
            trigger,
            asked_at,
            metadata,
            next: Some(next.clone()),
        });
        Box::pin(
            async move { request.await.map_err(ServiceError::from).and_then(|r| r) }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.in_flight -= 1;
                    if act.in_flight == 0 {
                        let (at, trigger) = match (&result, next.decided()) {
                            (Err(_), Some(at)) => (at, "retry"),
                            (Err(e), None) => {
                                // Not even started (the actor is gone, or
                                // the store refused): retry as "other".
                                warn!(repo = %act.key, error = %e, "sync did not run");
                                (next.decide(Some("other")), "retry")
                            }
                            (Ok(_), decided) => {
                                let at = decided.unwrap_or_else(|| next.decide(None));
                                let once =
                                    act.once_pending.map(|o| o.max(act.scheduling.clock.now()));
                                (
                                    at,
                                    if Some(at) == once {
                                        "run-once"
                                    } else {
                                        "schedule"
                                    },
                                )
                            }
                        };
                        act.arm(ctx, at, trigger);
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
        self.sync(ctx, msg.trigger, msg.asked_at, msg.metadata)
    }
}

impl Handler<Replan> for SyncManager {
    type Result = ();

    fn handle(&mut self, msg: Replan, ctx: &mut Self::Context) {
        let old_once = self.plan.run_once_at();
        self.plan = Plan::of(msg.sync.as_ref());
        // A new run_once_at is pending; the same one keeps its state.
        if self.plan.run_once_at() != old_once {
            self.once_pending = self.plan.run_once_at();
        }
        if self.in_flight == 0 {
            self.arm_planned(ctx);
        }
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
