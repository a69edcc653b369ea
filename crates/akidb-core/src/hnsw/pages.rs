//! The index's pages as the algorithms that change the graph see them (insert, link-back,
//! slot reuse): numbered blocks of items, read under a share lock, changed under an
//! exclusive one with every change to a page one atomic record. The extension implements
//! [`Pages`] over PostgreSQL's buffers, locks and GenericXLog; [`MemPages`] keeps the
//! pages in memory, so the algorithms get plain unit tests, concurrent ones included.
//!
//! The contract the algorithms rely on, as PostgreSQL's buffer manager gives it: one
//! page is locked at a time (so nothing deadlocks), a page read under its lock does not
//! change until the lock goes, and a change made under [`Pages::write`] is seen by every
//! later reader or not at all.

use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::error::IndexError;
use super::format::{self, FormatError, Meta, BLOCK_SIZE, META_BLOCK, PAGE_META, SPECIAL_SIZE};

/// A page to read: items by 1-based offset.
pub trait PageRead {
    /// A page that was added but never initialised (a crash between extend and init).
    fn is_new(&self) -> bool;
    fn max_offset(&self) -> u16;
    /// Item `offset`, or None for an unused or out-of-range line pointer.
    fn item(&self, offset: u16) -> Option<&[u8]>;
    /// The page kind in its special space (None: not an akidb page).
    fn kind(&self) -> Option<u16>;
    /// Free bytes for one more item, its line pointer counted (PageGetFreeSpace).
    fn free_space(&self) -> usize;
    fn meta(&self) -> Result<Meta, FormatError>;
}

/// A page to change: items change in place (same length) or are appended.
pub trait PageWrite: PageRead {
    fn item_mut(&mut self, offset: u16) -> Option<&mut [u8]>;
    /// Makes it an empty akidb page of `kind`.
    fn init(&mut self, kind: u16);
    /// Appends an item and returns its offset; an error if it does not fit.
    fn add(&mut self, data: &[u8]) -> Result<u16, IndexError>;
    fn set_meta(&mut self, meta: &Meta);
}

/// What the closure of [`Pages::write`] decides: keep its changes (one record) or drop them.
pub enum Change<R> {
    Keep(R),
    Drop(R),
}

/// The pages of one index.
pub trait Pages {
    fn nblocks(&self) -> u32;
    /// `read` over `block`'s page, share-locked.
    fn read<R>(&self, block: u32, read: impl FnOnce(&dyn PageRead) -> R) -> R;
    /// `write` over `block`'s page, exclusively locked; what it keeps is one atomic change.
    fn write<R>(&self, block: u32, write: impl FnOnce(&mut dyn PageWrite) -> Change<R>) -> R;
    /// A new page at the end, exclusively locked, its block number and the page to write
    /// whole (initialised by `write`), kept as one change.
    fn extend<R>(&self, write: impl FnOnce(u32, &mut dyn PageWrite) -> R) -> R;
    /// Raises the pending cancel, if any (long loops call it).
    fn check_for_interrupts(&self) {}
}

/// A copy of the tuple at `tid` (read under its page's share lock). Tids come from the
/// index itself: a block beyond the end is the store's error (PostgreSQL's ERROR).
pub fn read_tuple<P: Pages + ?Sized>(pages: &P, tid: format::Tid) -> Option<Vec<u8>> {
    if !tid.is_valid() {
        return None;
    }
    pages.read(tid.block, |p| p.item(tid.offset).map(<[u8]>::to_vec))
}

/// The metapage's contents.
pub fn read_meta<P: Pages + ?Sized>(pages: &P) -> Result<Meta, IndexError> {
    pages.read(META_BLOCK, |p| p.meta()).map_err(|e| IndexError::Corrupted(format!("metapage: {e}")))
}

/// Changes the metapage: `change` gets the current contents and returns whether it
/// changed them (nothing is written if not).
pub fn update_meta<P: Pages + ?Sized>(pages: &P, change: impl FnOnce(&mut Meta) -> bool) -> Result<(), IndexError> {
    pages.write(META_BLOCK, |p| match p.meta() {
        Ok(mut meta) => {
            if change(&mut meta) {
                p.set_meta(&meta);
                Change::Keep(Ok(()))
            } else {
                Change::Drop(Ok(()))
            }
        }
        Err(e) => Change::Drop(Err(IndexError::Corrupted(format!("metapage: {e}")))),
    })
}

/// Overwrites the tuple at `tid` with `after` (same size) if it still equals `before`:
/// the compare-and-swap every change of a shared tuple goes through.
pub fn replace_tuple<P: Pages + ?Sized>(pages: &P, tid: format::Tid, before: &[u8], after: &[u8]) -> bool {
    pages.write(tid.block, |p| match p.item_mut(tid.offset) {
        Some(item) if item == before && item.len() == after.len() => {
            item.copy_from_slice(after);
            Change::Keep(true)
        }
        _ => Change::Drop(false),
    })
}

/// The metapage of an index with no elements yet.
pub fn empty_meta(metric: super::Metric, dims: usize, m: usize, ef_construction: usize) -> Meta {
    Meta {
        dims: dims as u32,
        m: m as u16,
        ef_construction: ef_construction as u16,
        metric,
        entry: format::Tid::INVALID,
        entry_level: 0,
        insert_block: META_BLOCK + 1,
        free_block: META_BLOCK,
        reuse_epoch: 0,
    }
}

/// Bytes a page header takes (PostgreSQL's).
const PAGE_HEADER: usize = 24;

/// One page in memory, laid out by the same rules as PostgreSQL's (line pointers of 4
/// bytes, MAXALIGNed items, the special space at the end), so what fits on one fits on
/// the other.
#[derive(Clone, Debug, Default)]
pub struct MemPage {
    initialised: bool,
    kind: Option<u16>,
    items: Vec<Vec<u8>>,
    meta: Option<[u8; format::META_SIZE]>,
}

impl MemPage {
    fn used(&self) -> usize {
        let meta = if self.meta.is_some() { format::META_SIZE } else { 0 };
        PAGE_HEADER + SPECIAL_SIZE + meta + self.items.iter().map(|i| 4 + i.len().div_ceil(8) * 8).sum::<usize>()
    }
}

impl PageRead for MemPage {
    fn is_new(&self) -> bool {
        !self.initialised
    }
    fn max_offset(&self) -> u16 {
        self.items.len() as u16
    }
    fn item(&self, offset: u16) -> Option<&[u8]> {
        (offset as usize).checked_sub(1).and_then(|i| self.items.get(i)).map(Vec::as_slice)
    }
    fn kind(&self) -> Option<u16> {
        self.kind
    }
    fn free_space(&self) -> usize {
        BLOCK_SIZE.saturating_sub(self.used()).saturating_sub(4)
    }
    fn meta(&self) -> Result<Meta, FormatError> {
        Meta::decode(self.meta.as_ref().map_or(&[][..], |m| &m[..]))
    }
}

impl PageWrite for MemPage {
    fn item_mut(&mut self, offset: u16) -> Option<&mut [u8]> {
        (offset as usize).checked_sub(1).and_then(|i| self.items.get_mut(i)).map(Vec::as_mut_slice)
    }
    fn init(&mut self, kind: u16) {
        *self = MemPage { initialised: true, kind: Some(kind), ..MemPage::default() };
    }
    fn add(&mut self, data: &[u8]) -> Result<u16, IndexError> {
        if !self.initialised || data.is_empty() || data.len().div_ceil(8) * 8 > self.free_space() {
            return Err(IndexError::TupleDoesNotFit(data.len()));
        }
        self.items.push(data.to_vec());
        Ok(self.items.len() as u16)
    }
    fn set_meta(&mut self, meta: &Meta) {
        self.meta = Some(meta.encode());
    }
}

/// An index's pages in memory, safe to share between threads. Each page has its own
/// lock; a write works on a copy that replaces the page only if kept.
#[derive(Default)]
pub struct MemPages {
    pages: RwLock<Vec<Arc<Mutex<MemPage>>>>,
    /// Kept writes, and writes dropped because the compare in a compare-and-swap failed
    /// or the closure changed its mind (how much contention a test saw).
    pub kept: AtomicU64,
    pub dropped: AtomicU64,
}

impl MemPages {
    /// An empty index: its metapage only.
    pub fn new(meta: &Meta) -> MemPages {
        let pages = MemPages::default();
        pages.extend(|_, p| {
            p.init(PAGE_META);
            p.set_meta(meta);
        });
        pages
    }

    fn page(&self, block: u32) -> Arc<Mutex<MemPage>> {
        let pages = self.pages.read();
        match pages.get(block as usize) {
            Some(p) => p.clone(),
            None => panic!("block {block} read beyond the end ({} blocks)", pages.len()),
        }
    }

    /// A copy of a page as it is now (tests look at it, or damage it with [`MemPages::put`]).
    pub fn get(&self, block: u32) -> MemPage {
        self.page(block).lock().clone()
    }

    pub fn put(&self, block: u32, page: MemPage) {
        *self.page(block).lock() = page;
    }
}

impl Pages for MemPages {
    fn nblocks(&self) -> u32 {
        self.pages.read().len() as u32
    }

    fn read<R>(&self, block: u32, read: impl FnOnce(&dyn PageRead) -> R) -> R {
        let page = self.page(block);
        let guard = page.lock();
        read(&*guard)
    }

    fn write<R>(&self, block: u32, write: impl FnOnce(&mut dyn PageWrite) -> Change<R>) -> R {
        let page = self.page(block);
        let mut guard = page.lock();
        let mut copy = guard.clone();
        match write(&mut copy) {
            Change::Keep(r) => {
                *guard = copy;
                self.kept.fetch_add(1, Ordering::Relaxed);
                r
            }
            Change::Drop(r) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                r
            }
        }
    }

    fn extend<R>(&self, write: impl FnOnce(u32, &mut dyn PageWrite) -> R) -> R {
        // The new page is locked before it is visible, as a new buffer is.
        let page = Arc::new(Mutex::new(MemPage::default()));
        let mut guard = page.lock();
        let block = {
            let mut pages = self.pages.write();
            pages.push(page.clone());
            pages.len() as u32 - 1
        };
        write(block, &mut *guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hnsw::format::{Tid, PAGE_GRAPH};
    use crate::hnsw::Metric;

    fn meta() -> Meta {
        empty_meta(Metric::L2, 3, 16, 64)
    }

    #[test]
    fn pages_fill_as_postgres_pages_do() {
        let pages = MemPages::new(&meta());
        assert_eq!(read_meta(&pages).unwrap(), meta());
        let block = pages.extend(|b, p| {
            p.init(PAGE_GRAPH);
            b
        });
        // 8192 - 24 header - 8 special = 8160; each 100-byte item takes 104 + 4.
        let mut n = 0;
        while pages.write(block, |p| match p.add(&[7u8; 100]) {
            Ok(_) => Change::Keep(true),
            Err(_) => Change::Drop(false),
        }) {
            n += 1;
        }
        assert_eq!(n, 8160 / 108);
        let tid = Tid { block, offset: 3 };
        assert_eq!(read_tuple(&pages, tid).unwrap(), vec![7u8; 100]);
        assert!(!replace_tuple(&pages, tid, &[8u8; 100], &[9u8; 100]), "the compare fails");
        assert!(replace_tuple(&pages, tid, &[7u8; 100], &[9u8; 100]));
        assert_eq!(read_tuple(&pages, tid).unwrap(), vec![9u8; 100]);
        assert_eq!(read_tuple(&pages, Tid { block, offset: 0 }), None);
        assert_eq!(read_tuple(&pages, Tid { block, offset: n as u16 + 1 }), None);
    }

    #[test]
    fn a_dropped_write_leaves_the_page_as_it_was() {
        let pages = MemPages::new(&meta());
        update_meta(&pages, |m| {
            m.entry_level = 3;
            false
        })
        .unwrap();
        assert_eq!(read_meta(&pages).unwrap().entry_level, 0);
        update_meta(&pages, |m| {
            m.entry_level = 3;
            true
        })
        .unwrap();
        assert_eq!(read_meta(&pages).unwrap().entry_level, 3);
    }
}
