//! Requests waiting for their logged change to become durable: the
//! acknowledgement point of every ledger write.
//!
//! Waiters are kept by seq, and a flush wakes only those it covered. (A
//! watch channel wakes every waiting request on every flush: at 64
//! connections a round covers about half of them, and the other half were
//! polled through the whole request future only to wait again.)

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Requests waiting for a seq to become durable.
#[derive(Default)]
pub struct DurableWaiters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The durable seq last announced.
    durable: u64,
    /// The store failed: nothing past `durable` will become durable.
    failed: bool,
    /// Waiters by the seq they wait for; each is told whether it got there.
    waiting: BTreeMap<u64, Vec<oneshot::Sender<bool>>>,
}

impl DurableWaiters {
    /// Takes the store's announcement of a flush (or of its failure, with
    /// `healthy` false): wakes the waiters it covers, or on failure all of
    /// them, those it does not cover with `false`.
    pub fn announce(&self, durable: u64, healthy: bool) {
        let (covered, stranded) = {
            let mut state = self.state.lock().expect("durable waiters lock poisoned");
            state.durable = state.durable.max(durable);
            state.failed |= !healthy;
            let first_later = state.durable.saturating_add(1);
            let later = state.waiting.split_off(&first_later);
            let covered = std::mem::replace(&mut state.waiting, later);
            let stranded = if state.failed { std::mem::take(&mut state.waiting) } else { BTreeMap::new() };
            (covered, stranded)
        };
        // A waiter whose request was dropped needs no answer.
        for sender in covered.into_values().flatten() {
            let _ = sender.send(true);
        }
        for sender in stranded.into_values().flatten() {
            let _ = sender.send(false);
        }
    }

    /// Waits until `seq` is durable (true) or the store failed first (false).
    pub async fn wait_for(&self, seq: u64) -> bool {
        let reached = {
            let mut state = self.state.lock().expect("durable waiters lock poisoned");
            if state.durable >= seq {
                return true;
            }
            if state.failed {
                return false;
            }
            let (sender, reached) = oneshot::channel();
            state.waiting.entry(seq).or_default().push(sender);
            reached
        };
        reached.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts the wake-ups of the task it wakes.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(
        future: std::pin::Pin<&mut impl Future<Output = bool>>,
        waker: &std::sync::Arc<CountingWaker>,
    ) -> Poll<bool> {
        future.poll(&mut Context::from_waker(&Waker::from(waker.clone())))
    }

    fn wakes(waker: &CountingWaker) -> usize {
        waker.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_flush_wakes_only_the_waiters_it_covers() {
        let waiters = DurableWaiters::default();
        waiters.announce(10, true);
        let (near, far) = (std::sync::Arc::default(), std::sync::Arc::default());
        assert_eq!(poll(pin!(waiters.wait_for(9)), &near), Poll::Ready(true), "already durable");
        let mut first = pin!(waiters.wait_for(12));
        let mut second = pin!(waiters.wait_for(20));
        assert_eq!(poll(first.as_mut(), &near), Poll::Pending);
        assert_eq!(poll(second.as_mut(), &far), Poll::Pending);

        waiters.announce(15, true);
        assert_eq!((wakes(&near), wakes(&far)), (1, 0), "a flush to 15 wakes the waiter for 12 alone");
        assert_eq!(poll(first.as_mut(), &near), Poll::Ready(true));

        waiters.announce(20, true);
        assert_eq!(wakes(&far), 1);
        assert_eq!(poll(second.as_mut(), &far), Poll::Ready(true));
    }

    #[test]
    fn a_failed_store_answers_every_waiter_it_did_not_cover_with_false() {
        let waiters = DurableWaiters::default();
        let waker = std::sync::Arc::default();
        let mut covered = pin!(waiters.wait_for(5));
        let mut stranded = pin!(waiters.wait_for(8));
        assert_eq!(poll(covered.as_mut(), &waker), Poll::Pending);
        assert_eq!(poll(stranded.as_mut(), &waker), Poll::Pending);

        waiters.announce(6, false);
        assert_eq!(poll(covered.as_mut(), &waker), Poll::Ready(true), "durable before the failure");
        assert_eq!(poll(stranded.as_mut(), &waker), Poll::Ready(false));
        assert_eq!(poll(pin!(waiters.wait_for(7)), &waker), Poll::Ready(false), "no waiting on a failed store");
    }
}
