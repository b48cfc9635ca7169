//! A connection's own wake-ups, taken at once instead of at the back of the run queue.
//!
//! hyper hands a request body to the service through a channel that the connection fills
//! only once the service has asked for it. So the service's first look at the body wakes
//! the connection's own task, and the connection returns `Pending`. tokio puts a woken
//! task at the back of its run queue, so under load every request waits a whole turn of
//! the queue between its head being read and its body being forwarded. nginx does the
//! same work in one go. That turn widened voxgate's latency spread: its p99 was behind
//! nginx's at the same throughput (benches/README.md).
//!
//! [`InlineWake`] polls a future with a waker of its own. A wake-up that arrives *while* the
//! future is being polled is noted instead of scheduling the task, and the future is
//! polled again at once. Only [`REPOLLS`] more polls are made in a row; a future that
//! keeps waking itself (hyper yields that way after 16 pipelined requests) is then
//! scheduled like any other task, so other connections still get their turn. A wake-up
//! at any other time goes to the task as usual.
//!
//! It pays for small bodies only. An upload is handed over one read at a time, each hand-over
//! waking the connection again; polled at once, the connection mostly finds its socket
//! not yet refilled and reads nothing (measured: 4 % less upload throughput). So it can
//! be switched off and on while the future runs ([`Switch`]): the server turns it on for
//! a request whose body is known to be small, and off for the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// How many times in a row a future woken during its poll is polled again at once.
/// One is enough for hyper's body hand-over. A wake-up during that second poll (in
/// hyper's case, the body arriving in the channel the service is already reading) would
/// cost a wasted poll if taken at once, so it goes to the scheduler; under load, by the
/// time the task's turn comes, the upstream's answer has usually arrived too.
pub const REPOLLS: usize = 1;

/// State bits. `POLLING`: the future is being polled. `WOKEN`: a wake-up came since the
/// poll began. Every wake-up sets `WOKEN` with a read-modify-write (never a bare read), so
/// the `swap` that ends the poll sees every wake-up that came before it, along with the
/// writes the waker made first; one that comes after it sees `POLLING` clear.
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Immediate polls made, process-wide (tests check that the server's connections take
/// hyper's body hand-over this way).
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// How many wake-ups have been taken at once, process-wide, since the start.
pub fn taken() -> u64 {
    TAKEN.load(Ordering::Relaxed)
}

/// Polls one future (a connection), taking the wake-ups it gives itself at once.
pub struct InlineWake {
    signal: Arc<Signal>,
    /// The waker the future sees: `signal`'s.
    waker: Waker,
}

struct Signal {
    state: AtomicU8,
    /// Whether wake-ups during a poll are taken at once (else they go to the task).
    eager: AtomicBool,
    /// The task's own waker, for wake-ups outside a poll.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While a poll is under way, noting it is enough: that poll polls again, or hands
        // the wake-up to the task.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

/// Turns a [`InlineWake`]'s taking of wake-ups at once off and on.
#[derive(Clone)]
pub struct Switch(Arc<Signal>);

impl Switch {
    pub fn set(&self, on: bool) {
        self.0.eager.store(on, Ordering::Relaxed);
    }
}

impl Default for InlineWake {
    fn default() -> Self {
        InlineWake::new()
    }
}

impl InlineWake {
    pub fn new() -> InlineWake {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(0),
            eager: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        InlineWake { signal, waker }
    }

    /// Turns taking wake-ups at once off and on, from inside the future (the next one
    /// that comes in a poll goes by the latest setting).
    pub fn switch(&self) -> Switch {
        Switch(self.signal.clone())
    }

    /// Polls `future` once, and, while switched on, up to [`REPOLLS`] more times if it
    /// woke itself meanwhile.
    pub fn poll<F: Future + ?Sized>(
        &self,
        mut future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        self.signal.task.register(cx.waker());
        let mut own = Context::from_waker(&self.waker);
        for repoll in 0..=REPOLLS {
            if repoll > 0 {
                TAKEN.fetch_add(1, Ordering::Relaxed);
            }
            // Clears a `WOKEN` left by a wake-up between polls: the task already has it.
            self.signal.state.store(POLLING, Ordering::Release);
            let poll = future.as_mut().poll(&mut own);
            let woken = self.signal.state.swap(0, Ordering::AcqRel) & WOKEN != 0;
            if poll.is_ready() || !woken {
                return poll;
            }
            if !self.signal.eager.load(Ordering::Relaxed) {
                break;
            }
        }
        // Still waking itself (or switched off): back of the queue, behind the others.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        /// Wake-ups so far.
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Wakes itself `wakes` times (one per poll), then is ready; counts its polls and keeps
    /// the waker of its last poll.
    struct SelfWaking {
        wakes: usize,
        polls: usize,
        last: Option<Waker>,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            self.last = Some(cx.waker().clone());
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn self_waking(wakes: usize) -> SelfWaking {
        SelfWaking {
            wakes,
            polls: 0,
            last: None,
        }
    }

    #[test]
    fn a_wake_up_during_the_poll_is_taken_at_once() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let inline_wake = InlineWake::new();
        let mut future = self_waking(REPOLLS);
        let poll = inline_wake.poll(Pin::new(&mut future), &mut cx);
        assert_eq!(poll, Poll::Ready(REPOLLS + 1));
        // The task was never scheduled again: it did not have to wait its turn.
        assert_eq!(count.wakes(), 0);
    }

    #[test]
    fn switched_off_a_wake_up_during_the_poll_goes_to_the_task() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let inline_wake = InlineWake::new();
        let switch = inline_wake.switch();
        switch.set(false);
        let mut future = self_waking(1);
        assert!(inline_wake
            .poll(Pin::new(&mut future), &mut cx)
            .is_pending());
        assert_eq!((future.polls, count.wakes()), (1, 1));
        // Switched on again by the future itself, during its poll: taken at once.
        let mut polls = 0;
        let mut future = std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                switch.set(true);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(polls)
        });
        let poll = inline_wake.poll(Pin::new(&mut future), &mut cx);
        assert_eq!(poll, Poll::Ready(2));
        assert_eq!(count.wakes(), 1, "no new wake-up for the task");
    }

    #[test]
    fn two_wake_ups_in_one_poll_make_one_more_poll() {
        let (count, waker) = counting();
        let inline_wake = InlineWake::new();
        let mut polls = 0;
        let mut future = std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                // Once by reference, once by value (`Wake::wake`).
                let kept = cx.waker().clone();
                cx.waker().wake_by_ref();
                kept.wake();
            }
            Poll::<()>::Pending
        });
        let poll = inline_wake.poll(Pin::new(&mut future), &mut Context::from_waker(&waker));
        assert!(poll.is_pending());
        assert_eq!(polls, 2, "the two wake-ups are one");
        assert_eq!(count.wakes(), 0, "nothing left for the task");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let inline_wake = InlineWake::new();
        let mut future = self_waking(usize::MAX);
        assert!(inline_wake
            .poll(Pin::new(&mut future), &mut cx)
            .is_pending());
        assert_eq!(
            future.polls,
            REPOLLS + 1,
            "polled a bounded number of times"
        );
        // Not lost: the task is scheduled again.
        assert_eq!(count.wakes(), 1);
        assert!(inline_wake
            .poll(Pin::new(&mut future), &mut cx)
            .is_pending());
        assert_eq!(future.polls, 2 * (REPOLLS + 1));
        assert_eq!(count.wakes(), 2);
    }

    #[test]
    fn a_wake_up_between_polls_goes_to_the_current_task() {
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        let inline_wake = InlineWake::new();
        // Waits for someone else: keeps the waker and stays pending.
        let kept: Arc<Mutex<Option<Waker>>> = Arc::default();
        let store = kept.clone();
        let mut future = std::future::poll_fn(move |cx| {
            *store.lock().expect("not poisoned") = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let mut future = Pin::new(&mut future);
        let poll = inline_wake.poll(future.as_mut(), &mut Context::from_waker(&first_waker));
        assert!(poll.is_pending());
        let wake = || {
            kept.lock()
                .expect("not poisoned")
                .as_ref()
                .expect("kept")
                .wake_by_ref()
        };
        wake();
        assert_eq!(first.wakes(), 1);
        // The future moved to another task (another worker thread, say): the next
        // wake-up reaches the new one, not the old.
        let poll = inline_wake.poll(future.as_mut(), &mut Context::from_waker(&second_waker));
        assert!(poll.is_pending());
        wake();
        assert_eq!(first.wakes(), 1);
        assert_eq!(second.wakes(), 1);
    }

    #[test]
    fn a_wake_up_from_another_thread_during_the_poll_is_not_lost() {
        let (count, waker) = counting();
        let inline_wake = InlineWake::new();
        // Wakes itself from another thread and waits for that wake-up to have happened
        // before returning: the wake lands inside the poll.
        let mut polls = 0;
        let mut future = std::future::poll_fn(|cx| {
            polls += 1;
            if polls > 1 {
                return Poll::Ready(polls);
            }
            let waker = cx.waker().clone();
            std::thread::spawn(move || waker.wake())
                .join()
                .expect("the waking thread ran");
            Poll::Pending
        });
        let poll = inline_wake.poll(Pin::new(&mut future), &mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Ready(2));
        assert_eq!(count.wakes(), 0);
    }
}
