//! Buffers, pages and WAL for the index: pinned+locked buffers that release themselves,
//! the page layout read directly (header, line pointers, items, special space), and
//! GenericXLog records for every change to an existing page.

use akidb_core::hnsw::error::IndexError;
use akidb_core::hnsw::format::{self, Meta, BLOCK_SIZE, META_BLOCK, SPECIAL_SIZE};
use akidb_core::hnsw::pages::{Change, PageRead, PageWrite, Pages};
use pgrx::pg_sys;

pub const PAGE_HEADER: usize = 24;

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

    /// A buffer this backend pinned and share-locked itself (a scan's hinted read).
    ///
    /// # Safety
    /// `buf` must be pinned and share-locked by this backend, and released by nobody else.
    pub unsafe fn share_locked(buf: pg_sys::Buffer) -> Locked {
        Locked { buf, exclusive: false }
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
pub fn count_hit(rel: pg_sys::Relation) {
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
pub fn locator(rel: pg_sys::Relation) -> pg_sys::RelFileNode {
    // SAFETY: rel is open.
    unsafe { (*rel).rd_node }
}

#[cfg(not(feature = "pg15"))]
pub fn locator(rel: pg_sys::Relation) -> pg_sys::RelFileLocator {
    // SAFETY: rel is open.
    unsafe { (*rel).rd_locator }
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
        self.try_add(data).unwrap_or_else(|e| crate::error::raise_index(e))
    }

    /// Appends an item; returns its offset, or an error if it does not fit.
    pub fn try_add(&mut self, data: &[u8]) -> Result<u16, IndexError> {
        // SAFETY: PageAddItemExtended copies `data` into a page we hold exclusively.
        let off = unsafe {
            pg_sys::PageAddItemExtended(self.ptr as pg_sys::Page, data.as_ptr() as pg_sys::Item, data.len(), pg_sys::InvalidOffsetNumber, 0)
        };
        if off == pg_sys::InvalidOffsetNumber {
            return Err(IndexError::TupleDoesNotFit(data.len()));
        }
        Ok(off)
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

/// The number of blocks in the index's main fork.
pub fn nblocks(rel: pg_sys::Relation) -> u32 {
    // SAFETY: rel is open.
    unsafe { pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM) }
}

impl PageRead for Page<'_> {
    fn is_new(&self) -> bool {
        Page::is_new(self)
    }
    fn max_offset(&self) -> u16 {
        Page::max_offset(self)
    }
    fn item(&self, offset: u16) -> Option<&[u8]> {
        Page::item(self, offset)
    }
    fn kind(&self) -> Option<u16> {
        Page::kind(self)
    }
    fn free_space(&self) -> usize {
        Page::free_space(self)
    }
    fn meta(&self) -> Result<Meta, format::FormatError> {
        Page::meta(self)
    }
}

impl PageRead for PageMut<'_> {
    fn is_new(&self) -> bool {
        self.view().is_new()
    }
    fn max_offset(&self) -> u16 {
        self.view().max_offset()
    }
    fn item(&self, offset: u16) -> Option<&[u8]> {
        let (off, len) = item_range(self.ptr, offset)?;
        // SAFETY: as in Page::item; the slice borrows self, so no item_mut meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) })
    }
    fn kind(&self) -> Option<u16> {
        self.view().kind()
    }
    fn free_space(&self) -> usize {
        self.view().free_space()
    }
    fn meta(&self) -> Result<Meta, format::FormatError> {
        self.view().meta()
    }
}

impl PageWrite for PageMut<'_> {
    fn item_mut(&mut self, offset: u16) -> Option<&mut [u8]> {
        PageMut::item_mut(self, offset)
    }
    fn init(&mut self, kind: u16) {
        PageMut::init(self, kind)
    }
    fn add(&mut self, data: &[u8]) -> Result<u16, IndexError> {
        self.try_add(data)
    }
    fn set_meta(&mut self, meta: &Meta) {
        PageMut::set_meta(self, meta)
    }
}

/// The index's pages for the core's algorithms: PostgreSQL's buffers, one locked at a
/// time, and a GenericXLog record for each change kept.
pub struct PgPages(pub pg_sys::Relation);

impl Pages for PgPages {
    fn nblocks(&self) -> u32 {
        nblocks(self.0)
    }

    fn read<R>(&self, block: u32, read: impl FnOnce(&dyn PageRead) -> R) -> R {
        let b = Locked::read(self.0, block, false);
        read(&b.page())
    }

    fn write<R>(&self, block: u32, write: impl FnOnce(&mut dyn PageWrite) -> Change<R>) -> R {
        let b = Locked::read(self.0, block, true);
        let mut wal = Wal::start(self.0);
        let mut page = wal.page(&b, false);
        match write(&mut page) {
            Change::Keep(r) => {
                wal.finish();
                r
            }
            // Dropped with the record: the working copy is discarded.
            Change::Drop(r) => r,
        }
    }

    fn extend<R>(&self, write: impl FnOnce(u32, &mut dyn PageWrite) -> R) -> R {
        let b = Locked::extend(self.0, pg_sys::ForkNumber::MAIN_FORKNUM);
        let mut wal = Wal::start(self.0);
        let mut page = wal.page(&b, true);
        let r = write(b.block(), &mut page);
        wal.finish();
        r
    }

    fn check_for_interrupts(&self) {
        pgrx::check_for_interrupts!();
    }
}
