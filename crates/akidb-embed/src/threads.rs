//! Threads inside a PostgreSQL backend.
//!
//! PostgreSQL's signal handlers must only ever run on the backend's main thread, and long
//! work must stop soon after a cancel request. So every thread we start is created with
//! all signals blocked, and so is every thread ONNX Runtime or one of its execution
//! providers starts on our behalf, also lazily, in the middle of a run (the CUDA and
//! TensorRT providers do): inference runs on one long-lived worker thread per process
//! ([`run_on_worker`]), whose mask every thread it starts inherits, while the backend's
//! own thread waits with its signals as PostgreSQL set them, polls [`Interrupt::pending`]
//! and stops the run on a cancel. One thread, always the same, because the GPU providers
//! keep per-thread state (CUDA streams, cuBLAS and cuDNN handles) that a thread per run
//! would create again each time. Work that cannot be stopped (a blocking HTTP call) runs
//! on a helper thread that the caller abandons on a cancel ([`run_detached`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::{EmbedError, Result};

/// How often a pending cancel is looked for.
const POLL: Duration = Duration::from_millis(2);

/// Should the work stop now? (Asked from the waiting thread; `Sync` so that a caller may
/// share one between threads.)
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

/// A job for the worker: a closure whose borrows `run_on_worker` keeps alive until it has
/// run (its lifetime is erased to cross the channel).
type Job = Box<dyn FnOnce() + Send + 'static>;

static WORKER: OnceLock<std::result::Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();

fn worker() -> Result<&'static Mutex<mpsc::Sender<Job>>> {
    let w = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        with_signals_blocked(|| {
            std::thread::Builder::new().name("akidb-infer".into()).spawn(move || {
                // Each job catches its own panics (run_on_worker), so this loop never ends
                // while the process lives.
                for job in rx {
                    job();
                }
            })
        })
        .map(|_| Mutex::new(tx))
        .map_err(|e| format!("cannot start the inference thread: {e}"))
    });
    w.as_ref().map_err(|detail| EmbedError::Inference { model: String::new(), detail: detail.clone() })
}

/// Runs `work` on the inference thread (all signals blocked, and so every thread started
/// from it) while this thread polls `interrupt`; when it becomes pending this calls
/// `stop`, which must make `work` return soon, and returns [`EmbedError::Cancelled`]
/// once `work` has returned. A panic in `work` reaches the caller.
pub fn run_on_worker<T: Send>(interrupt: &dyn Interrupt, work: impl FnOnce() -> T + Send, stop: &dyn Fn()) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel::<std::thread::Result<T>>(1);
    let job = move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
    };
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
    // SAFETY: the job borrows from this frame (work's captures, T's slot in the channel).
    // This function does not return, nor unwind, before the job has run to its end and
    // sent its outcome: the loop below waits for it whatever happens (stop only asks the
    // work to end early), and nothing in the loop can panic.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    worker()?
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| EmbedError::Inference { model: String::new(), detail: "the inference thread is gone".into() })?;
    let mut stopped = false;
    let outcome = loop {
        match rx.recv_timeout(POLL) {
            Ok(outcome) => break outcome,
            Err(RecvTimeoutError::Timeout) => {
                if !stopped && interrupt.pending() {
                    stop();
                    stopped = true;
                }
            }
            // The job always sends before it is dropped.
            Err(RecvTimeoutError::Disconnected) => unreachable!("the inference job ended without an outcome"),
        }
    };
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(_) if stopped => Err(EmbedError::Cancelled),
        Ok(value) => Ok(value),
    }
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

    fn all_blocked(m: &libc::sigset_t) -> bool {
        // SAFETY: sigismember reads the set.
        [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGALRM, libc::SIGQUIT].iter().all(|&s| unsafe { libc::sigismember(m, s) } == 1)
    }

    #[test]
    fn helper_threads_block_every_signal_and_the_caller_keeps_its_mask() {
        let before = mask_of_this_thread();
        assert!(run_detached(&NoInterrupt, || all_blocked(&mask_of_this_thread())).unwrap());
        // The inference thread, and a thread it starts in the middle of a run (as a GPU
        // provider does), have every signal blocked.
        let (worker, spawned) = run_on_worker(&NoInterrupt, || {
            let spawned = std::thread::spawn(|| all_blocked(&mask_of_this_thread())).join().unwrap();
            (all_blocked(&mask_of_this_thread()), spawned)
        }, &|| {})
        .unwrap();
        assert!(worker && spawned);
        let after = mask_of_this_thread();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sigismember(&after, libc::SIGINT) }, unsafe { libc::sigismember(&before, libc::SIGINT) });
        assert!(!all_blocked(&after));
        // and it is one thread, always the same
        let a = run_on_worker(&NoInterrupt, || std::thread::current().id(), &|| {}).unwrap();
        let b = run_on_worker(&NoInterrupt, || std::thread::current().id(), &|| {}).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, std::thread::current().id());
    }

    #[test]
    fn cancel_stops_the_work_promptly() {
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let r = run_on_worker(&After(t0, Duration::from_millis(50)), || {
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
        // A panic inside an inference job reaches the caller; the thread goes on.
        let r = std::panic::catch_unwind(|| run_on_worker(&NoInterrupt, || panic!("boom"), &|| {}));
        assert!(r.is_err());
        assert_eq!(run_on_worker(&NoInterrupt, || 1, &|| {}).unwrap(), 1);
        // borrowed data is fine: the caller waits
        let v = vec![1, 2, 3];
        assert_eq!(run_on_worker(&NoInterrupt, || v.iter().sum::<i32>(), &|| {}).unwrap(), 6);
    }
}
