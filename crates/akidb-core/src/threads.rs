//! Threads inside a PostgreSQL backend: PostgreSQL's signal handlers must only ever run
//! on the backend's main thread, so every thread akidb starts (or has a library start)
//! is created with all signals blocked.

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
