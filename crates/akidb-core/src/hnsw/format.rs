//! The on-disk format of an `akidb_hnsw` index, in one place. Version 2.
//!
//! Block 0 is the metapage; every other block holds element, vector-chunk and neighbour
//! tuples (PostgreSQL pages: header, line pointers, tuples, an 8-byte special space).
//!
//! ```text
//! metapage contents  Meta: magic "AKH1", version u32, dims u32, m u16, ef_construction
//!                    u16, metric u8, entry level u8, pad(2), entry point tid (6), pad(2),
//!                    insert block u32 (last block with room), free block u32 (first
//!                    block with a reusable element slot, 0: none), reuse epoch u32
//! special space      page magic u16 0xA41D, page kind u16 (1 meta, 2 graph), pad(4)
//! element tuple      kind=1 | level | state (0 live, 1 deleted, 2 free, 3 claimed: see
//!                    [`STATE_LIVE`]) | heap tid count | up to 10 heap tids (6 each,
//!                    identical vectors share an element) | neighbours tid (6) |
//!                    next chunk tid (6) | inline count u16 | dims u16 | code length u16 |
//!                    pad(2) | code min f32 | code scale f32 | code error f32 | more heap
//!                    tids: tid of the first heap-tid tuple (6) | pad(2) | code (u8 each,
//!                    padded to 4) | inline f32s
//! heap-tid tuple     kind=4 | pad(3) | next heap-tid tuple (6) | pad(2) | count u16 |
//!                    capacity u16 | capacity heap tids (6 each): the rows of an element
//!                    beyond its first 10 (any number of identical vectors share one)
//! chunk tuple        kind=3 | pad(3) | next chunk tid (8) | count u16 | pad(2) | f32s
//! neighbour tuple    kind=2 | level | pad(2) | slots: level 0 has 2m, each level above m,
//!                    6 bytes each (block u32, offset u16); empty slots are INVALID
//! ```
//!
//! A tid is stored as block u32 + offset u16. An element and its neighbour tuple always
//! share a page. An element carries the 8-bit code of its vector ([`Code`]) whenever the
//! code fits beside its neighbour tuple ([`code_len`]: up to about 7,000 dimensions);
//! searches walk the graph on codes and re-rank with the float4 values, which such an
//! element keeps in chunk tuples (read only to re-rank). An element without a code holds
//! the values that fit beside it ([`inline_count`]) and continues in chunk tuples, so
//! 16,000-dimension vectors are indexable. All integers are little-endian.

use super::Metric;
pub use crate::distance::Code;

pub const MAGIC: u32 = 0x414B_4831; // "AKH1"
pub const VERSION: u32 = 2;
pub const META_BLOCK: u32 = 0;
pub const PAGE_MAGIC: u16 = 0xA41D;
pub const PAGE_META: u16 = 1;
pub const PAGE_GRAPH: u16 = 2;

pub const BLOCK_SIZE: usize = 8192;
const PAGE_HEADER: usize = 24;
pub const SPECIAL_SIZE: usize = 8;
const LINE_POINTER: usize = 4;
/// Room for tuples on an empty graph page.
pub const PAGE_ROOM: usize = BLOCK_SIZE - PAGE_HEADER - SPECIAL_SIZE;
/// Largest tuple akidb writes (leaves room for the line pointer, rounded down).
pub const MAX_TUPLE: usize = 8000;

/// Heap rows one element can stand for (rows with identical vectors share it).
pub const MAX_HEAP_TIDS: usize = 10;
const ELEMENT_HEADER: usize = 4 + 6 * MAX_HEAP_TIDS + 6 + 6 + 4 + 16 + 8;
/// Where the tid of an element's first heap-tid tuple is.
const OVERFLOW_FIELD: usize = CODE_FIELDS + 16;
const TIDS_HEADER: usize = 16;
/// Heap tids a heap-tid tuple has room for (616 bytes).
pub const TIDS_CAPACITY: usize = 100;
/// Where the code's fields start in an element tuple.
const CODE_FIELDS: usize = 4 + 6 * MAX_HEAP_TIDS + 6 + 6 + 4;
const CHUNK_HEADER: usize = 16;
pub const MAX_CHUNK: usize = (MAX_TUPLE - CHUNK_HEADER) / 4;
/// Neighbour tuples stay under this size (it bounds the levels for large m).
const MAX_NEIGHBORS_TUPLE: usize = 4000;

/// The highest level a node may have for `m` (its neighbour tuple must fit a page
/// beside its element).
pub fn max_level(m: usize) -> u8 {
    let slots = (MAX_NEIGHBORS_TUPLE - 4) / 6;
    ((slots / m.max(1)).saturating_sub(2)).min(super::MAX_LEVEL as usize) as u8
}

fn maxalign_room(len: usize) -> usize {
    (len + 7) / 8 * 8 + LINE_POINTER
}

fn round4(n: usize) -> usize {
    (n + 3) & !3
}

/// The length of the code an element of `level` carries: `dims` if the element with its
/// code fits one page beside its neighbour tuple, else 0 (no code).
pub fn code_len(dims: usize, level: u8, m: usize) -> usize {
    let size = ELEMENT_HEADER + round4(dims);
    let fits = size <= MAX_TUPLE && maxalign_room(size) + maxalign_room(neighbors_size(level, m)) <= PAGE_ROOM;
    if fits && dims <= u16::MAX as usize {
        dims
    } else {
        0
    }
}

/// How many of `dims` values an element of `level` holds itself; the rest go to chunk
/// tuples. None if it carries a code (all its values are in chunks), else as many as
/// fit so that it and its neighbour tuple share one page.
pub fn inline_count(dims: usize, level: u8, m: usize) -> usize {
    if code_len(dims, level, m) > 0 {
        return 0;
    }
    let left = PAGE_ROOM - maxalign_room(neighbors_size(level, m)) - LINE_POINTER - ELEMENT_HEADER;
    let fit = (left / 8 * 8) / 4;
    dims.min(fit).min((MAX_TUPLE - ELEMENT_HEADER) / 4)
}

pub const KIND_ELEMENT: u8 = 1;
pub const KIND_NEIGHBORS: u8 = 2;
pub const KIND_CHUNK: u8 = 3;
pub const KIND_TIDS: u8 = 4;

/// An item pointer: block and 1-based line pointer offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    pub const INVALID: Tid = Tid { block: u32::MAX, offset: 0 };
    pub fn is_valid(self) -> bool {
        self.block != u32::MAX && self.offset != 0
    }
    /// As a graph node id for [`super::search`].
    pub fn node(self) -> u64 {
        ((self.block as u64) << 16) | self.offset as u64
    }
    pub fn from_node(n: u64) -> Tid {
        Tid { block: (n >> 16) as u32, offset: (n & 0xffff) as u16 }
    }
    fn put(self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.block.to_le_bytes());
        b[4..6].copy_from_slice(&self.offset.to_le_bytes());
    }
    fn get(b: &[u8]) -> Tid {
        Tid { block: u32::from_le_bytes(b[0..4].try_into().unwrap()), offset: u16::from_le_bytes([b[4], b[5]]) }
    }
}

/// The metapage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    pub dims: u32,
    pub m: u16,
    pub ef_construction: u16,
    pub metric: Metric,
    pub entry: Tid,
    pub entry_level: u8,
    /// Where inserts look for room first.
    pub insert_block: u32,
    /// The first block where VACUUM left a free element slot ([`STATE_FREE`]) for inserts
    /// to reuse; META_BLOCK when there is none.
    pub free_block: u32,
    /// Counts the reuses of slots of upper-level elements (a scan's cache of upper-level
    /// nodes is valid only while it stays the same).
    pub reuse_epoch: u32,
}

pub const META_SIZE: usize = 40;

#[derive(Debug, Clone, PartialEq)]
pub enum FormatError {
    BadMagic(u32),
    UnsupportedVersion(u32),
    BadMetric(u8),
    Truncated(&'static str),
    BadKind { expected: u8, found: u8 },
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::BadMagic(m) => write!(f, "metapage magic is {m:#x}, not an akidb_hnsw index"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "index format version {v}; this akidb reads version {VERSION}: REINDEX it")
            }
            FormatError::BadMetric(c) => write!(f, "unknown metric code {c}"),
            FormatError::Truncated(what) => write!(f, "{what} tuple is truncated"),
            FormatError::BadKind { expected, found } => write!(f, "tuple kind {found}, expected {expected}"),
        }
    }
}

impl Meta {
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.dims.to_le_bytes());
        b[12..14].copy_from_slice(&self.m.to_le_bytes());
        b[14..16].copy_from_slice(&self.ef_construction.to_le_bytes());
        b[16] = self.metric.code();
        b[17] = self.entry_level;
        self.entry.put(&mut b[20..26]);
        b[28..32].copy_from_slice(&self.insert_block.to_le_bytes());
        b[32..36].copy_from_slice(&self.free_block.to_le_bytes());
        b[36..40].copy_from_slice(&self.reuse_epoch.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Meta, FormatError> {
        if b.len() < META_SIZE {
            return Err(FormatError::Truncated("meta"));
        }
        let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let version = u32::from_le_bytes(b[4..8].try_into().unwrap());
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(Meta {
            dims: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            m: u16::from_le_bytes([b[12], b[13]]),
            ef_construction: u16::from_le_bytes([b[14], b[15]]),
            metric: Metric::from_code(b[16]).ok_or(FormatError::BadMetric(b[16]))?,
            entry_level: b[17],
            entry: Tid::get(&b[20..26]),
            insert_block: u32::from_le_bytes(b[28..32].try_into().unwrap()),
            free_block: u32::from_le_bytes(b[32..36].try_into().unwrap()),
            reuse_epoch: u32::from_le_bytes(b[36..40].try_into().unwrap()),
        })
    }
}

/// The special space of every page.
pub fn encode_opaque(kind: u16) -> [u8; SPECIAL_SIZE] {
    let mut b = [0u8; SPECIAL_SIZE];
    b[0..2].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    b[2..4].copy_from_slice(&kind.to_le_bytes());
    b
}

pub fn decode_opaque(b: &[u8]) -> Option<u16> {
    (b.len() >= 4 && u16::from_le_bytes([b[0], b[1]]) == PAGE_MAGIC).then(|| u16::from_le_bytes([b[2], b[3]]))
}

/// An element's state (byte 2 of its tuple). Anything but live is "deleted" to a reader.
pub const STATE_LIVE: u8 = 0;
/// Its rows are dead (VACUUM); live elements may still link to it until VACUUM repairs them.
pub const STATE_DELETED: u8 = 1;
/// Deleted, and no live element links to it any more (VACUUM repaired them): an insert
/// may put a new element in its place, with its neighbour tuple and vector chunks.
pub const STATE_FREE: u8 = 2;
/// A free slot an insert took and is filling (its chunks first, then the element); a
/// crash in between leaves it so, and the next VACUUM frees it again.
pub const STATE_CLAIMED: u8 = 3;

/// The state of an encoded element (parsed with [`ElementHead::parse`] first).
pub fn element_state(b: &[u8]) -> u8 {
    b[2]
}

/// Sets the state of an encoded element, in place.
pub fn set_state(b: &mut [u8], state: u8) {
    b[2] = state;
}

/// Overwrites the values of an encoded chunk in place (same count); false if the count differs.
pub fn set_chunk_values(b: &mut [u8], values: &[f32]) -> bool {
    if b.len() < CHUNK_HEADER || u16::from_le_bytes([b[12], b[13]]) as usize != values.len() || b.len() < CHUNK_HEADER + 4 * values.len() {
        return false;
    }
    for (i, v) in values.iter().enumerate() {
        b[CHUNK_HEADER + 4 * i..CHUNK_HEADER + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    true
}

/// Neighbour lists encoded into a tuple of `len` bytes (at least [`neighbors_size`]:
/// a reused slot of a higher level keeps its size; the extra slots stay INVALID).
pub fn encode_neighbors_into(level: u8, m: usize, lists: &[Vec<Tid>], len: usize) -> Vec<u8> {
    let mut b = encode_neighbors(level, m, lists);
    while b.len() + 6 <= len {
        let mut t = [0u8; 6];
        Tid::INVALID.put(&mut t);
        b.extend_from_slice(&t);
    }
    b.resize(len, 0);
    b
}

/// An element: one indexed vector and the heap rows that hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub level: u8,
    pub deleted: bool,
    pub heap_tids: Vec<Tid>,
    /// The first heap-tid tuple (rows beyond the first [`MAX_HEAP_TIDS`]), or INVALID.
    pub more_tids: Tid,
    pub neighbors: Tid,
    pub next_chunk: Tid,
    pub dims: u16,
    /// The 8-bit code of the whole vector, if the element carries one ([`code_len`]).
    pub code: Option<Code>,
    /// The first [`inline_count`] values.
    pub inline: Vec<f32>,
}

pub fn element_size(code_len: usize, inline: usize) -> usize {
    ELEMENT_HEADER + round4(code_len) + 4 * inline
}

/// Sizes of the chunk tuples for the values after the first `inline` of `dims`.
pub fn chunk_sizes(dims: usize, inline: usize) -> Vec<usize> {
    let mut rest = dims.saturating_sub(inline);
    let mut out = Vec::new();
    while rest > 0 {
        let n = rest.min(MAX_CHUNK);
        out.push(CHUNK_HEADER + 4 * n);
        rest -= n;
    }
    out
}

/// How many chunk tuples hold the values after the first `inline` of `dims`.
pub fn chunk_count(dims: usize, inline: usize) -> usize {
    dims.saturating_sub(inline).div_ceil(MAX_CHUNK)
}

pub fn neighbors_size(level: u8, m: usize) -> usize {
    4 + 6 * slots(level, m)
}

fn slots(level: u8, m: usize) -> usize {
    2 * m + level as usize * m
}

impl Element {
    pub fn encode(&self) -> Vec<u8> {
        let code = self.code.as_ref().map_or(&[][..], |c| c.bytes.as_slice());
        let mut b = vec![0u8; element_size(code.len(), self.inline.len())];
        b[0] = KIND_ELEMENT;
        b[1] = self.level;
        b[2] = self.deleted as u8;
        b[3] = self.heap_tids.len().min(MAX_HEAP_TIDS) as u8;
        for i in 0..MAX_HEAP_TIDS {
            self.heap_tids.get(i).copied().unwrap_or(Tid::INVALID).put(&mut b[4 + 6 * i..10 + 6 * i]);
        }
        let h = 4 + 6 * MAX_HEAP_TIDS;
        self.neighbors.put(&mut b[h..h + 6]);
        self.next_chunk.put(&mut b[h + 6..h + 12]);
        b[h + 12..h + 14].copy_from_slice(&(self.inline.len() as u16).to_le_bytes());
        b[h + 14..h + 16].copy_from_slice(&self.dims.to_le_bytes());
        let c = CODE_FIELDS;
        b[c..c + 2].copy_from_slice(&(code.len() as u16).to_le_bytes());
        if let Some(code) = &self.code {
            b[c + 4..c + 8].copy_from_slice(&code.min.to_le_bytes());
            b[c + 8..c + 12].copy_from_slice(&code.scale.to_le_bytes());
            b[c + 12..c + 16].copy_from_slice(&code.err.to_le_bytes());
        }
        self.more_tids.put(&mut b[OVERFLOW_FIELD..OVERFLOW_FIELD + 6]);
        b[ELEMENT_HEADER..ELEMENT_HEADER + code.len()].copy_from_slice(code);
        let start = ELEMENT_HEADER + round4(code.len());
        for (i, v) in self.inline.iter().enumerate() {
            b[start + 4 * i..start + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes the header only (no vector copy): for VACUUM and the checker.
    pub fn decode_header(b: &[u8]) -> Result<Element, FormatError> {
        let h = ElementHead::parse(b)?;
        Ok(Element {
            level: h.level,
            deleted: h.deleted,
            heap_tids: heap_tids(b).collect(),
            more_tids: h.more_tids,
            neighbors: h.neighbors,
            next_chunk: h.next_chunk,
            dims: h.dims,
            code: None,
            inline: Vec::new(),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Element, FormatError> {
        let mut e = Element::decode_header(b)?;
        e.code = element_code(b).map(|c| Code { min: c.min, scale: c.scale, err: c.err, bytes: c.bytes.to_vec() });
        push_values(inline_values(b), &mut e.inline);
        Ok(e)
    }
}

/// An element's fixed fields, read in place (no allocation: the scan reads hundreds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElementHead {
    pub level: u8,
    pub deleted: bool,
    pub more_tids: Tid,
    pub neighbors: Tid,
    pub next_chunk: Tid,
    pub dims: u16,
}

impl ElementHead {
    pub fn parse(b: &[u8]) -> Result<ElementHead, FormatError> {
        if b.len() < ELEMENT_HEADER {
            return Err(FormatError::Truncated("element"));
        }
        if b[0] != KIND_ELEMENT {
            return Err(FormatError::BadKind { expected: KIND_ELEMENT, found: b[0] });
        }
        let h = 4 + 6 * MAX_HEAP_TIDS;
        if b.len() < element_size(code_bytes(b), inline_len(b)) || b[3] as usize > MAX_HEAP_TIDS {
            return Err(FormatError::Truncated("element"));
        }
        Ok(ElementHead {
            level: b[1],
            deleted: b[2] != 0,
            more_tids: Tid::get(&b[OVERFLOW_FIELD..OVERFLOW_FIELD + 6]),
            neighbors: Tid::get(&b[h..h + 6]),
            next_chunk: Tid::get(&b[h + 6..h + 12]),
            dims: u16::from_le_bytes([b[h + 14], b[h + 15]]),
        })
    }
}

/// The heap rows of an encoded element (parsed with [`ElementHead::parse`] first).
pub fn heap_tids(b: &[u8]) -> impl Iterator<Item = Tid> + '_ {
    (0..(b[3] as usize).min(MAX_HEAP_TIDS)).map(move |i| Tid::get(&b[4 + 6 * i..10 + 6 * i]))
}

/// The byte range of an element's inline values within its tuple (parsed with
/// [`ElementHead::parse`] first).
pub fn inline_values(b: &[u8]) -> &[u8] {
    let start = ELEMENT_HEADER + round4(code_bytes(b));
    &b[start..start + 4 * inline_len(b)]
}

fn code_bytes(b: &[u8]) -> usize {
    u16::from_le_bytes([b[CODE_FIELDS], b[CODE_FIELDS + 1]]) as usize
}

/// An element's code, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeRef<'a> {
    pub min: f32,
    pub scale: f32,
    pub err: f32,
    pub bytes: &'a [u8],
}

/// An element's code in place; None if it carries none (parsed with
/// [`ElementHead::parse`] first).
#[inline]
pub fn element_code(b: &[u8]) -> Option<CodeRef<'_>> {
    let n = code_bytes(b);
    if n == 0 {
        return None;
    }
    let c = CODE_FIELDS;
    let f = |at: usize| f32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    Some(CodeRef { min: f(c + 4), scale: f(c + 8), err: f(c + 12), bytes: &b[ELEMENT_HEADER..ELEMENT_HEADER + n] })
}

/// A chunk's values (bytes) and the next chunk.
pub fn chunk_values(b: &[u8]) -> Result<(&[u8], Tid), FormatError> {
    if b.len() < CHUNK_HEADER || b[0] != KIND_CHUNK {
        return Err(FormatError::BadKind { expected: KIND_CHUNK, found: b.first().copied().unwrap_or(0) });
    }
    let n = u16::from_le_bytes([b[12], b[13]]) as usize;
    if b.len() < CHUNK_HEADER + 4 * n {
        return Err(FormatError::Truncated("chunk"));
    }
    Ok((&b[CHUNK_HEADER..CHUNK_HEADER + 4 * n], Tid::get(&b[4..10])))
}

fn inline_len(b: &[u8]) -> usize {
    let h = 4 + 6 * MAX_HEAP_TIDS;
    u16::from_le_bytes([b[h + 12], b[h + 13]]) as usize
}

/// Points an encoded element at its first heap-tid tuple, in place.
pub fn set_more_tids(b: &mut [u8], first: Tid) {
    first.put(&mut b[OVERFLOW_FIELD..OVERFLOW_FIELD + 6]);
}

/// A heap-tid tuple of `capacity` holding `tids`, followed by `next`.
pub fn encode_tids(tids: &[Tid], capacity: usize, next: Tid) -> Vec<u8> {
    let mut b = vec![0u8; TIDS_HEADER + 6 * capacity];
    b[0] = KIND_TIDS;
    next.put(&mut b[4..10]);
    b[14..16].copy_from_slice(&(capacity as u16).to_le_bytes());
    assert!(set_tids(&mut b, tids), "more heap tids than the tuple's capacity");
    b
}

/// A heap-tid tuple's rows and the next tuple.
pub fn decode_tids(b: &[u8]) -> Result<(Vec<Tid>, Tid), FormatError> {
    if b.len() < TIDS_HEADER || b[0] != KIND_TIDS {
        return Err(FormatError::BadKind { expected: KIND_TIDS, found: b.first().copied().unwrap_or(0) });
    }
    let count = u16::from_le_bytes([b[12], b[13]]) as usize;
    let capacity = u16::from_le_bytes([b[14], b[15]]) as usize;
    if count > capacity || b.len() < TIDS_HEADER + 6 * capacity {
        return Err(FormatError::Truncated("heap-tid"));
    }
    Ok(((0..count).map(|i| Tid::get(&b[TIDS_HEADER + 6 * i..TIDS_HEADER + 6 * i + 6])).collect(), Tid::get(&b[4..10])))
}

/// Rewrites a heap-tid tuple's rows in place; false if they exceed its capacity.
pub fn set_tids(b: &mut [u8], tids: &[Tid]) -> bool {
    let capacity = u16::from_le_bytes([b[14], b[15]]) as usize;
    if tids.len() > capacity {
        return false;
    }
    b[12..14].copy_from_slice(&(tids.len() as u16).to_le_bytes());
    for i in 0..capacity {
        tids.get(i).copied().unwrap_or(Tid::INVALID).put(&mut b[TIDS_HEADER + 6 * i..TIDS_HEADER + 6 * i + 6]);
    }
    true
}

/// Points a heap-tid tuple at the next one, in place.
pub fn set_next_tids(b: &mut [u8], next: Tid) {
    next.put(&mut b[4..10]);
}

/// Marks an encoded element deleted, in place.
pub fn set_deleted(b: &mut [u8]) {
    b[2] = 1;
}

/// Rewrites an encoded element's heap tids in place (VACUUM drops dead ones, an insert of
/// an identical vector adds one); false if there is no room.
pub fn set_heap_tids(b: &mut [u8], tids: &[Tid]) -> bool {
    if tids.len() > MAX_HEAP_TIDS {
        return false;
    }
    b[3] = tids.len() as u8;
    for i in 0..MAX_HEAP_TIDS {
        tids.get(i).copied().unwrap_or(Tid::INVALID).put(&mut b[4 + 6 * i..10 + 6 * i]);
    }
    true
}

/// Appends little-endian f32 values (an element's or a chunk's) to `out`.
pub fn push_values(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
}

pub fn encode_chunk(values: &[f32], next: Tid) -> Vec<u8> {
    let mut b = vec![0u8; CHUNK_HEADER + 4 * values.len()];
    b[0] = KIND_CHUNK;
    next.put(&mut b[4..10]);
    b[12..14].copy_from_slice(&(values.len() as u16).to_le_bytes());
    for (i, v) in values.iter().enumerate() {
        b[CHUNK_HEADER + 4 * i..CHUNK_HEADER + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// Encodes neighbour lists (`lists[l]` for levels 0..=level), padding with INVALID.
pub fn encode_neighbors(level: u8, m: usize, lists: &[Vec<Tid>]) -> Vec<u8> {
    let mut b = vec![0u8; neighbors_size(level, m)];
    b[0] = KIND_NEIGHBORS;
    b[1] = level;
    let mut slot = 0;
    for l in 0..=level {
        let cap = if l == 0 { 2 * m } else { m };
        let list = lists.get(l as usize).map(|v| v.as_slice()).unwrap_or(&[]);
        for i in 0..cap {
            list.get(i).copied().unwrap_or(Tid::INVALID).put(&mut b[4 + 6 * slot..4 + 6 * slot + 6]);
            slot += 1;
        }
    }
    b
}

/// The valid neighbours on `level` of an encoded neighbour tuple.
pub fn neighbors_on(b: &[u8], m: usize, level: u8, out: &mut Vec<Tid>) -> Result<(), FormatError> {
    if b.len() < 4 || b[0] != KIND_NEIGHBORS {
        return Err(FormatError::BadKind { expected: KIND_NEIGHBORS, found: b.first().copied().unwrap_or(0) });
    }
    let own = b[1];
    if level > own {
        return Ok(());
    }
    if b.len() < neighbors_size(own, m) {
        return Err(FormatError::Truncated("neighbour"));
    }
    let start = if level == 0 { 0 } else { 2 * m + (level as usize - 1) * m };
    let cap = if level == 0 { 2 * m } else { m };
    for s in start..start + cap {
        let t = Tid::get(&b[4 + 6 * s..4 + 6 * s + 6]);
        if t.is_valid() {
            out.push(t);
        }
    }
    Ok(())
}

/// Every level's neighbours of an encoded neighbour tuple, with its level; None if the
/// bytes are not a neighbour tuple.
pub fn all_neighbors(b: &[u8], m: usize) -> Option<(u8, Vec<Vec<Tid>>)> {
    let own = neighbors_level(b)?;
    let mut lists = Vec::with_capacity(own as usize + 1);
    for l in 0..=own {
        let mut out = Vec::new();
        neighbors_on(b, m, l, &mut out).ok()?;
        lists.push(out);
    }
    Some((own, lists))
}

/// The level stored in an encoded neighbour tuple.
pub fn neighbors_level(b: &[u8]) -> Option<u8> {
    (b.len() >= 4 && b[0] == KIND_NEIGHBORS).then(|| b[1])
}

/// Simulates PostgreSQL filling pages with tuples, so a bulk writer knows every tuple's
/// item pointer before writing any (neighbour lists point forward and back).
#[derive(Debug, Clone)]
pub struct PagePlanner {
    pub block: u32,
    used: usize,
    next_offset: u16,
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

impl PagePlanner {
    /// Starts planning at `block` (an empty page).
    pub fn new(block: u32) -> Self {
        PagePlanner { block, used: 0, next_offset: 1 }
    }

    /// True if tuples of these sizes all fit on the current page.
    pub fn fits(&self, sizes: &[usize]) -> bool {
        self.used + sizes.iter().map(|&s| maxalign(s) + LINE_POINTER).sum::<usize>() <= PAGE_ROOM
    }

    /// Moves to a fresh page.
    pub fn next_page(&mut self) {
        self.block += 1;
        self.used = 0;
        self.next_offset = 1;
    }

    /// Places one tuple, on a fresh page if the current one is full.
    pub fn place(&mut self, size: usize) -> Tid {
        if !self.fits(&[size]) {
            self.next_page();
        }
        let t = Tid { block: self.block, offset: self.next_offset };
        self.used += maxalign(size) + LINE_POINTER;
        self.next_offset += 1;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let meta = Meta {
            dims: 784,
            m: 16,
            ef_construction: 64,
            metric: Metric::Cosine,
            entry: Tid { block: 7, offset: 3 },
            entry_level: 4,
            insert_block: 99,
            free_block: 12,
            reuse_epoch: 3,
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
        let mut bad = meta.encode();
        bad[4] = 9;
        assert_eq!(Meta::decode(&bad), Err(FormatError::UnsupportedVersion(9)));

        let e = Element {
            level: 2,
            deleted: false,
            heap_tids: vec![Tid { block: 1, offset: 2 }, Tid { block: 5, offset: 6 }],
            more_tids: Tid { block: 8, offset: 1 },
            neighbors: Tid { block: 3, offset: 4 },
            next_chunk: Tid::INVALID,
            dims: 3,
            code: None,
            inline: vec![1.5, -2.0, 3.25],
        };
        let mut b = e.encode();
        assert_eq!(b.len(), element_size(0, 3));
        assert_eq!(Element::decode(&b).unwrap(), e);
        assert_eq!(element_code(&b), None);
        // With a code (5 bytes, padded to 8) and its values in chunks.
        let coded = Element { dims: 5, code: Some(Code::of(&[1.0, 2.0, 3.0, 4.0, 5.5])), inline: vec![], ..e.clone() };
        let cb = coded.encode();
        assert_eq!(cb.len(), element_size(5, 0));
        assert_eq!(Element::decode(&cb).unwrap(), coded);
        let c = element_code(&cb).unwrap();
        let want = coded.code.as_ref().unwrap();
        assert_eq!((c.min, c.scale, c.err, c.bytes), (1.0, 4.5 / 255.0, want.err, want.bytes.as_slice()));
        assert!(c.err > 0.0);
        assert!(inline_values(&cb).is_empty());
        assert!(ElementHead::parse(&cb[..cb.len() - 4]).is_err());
        set_deleted(&mut b);
        assert!(Element::decode_header(&b).unwrap().deleted);
        assert!(set_heap_tids(&mut b, &[Tid { block: 7, offset: 7 }]));
        assert_eq!(Element::decode(&b).unwrap().heap_tids, vec![Tid { block: 7, offset: 7 }]);
        assert!(!set_heap_tids(&mut b, &[Tid { block: 1, offset: 1 }; 11]));

        let lists = vec![vec![Tid { block: 1, offset: 1 }], vec![], vec![Tid { block: 9, offset: 2 }, Tid { block: 9, offset: 3 }]];
        let nb = encode_neighbors(2, 4, &lists);
        assert_eq!(nb.len(), neighbors_size(2, 4));
        for (l, want) in lists.iter().enumerate() {
            let mut got = Vec::new();
            neighbors_on(&nb, 4, l as u8, &mut got).unwrap();
            assert_eq!(&got, want);
        }
        // A level-0 element in the slot of a level-2 one: same tuple size, level 0 lists.
        let reused = encode_neighbors_into(0, 4, &lists[..1], nb.len());
        assert_eq!(reused.len(), nb.len());
        assert_eq!(all_neighbors(&reused, 4), Some((0, vec![lists[0].clone()])));
        let mut none = Vec::new();
        neighbors_on(&nb, 4, 5, &mut none).unwrap();
        assert!(none.is_empty());

        set_more_tids(&mut b, Tid::INVALID);
        assert_eq!(ElementHead::parse(&b).unwrap().more_tids, Tid::INVALID);

        let rows: Vec<Tid> = (1..=3).map(|i| Tid { block: 40 + i, offset: i as u16 }).collect();
        let mut t = encode_tids(&rows, TIDS_CAPACITY, Tid { block: 9, offset: 9 });
        assert_eq!(decode_tids(&t).unwrap(), (rows.clone(), Tid { block: 9, offset: 9 }));
        assert!(set_tids(&mut t, &rows[..1]));
        set_next_tids(&mut t, Tid::INVALID);
        assert_eq!(decode_tids(&t).unwrap(), (rows[..1].to_vec(), Tid::INVALID));
        assert!(!set_tids(&mut t, &vec![rows[0]; TIDS_CAPACITY + 1]));
        assert!(decode_tids(&t[..t.len() - 1]).is_err());

        let chunk = encode_chunk(&[4.0, 5.0], Tid { block: 2, offset: 8 });
        let (values, next) = chunk_values(&chunk).unwrap();
        let mut out = Vec::new();
        push_values(values, &mut out);
        assert_eq!((out, next), (vec![4.0, 5.0], Tid { block: 2, offset: 8 }));
    }

    #[test]
    fn an_element_and_its_neighbours_always_share_a_page() {
        for m in [2usize, 16, 48, 100] {
            let top = max_level(m);
            assert!(neighbors_size(top, m) <= MAX_NEIGHBORS_TUPLE, "m {m}");
            for level in 0..=top {
                for dims in [1usize, 3, 784, 1024, 2560, 4096, 7000, 8000, 16_000] {
                    let (code, inline) = (code_len(dims, level, m), inline_count(dims, level, m));
                    assert!(code == 0 || (code == dims && inline == 0), "m {m} level {level} dims {dims}");
                    let mut p = PagePlanner::new(1);
                    assert!(p.fits(&[element_size(code, inline), neighbors_size(level, m)]), "m {m} level {level} dims {dims}");
                    let chunks = chunk_sizes(dims, inline);
                    assert_eq!(chunk_count(dims, inline), chunks.len());
                    let stored = inline + chunks.iter().map(|s| (s - CHUNK_HEADER) / 4).sum::<usize>();
                    assert_eq!(stored, dims);
                    assert!(chunks.iter().all(|&s| s <= MAX_TUPLE));
                    let _ = p.place(1);
                }
            }
        }
        // Up to 4,096 dims (Qwen3-8B) every element carries a code at m = 16, on any
        // level; 16,000 dims do not, and hold what fits of their values.
        for level in 0..=max_level(16) {
            assert_eq!(code_len(4096, level, 16), 4096);
        }
        assert_eq!(code_len(16_000, 0, 16), 0);
        assert!(inline_count(16_000, 0, 16) > 1500);
    }

    #[test]
    fn planner_matches_page_arithmetic() {
        let mut p = PagePlanner::new(1);
        // Two 3,216-byte elements with 196-byte neighbour tuples fit; a third does not.
        for i in 0..2u16 {
            assert_eq!(p.place(3216), Tid { block: 1, offset: 2 * i + 1 });
            assert_eq!(p.place(196), Tid { block: 1, offset: 2 * i + 2 });
        }
        assert!(!p.fits(&[3216, 196]));
        assert_eq!(p.place(3216).block, 2);
    }
}
