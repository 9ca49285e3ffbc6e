//! Access profiling: per-chunk counters the data path bumps without locks,
//! folded every epoch into a per-chunk history that predictors read; and the
//! VM profile (from the libvirt domain XML) that seeds a new volume's heat map.

mod counters;
mod history;
mod vm;

use std::path::PathBuf;

pub use counters::{ChunkCounters, EpochCounts};
pub use history::{ChunkHistory, History, HISTORY_EPOCHS};
#[cfg(feature = "fuzzing")]
pub use vm::fuzz as vm_fuzz;
pub use vm::{initial_heat_map, DiskProfile, OsFamily, VmProfile, LIBOSINFO_XMLNS, TIERBLK_XMLNS};

/// Errors of the profile module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read domain XML {path}: {source}")]
    ReadXml {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("domain XML {path}: {message}")]
    Xml { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;
