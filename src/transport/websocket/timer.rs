//! [`TokioTimer`]: tokio's clock, for the client's deadlines and keepalives.

/// tokio's clock for [`AsyncClient::keep_alive`](crate::AsyncClient::keep_alive). It follows
/// tokio's paused time in tests (`tokio::time::pause`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

impl crate::Timer for TokioTimer {
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)))
    }
}
