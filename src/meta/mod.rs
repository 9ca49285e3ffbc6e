//! Crash-safe metadata store (redb): tier and volume definitions, chunk
//! maps and saved heat maps. Every commit is durable when it returns; extent
//! allocations are not stored but rebuilt from the chunk maps at start, so
//! an extent no map references is free after a restart.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::config::{TierDefinition, VolumeMetadata};

const TIERS: TableDefinition<u8, &str> = TableDefinition::new("tiers");
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
    #[error("metadata store {path}: corrupt record for {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store in `state_dir`, creating directory and file if needed.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(STORE_FILE);
        let db_err = |e: redb::Error| Error::Db {
            path: path.clone(),
            source: e,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| db_err(redb::Error::Io(e)))?;
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        let s = Self { db, path };
        // Create the tables so read transactions find them.
        s.write(|tx| {
            tx.open_table(TIERS)?;
            tx.open_table(VOLUMES)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(HEATMAPS)?;
            Ok(())
        })?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let v = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(v)
    }

    pub fn put_tier(&self, t: &TierDefinition) -> Result<()> {
        let json = serde_json::to_string(t).expect("tier definitions serialize");
        self.write(|tx| {
            tx.open_table(TIERS)?.insert(t.tier_id, json.as_str())?;
            Ok(())
        })
    }

    pub fn tiers(&self) -> Result<Vec<TierDefinition>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(TIERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(serde_json::from_str(v.value()).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                what: format!("tier {}", k.value()),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
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
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VOLUMES).map_err(|e| self.err(e))?;
        let Some(v) = table.get(name).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                what: format!("volume '{name}'"),
                reason: e.to_string(),
            })
    }

    pub fn volume_names(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(CHUNKS)?;
            for &(chunk, entry) in changes {
                if entry == 0 {
                    t.remove((volume, chunk))?;
                } else {
                    t.insert((volume, chunk), entry)?;
                }
            }
            Ok(())
        })
    }

    pub fn put_heatmap(&self, volume: &str, bytes: &[u8]) -> Result<()> {
        self.write(|tx| {
            tx.open_table(HEATMAPS)?.insert(volume, bytes)?;
            Ok(())
        })
    }

    pub fn heatmap(&self, volume: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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
    fn heatmap_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.heatmap("v").unwrap().is_none());
        s.put_heatmap("v", &[1, 2, 3]).unwrap();
        assert_eq!(s.heatmap("v").unwrap().unwrap(), vec![1, 2, 3]);
    }
}
