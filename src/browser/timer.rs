//! [`BrowserTimer`]: the page's clock and `setTimeout`, as the [`Timer`] of a client and the
//! ticks of a [`Driver`](crate::Driver).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::Stream;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use web_time::Instant;

use crate::client::Timer;

#[wasm_bindgen]
extern "C" {
    // The global scope's, so that the timer works in a window and in a worker alike.
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &JsValue, millis: i32) -> i32;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: i32);
}

/// The browser's clock ([`web_time::Instant`], from `performance.now()`) and its timers
/// (`setTimeout`): give it to [`AsyncClient`](crate::AsyncClient) for the sign-in deadline, the
/// keepalive and the reconnection backoff, and use [`ticks`](Self::ticks) for a hosting
/// [`Driver`](crate::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserTimer;

impl BrowserTimer {
    /// A future that resolves once `duration` has passed. Dropping it clears its timeout.
    pub fn sleep(duration: Duration) -> Sleep {
        Sleep::new(duration)
    }

    /// One item every `interval` (at least 1 ms), for ever: the ticks a
    /// [`Driver`](crate::Driver) feeds its server.
    pub fn ticks(interval: Duration) -> impl Stream<Item = ()> + Unpin + Send {
        let interval = interval.max(Duration::from_millis(1));
        Box::pin(futures::stream::unfold((), move |()| async move {
            Sleep::new(interval).await;
            Some(((), ()))
        }))
    }
}

impl Timer for BrowserTimer {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Sleep::new(deadline.saturating_duration_since(Instant::now())))
    }
}

/// What a [`Sleep`] and its timeout's callback share.
#[derive(Debug, Default)]
struct Fired {
    done: AtomicBool,
    waker: AtomicWaker,
}

/// A `setTimeout` as a future, from [`BrowserTimer::sleep`].
#[derive(Debug)]
pub struct Sleep {
    fired: Arc<Fired>,
    /// The timeout's id, until it is cleared.
    id: Option<i32>,
}

impl Sleep {
    fn new(duration: Duration) -> Self {
        // setTimeout takes a signed 32-bit count of milliseconds; the client's longest wait is a
        // day, far below.
        let millis = i32::try_from(duration.as_millis()).unwrap_or(i32::MAX);
        let fired = Arc::new(Fired::default());
        let callback = {
            let fired = Arc::clone(&fired);
            // Handed to the JS garbage collector: a timeout that is cleared frees it with the
            // function, one that fires frees it once called.
            Closure::once(move || {
                fired.done.store(true, Ordering::Release);
                fired.waker.wake();
            })
            .into_js_value()
        };
        let id = set_timeout(&callback, millis);
        Self { fired, id: Some(id) }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.fired.waker.register(cx.waker());
        if self.fired.done.load(Ordering::Acquire) {
            self.id = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            clear_timeout(id);
        }
    }
}
