//! Crash-safe metadata store (redb): tier and volume definitions, chunk
//! maps and saved heat maps. Every commit is durable when it returns; extent
//! allocations are not stored but rebuilt from the chunk maps at start, so
//! an extent no map references is free after a restart.
//!
//! The store is the source of truth for what exists (DESIGN decision 8):
//! a volume it holds is never dropped because the config no longer names
//! it, and a tier is known by the UUID in its device header.

use std::{
    fs::OpenOptions,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        RwLock, RwLockReadGuard,
    },
};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::{TierDefinition, VolumeMetadata};

/// Store layout version; a store without it was written before tiers had
/// identities.
const FORMAT_VERSION: u64 = 2;
const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("format");
/// tier name → TierRecord (JSON).
const TIERS: TableDefinition<&str, &str> = TableDefinition::new("tier_records");
const VOLUMES: TableDefinition<&str, &str> = TableDefinition::new("volumes");
/// (volume name, chunk index) → persistent chunk-map entry.
const CHUNKS: TableDefinition<(&str, u32), u64> = TableDefinition::new("chunks");
/// volume name → serialized heat map.
const HEATMAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("heatmaps");

/// File name of the store inside the daemon's state directory.
pub const STORE_FILE: &str = "meta.redb";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata store {path}: {source}")]
    Db { path: PathBuf, source: redb::Error },
    #[error("metadata store {path} is in use by another process (is another tierblk running with this state_dir?)")]
    Busy { path: PathBuf },
    #[error("metadata store {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "metadata store {path} is unavailable after an I/O error and could not be reopened yet"
    )]
    Unavailable { path: PathBuf },
    #[error("metadata store {path}: corrupt record for {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn open_db(path: &Path) -> Result<Database> {
    redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Busy {
                path: path.to_path_buf(),
            },
            e => Error::Db {
                path: path.to_path_buf(),
                source: e.into(),
            },
        })
}

/// What the store knows of a tier: its definition as last opened and the
/// UUID its device header carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierRecord {
    pub uuid: String,
    pub definition: TierDefinition,
}

#[derive(Debug)]
pub struct Store {
    /// None while the store could not be reopened after an I/O error.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// An I/O error was seen: redb refuses every later operation
    /// ("previous I/O error") until the database is reopened, which the
    /// next operation tries (e.g. once a full filesystem has room again).
    broken: AtomicBool,
    /// Chunk-map transactions committed (each one fsync, whatever the
    /// number of volumes it covers).
    chunk_commits: AtomicU64,
    /// TEST ONLY: how many of the next write transactions fail as if the
    /// commit hit an I/O error.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicU32,
}

/// A read lock on the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("DbGuard is made only over an open database")
    }
}

impl Store {
    /// Opens the store in `state_dir`, creating directory (0700) and file
    /// (0600) if needed. Another process holding the store is refused.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(STORE_FILE);
        let io_err = |e: std::io::Error| Error::Db {
            path: path.clone(),
            source: redb::Error::Io(e),
        };
        if !state_dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io_err)?;
        }
        // Create the file ourselves so it is never readable by others, not
        // even for a moment; redb initialises an empty file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
        drop(file);
        let db = open_db(&path)?;
        let s = Self {
            db: RwLock::new(Some(db)),
            path,
            broken: AtomicBool::new(false),
            chunk_commits: AtomicU64::new(0),
            #[cfg(test)]
            fail_commits: Default::default(),
        };
        s.check_format()?;
        Ok(s)
    }

    /// Creates the tables (so read transactions find them) and checks or
    /// stamps the layout version.
    fn check_format(&self) -> Result<()> {
        let found = self.write(|tx| {
            tx.open_table(TIERS)?;
            tx.open_table(VOLUMES)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(HEATMAPS)?;
            let mut f = tx.open_table(FORMAT)?;
            let found = f.get("version")?.map(|v| v.value());
            let volumes = tx.open_table(VOLUMES)?.len()?;
            if found.is_none() && volumes == 0 {
                f.insert("version", FORMAT_VERSION)?;
                return Ok(Some(FORMAT_VERSION));
            }
            Ok(found)
        })?;
        match found {
            Some(FORMAT_VERSION) => Ok(()),
            Some(v) => Err(Error::Format {
                path: self.path.clone(),
                reason: format!("layout version {v} is not supported (this tierblk uses version {FORMAT_VERSION})"),
            }),
            None => Err(Error::Format {
                path: self.path.clone(),
                reason: "written by an older tierblk whose tiers had no identity header; its volumes cannot be opened safely by this version".into(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        let source = e.into();
        if matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.broken.store(true, Ordering::Release);
        }
        Error::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The open database; after an I/O error, first reopens it.
    fn db(&self) -> Result<DbGuard<'_>> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            return Err(Error::Unavailable {
                path: self.path.clone(),
            });
        }
        Ok(DbGuard(g))
    }

    fn reopen(&self) -> Result<()> {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // another thread reopened it meanwhile
        }
        // Close first: redb holds a lock on the file while open.
        drop(g.take());
        let db = open_db(&self.path)?;
        *g = Some(db);
        self.broken.store(false, Ordering::Release);
        log::info!(
            "metadata store {}: reopened after an I/O error",
            self.path.display()
        );
        Ok(())
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Like `write`; with `Durability::None` the commit becomes durable
    /// only with the next immediate one (no fsync of its own).
    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let v = f(&tx).map_err(|e| self.err(e))?;
        #[cfg(test)]
        if self.injected_failure() {
            // The dropped transaction is aborted, as a failed commit is.
            return Err(self.err(redb::Error::Io(std::io::Error::other(
                "injected commit failure",
            ))));
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(v)
    }

    /// Every tier the store knows.
    pub fn tiers(&self) -> Result<Vec<TierRecord>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(TIERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(serde_json::from_str(v.value()).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                what: format!("tier '{}'", k.value()),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Replaces the tier records with `records` and, in the same durable
    /// transaction, rewrites every stored chunk-map entry through `remap`
    /// (tier renumbering): either both happen or neither.
    pub fn replace_tiers(
        &self,
        records: &[TierRecord],
        remap: Option<&dyn Fn(u64) -> u64>,
    ) -> Result<()> {
        let json: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                (
                    r.definition.name.clone(),
                    serde_json::to_string(r).expect("tier records serialize"),
                )
            })
            .collect();
        self.write(|tx| {
            let mut t = tx.open_table(TIERS)?;
            t.retain(|_, _| false)?;
            for (name, j) in &json {
                t.insert(name.as_str(), j.as_str())?;
            }
            if let Some(remap) = remap {
                let mut chunks = tx.open_table(CHUNKS)?;
                let mut changed = Vec::new();
                for row in chunks.iter()? {
                    let (k, v) = row?;
                    let (vol, chunk) = k.value();
                    let new = remap(v.value());
                    if new != v.value() {
                        changed.push((vol.to_string(), chunk, new));
                    }
                }
                for (vol, chunk, word) in changed {
                    chunks.insert((vol.as_str(), chunk), word)?;
                }
            }
            Ok(())
        })
    }

    /// Calls `f(volume, chunk, entry)` for every stored chunk-map entry.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&str, u32, u64)) -> Result<()> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (vol, chunk) = k.value();
            f(vol, chunk, v.value());
        }
        Ok(())
    }

    /// Every stored volume definition (one read of the table).
    pub fn volumes(&self) -> Result<Vec<VolumeMetadata>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VOLUMES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(self.parse_volume(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn parse_volume(&self, name: &str, json: &str) -> Result<VolumeMetadata> {
        serde_json::from_str(json).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            what: format!("volume '{name}'"),
            reason: e.to_string(),
        })
    }

    pub fn put_volume(&self, v: &VolumeMetadata) -> Result<()> {
        let json = serde_json::to_string(v).expect("volume metadata serializes");
        self.write(|tx| {
            tx.open_table(VOLUMES)?
                .insert(v.name.as_str(), json.as_str())?;
            Ok(())
        })
    }

    pub fn volume(&self, name: &str) -> Result<Option<VolumeMetadata>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VOLUMES).map_err(|e| self.err(e))?;
        let Some(v) = table.get(name).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.parse_volume(name, v.value()).map(Some)
    }

    pub fn volume_names(&self) -> Result<Vec<String>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VOLUMES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            out.push(row.map_err(|e| self.err(e))?.0.value().to_string());
        }
        Ok(out)
    }

    /// Deletes a volume with its chunk map and heat map.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        self.write(|tx| {
            tx.open_table(VOLUMES)?.remove(name)?;
            tx.open_table(HEATMAPS)?.remove(name)?;
            tx.open_table(CHUNKS)?
                .retain_in((name, 0)..=(name, u32::MAX), |_, _| false)?;
            Ok(())
        })
    }

    /// All stored chunk-map entries of a volume, as (chunk, entry).
    pub fn chunk_map(&self, volume: &str) -> Result<Vec<(u32, u64)>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table
            .range((volume, 0)..=(volume, u32::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }

    /// Applies chunk-map changes in one durable transaction; an entry of 0
    /// removes the chunk (unallocated).
    pub fn apply_chunk_changes(&self, volume: &str, changes: &[(u32, u64)]) -> Result<()> {
        self.apply_chunk_changes_many(&[(volume, changes)])
    }

    /// Applies several volumes' chunk-map changes, each volume's in order,
    /// in one durable transaction (one fsync for all): all or none.
    pub fn apply_chunk_changes_many(&self, volumes: &[(&str, &[(u32, u64)])]) -> Result<()> {
        if volumes.iter().all(|(_, c)| c.is_empty()) {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(CHUNKS)?;
            for &(volume, changes) in volumes {
                for &(chunk, entry) in changes {
                    if entry == 0 {
                        t.remove((volume, chunk))?;
                    } else {
                        t.insert((volume, chunk), entry)?;
                    }
                }
            }
            Ok(())
        })?;
        self.chunk_commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Chunk-map transactions committed since the store was opened.
    pub fn chunk_commits(&self) -> u64 {
        self.chunk_commits.load(Ordering::Relaxed)
    }

    /// TEST ONLY: fails the next `n` write transactions (the store then
    /// reopens itself, as after a real I/O error).
    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, n: u32) {
        self.fail_commits.store(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn injected_failure(&self) -> bool {
        self.fail_commits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Saves a heat map without an fsync of its own: it is a hint for a
    /// warm restart, made durable by the next chunk-map commit, and saving
    /// it must not hold the store's writer for long.
    pub fn put_heatmap(&self, volume: &str, bytes: &[u8]) -> Result<()> {
        self.write_with(redb::Durability::None, |tx| {
            tx.open_table(HEATMAPS)?.insert(volume, bytes)?;
            Ok(())
        })
    }

    /// Makes every earlier commit durable, the lazy ones included (an
    /// empty immediate commit).
    pub fn sync(&self) -> Result<()> {
        self.write(|tx| {
            tx.open_table(FORMAT)?;
            Ok(())
        })
    }

    pub fn heatmap(&self, volume: &str) -> Result<Option<Vec<u8>>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(HEATMAPS).map_err(|e| self.err(e))?;
        Ok(table
            .get(volume)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_changes_survive_reopen_and_stay_per_volume() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.apply_chunk_changes("a", &[(0, 11), (5, 12)]).unwrap();
            s.apply_chunk_changes("b", &[(0, 99)]).unwrap();
            s.apply_chunk_changes("a", &[(5, 0)]).unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.chunk_map("a").unwrap(), vec![(0, 11)]);
        assert_eq!(s.chunk_map("b").unwrap(), vec![(0, 99)]);
        s.delete_volume("a").unwrap();
        assert!(s.chunk_map("a").unwrap().is_empty());
        assert_eq!(s.chunk_map("b").unwrap().len(), 1);
    }

    #[test]
    fn changes_of_several_volumes_commit_in_one_transaction() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.apply_chunk_changes_many(&[("a", &[(0, 11), (1, 12)]), ("b", &[(0, 99)])])
                .unwrap();
            assert_eq!(s.chunk_commits(), 1);
            s.fail_next_commits(1);
            assert!(s
                .apply_chunk_changes_many(&[("a", &[(1, 0)]), ("b", &[(3, 7)])])
                .is_err());
            assert_eq!(s.chunk_commits(), 1, "a failed commit counts nothing");
            assert_eq!(
                s.chunk_map("a").unwrap(),
                vec![(0, 11), (1, 12)],
                "all or none"
            );
            assert_eq!(s.chunk_map("b").unwrap(), vec![(0, 99)]);
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.chunk_map("a").unwrap(), vec![(0, 11), (1, 12)]);
        assert_eq!(s.chunk_map("b").unwrap(), vec![(0, 99)]);
    }

    #[test]
    fn heatmap_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.heatmap("v").unwrap().is_none());
        s.put_heatmap("v", &[1, 2, 3]).unwrap();
        assert_eq!(s.heatmap("v").unwrap().unwrap(), vec![1, 2, 3]);
    }
}
