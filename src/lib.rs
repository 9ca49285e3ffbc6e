//! tierblk: a vhost-user-blk storage daemon with predictive, cost-aware
//! data tiering. See DESIGN.md in the shared folder for the architecture;
//! each module is named after the part of it that it implements.

pub mod blk;
pub mod client;
pub mod config;
pub mod cost;
pub mod daemon;
pub mod epoch;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod meta;
pub mod migrate;
pub mod place;
pub mod play;
pub mod predict;
pub mod profile;
pub mod replay;
pub mod stats;
pub mod tier;
pub mod trace;
pub mod volume;

pub use error::{Error, Result};
