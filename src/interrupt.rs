//! PostgreSQL's cancel requests (statement_timeout, pg_cancel_backend, termination), for
//! long work that polls instead of calling CHECK_FOR_INTERRUPTS: the embedding watchdog
//! and the index build's progress loop. The flags are only read; PostgreSQL raises the
//! error itself at the next CHECK_FOR_INTERRUPTS on the main thread.

use pgrx::pg_sys;

/// True when a cancel or termination is pending.
pub fn cancel_pending() -> bool {
    // SAFETY: plain reads of sig_atomic_t flags that signal handlers set.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// [`cancel_pending`] as the embedding engine's interrupt.
pub struct PgInterrupt;

impl akidb_embed::Interrupt for PgInterrupt {
    fn pending(&self) -> bool {
        cancel_pending()
    }
}
