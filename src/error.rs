//! The crate's top-level error: one variant per module error.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
