//! Walking a chain of tuples on disk (an element's vector chunks, its heap-tid tuples):
//! one bounded, cycle-safe walk that every reader uses (scan, insert, VACUUM, the
//! checker). A damaged index can hold a pointer back into its own chain; the walk stops
//! with [`ChainError`] instead of spinning, however long the cycle (Brent's algorithm:
//! no memory, at most about twice the chain's length in steps).

use super::format::Tid;

/// Why a walk stopped before the end of its chain.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainError<E> {
    /// The chain comes back to a tuple it already passed.
    Cycle { at: Tid },
    /// The chain is longer than any sound one can be.
    TooLong { limit: u64 },
    /// Reading a link failed (the caller's error).
    Read(E),
}

impl<E: std::fmt::Display> std::fmt::Display for ChainError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Cycle { at } => write!(f, "the chain loops back to ({},{})", at.block, at.offset),
            ChainError::TooLong { limit } => write!(f, "the chain is longer than {limit} tuples"),
            ChainError::Read(e) => e.fmt(f),
        }
    }
}

/// Walks the chain from `first` (INVALID: an empty chain): `visit` reads the tuple at a
/// link and returns the link after it. At most `limit` tuples are visited. Returns how
/// many were.
pub fn walk<E>(first: Tid, limit: u64, mut visit: impl FnMut(Tid) -> Result<Tid, E>) -> Result<u64, ChainError<E>> {
    let mut cur = first;
    let (mut mark, mut power, mut lam) = (first, 1u64, 0u64);
    let mut steps = 0u64;
    while cur.is_valid() {
        if steps == limit {
            return Err(ChainError::TooLong { limit });
        }
        steps += 1;
        let next = visit(cur).map_err(ChainError::Read)?;
        // Brent: `mark` waits at a power-of-two step; meeting it again is a cycle.
        if next.is_valid() && next == mark {
            return Err(ChainError::Cycle { at: next });
        }
        lam += 1;
        if lam == power {
            mark = next;
            power *= 2;
            lam = 0;
        }
        cur = next;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn t(i: u32) -> Tid {
        Tid { block: i, offset: 1 }
    }

    /// A chain stored as a map from a link to the next one.
    fn run(links: &HashMap<Tid, Tid>, first: Tid, limit: u64) -> (Result<u64, ChainError<String>>, Vec<Tid>) {
        let mut seen = Vec::new();
        let r = walk(first, limit, |at| {
            seen.push(at);
            links.get(&at).copied().ok_or_else(|| format!("missing ({},{})", at.block, at.offset))
        });
        (r, seen)
    }

    #[test]
    fn visits_a_sound_chain_in_order() {
        let links: HashMap<Tid, Tid> = (1..=5).map(|i| (t(i), if i < 5 { t(i + 1) } else { Tid::INVALID })).collect();
        let (r, seen) = run(&links, t(1), 100);
        assert_eq!(r, Ok(5));
        assert_eq!(seen, (1..=5).map(t).collect::<Vec<_>>());
        assert_eq!(run(&links, Tid::INVALID, 100).0, Ok(0));
        // Exactly at the limit is fine; one over is not.
        assert_eq!(run(&links, t(1), 5).0, Ok(5));
        assert_eq!(run(&links, t(1), 4).0, Err(ChainError::TooLong { limit: 4 }));
    }

    #[test]
    fn stops_on_every_kind_of_cycle() {
        // A tuple pointing at itself.
        let selfloop = HashMap::from([(t(7), t(7))]);
        assert!(matches!(run(&selfloop, t(7), u64::MAX).0, Err(ChainError::Cycle { .. })));
        // Cycles of many lengths behind tails of many lengths, with no limit: the walk
        // ends within a few times the chain's length.
        for tail in [0u32, 1, 2, 5, 64, 1000] {
            for cycle in [1u32, 2, 3, 17, 512, 4097] {
                let n = tail + cycle;
                let links: HashMap<Tid, Tid> =
                    (0..n).map(|i| (t(i), if i + 1 < n { t(i + 1) } else { t(tail) })).collect();
                let (r, seen) = run(&links, t(0), u64::MAX);
                assert!(matches!(r, Err(ChainError::Cycle { .. })), "tail {tail} cycle {cycle}: {r:?}");
                assert!(seen.len() as u32 <= 2 * n + 2 * cycle + 2, "tail {tail} cycle {cycle}: {} steps", seen.len());
            }
        }
    }

    #[test]
    fn a_read_error_is_passed_on() {
        let links = HashMap::from([(t(1), t(2))]);
        let (r, seen) = run(&links, t(1), 10);
        assert_eq!(r, Err(ChainError::Read("missing (2,1)".into())));
        assert_eq!(seen, vec![t(1), t(2)]);
    }
}
