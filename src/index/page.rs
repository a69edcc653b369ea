//! Buffers, pages and WAL for the index: pinned+locked buffers that release themselves,
//! the page layout read directly (header, line pointers, items, special space), and
//! GenericXLog records for every change to an existing page.

use akidb_core::hnsw::error::IndexError;
use akidb_core::hnsw::format::{self, Meta, Tid, BLOCK_SIZE, META_BLOCK, SPECIAL_SIZE};
use pgrx::pg_sys;
use pgrx::prelude::*;

const PAGE_HEADER: usize = 24;

/// A pinned and locked buffer, unlocked and released on drop. Its page is read through
/// [`Locked::page`] (a view that cannot outlive the lock) and, when locked exclusively
/// and not yet WAL-logged (a build's new pages), written through [`Locked::page_mut`].
pub struct Locked {
    pub buf: pg_sys::Buffer,
    exclusive: bool,
}

impl Locked {
    pub fn read(rel: pg_sys::Relation, block: u32, exclusive: bool) -> Locked {
        // SAFETY: rel is an open index relation; the buffer is pinned then locked.
        unsafe {
            let buf = pg_sys::ReadBufferExtended(rel, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut());
            pg_sys::LockBuffer(buf, if exclusive { pg_sys::BUFFER_LOCK_EXCLUSIVE } else { pg_sys::BUFFER_LOCK_SHARE } as i32);
            Locked { buf, exclusive }
        }
    }

    /// Like [`Locked::read`] (share lock), but first tries the buffer the block was last
    /// found in (`hints`), which skips the shared buffer-mapping lookup: the hottest
    /// thing in a scan's profile. PostgreSQL checks the hinted buffer's tag, so a stale
    /// hint only costs the normal read.
    pub fn read_hinted(rel: pg_sys::Relation, block: u32, hints: &mut Hints) -> Locked {
        let hint = hints.get(block);
        // SAFETY: rel is an open index relation; a hint is a buffer number this backend
        // got from ReadBufferExtended for this relation (ReadRecentBuffer checks its tag).
        unsafe {
            let buf = if hint != 0 && pg_sys::ReadRecentBuffer(locator(rel), pg_sys::ForkNumber::MAIN_FORKNUM, block, hint) {
                count_hit(rel);
                hint
            } else {
                let b = pg_sys::ReadBufferExtended(rel, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut());
                hints.set(block, b);
                b
            };
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            Locked { buf, exclusive: false }
        }
    }

    /// A new block at the end of the relation's `fork`, locked exclusively, not yet initialised.
    pub fn extend(rel: pg_sys::Relation, fork: pg_sys::ForkNumber::Type) -> Locked {
        // SAFETY: the extension lock serialises P_NEW among backends.
        unsafe {
            pg_sys::LockRelationForExtension(rel, pg_sys::ExclusiveLock as i32);
            let buf = pg_sys::ReadBufferExtended(rel, fork, pg_sys::InvalidBlockNumber, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut());
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            pg_sys::UnlockRelationForExtension(rel, pg_sys::ExclusiveLock as i32);
            Locked { buf, exclusive: true }
        }
    }

    pub fn block(&self) -> u32 {
        // SAFETY: a pinned buffer.
        unsafe { pg_sys::BufferGetBlockNumber(self.buf) }
    }

    /// The page, for reading while the lock is held.
    pub fn page(&self) -> Page<'_> {
        // SAFETY: a pinned, locked buffer's page stays valid, and unchanged by others,
        // while we hold the lock; the view borrows the lock.
        Page { ptr: unsafe { pg_sys::BufferGetPage(self.buf) } as *const u8, _lock: std::marker::PhantomData }
    }

    /// The page, for writing directly (no WAL record): only an exclusively locked page
    /// that is logged as a whole afterwards (a build's), or initialised as new.
    pub fn page_mut(&mut self) -> PageMut<'_> {
        assert!(self.exclusive, "akidb_hnsw: a page written under a share lock");
        // SAFETY: as above, and nobody else may read or write it while we hold the
        // exclusive lock; the view borrows the lock mutably.
        PageMut { ptr: unsafe { pg_sys::BufferGetPage(self.buf) } as *mut u8, _lock: std::marker::PhantomData }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we hold the pin and the lock.
        unsafe { pg_sys::UnlockReleaseBuffer(self.buf) };
    }
}

/// Counts a block read that found its buffer through a hint, as ReadBuffer counts a hit
/// (pg_statio_all_indexes.idx_blks_hit, EXPLAIN BUFFERS already sees it).
fn count_hit(rel: pg_sys::Relation) {
    // SAFETY: rel is open; pgstat_info is null or this backend's pending counts for it
    // (the read of the metapage, through ReadBuffer, associated it if stats are on).
    unsafe {
        if let Some(stats) = (*rel).pgstat_info.as_mut() {
            #[cfg(feature = "pg15")]
            {
                stats.t_counts.t_blocks_fetched += 1;
                stats.t_counts.t_blocks_hit += 1;
            }
            #[cfg(not(feature = "pg15"))]
            {
                stats.counts.blocks_fetched += 1;
                stats.counts.blocks_hit += 1;
            }
        }
    }
}

/// The number of the relation's current file.
pub fn file_number(rel: pg_sys::Relation) -> u32 {
    #[cfg(feature = "pg15")]
    return u32::from(locator(rel).relNode);
    #[cfg(not(feature = "pg15"))]
    return u32::from(locator(rel).relNumber);
}

#[cfg(feature = "pg15")]
fn locator(rel: pg_sys::Relation) -> pg_sys::RelFileNode {
    // SAFETY: rel is open.
    unsafe { (*rel).rd_node }
}

#[cfg(not(feature = "pg15"))]
fn locator(rel: pg_sys::Relation) -> pg_sys::RelFileLocator {
    // SAFETY: rel is open.
    unsafe { (*rel).rd_locator }
}

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
    pub nodes: std::collections::HashMap<u64, UpperNode, std::hash::BuildHasherDefault<super::store::TidHasher>>,
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

/// A page to read: a locked buffer's, or a view of a page being written; it cannot
/// outlive what it borrows, and its items are shared slices.
#[derive(Clone, Copy)]
pub struct Page<'a> {
    ptr: *const u8,
    _lock: std::marker::PhantomData<&'a ()>,
}

fn u16_at(ptr: *const u8, off: usize) -> u16 {
    // SAFETY: off is inside the 8 KB page header.
    unsafe { std::ptr::read_unaligned(ptr.add(off) as *const u16) }
}

/// The bytes of item `offset` (1-based) of the page at `ptr`: (start, length), or None for
/// an unused or out-of-range line pointer.
fn item_range(ptr: *const u8, offset: u16) -> Option<(usize, usize)> {
    let max = (u16_at(ptr, 12) as usize).saturating_sub(PAGE_HEADER) / 4;
    if offset == 0 || offset as usize > max {
        return None;
    }
    // SAFETY: the line pointer array lies inside the page (offset <= max_offset).
    let lp = unsafe { std::ptr::read_unaligned(ptr.add(PAGE_HEADER + 4 * (offset as usize - 1)) as *const u32) };
    let (off, flags, len) = ((lp & 0x7fff) as usize, (lp >> 15) & 3, (lp >> 17) as usize);
    (flags == pg_sys::LP_NORMAL && off >= PAGE_HEADER && off + len <= BLOCK_SIZE && len > 0).then_some((off, len))
}

impl<'a> Page<'a> {
    pub fn is_new(&self) -> bool {
        u16_at(self.ptr, 14) == 0 // pd_upper
    }

    pub fn max_offset(&self) -> u16 {
        ((u16_at(self.ptr, 12) as usize).saturating_sub(PAGE_HEADER) / 4) as u16
    }

    /// Item `offset` (1-based), or None for an unused or out-of-range line pointer.
    pub fn item(&self, offset: u16) -> Option<&'a [u8]> {
        let (off, len) = item_range(self.ptr, offset)?;
        // SAFETY: a normal line pointer's item lies inside the page (checked), which
        // stays valid and unchanged for 'a.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) })
    }

    pub fn special(&self) -> &'a [u8] {
        let special = (u16_at(self.ptr, 16) as usize).min(BLOCK_SIZE);
        // SAFETY: pd_special is inside the page.
        unsafe { std::slice::from_raw_parts(self.ptr.add(special), BLOCK_SIZE - special) }
    }

    pub fn kind(&self) -> Option<u16> {
        format::decode_opaque(self.special())
    }

    /// Free bytes for one more item (PostgreSQL's PageGetFreeSpace).
    pub fn free_space(&self) -> usize {
        let (lower, upper) = (u16_at(self.ptr, 12) as usize, u16_at(self.ptr, 14) as usize);
        upper.saturating_sub(lower).saturating_sub(4)
    }

    pub fn meta(&self) -> Result<Meta, format::FormatError> {
        // SAFETY: the metapage contents follow the page header.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.add(PAGE_HEADER), format::META_SIZE) };
        Meta::decode(bytes)
    }
}

/// A page to write: an exclusively locked new page, or a GenericXLog working copy. Only
/// one item can be borrowed for writing at a time, and none outlives the page.
pub struct PageMut<'a> {
    ptr: *mut u8,
    _lock: std::marker::PhantomData<&'a mut ()>,
}

impl PageMut<'_> {
    /// The page as it is now, to read.
    pub fn view(&self) -> Page<'_> {
        Page { ptr: self.ptr, _lock: std::marker::PhantomData }
    }

    /// Item `offset` (1-based) to change in place, or None (see [`Page::item`]).
    pub fn item_mut(&mut self, offset: u16) -> Option<&mut [u8]> {
        let (off, len) = item_range(self.ptr, offset)?;
        // SAFETY: as in Page::item; the borrow of self makes it the only one.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) })
    }

    /// Initialises an empty akidb page of `kind`.
    pub fn init(&mut self, kind: u16) {
        // SAFETY: a whole page we own exclusively.
        unsafe {
            pg_sys::PageInit(self.ptr as pg_sys::Page, BLOCK_SIZE, SPECIAL_SIZE);
            let special = u16_at(self.ptr, 16) as usize;
            std::ptr::copy_nonoverlapping(format::encode_opaque(kind).as_ptr(), self.ptr.add(special), SPECIAL_SIZE);
        }
    }

    /// Appends an item; returns its offset. Errors (never silently drops) if it does not fit.
    pub fn add(&mut self, data: &[u8]) -> u16 {
        // SAFETY: PageAddItemExtended copies `data` into a page we hold exclusively.
        let off = unsafe {
            pg_sys::PageAddItemExtended(self.ptr as pg_sys::Page, data.as_ptr() as pg_sys::Item, data.len(), pg_sys::InvalidOffsetNumber, 0)
        };
        if off == pg_sys::InvalidOffsetNumber {
            crate::error::raise_index(IndexError::TupleDoesNotFit(data.len()));
        }
        off
    }

    pub fn set_meta(&mut self, meta: &Meta) {
        let bytes = meta.encode();
        // SAFETY: writes the metapage contents and moves pd_lower past them, as
        // PostgreSQL expects of pages whose contents are not items.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(PAGE_HEADER), bytes.len());
            std::ptr::write_unaligned(self.ptr.add(12) as *mut u16, (PAGE_HEADER + bytes.len()) as u16);
        }
    }
}

/// A GenericXLog record over up to four buffers; aborted on drop unless finished.
pub struct Wal {
    state: *mut pg_sys::GenericXLogState,
}

impl Wal {
    pub fn start(rel: pg_sys::Relation) -> Wal {
        // SAFETY: rel is an open index relation.
        Wal { state: unsafe { pg_sys::GenericXLogStart(rel) } }
    }

    /// The working copy of `buf`'s page to modify (`fresh`: the page is rewritten whole);
    /// it lives as long as this record is being made.
    pub fn page(&mut self, buf: &Locked, fresh: bool) -> PageMut<'_> {
        assert!(buf.exclusive, "akidb_hnsw: a WAL record for a page under a share lock");
        let flags = if fresh { pg_sys::GENERIC_XLOG_FULL_IMAGE as i32 } else { 0 };
        // SAFETY: buf is exclusively locked by us for the life of this record; the working
        // copy belongs to the record (freed by finish or abort, after this borrow ends).
        let ptr = unsafe { pg_sys::GenericXLogRegisterBuffer(self.state, buf.buf, flags) } as *mut u8;
        PageMut { ptr, _lock: std::marker::PhantomData }
    }

    pub fn finish(mut self) {
        // SAFETY: applies the changes and writes the record; the state is consumed.
        unsafe { pg_sys::GenericXLogFinish(self.state) };
        self.state = std::ptr::null_mut();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.state.is_null() {
            // SAFETY: an unfinished record: discard the working copies.
            unsafe { pg_sys::GenericXLogAbort(self.state) };
        }
    }
}

pub fn read_meta(rel: pg_sys::Relation) -> Meta {
    let b = Locked::read(rel, META_BLOCK, false);
    match b.page().meta() {
        Ok(m) => m,
        Err(e) => crate::error::raise_index(IndexError::Corrupted(format!("metapage: {e}"))),
    }
}

/// Changes the metapage under an exclusive lock, in one WAL record: `change` gets the
/// current contents and returns whether it changed them (nothing is written if not).
pub fn update_meta(rel: pg_sys::Relation, change: impl FnOnce(&mut Meta) -> bool) {
    let b = Locked::read(rel, META_BLOCK, true);
    let mut wal = Wal::start(rel);
    let mut page = wal.page(&b, false);
    if let Ok(mut meta) = page.view().meta() {
        if change(&mut meta) {
            page.set_meta(&meta);
            wal.finish();
        }
    }
}

/// The number of blocks in the index's main fork.
pub fn nblocks(rel: pg_sys::Relation) -> u32 {
    // SAFETY: rel is open.
    unsafe { pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM) }
}

/// Reads a tuple's bytes (copied) under a share lock.
pub fn read_tuple(rel: pg_sys::Relation, tid: Tid) -> Option<Vec<u8>> {
    let b = Locked::read(rel, tid.block, false);
    b.page().item(tid.offset).map(|s| s.to_vec())
}
