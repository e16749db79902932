//! Waiting on conditions with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `probe` until it returns `Some`, starting every 20 ms and backing off to 250 ms;
/// panics with `what` if `timeout` passes first.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
