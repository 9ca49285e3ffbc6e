//! Prediction engine: turns a volume's access history into a heat map, the
//! predicted access score in [0, 1] of every chunk for the next epoch.
//!
//! Predictors run on the brain's thread once per epoch, in batches, never on
//! the data path. Builtins: `ewma` (exponentially weighted moving average of
//! per-epoch accesses) and `learned` (a small burn network shipped in
//! `models/default.bpk`; also reachable as `mlp`); `gru` names the recurrent
//! variant; `lru` predicts nothing (every chunk scores 1: the placer then
//! runs tier 0 as an LRU cache filled on misses, the baseline tierblk is
//! measured against). Any other value is taken as the path of a model file
//! written by `tierblk train`.

mod ewma;
pub mod features;
mod flat;
mod heatmap;
pub mod learned;

use std::path::{Path, PathBuf};

pub use ewma::Ewma;
pub use flat::Flat;
pub use heatmap::HeatMap;
pub use learned::LearnedPredictor;

use crate::profile::History;

/// Errors of the prediction engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {path}: {message}")]
    ModelFile { path: PathBuf, message: String },
    #[error("cannot read model file {path}: {source}")]
    ReadModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write model file {path}: {source}")]
    WriteModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("heat map {what}: {message}")]
    HeatMap { what: String, message: String },
    #[error("training: {0}")]
    Training(String),
    #[error(transparent)]
    Trace(#[from] crate::trace::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Something that forecasts chunk heat from access history.
pub trait Predictor: Send {
    /// Short name for reports ("ewma", "learned-mlp", …).
    fn name(&self) -> String;

    /// Scores every chunk of `history` for the next epoch into `out`
    /// (resized to the history's length). Called once per epoch, after the
    /// epoch's counters were folded into `history`.
    fn predict(&mut self, history: &History, out: &mut HeatMap);

    /// The score this predictor gives a chunk whose only history is one
    /// access in the latest epoch. Placement uses it as the provisional
    /// score of a chunk touched between two predictions.
    fn first_touch_score(&mut self) -> f32;

    /// Starts from `heat` (a saved heat map on a warm restart, or a VM
    /// profile's prior) as if it were the prediction before the first
    /// epoch: a seeded chunk keeps its score while it is busy and decays
    /// each epoch it is idle (EWMA: its rate by `1 - alpha`; learned: its
    /// lead over the idle score by [`SEED_KEEP`]), so new history
    /// outweighs the seed within a few epochs. Called before the first
    /// `predict`.
    fn seed(&mut self, heat: &HeatMap);
}

/// Share of a seeded score's lead over an idle chunk's that is left after
/// each epoch the chunk stays idle (the EWMA's `1 - alpha`).
pub const SEED_KEEP: f32 = 0.5;

/// A seeded score this close to an idle chunk's is done decaying: it
/// stays, as any chunk's score does once it left the active set.
pub const SEED_FLOOR: f32 = 0.01;

/// Names `prediction_model` accepts besides a file path.
pub const BUILTIN_MODELS: &[&str] = &["ewma", "learned", "mlp", "gru", "lru"];

/// The models shipped in the repository, relative to its root.
pub const DEFAULT_MODEL_FILE: &str = "models/default.bpk";
pub const GRU_MODEL_FILE: &str = "models/gru.bpk";

/// Directory shipped models are looked up in: `$TIERBLK_MODELS`, else
/// `models/` beside the executable's crate (source tree), else
/// `/usr/share/tierblk/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TIERBLK_MODELS") {
        return PathBuf::from(d);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    if src.is_dir() {
        return src;
    }
    PathBuf::from("/usr/share/tierblk/models")
}

/// True when `prediction_model` names a builtin predictor rather than a
/// model file.
pub fn is_builtin(prediction_model: &str) -> bool {
    matches!(
        prediction_model,
        "ewma" | "learned" | "mlp" | "default" | "gru" | "lru"
    )
}

/// Builds the predictor a volume's `prediction_model` names: a builtin
/// ("ewma", "learned"/"mlp"/"default" = the shipped default model, "gru" =
/// the shipped recurrent model, "lru" = no prediction) or the path of a
/// model file.
pub fn load(prediction_model: &str) -> Result<Box<dyn Predictor>> {
    let file = match prediction_model {
        "ewma" => return Ok(Box::new(Ewma::default())),
        "lru" => return Ok(Box::new(Flat)),
        "learned" | "mlp" | "default" => models_dir().join("default.bpk"),
        "gru" => models_dir().join("gru.bpk"),
        path => PathBuf::from(path),
    };
    Ok(Box::new(LearnedPredictor::load(&file)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_path_error_names_the_file() {
        let e = load("/nonexistent/model.bpk").err().unwrap().to_string();
        assert!(e.contains("/nonexistent/model.bpk"), "{e}");
    }

    #[test]
    fn builtin_names_load() {
        assert_eq!(load("ewma").unwrap().name(), "ewma");
        assert!(load("learned").unwrap().name().starts_with("learned"));
    }
}
