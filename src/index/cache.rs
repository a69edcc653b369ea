//! What a backend keeps from one scan of an index to the next: the buffer each block was
//! last found in (a read through a hint skips the buffer-mapping lookup) and the nodes
//! of the levels above 0 (every query's descent reads the same few hundred). Scan-cache
//! policy, over the page layer.

use akidb_core::hnsw::format::{Tid, BLOCK_SIZE};
use akidb_core::hnsw::graph::TidHasher;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::{self, Locked, PAGE_HEADER};

/// A node of the levels above 0 as a scan saw it: its code and its lists on levels
/// 1..=its level. Codes never change in place and a list read a little earlier is still
/// a valid set of links, so a backend keeps these between scans (a greedy descent reads
/// the same few hundred nodes for every query) while the index's [`UpperCache::key`]
/// holds; a relcache invalidation (REINDEX, VACUUM's statistics, DROP) drops them.
pub struct UpperNode {
    pub min: f32,
    pub scale: f32,
    pub err: f32,
    pub code: Box<[u8]>,
    /// Neighbours on level l at [l - 1].
    pub lists: Vec<Vec<u64>>,
}

/// The upper-level nodes kept for one index, and what they were read under.
#[derive(Default)]
pub struct UpperCache {
    /// The relation's file (a REINDEX or TRUNCATE makes a new one), the entry point, its
    /// level, the insert block and the reuse epoch when the nodes were read: inserts move
    /// the insert block every few rows, so new links show within a few inserts, and one
    /// that puts an element in the slot of an upper-level one moves the epoch.
    key: (u32, u64, u8, u32, u32),
    pub nodes: std::collections::HashMap<u64, UpperNode, std::hash::BuildHasherDefault<TidHasher>>,
    bytes: usize,
}

/// Bytes of upper-level nodes one backend keeps per index.
const MAX_UPPER_BYTES: usize = 8 << 20;

impl UpperCache {
    /// Forgets the nodes if the index changed shape since they were read.
    pub fn validate(&mut self, key: (u32, u64, u8, u32, u32)) {
        if self.key != key {
            self.nodes.clear();
            self.bytes = 0;
            self.key = key;
        }
    }

    pub fn insert(&mut self, node: u64, n: UpperNode) {
        let size = n.code.len() + n.lists.iter().map(|l| 8 * l.len() + 24).sum::<usize>() + 64;
        if self.bytes + size <= MAX_UPPER_BYTES {
            self.bytes += size;
            self.nodes.insert(node, n);
        }
    }
}

/// Blocks of one index whose buffers are remembered (4 bytes each): 32 GB of index.
const MAX_HINTS: usize = 1 << 22;

thread_local! {
    /// Per index (by OID), the buffer each block was last found in, kept by this backend
    /// from one scan to the next.
    static HINTS: std::cell::RefCell<std::collections::HashMap<pg_sys::Oid, (Vec<pg_sys::Buffer>, UpperCache)>> = Default::default();
}

/// One index's buffer hints, taken from the backend's table for a scan and put back
/// when dropped.
pub struct Hints {
    oid: pg_sys::Oid,
    buffers: Vec<pg_sys::Buffer>,
    /// The upper-level nodes this backend walked through in earlier scans.
    pub upper: UpperCache,
}

/// Drops the hints of an index when its relcache entry is invalidated (DROP INDEX,
/// REINDEX, ...; InvalidOid: all), so the table keeps no entry for a dropped index.
#[pg_guard]
unsafe extern "C-unwind" fn forget_hints(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    HINTS.with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                h.clear();
            } else {
                h.remove(&relid);
            }
        }
    });
}

thread_local! {
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Hints {
    /// Like [`Locked::read`] (share lock), but first tries the buffer the block was last
    /// found in (`hints`), which skips the shared buffer-mapping lookup: the hottest
    /// thing in a scan's profile. PostgreSQL checks the hinted buffer's tag, so a stale
    /// hint only costs the normal read.
    pub fn read(&mut self, rel: pg_sys::Relation, block: u32) -> Locked {
        let hint = self.get(block);
        // SAFETY: rel is an open index relation; a hint is a buffer number this backend
        // got from ReadBufferExtended for this relation (ReadRecentBuffer checks its tag).
        unsafe {
            let buf = if hint != 0 && pg_sys::ReadRecentBuffer(page::locator(rel), pg_sys::ForkNumber::MAIN_FORKNUM, block, hint) {
                page::count_hit(rel);
                hint
            } else {
                let b = pg_sys::ReadBufferExtended(rel, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut());
                self.set(block, b);
                b
            };
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            Locked::share_locked(buf)
        }
    }

    pub fn take(rel: pg_sys::Relation) -> Hints {
        if !CALLBACK.get() {
            // SAFETY: registering a relcache callback is allowed at any time in a backend.
            unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget_hints), pg_sys::Datum::from(0)) };
            CALLBACK.set(true);
        }
        // SAFETY: rel is open.
        let oid = unsafe { (*rel).rd_id };
        let (buffers, upper) = HINTS.with(|h| h.borrow_mut().remove(&oid)).unwrap_or_default();
        Hints { oid, buffers, upper }
    }

    fn get(&self, block: u32) -> pg_sys::Buffer {
        self.buffers.get(block as usize).copied().unwrap_or(0)
    }

    fn set(&mut self, block: u32, buf: pg_sys::Buffer) {
        let i = block as usize;
        if i < MAX_HINTS {
            if i >= self.buffers.len() {
                self.buffers.resize(i + 1, 0);
            }
            self.buffers[i] = buf;
        }
    }

    /// Starts loading what reading `block` will touch first (its buffer header and the
    /// start of its page), if the block's buffer is known and shared.
    pub fn prefetch(&self, block: u32) {
        let hint = self.get(block);
        if hint <= 0 {
            return;
        }
        // SAFETY: only addresses are computed (within the shared buffer arrays, as
        // 0 < hint <= NBuffers); prefetching reads nothing.
        unsafe {
            let i = (hint - 1) as usize;
            akidb_core::distance::prefetch(pg_sys::BufferDescriptors.wrapping_add(i) as *const u8, 64);
            akidb_core::distance::prefetch((pg_sys::BufferBlocks as *const u8).wrapping_add(i * BLOCK_SIZE), 128);
        }
    }

    /// Starts loading the tuple at `tid` (up to `bytes` of it), if its block's buffer is
    /// known: its line pointer is peeked at without a lock, which is safe for a hint (a
    /// torn value only misdirects the prefetch; the read that follows takes the lock).
    pub fn prefetch_tuple(&self, tid: Tid, bytes: usize) {
        let hint = self.get(tid.block);
        if hint <= 0 || tid.offset == 0 || tid.offset as usize > (BLOCK_SIZE - PAGE_HEADER) / 4 {
            return;
        }
        // SAFETY: `page` is the start of a shared buffer (0 < hint <= NBuffers) and the
        // line pointer read stays inside it; the result is only used as a prefetch address.
        unsafe {
            let page = (pg_sys::BufferBlocks as *const u8).add((hint - 1) as usize * BLOCK_SIZE);
            let lp = std::ptr::read_volatile(page.add(PAGE_HEADER + 4 * (tid.offset as usize - 1)) as *const u32);
            let (off, len) = ((lp & 0x7fff) as usize, (lp >> 17) as usize);
            if off + len <= BLOCK_SIZE {
                akidb_core::distance::prefetch(page.wrapping_add(off), len.min(bytes));
            }
        }
    }
}

impl Drop for Hints {
    fn drop(&mut self) {
        let kept = (std::mem::take(&mut self.buffers), std::mem::take(&mut self.upper));
        HINTS.with(|h| {
            if let Ok(mut h) = h.try_borrow_mut() {
                h.insert(self.oid, kept);
            }
        });
    }
}

