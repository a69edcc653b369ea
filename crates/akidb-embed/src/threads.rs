//! Threads inside a PostgreSQL backend.
//!
//! PostgreSQL's signal handlers must only ever run on the backend's main thread, and long
//! work must stop soon after a cancel request. So every thread we (or ONNX Runtime, on
//! our behalf) start is created with all signals blocked: the ONNX Runtime environment,
//! each session and each model's first run (where execution providers start the threads
//! they start lazily) happen inside [`with_signals_blocked`]. Inference runs on the calling
//! thread while a watchdog thread polls [`Interrupt::pending`] and stops it
//! ([`run_watched`]); work that cannot be stopped (a blocking HTTP call) runs on a helper
//! thread that the caller abandons on a cancel ([`run_detached`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{EmbedError, Result};

/// How often a pending cancel is looked for.
const POLL: Duration = Duration::from_millis(5);

/// Should the work stop now? (Asked from the watchdog thread too, hence `Sync`.)
pub trait Interrupt: Sync {
    fn pending(&self) -> bool;
}

/// Never interrupts (plain `cargo test`, tools).
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn pending(&self) -> bool {
        false
    }
}

pub use akidb_core::threads::with_signals_blocked;

/// A run the watchdog looks after: lifetime-erased borrows from `run_watched`'s frame.
struct Armed {
    interrupt: *const (dyn Interrupt + 'static),
    stop: *const (dyn Fn() + Sync + 'static),
    fired: bool,
}

// SAFETY: the pointers are only dereferenced under WATCHDOG's lock while `run_watched`'s
// frame (which owns the pointees, both Sync) is alive; see `run_watched`.
unsafe impl Send for Armed {}

/// Runs being looked after, by id (one per calling thread at a time; a backend has one).
struct Watchdog {
    armed: Mutex<Vec<(u64, Armed)>>,
    next_id: std::sync::atomic::AtomicU64,
    wake: Condvar,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

fn watchdog() -> &'static Watchdog {
    WATCHDOG.get_or_init(|| {
        with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("akidb-watchdog".into())
                .spawn(|| {
                    let w = WATCHDOG.wait();
                    let mut armed = w.armed.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        let mut watching = false;
                        for (_, a) in armed.iter_mut().filter(|(_, a)| !a.fired) {
                            watching = true;
                            // SAFETY: armed, so run_watched's frame is alive and holds the
                            // pointees until it takes this lock to disarm.
                            if unsafe { (*a.interrupt).pending() } {
                                unsafe { (*a.stop)() };
                                a.fired = true;
                            }
                        }
                        armed = if watching {
                            w.wake.wait_timeout(armed, POLL).unwrap_or_else(|e| e.into_inner()).0
                        } else {
                            w.wake.wait(armed).unwrap_or_else(|e| e.into_inner())
                        };
                    }
                })
                .expect("cannot start the akidb watchdog thread")
        });
        Watchdog { armed: Mutex::new(Vec::new()), next_id: 0.into(), wake: Condvar::new() }
    })
}

/// Runs `work` on this thread while the watchdog polls `interrupt`; when it becomes
/// pending the watchdog calls `stop` (which must make `work` return soon) and this
/// returns [`EmbedError::Cancelled`] once `work` has returned.
pub fn run_watched<T>(interrupt: &dyn Interrupt, work: impl FnOnce() -> T, stop: &(dyn Fn() + Sync)) -> Result<T> {
    let w = watchdog();
    struct Disarm<'a>(&'a Watchdog, u64);
    impl Disarm<'_> {
        /// Disarms; true when the watchdog had fired.
        fn take(&self) -> bool {
            let mut armed = self.0.armed.lock().unwrap_or_else(|e| e.into_inner());
            match armed.iter().position(|(id, _)| *id == self.1) {
                Some(i) => armed.swap_remove(i).1.fired,
                None => false,
            }
        }
    }
    impl Drop for Disarm<'_> {
        fn drop(&mut self) {
            self.take();
        }
    }
    let id = w.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        let mut armed = w.armed.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the erased borrows live in this frame; the Disarm guard below removes
        // them under the lock before this frame ends (also when `work` panics), and the
        // watchdog only dereferences them under the same lock.
        armed.push((id, Armed {
            interrupt: unsafe { std::mem::transmute::<&dyn Interrupt, &'static dyn Interrupt>(interrupt) },
            stop: unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(stop) },
            fired: false,
        }));
        w.wake.notify_one();
    }
    let guard = Disarm(w, id);
    let value = work();
    if guard.take() {
        return Err(EmbedError::Cancelled);
    }
    Ok(value)
}

/// Runs `work` on a helper thread, for work that cannot be stopped early (a blocking HTTP
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
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(RecvTimeoutError::Timeout) if interrupt.pending() => return Err(EmbedError::Cancelled),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the worker always sends its outcome"),
        }
    }
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
        let blocked = run_detached(&NoInterrupt, || {
            let m = mask_of_this_thread();
            [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGALRM, libc::SIGQUIT]
                .iter()
                .all(|&s| unsafe { libc::sigismember(&m, s) } == 1)
        })
        .unwrap();
        assert!(blocked);
        let after = mask_of_this_thread();
        assert_eq!(unsafe { libc::sigismember(&after, libc::SIGINT) }, unsafe { libc::sigismember(&before, libc::SIGINT) });
        assert_eq!(run_watched(&NoInterrupt, || 7, &|| {}).unwrap(), 7);
    }

    #[test]
    fn cancel_stops_the_work_promptly() {
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let r = run_watched(&After(t0, Duration::from_millis(50)), || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }, &|| stop.store(true, Ordering::Relaxed));
        assert_eq!(r, Err(EmbedError::Cancelled));
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());

        let t0 = Instant::now();
        let r = run_detached(&After(t0, Duration::from_millis(50)), || std::thread::sleep(Duration::from_secs(3)));
        assert_eq!(r, Err(EmbedError::Cancelled));
        assert!(t0.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_panic_in_the_worker_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| run_detached(&NoInterrupt, || panic!("boom")));
        assert!(r.is_err());
        // A panic inside a watched run disarms the watchdog; the next run is fine.
        let r = std::panic::catch_unwind(|| run_watched(&NoInterrupt, || panic!("boom"), &|| {}));
        assert!(r.is_err());
        assert_eq!(run_watched(&NoInterrupt, || 1, &|| {}).unwrap(), 1);
    }
}
