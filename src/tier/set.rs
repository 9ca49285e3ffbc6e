//! All tiers of the daemon, opened against the metadata store: a tier the
//! store knows must come back on the device that carries its UUID; a tier
//! that holds chunks cannot leave the config; a renumbered tier keeps its
//! data (the stored chunk maps are rewritten to the new `tier_id` in the
//! same transaction that records it).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt,
};

use log::info;

use super::{Error, Expect, Result, Tier};
use crate::{
    config::TierDefinition,
    meta::{Store, TierRecord},
    volume::Mapping,
};

/// All tiers of the daemon, indexed by tier id.
#[derive(Debug, Default)]
pub struct TierSet {
    by_id: Vec<Option<Tier>>,
    /// Configured tier ids, fastest first.
    ids: Vec<u8>,
}

impl TierSet {
    /// Opens the configured tiers, checks each device's identity against
    /// `store`, and records the tiers (with any renumbering) in it. Nothing
    /// is written to the store unless every tier opened; tier files created
    /// by a failed open are removed again.
    pub fn open(defs: &[TierDefinition], store: &Store) -> Result<Self> {
        let records = records(store)?;
        refuse_shared_devices(defs)?;
        refuse_removed_tiers(defs, &records, store)?;
        let mut opened: Vec<Tier> = Vec::new();
        for d in defs {
            match Tier::open(d, expect_of(&records, &d.name)) {
                Ok(t) => opened.push(t),
                Err(e) => {
                    forget_new(opened);
                    return Err(e);
                }
            }
        }
        let renumbered: BTreeMap<u8, u8> = opened
            .iter()
            .filter_map(|t| {
                let old = records.get(t.name())?.definition.tier_id;
                (old != t.id()).then_some((old, t.id()))
            })
            .collect();
        let new_records: Vec<TierRecord> = opened
            .iter()
            .map(|t| TierRecord {
                uuid: t.uuid().to_string(),
                definition: t.definition().clone(),
            })
            .collect();
        let remap = |word: u64| match Mapping::from_persistent(word) {
            Some(m) => match renumbered.get(&m.tier) {
                Some(&tier) => Mapping { tier, ..m }.to_persistent(),
                None => word,
            },
            None => word,
        };
        let remap_ref: Option<&dyn Fn(u64) -> u64> =
            (!renumbered.is_empty()).then_some(&remap as &dyn Fn(u64) -> u64);
        if let Err(e) = store.replace_tiers(&new_records, remap_ref) {
            forget_new(opened);
            return Err(e.into());
        }
        for (old, new) in &renumbered {
            info!("tier_id {old} renumbered to {new}: stored chunk maps rewritten");
        }
        for name in records.keys() {
            if !defs.iter().any(|d| &d.name == name) {
                info!("tier '{name}' left the config empty: forgotten");
            }
        }
        let mut by_id: Vec<Option<Tier>> = Vec::new();
        for t in opened {
            let i = t.id() as usize;
            if by_id.len() <= i {
                by_id.resize_with(i + 1, || None);
            }
            by_id[i] = Some(t);
        }
        let ids = by_id.iter().flatten().map(Tier::id).collect();
        Ok(Self { by_id, ids })
    }

    /// Configured tier ids, fastest first.
    pub fn ids(&self) -> &[u8] {
        &self.ids
    }

    pub fn get(&self, id: u8) -> Option<&Tier> {
        self.by_id.get(id as usize).and_then(|t| t.as_ref())
    }

    /// Tiers fastest (lowest id) first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Tier> {
        self.by_id.iter().flatten()
    }

    pub fn slowest(&self) -> Option<&Tier> {
        self.iter().last()
    }
}

/// The store's tier records by name.
pub(super) fn records(store: &Store) -> Result<HashMap<String, TierRecord>> {
    Ok(store
        .tiers()?
        .into_iter()
        .map(|r| (r.definition.name.clone(), r))
        .collect())
}

/// What the store's records say the device of tier `name` must be.
pub(super) fn expect_of<'a>(records: &'a HashMap<String, TierRecord>, name: &str) -> Expect<'a> {
    match records.get(name) {
        Some(r) => Expect::Uuid(&r.uuid),
        None => Expect::New,
    }
}

/// Undoes the tiers a failed open made: they hold no data yet, and left
/// behind they would be refused as unknown at the next start.
fn forget_new(opened: Vec<Tier>) {
    for t in opened {
        t.undo_new();
    }
}

/// Two tiers on one directory or block device would share extents.
pub(super) fn refuse_shared_devices(defs: &[TierDefinition]) -> Result<()> {
    let mut seen: HashMap<(u64, u64), &TierDefinition> = HashMap::new();
    for d in defs {
        let Ok(meta) = std::fs::metadata(&d.path) else {
            continue; // Tier::open names the missing path.
        };
        let key = if meta.rdev() != 0 {
            (u64::MAX, meta.rdev())
        } else {
            (meta.dev(), meta.ino())
        };
        if let Some(first) = seen.insert(key, d) {
            return Err(Error::Shared {
                first: first.name.clone(),
                second: d.name.clone(),
                path: d.path.clone(),
            });
        }
    }
    Ok(())
}

/// A stored tier missing from the config may go only if no chunk uses it.
pub(super) fn refuse_removed_tiers(
    defs: &[TierDefinition],
    records: &HashMap<String, TierRecord>,
    store: &Store,
) -> Result<()> {
    let gone: HashMap<u8, &TierRecord> = records
        .values()
        .filter(|r| !defs.iter().any(|d| d.name == r.definition.name))
        .map(|r| (r.definition.tier_id, r))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let mut users: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
    store.for_each_chunk(|vol, _, word| {
        if let Some(m) = Mapping::from_persistent(word) {
            if gone.contains_key(&m.tier) {
                users.entry(m.tier).or_default().insert(vol.to_string());
            }
        }
    })?;
    if let Some((id, vols)) = users.into_iter().next() {
        let r = gone[&id];
        return Err(Error::Removed {
            tier: r.definition.name.clone(),
            id,
            volumes: vols
                .iter()
                .map(|v| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}
