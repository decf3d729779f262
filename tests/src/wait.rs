//! Waiting with a deadline: every wait in the suites goes through here, so
//! none can hang a test and each failure names what it waited for.
//!
//! Prefer waiting on an event ([`within`] around a subscription, a
//! `watch::Receiver`, a reply). [`wait_until`] polls a condition with a
//! short backoff; use it only where nothing announces the change (a counter
//! read over `$SRV.STATS`, an HTTP monitoring endpoint).

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// The default bound of a wait: long enough for a loaded CI machine, short
/// enough that a hang fails the test rather than the job.
pub const WAIT: Duration = Duration::from_secs(60);

/// The first pause between two polls of [`wait_until`]; it doubles up to
/// [`POLL_MAX`].
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
pub const POLL_MAX: Duration = Duration::from_millis(200);

/// Awaits `future` for at most `timeout`; panics naming `what` when it does
/// not finish in time.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns `Ok`, pausing [`POLL_MIN`] doubling to
/// [`POLL_MAX`] between polls; panics naming `what` (and the last
/// observation `check` reported through `Err`) after `timeout`.
///
/// `check` returns `Ok(v)` when done, `Err(observation)` to try again.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = POLL_MIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(observed)) => observed,
            Err(_) => "(the last check did not finish)".to_owned(),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// [`wait_until`] for code without a runtime (process start-up, HTTP
/// monitoring): the `cairn` library's, which its NATS harness uses too.
pub use cairn::nats_servers::wait_until_blocking;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_once_the_condition_holds() {
        let mut polls = 0;
        let got = wait_until("three polls", WAIT, || {
            polls += 1;
            let now = polls;
            async move {
                if now == 3 {
                    Ok(now)
                } else {
                    Err(format!("poll {now}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for never; last seen: still no")]
    async fn wait_until_fails_at_its_deadline_naming_what_it_saw() {
        wait_until("never", Duration::from_millis(50), || async {
            Err::<(), _>("still no".to_owned())
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 10ms waiting for a reply")]
    async fn within_fails_at_its_deadline() {
        within(
            "a reply",
            Duration::from_millis(10),
            std::future::pending::<()>(),
        )
        .await;
    }

    #[test]
    fn wait_until_blocking_reports_the_last_observation() {
        let mut n = 0;
        let got = wait_until_blocking(Duration::from_millis(30), || {
            n += 1;
            Err::<(), _>(format!("try {n}"))
        });
        assert!(got.unwrap_err().starts_with("try "));
    }
}
