//! From token states to one vector per text: pooling, L2 normalisation, Matryoshka
//! truncation. Pure functions over row-major buffers, so they are tested without a model.

use crate::manifest::Pooling;

/// The token states of one batch: `[batch, seq, dim]`, row-major, and the attention mask
/// `[batch, seq]` (1 for a real token, 0 for padding).
pub struct TokenStates<'a> {
    pub states: &'a [f32],
    pub mask: &'a [i64],
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
}

impl TokenStates<'_> {
    fn token(&self, row: usize, pos: usize) -> &[f32] {
        let start = (row * self.seq + pos) * self.dim;
        &self.states[start..start + self.dim]
    }

    fn real_positions(&self, row: usize) -> impl DoubleEndedIterator<Item = usize> + '_ {
        let mask = &self.mask[row * self.seq..(row + 1) * self.seq];
        mask.iter().enumerate().filter(|(_, &m)| m != 0).map(|(p, _)| p)
    }

    /// Pools row `row` into `out` (length `dim`). `Pooling::Output` never gets here.
    pub fn pool_row(&self, pooling: &Pooling, row: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.dim);
        match pooling {
            Pooling::Mean => {
                out.fill(0.0);
                let mut count = 0usize;
                for pos in self.real_positions(row) {
                    for (o, &x) in out.iter_mut().zip(self.token(row, pos)) {
                        *o += x;
                    }
                    count += 1;
                }
                // sentence-transformers divides by max(count, 1e-9); a row always has a token.
                let scale = 1.0 / (count.max(1) as f32);
                out.iter_mut().for_each(|o| *o *= scale);
            }
            Pooling::Cls => {
                let pos = self.real_positions(row).next().unwrap_or(0);
                out.copy_from_slice(self.token(row, pos));
            }
            Pooling::LastToken => {
                let pos = self.real_positions(row).next_back().unwrap_or(self.seq - 1);
                out.copy_from_slice(self.token(row, pos));
            }
            Pooling::Output(_) => unreachable!("pre-pooled outputs are not pooled again"),
        }
    }
}

/// Scales `v` to unit length (PyTorch's `F.normalize`: divide by max(norm, 1e-12)).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
}

/// Finishes one pooled vector: Matryoshka truncation to `dims`, then normalisation when
/// the model normalises or the vector was truncated (a truncated unit vector is renormalised).
pub fn finish(mut v: Vec<f32>, dims: usize, normalize: bool) -> Vec<f32> {
    let truncated = dims < v.len();
    v.truncate(dims);
    if normalize || truncated {
        l2_normalize(&mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two texts, three positions, two dims. Row 0: right-padded (2 real), row 1: left-padded (2 real).
    const STATES: [f32; 12] = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0, 100.0, 100.0, 5.0, 6.0, 7.0, 8.0];
    const MASK: [i64; 6] = [1, 1, 0, 0, 1, 1];

    fn states() -> TokenStates<'static> {
        TokenStates { states: &STATES, mask: &MASK, batch: 2, seq: 3, dim: 2 }
    }

    #[test]
    fn padding_never_leaks_into_a_pooled_vector() {
        let s = states();
        let mut out = [0.0f32; 2];
        s.pool_row(&Pooling::Mean, 0, &mut out);
        assert_eq!(out, [2.0, 3.0]);
        s.pool_row(&Pooling::Mean, 1, &mut out);
        assert_eq!(out, [6.0, 7.0]);
        s.pool_row(&Pooling::Cls, 0, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        s.pool_row(&Pooling::Cls, 1, &mut out);
        assert_eq!(out, [5.0, 6.0]);
        s.pool_row(&Pooling::LastToken, 0, &mut out);
        assert_eq!(out, [3.0, 4.0]);
        s.pool_row(&Pooling::LastToken, 1, &mut out);
        assert_eq!(out, [7.0, 8.0]);
    }

    #[test]
    fn normalise_and_truncate() {
        let v = finish(vec![3.0, 4.0, 12.0], 3, true);
        assert!((v[0] - 3.0 / 13.0).abs() < 1e-7 && (v[2] - 12.0 / 13.0).abs() < 1e-7);
        let v = finish(vec![3.0, 4.0, 12.0], 2, false);
        assert_eq!(v.len(), 2);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        assert_eq!(finish(vec![3.0, 4.0], 2, false), vec![3.0, 4.0]);
        assert_eq!(finish(vec![0.0, 0.0], 2, true), vec![0.0, 0.0]);
    }
}
