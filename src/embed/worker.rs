//! The shared embedding worker (`akidb.embed_mode = worker`): one background process,
//! registered when akidb is in `shared_preload_libraries`, owns the models; backends hand
//! it their texts through a table of request slots in shared memory and sleep on their
//! latch until it answers.
//!
//! A slot's life: FREE -> (a backend) FILLING -> QUEUED -> (the worker) RUNNING -> DONE
//! or FAILED -> (the backend) FREE. A backend that stops waiting (cancel, timeout, exit)
//! takes its QUEUED slot back (FREE) or marks its RUNNING one ABANDONED, which the worker
//! frees when it is done with it. Every change of state is one compare-and-swap; a
//! slot's other fields belong to whoever the state says holds it: the backend in FILLING
//! and QUEUED (until the worker's swap to RUNNING), the worker in RUNNING, the backend
//! again in DONE and FAILED.
//!
//! The worker takes every request queued when it looks, groups them by model, purpose
//! and dimensions, and embeds each group in one call, which sorts its texts by length
//! and cuts them into batches by a token budget (akidb.worker_max_batch,
//! akidb.worker_batch_tokens): requests from many connections share batches, and an idle
//! worker starts on a request at once. A group that fails is run again request by
//! request, so an error reaches only the request that caused it.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use akidb_embed::Purpose;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::settings;

const FREE: u32 = 0;
const FILLING: u32 = 1;
const QUEUED: u32 = 2;
const RUNNING: u32 = 3;
const DONE: u32 = 4;
const FAILED: u32 = 5;
const ABANDONED: u32 = 6;

const MAGIC: u32 = 0xA41D_E3B0;
/// Models the worker keeps figures for (akidb.models).
const MAX_STATS: usize = 16;
const STAT_KEY: usize = 512;
const STAT_PROVIDER: usize = 32;
/// How long a backend waits for a worker that is not running before it gives up.
const ABSENT_LIMIT: Duration = Duration::from_secs(10);

#[repr(C)]
struct Header {
    magic: u32,
    nslots: u32,
    slot_bytes: u32,
    worker_pid: AtomicI32,
    worker_latch: AtomicUsize,
    starts: AtomicU32,
    stats: [Stat; MAX_STATS],
}

/// One model's figures in the worker. Written by the worker only; `state` 0 (unused),
/// 1 (being written), 2 (valid).
#[repr(C)]
struct Stat {
    state: AtomicU32,
    key_len: u32,
    key: [u8; STAT_KEY],
    provider_len: u32,
    provider: [u8; STAT_PROVIDER],
    memory_bytes: AtomicI64,
    load_ms_bits: AtomicU64,
    batches: AtomicI64,
    texts: AtomicI64,
    loaded: AtomicU32,
}

#[repr(C)]
struct Slot {
    state: AtomicU32,
    owner_pid: AtomicI32,
    owner_latch: AtomicUsize,
    /// 0 document, 1 query.
    purpose: u32,
    /// Requested dimensions, 0 for the model's full output.
    dims: u32,
    ntexts: u32,
    /// Bytes of the data area in use.
    used: u32,
    /// DONE: dimensions of each vector in the data area.
    out_dims: u32,
    /// FAILED: the error's SQLSTATE (as PostgreSQL encodes it).
    sqlstate: i32,
}

struct Shared {
    header: *mut Header,
    slots: *mut Slot,
    data: *mut u8,
}

// SAFETY: the pointers address shared memory that lives as long as the process; every
// access goes through the atomics and the ownership protocol above.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();

fn layout() -> (usize, usize, usize) {
    let nslots = settings::WORKER_SLOTS.get().max(1) as usize;
    let slot_bytes = settings::WORKER_SLOT_KB.get().max(16) as usize * 1024;
    (nslots, slot_bytes, size_of::<Header>() + nslots * (size_of::<Slot>() + slot_bytes))
}

/// AddinShmemInitLock: an individual LWLock of the main array (lwlocknames.h).
const ADDIN_SHMEM_INIT_LOCK: usize = 21;

/// PostgreSQL's signal handlers, by their C symbols (the bindings' wrappers are Rust
/// functions, not handlers).
mod c {
    unsafe extern "C-unwind" {
        pub fn die(postgres_signal_arg: std::ffi::c_int);
        pub fn SignalHandlerForConfigReload(postgres_signal_arg: std::ffi::c_int);
    }
}

static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

/// Called from `_PG_init` while shared_preload_libraries loads: asks for the request
/// table and registers the worker. Elsewhere (a backend that loads akidb on its own)
/// nothing: calls run in the backend.
pub fn init() {
    // SAFETY: a plain read of a flag the postmaster sets around preloading.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    // SAFETY: hooks are chained once, in the postmaster, before any process starts.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
    pgrx::bgworkers::BackgroundWorkerBuilder::new("akidb embedding worker")
        .set_type("akidb embedding worker")
        .set_function("akidb_embed_worker_main")
        .set_library("akidb")
        .enable_shmem_access(None)
        // A connection to no database: the worker reads no catalog, but shows in
        // pg_stat_activity under its backend_type.
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: chained hook and the request API, both in the postmaster's request phase.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(layout().2);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    // SAFETY: chained hook; ShmemInitStruct under AddinShmemInitLock as PostgreSQL asks.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let (nslots, slot_bytes, size) = layout();
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(c"akidb embedding worker".as_ptr(), size, &mut found) as *mut u8;
        if !found {
            std::ptr::write_bytes(base, 0, size);
            let h = base as *mut Header;
            (*h).magic = MAGIC;
            (*h).nslots = nslots as u32;
            (*h).slot_bytes = slot_bytes as u32;
        }
        pg_sys::LWLockRelease(init_lock);
        attach_at(base);
    }
}

/// # Safety
/// `base` is the start of the request table in shared memory.
unsafe fn attach_at(base: *mut u8) {
    // SAFETY: the caller's promise; the table's layout is fixed at its creation.
    unsafe {
        let header = base as *mut Header;
        let nslots = (*header).nslots as usize;
        let slots = base.add(size_of::<Header>()) as *mut Slot;
        let data = base.add(size_of::<Header>() + nslots * size_of::<Slot>());
        let _ = SHARED.set(Shared { header, slots, data });
    }
}

fn shared() -> Option<&'static Shared> {
    SHARED.get()
}

/// Whether this server runs the worker (akidb is preloaded).
pub fn present() -> bool {
    shared().is_some()
}

/// Whether this call goes to the worker.
pub fn in_use() -> bool {
    present() && settings::embed_mode() == settings::EmbedMode::Worker && !is_worker()
}

pub fn is_worker() -> bool {
    IS_WORKER.load(Ordering::Relaxed)
}

static IS_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Shared {
    fn header(&self) -> &Header {
        // SAFETY: set up in startup_shmem; the fields read here are atomics or fixed.
        unsafe { &*self.header }
    }
    fn nslots(&self) -> usize {
        self.header().nslots as usize
    }
    fn slot_bytes(&self) -> usize {
        self.header().slot_bytes as usize
    }
    fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.nslots());
        // SAFETY: i is in range; a slot's atomics may be shared, its plain fields are
        // only touched by the slot's holder (see the module comment).
        unsafe { &*self.slots.add(i) }
    }
    /// # Safety
    /// The caller holds slot `i` (FILLING, RUNNING, DONE or FAILED as the protocol says).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot_mut(&self, i: usize) -> &mut Slot {
        // SAFETY: the caller's promise.
        unsafe { &mut *self.slots.add(i) }
    }
    /// # Safety
    /// As for [`Shared::slot_mut`].
    #[allow(clippy::mut_from_ref)]
    unsafe fn data(&self, i: usize) -> &mut [u8] {
        // SAFETY: the caller's promise; the areas do not overlap.
        unsafe { std::slice::from_raw_parts_mut(self.data.add(i * self.slot_bytes()), self.slot_bytes()) }
    }
}

fn set_latch(latch: usize) {
    if latch != 0 {
        // SAFETY: a latch in shared memory (a PGPROC's); SetLatch on a latch of a process
        // that has exited is harmless (PostgreSQL's own code does it too).
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

fn wait_latch(ms: i64) {
    // SAFETY: MyLatch is this process's latch; PG_WAIT_EXTENSION is the wait event.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

// ---------------------------------------------------------------- the backend's side

/// A slot this backend holds; dropping it (the call done, or an ERROR unwinding) gives
/// it back.
struct Held {
    i: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(sh) = shared() {
            release(sh, self.i);
        }
    }
}

fn release(sh: &Shared, i: usize) {
    let s = sh.slot(i);
    loop {
        let now = s.state.load(Ordering::Acquire);
        let next = match now {
            FILLING | QUEUED | DONE | FAILED => FREE,
            RUNNING => ABANDONED,
            _ => return,
        };
        if s.state.compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
}

/// At backend exit (a FATAL does not unwind): gives back every slot this backend holds.
#[pg_guard]
unsafe extern "C-unwind" fn release_all(_code: i32, _arg: pg_sys::Datum) {
    let Some(sh) = shared() else { return };
    // SAFETY: a plain read of this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    for i in 0..sh.nslots() {
        let s = sh.slot(i);
        if s.owner_pid.load(Ordering::Acquire) == me && s.state.load(Ordering::Acquire) != FREE {
            release(sh, i);
        }
    }
}

thread_local! {
    static EXIT_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Claims a free slot, waiting while all are taken (backpressure: bounded by the
/// statement's timeout and cancel).
fn claim(sh: &Shared) -> Held {
    if !EXIT_HOOK.get() {
        // SAFETY: registering an exit callback is allowed at any time in a backend.
        unsafe { pg_sys::before_shmem_exit(Some(release_all), pg_sys::Datum::from(0)) };
        EXIT_HOOK.set(true);
    }
    // SAFETY: plain reads of this process's pid and latch.
    let (me, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch as usize) };
    // Start looking at a place that differs between backends, so they do not all race
    // for slot 0.
    let start = me as usize % sh.nslots();
    loop {
        for k in 0..sh.nslots() {
            let i = (start + k) % sh.nslots();
            let s = sh.slot(i);
            if s.state.compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                s.owner_pid.store(me, Ordering::Release);
                s.owner_latch.store(latch, Ordering::Release);
                return Held { i };
            }
        }
        wait_latch(1);
        pgrx::check_for_interrupts!();
    }
}

/// What comes back from the worker.
enum Answer {
    Vectors(Vec<Vec<f32>>),
    Loaded(String),
}

fn put_bytes(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    buf[*at..*at + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf[*at + 4..*at + 4 + bytes.len()].copy_from_slice(bytes);
    *at += 4 + bytes.len();
}

fn get_bytes<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(buf.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let b = buf.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(b)
}

/// Sends one request (the texts must fit one slot) and waits for the answer.
fn request(sh: &Shared, path: &str, name: &str, texts: &[&str], purpose: Purpose, dims: Option<usize>) -> Answer {
    let held = claim(sh);
    // SAFETY: this backend holds the slot (FILLING).
    unsafe {
        let slot = sh.slot_mut(held.i);
        slot.purpose = matches!(purpose, Purpose::Query) as u32;
        slot.dims = dims.unwrap_or(0) as u32;
        slot.ntexts = texts.len() as u32;
        let data = sh.data(held.i);
        let mut at = 0;
        put_bytes(data, &mut at, path.as_bytes());
        put_bytes(data, &mut at, name.as_bytes());
        for t in texts {
            put_bytes(data, &mut at, t.as_bytes());
        }
        slot.used = at as u32;
    }
    let s = sh.slot(held.i);
    s.state.store(QUEUED, Ordering::Release);
    set_latch(sh.header().worker_latch.load(Ordering::Acquire));
    let mut absent_since: Option<Instant> = None;
    let state = loop {
        let now = s.state.load(Ordering::Acquire);
        if now == DONE || now == FAILED {
            break now;
        }
        if sh.header().worker_pid.load(Ordering::Acquire) == 0 {
            let since = *absent_since.get_or_insert_with(Instant::now);
            if since.elapsed() > ABSENT_LIMIT {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "akidb's embedding worker is not running",
                    "The server log says why; SET akidb.embed_mode = backend runs the model in this backend meanwhile."
                );
            }
        } else {
            absent_since = None;
        }
        wait_latch(100);
        pgrx::check_for_interrupts!();
    };
    // SAFETY: DONE or FAILED: the worker is done with the slot; this backend holds it.
    let (slot, data) = unsafe { (sh.slot_mut(held.i), sh.data(held.i)) };
    let used = (slot.used as usize).min(data.len());
    if state == FAILED {
        let mut at = 0;
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned()).filter(|s| !s.is_empty());
        let message = text(get_bytes(&data[..used], &mut at)).unwrap_or_else(|| "the embedding worker failed".into());
        let detail = text(get_bytes(&data[..used], &mut at));
        let hint = text(get_bytes(&data[..used], &mut at));
        let code = PgSqlErrorCode::from(slot.sqlstate);
        drop(held);
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(code, message, "akidb embedding worker");
        if let Some(d) = detail {
            report = report.set_detail(d);
        }
        if let Some(h) = hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return");
    }
    if texts.is_empty() {
        let mut at = 0;
        let provider = get_bytes(&data[..used], &mut at).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        return Answer::Loaded(provider);
    }
    let d = slot.out_dims as usize;
    let floats: Vec<f32> = data[..used].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Answer::Vectors(floats.chunks(d.max(1)).take(texts.len()).map(|c| c.to_vec()).collect())
}

/// Bytes a request's header takes in the data area.
fn overhead(path: &str, name: &str) -> usize {
    8 + path.len() + name.len()
}

/// Embeds `texts` in the worker, in as many requests as the slots need; `dimensions` is
/// the model's full output (sizes the answers). None if a text is too long for one slot
/// (the caller embeds in this backend).
pub fn embed(path: &str, name: &str, texts: &[&str], purpose: Purpose, dims: Option<usize>, dimensions: usize) -> Option<Vec<Vec<f32>>> {
    let sh = shared()?;
    let room = sh.slot_bytes().checked_sub(overhead(path, name))?;
    let per_vector = 4 * dimensions.max(1);
    if per_vector > sh.slot_bytes() || texts.iter().any(|t| t.len() + 4 > room) {
        return None;
    }
    let mut out = Vec::with_capacity(texts.len());
    let mut start = 0;
    while start < texts.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < texts.len() && bytes + 4 + texts[end].len() <= room && (end - start + 1) * per_vector <= sh.slot_bytes() {
            bytes += 4 + texts[end].len();
            end += 1;
        }
        match request(sh, path, name, &texts[start..end], purpose, dims) {
            Answer::Vectors(v) => out.extend(v),
            Answer::Loaded(_) => unreachable!("texts were sent"),
        }
        start = end;
    }
    Some(out)
}

/// Has the worker load `name` (and check `dims`); returns the execution provider.
pub fn load(path: &str, name: &str, dims: Option<usize>) -> Option<String> {
    let sh = shared()?;
    match request(sh, path, name, &[], Purpose::Document, dims) {
        Answer::Loaded(p) => Some(p),
        Answer::Vectors(_) => unreachable!("no texts were sent"),
    }
}

/// The worker's figures for one model (akidb.models).
pub struct WorkerModel {
    pub loaded: bool,
    pub provider: String,
    pub memory_bytes: i64,
    pub load_ms: f64,
    pub batches: i64,
    pub texts: i64,
}

fn stat_key(path: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.len() + name.len() + 1);
    k.extend_from_slice(path.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k.truncate(STAT_KEY);
    k
}

pub fn model_stats(path: &str, name: &str) -> Option<WorkerModel> {
    let sh = shared()?;
    let key = stat_key(path, name);
    sh.header().stats.iter().find(|s| s.state.load(Ordering::Acquire) == 2 && s.key[..s.key_len as usize] == key[..]).map(|s| WorkerModel {
        loaded: s.loaded.load(Ordering::Acquire) != 0,
        provider: String::from_utf8_lossy(&s.provider[..s.provider_len as usize]).into_owned(),
        memory_bytes: s.memory_bytes.load(Ordering::Relaxed),
        load_ms: f64::from_bits(s.load_ms_bits.load(Ordering::Relaxed)),
        batches: s.batches.load(Ordering::Relaxed),
        texts: s.texts.load(Ordering::Relaxed),
    })
}

/// Requests waiting for or running in the worker, for the model `name` (any path).
pub fn queue_depth(name: &str) -> i64 {
    let Some(sh) = shared() else { return 0 };
    (0..sh.nslots())
        .filter(|&i| matches!(sh.slot(i).state.load(Ordering::Acquire), QUEUED | RUNNING))
        .filter(|&i| {
            // A racy peek at another backend's request: only counted, never trusted.
            // SAFETY: reads within the slot's data area.
            let data = unsafe { std::slice::from_raw_parts(sh.data.add(i * sh.slot_bytes()), sh.slot_bytes()) };
            let mut at = 0;
            let _ = get_bytes(data, &mut at);
            get_bytes(data, &mut at) == Some(name.as_bytes())
        })
        .count() as i64
}

/// The worker's process id, if it runs.
pub fn worker_pid() -> Option<i32> {
    shared().map(|sh| sh.header().worker_pid.load(Ordering::Acquire)).filter(|&p| p != 0)
}

// ---------------------------------------------------------------- the worker's side

struct Request {
    slot: usize,
    path: String,
    name: String,
    purpose: Purpose,
    dims: Option<usize>,
    texts: Vec<String>,
}

fn read_request(sh: &Shared, i: usize) -> Request {
    // SAFETY: the worker holds the slot (RUNNING).
    let (slot, data) = unsafe { (sh.slot_mut(i), sh.data(i)) };
    let used = (slot.used as usize).min(data.len());
    let data = &data[..used];
    let mut at = 0;
    let mut next = || get_bytes(data, &mut at).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    let path = next();
    let name = next();
    let texts = (0..slot.ntexts).map(|_| next()).collect();
    Request {
        slot: i,
        path,
        name,
        purpose: if slot.purpose == 1 { Purpose::Query } else { Purpose::Document },
        dims: (slot.dims != 0).then_some(slot.dims as usize),
        texts,
    }
}

/// Ends the worker's hold on slot `i` with `state`, and wakes its backend; a request its
/// backend gave up meanwhile is freed instead.
fn finish(sh: &Shared, i: usize, state: u32) {
    let s = sh.slot(i);
    let latch = s.owner_latch.load(Ordering::Acquire);
    if s.state.compare_exchange(RUNNING, state, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // ABANDONED: nobody waits for it.
        s.state.store(FREE, Ordering::Release);
        return;
    }
    set_latch(latch);
}

fn answer_vectors(sh: &Shared, i: usize, vectors: &[Vec<f32>]) {
    // SAFETY: the worker holds the slot (RUNNING).
    let (slot, data) = unsafe { (sh.slot_mut(i), sh.data(i)) };
    let d = vectors.first().map_or(0, |v| v.len());
    let mut at = 0;
    for v in vectors {
        for x in v {
            data[at..at + 4].copy_from_slice(&x.to_le_bytes());
            at += 4;
        }
    }
    slot.out_dims = d as u32;
    slot.used = at as u32;
    finish(sh, i, DONE);
}

fn answer_loaded(sh: &Shared, i: usize, provider: &str) {
    // SAFETY: the worker holds the slot (RUNNING).
    let (slot, data) = unsafe { (sh.slot_mut(i), sh.data(i)) };
    let mut at = 0;
    put_bytes(data, &mut at, provider.as_bytes());
    slot.used = at as u32;
    finish(sh, i, DONE);
}

fn answer_error(sh: &Shared, i: usize, code: PgSqlErrorCode, message: &str, detail: Option<&str>, hint: Option<&str>) {
    // SAFETY: the worker holds the slot (RUNNING).
    let (slot, data) = unsafe { (sh.slot_mut(i), sh.data(i)) };
    let room = data.len() / 3 - 4;
    let cut = |s: &str| -> Vec<u8> {
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.as_bytes()[..end].to_vec()
    };
    let mut at = 0;
    put_bytes(data, &mut at, &cut(message));
    put_bytes(data, &mut at, &cut(detail.unwrap_or("")));
    put_bytes(data, &mut at, &cut(hint.unwrap_or("")));
    slot.used = at as u32;
    slot.sqlstate = code as i32;
    finish(sh, i, FAILED);
}

fn caught(e: &pgrx::pg_sys::panic::CaughtError) -> (PgSqlErrorCode, String, Option<String>, Option<String>) {
    use pgrx::pg_sys::panic::CaughtError;
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            (r.sql_error_code(), r.message().to_string(), r.detail().map(str::to_string), r.hint().map(str::to_string))
        }
    }
}

/// Runs `f`, turning an ERROR into its parts.
fn trying<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, (PgSqlErrorCode, String, Option<String>, Option<String>)> {
    PgTryBuilder::new(|| Ok(f())).catch_others(|e| Err(caught(&e))).execute()
}

fn update_stats(sh: &Shared, path: &str, name: &str, texts: usize, batches: usize) {
    let key = stat_key(path, name);
    let info = super::registry::loaded_info(path, name);
    // SAFETY: only the worker writes the stats; readers check `state`.
    let stats = unsafe { &mut (*sh.header).stats };
    let i = match stats.iter().position(|s| s.state.load(Ordering::Acquire) == 2 && s.key[..s.key_len as usize] == key[..]) {
        Some(i) => i,
        None => {
            let Some(i) = stats.iter().position(|s| s.state.load(Ordering::Acquire) == 0) else { return };
            let s = &mut stats[i];
            s.state.store(1, Ordering::Release);
            s.key[..key.len()].copy_from_slice(&key);
            s.key_len = key.len() as u32;
            s.state.store(2, Ordering::Release);
            i
        }
    };
    let s = &mut stats[i];
    if let Some((provider, memory, load_ms)) = info {
        let p = provider.as_bytes();
        let n = p.len().min(STAT_PROVIDER);
        s.provider[..n].copy_from_slice(&p[..n]);
        s.provider_len = n as u32;
        s.memory_bytes.store(memory, Ordering::Relaxed);
        s.load_ms_bits.store(load_ms.to_bits(), Ordering::Relaxed);
        s.loaded.store(1, Ordering::Release);
    }
    s.batches.fetch_add(batches as i64, Ordering::Relaxed);
    s.texts.fetch_add(texts as i64, Ordering::Relaxed);
}

/// Loads a request's model for a request without texts (akidb_load_model, or a dims
/// check for an empty array) and answers with the execution provider.
fn run_load(sh: &Shared, r: &Request) {
    let (path, name, dims) = (r.path.clone(), r.name.clone(), r.dims);
    match trying(move || super::registry::load_here(&path, &name, dims)) {
        Ok(provider) => answer_loaded(sh, r.slot, &provider),
        Err((c, m, d, h)) => answer_error(sh, r.slot, c, &m, d.as_deref(), h.as_deref()),
    }
    update_stats(sh, &r.path, &r.name, 0, 0);
}

/// Embeds one group of requests with texts (same model, purpose and dimensions) in one
/// call.
fn run_group(sh: &Shared, group: &[Request]) {
    let first = &group[0];
    let all: Vec<String> = group.iter().flat_map(|r| r.texts.iter().cloned()).collect();
    let (path, name, purpose, dims) = (first.path.clone(), first.name.clone(), first.purpose, first.dims);
    let result = trying(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        super::registry::embed_here(&path, &name, &refs, purpose, dims)
    });
    match result {
        Ok((vectors, batches)) => {
            update_stats(sh, &first.path, &first.name, vectors.len(), batches);
            let mut at = 0;
            for r in group {
                answer_vectors(sh, r.slot, &vectors[at..at + r.texts.len()]);
                at += r.texts.len();
            }
        }
        Err((c, m, d, h)) if group.len() == 1 => answer_error(sh, first.slot, c, &m, d.as_deref(), h.as_deref()),
        // One request's text (or the model) failed: each alone, so the error reaches
        // only the requests it belongs to.
        Err(_) => {
            for r in group {
                run_group(sh, std::slice::from_ref(r));
            }
        }
    }
}

/// At the worker's exit: every request it was running fails (the backends get an ERROR,
/// not a hang), and backends stop waking it.
#[pg_guard]
unsafe extern "C-unwind" fn worker_exit(_code: i32, _arg: pg_sys::Datum) {
    let Some(sh) = shared() else { return };
    sh.header().worker_latch.store(0, Ordering::Release);
    sh.header().worker_pid.store(0, Ordering::Release);
    fail_running(sh, "the embedding worker exited while it ran this request");
}

fn fail_running(sh: &Shared, why: &str) {
    for i in 0..sh.nslots() {
        match sh.slot(i).state.load(Ordering::Acquire) {
            RUNNING => answer_error(sh, i, PgSqlErrorCode::ERRCODE_SYSTEM_ERROR, why, None, Some("Run the statement again.")),
            ABANDONED => sh.slot(i).state.store(FREE, Ordering::Release),
            _ => {}
        }
    }
}

/// The worker's main loop.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn akidb_embed_worker_main(_arg: pg_sys::Datum) {
    IS_WORKER.store(true, Ordering::Relaxed);
    // SAFETY: standard background-worker signal setup: SIGTERM ends the worker through
    // CHECK_FOR_INTERRUPTS (also inside a long embedding), SIGHUP rereads the settings.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(c::SignalHandlerForConfigReload));
            pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(c::die));
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::pqsignal_be(pg_sys::SIGHUP as i32, Some(c::SignalHandlerForConfigReload));
            pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(c::die));
        }
        pg_sys::BackgroundWorkerUnblockSignals();
        pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0);
    }
    let Some(sh) = shared() else {
        pgrx::log!("akidb embedding worker: no request table (akidb is not in shared_preload_libraries)");
        return;
    };
    // A request the worker before this one was running when it died fails; queued ones
    // are run now.
    fail_running(sh, "the embedding worker restarted while it ran this request");
    // SAFETY: plain reads of this process's latch and pid; the exit callback is
    // registered once, at start.
    unsafe {
        pg_sys::before_shmem_exit(Some(worker_exit), pg_sys::Datum::from(0));
        sh.header().worker_latch.store(pg_sys::MyLatch as usize, Ordering::Release);
        sh.header().worker_pid.store(pg_sys::MyProcPid, Ordering::Release);
    }
    sh.header().starts.fetch_add(1, Ordering::Relaxed);
    pgrx::log!("akidb embedding worker started ({} request slots of {} kB)", sh.nslots(), sh.slot_bytes() / 1024);
    loop {
        pgrx::check_for_interrupts!();
        // SAFETY: ConfigReloadPending is set by the SIGHUP handler; read and cleared here.
        unsafe {
            if std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        let mut taken = Vec::new();
        for i in 0..sh.nslots() {
            if sh.slot(i).state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                taken.push(read_request(sh, i));
            }
        }
        if taken.is_empty() {
            wait_latch(10_000);
            continue;
        }
        // Requests without texts each alone, then groups in the order their first
        // request sits in the table.
        let (loads, mut taken): (Vec<Request>, Vec<Request>) = taken.into_iter().partition(|r| r.texts.is_empty());
        for r in &loads {
            run_load(sh, r);
        }
        while !taken.is_empty() {
            let (path, name, purpose, dims) = (taken[0].path.clone(), taken[0].name.clone(), taken[0].purpose, taken[0].dims);
            let (group, rest): (Vec<Request>, Vec<Request>) =
                taken.into_iter().partition(|r| r.path == path && r.name == name && r.purpose == purpose && r.dims == dims);
            run_group(sh, &group);
            taken = rest;
        }
    }
}
