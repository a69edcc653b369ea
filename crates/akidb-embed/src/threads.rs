//! Threads inside a PostgreSQL backend.
//!
//! PostgreSQL's signal handlers must only ever run on the backend's main thread, and the
//! main thread must stay responsive to cancel requests while long work runs. So:
//! every thread we (or ONNX Runtime, on our behalf) start is created with all signals
//! blocked, and long work runs on a helper thread while the calling thread waits and
//! polls [`Interrupt::pending`], stopping the work when the caller asks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::error::{EmbedError, Result};

/// How often the waiting thread looks for a pending cancel.
const POLL: Duration = Duration::from_millis(5);

/// Asked on the calling thread while work runs elsewhere: should the work stop now?
pub trait Interrupt {
    fn pending(&self) -> bool;
}

/// Never interrupts (plain `cargo test`, tools).
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn pending(&self) -> bool {
        false
    }
}

/// Runs `f` with every signal blocked on the calling thread, so that any thread `f`
/// creates inherits a fully blocked mask; the old mask is restored afterwards.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved below; pthread_sigmask only touches this thread.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigset_t is plain data that sigfillset/pthread_sigmask initialise; both
    // calls only read and write these locals and this thread's mask.
    let _restore = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        Restore(old)
    };
    f()
}

type Outcome<T> = std::thread::Result<T>;

fn wait<T>(rx: &Receiver<Outcome<T>>, interrupt: &dyn Interrupt, stop: &dyn Fn()) -> Result<T> {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(RecvTimeoutError::Timeout) => {
                if interrupt.pending() {
                    stop();
                    return Err(EmbedError::Cancelled);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the worker always sends its outcome")
            }
        }
    }
}

/// Runs `work` on a helper thread (signals blocked) while this thread waits; when
/// `interrupt` becomes pending, calls `stop` (which must make `work` return soon), waits
/// for `work` to finish and returns [`EmbedError::Cancelled`].
pub fn run_interruptible<T: Send>(
    interrupt: &dyn Interrupt,
    work: impl FnOnce() -> T + Send,
    stop: impl Fn(),
) -> Result<T> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(1);
        with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("akidb-embed".into())
                .spawn_scoped(scope, move || {
                    let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
                })
        })
        .map_err(|e| EmbedError::Inference { model: String::new(), detail: format!("cannot start a thread: {e}") })?;
        // On cancel the scope joins the worker, which `stop` has told to finish.
        wait(&rx, interrupt, &stop)
    })
}

/// Like [`run_interruptible`] for work that cannot be stopped early (a blocking HTTP
/// call): on cancel this returns at once and the thread finishes on its own (bounded by
/// the work's own timeout), its result dropped.
pub fn run_detached<T: Send + 'static>(
    interrupt: &dyn Interrupt,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    with_signals_blocked(|| {
        std::thread::Builder::new().name("akidb-http".into()).spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        })
    })
    .map_err(|e| EmbedError::Inference { model: String::new(), detail: format!("cannot start a thread: {e}") })?;
    wait(&rx, interrupt, &|| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    struct After(Instant, Duration);
    impl Interrupt for After {
        fn pending(&self) -> bool {
            self.0.elapsed() >= self.1
        }
    }

    fn mask_of_this_thread() -> libc::sigset_t {
        // SAFETY: queries this thread's mask into a local.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            cur
        }
    }

    #[test]
    fn helper_threads_block_every_signal_and_the_caller_keeps_its_mask() {
        let before = mask_of_this_thread();
        // SAFETY: sigismember reads the local sets.
        let blocked = run_interruptible(&NoInterrupt, || {
            let m = mask_of_this_thread();
            [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGALRM, libc::SIGQUIT]
                .iter()
                .all(|&s| unsafe { libc::sigismember(&m, s) } == 1)
        }, || {})
        .unwrap();
        assert!(blocked);
        let after = mask_of_this_thread();
        assert_eq!(unsafe { libc::sigismember(&after, libc::SIGINT) }, unsafe { libc::sigismember(&before, libc::SIGINT) });
        assert_eq!(run_detached(&NoInterrupt, || 7).unwrap(), 7);
    }

    #[test]
    fn cancel_stops_the_work_promptly() {
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let r = run_interruptible(&After(t0, Duration::from_millis(50)), || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }, || stop.store(true, Ordering::Relaxed));
        assert_eq!(r, Err(EmbedError::Cancelled));
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());

        let t0 = Instant::now();
        let r = run_detached(&After(t0, Duration::from_millis(50)), || std::thread::sleep(Duration::from_secs(3)));
        assert_eq!(r, Err(EmbedError::Cancelled));
        assert!(t0.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_panic_in_the_worker_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| run_interruptible(&NoInterrupt, || panic!("boom"), || {}));
        assert!(r.is_err());
    }
}
