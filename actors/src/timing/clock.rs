//! Time as the sync managers see it: the system clock in a node, a clock a
//! test moves by hand ([`ManualClock`]) so scheduling is tested without
//! real waiting.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// Wall-clock time and waiting for it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
    /// Resolves once [`Clock::now`] is at or past `at` (at once when it is).
    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()> {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told ([`ManualClock::advance`],
/// [`ManualClock::set`]); sleepers wake when it reaches their time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by);
    }

    /// Sets the clock to `at` (never backwards: an earlier time is ignored).
    pub fn set(&self, at: SystemTime) {
        self.now.send_if_modified(|now| {
            let later = at > *now;
            if later {
                *now = at;
            }
            later
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; a dropped clock never
            // wakes anyone, like time that stopped.
            if now.wait_for(|now| *now >= at).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_it_reaches_their_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = ManualClock::new(t0);
        let mut sleeper = clock.sleep_until(t0 + Duration::from_secs(60));
        assert!((&mut sleeper).now_or_never().is_none());
        clock.advance(Duration::from_secs(59));
        assert!((&mut sleeper).now_or_never().is_none());
        clock.set(t0); // backwards: ignored
        assert_eq!(clock.now(), t0 + Duration::from_secs(59));
        clock.advance(Duration::from_secs(1));
        assert!(sleeper.now_or_never().is_some());
        // A time already past resolves at once.
        assert!(clock.sleep_until(t0).now_or_never().is_some());
    }
}
