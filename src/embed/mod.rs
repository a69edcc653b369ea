//! `embed()` and friends: the per-backend model cache, the shared embedding worker
//! ([`worker`]) and the SQL functions around `akidb-embed`. Everything here runs on the backend's main thread; inference runs on
//! helper threads (signals blocked) that `akidb-embed` starts and stops.

mod functions;
mod registry;
pub mod worker;

pub use registry::{load_options, resolve_model};
