//! The crate's top-level error: one variant per module error.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Tier(#[from] crate::tier::Error),
    #[error(transparent)]
    Meta(#[from] crate::meta::Error),
    #[error(transparent)]
    Volume(#[from] crate::volume::Error),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::Error),
    #[error(transparent)]
    Trace(#[from] crate::trace::Error),
    #[error(transparent)]
    Profile(#[from] crate::profile::Error),
    #[error(transparent)]
    Predict(#[from] crate::predict::Error),
    #[error(transparent)]
    Replay(#[from] crate::replay::Error),
    #[error(transparent)]
    Play(#[from] crate::play::Error),
    /// The command line's output could not be written (not a closed pipe:
    /// the CLI ends quietly on that).
    #[error("writing to standard output: {0}")]
    Stdout(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The message of a caught panic (`panic!` with a literal or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(panic without a message)")
}
