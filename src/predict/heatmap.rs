//! The heat map: predicted access score in [0, 1] per chunk.

use std::path::Path;

use super::{Error, Result};

const MAGIC: &[u8; 8] = b"TBHEAT01";

/// Predicted access score of every chunk of a volume for the next epoch(s).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeatMap {
    scores: Vec<f32>,
}

impl HeatMap {
    /// Scores are clamped into [0, 1]; NaN becomes 0.
    pub fn from_scores(mut scores: Vec<f32>) -> Self {
        for s in &mut scores {
            *s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
        }
        Self { scores }
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn score(&self, chunk: usize) -> f32 {
        self.scores[chunk]
    }

    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Resizes to `n` chunks and sets every score to `value`.
    pub fn reset(&mut self, n: usize, value: f32) {
        self.scores.clear();
        self.scores.resize(n, value.clamp(0.0, 1.0));
    }

    pub fn set(&mut self, chunk: usize, score: f32) {
        self.scores[chunk] = if score.is_nan() {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
    }

    /// Serialized form for the metadata store / warm restart.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + 4 * self.scores.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(self.scores.len() as u64).to_le_bytes());
        for s in &self.scores {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    /// Parses [`HeatMap::to_bytes`] output; `what` names the source in errors.
    pub fn from_bytes(what: &str, b: &[u8]) -> Result<Self> {
        let err = |m: &str| Error::HeatMap {
            what: what.to_string(),
            message: m.to_string(),
        };
        if b.len() < 16 || &b[..8] != MAGIC {
            return Err(err("not a tierblk heat map (bad magic)"));
        }
        let n = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) as usize;
        if n.checked_mul(4).and_then(|x| x.checked_add(16)) != Some(b.len()) {
            return Err(err(&format!("says {n} chunks but holds {} bytes", b.len())));
        }
        let scores = b[16..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self::from_scores(scores))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).map_err(|e| Error::HeatMap {
            what: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let b = std::fs::read(path).map_err(|e| Error::HeatMap {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&path.display().to_string(), &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_clamped_and_round_trip_through_bytes() {
        let h = HeatMap::from_scores(vec![-1.0, 0.5, 2.0, f32::NAN]);
        assert_eq!(h.scores(), &[0.0, 0.5, 1.0, 0.0]);
        assert_eq!(HeatMap::from_bytes("x", &h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_rejected() {
        let mut b = HeatMap::from_scores(vec![0.1; 4]).to_bytes();
        b.pop();
        assert!(HeatMap::from_bytes("vm1", &b)
            .unwrap_err()
            .to_string()
            .contains("4 chunks"));
        assert!(HeatMap::from_bytes("vm1", b"hello")
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
    }
}
