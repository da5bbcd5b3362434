//! What the runnable examples share.

use std::time::Duration;

/// A tick every `period`, for the driver's timers.
pub fn ticks(period: Duration) -> impl futures::Stream<Item = ()> + Unpin {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Box::pin(futures::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    }))
}
