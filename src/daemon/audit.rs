//! The start-up audit of every stored chunk map, served or not: which
//! extents are in use, and which volumes cannot be opened safely because a
//! chunk of theirs points at an extent another chunk also uses, at a tier
//! that does not exist, or beyond a tier's end. Only the volumes involved are
//! refused; every extent any stored volume references stays claimed, so
//! nothing a kept volume holds is ever handed to another.

use std::collections::{BTreeMap, HashMap};

use log::warn;

use crate::{
    meta::Store,
    tier::{TierSet, UNIT_BYTES},
    volume::Mapping,
};

/// One stored chunk's extent, in allocation units.
#[derive(Debug, Clone, Copy)]
struct Use {
    tier: u8,
    start: u64,
    units: u64,
    volume: usize,
    chunk: u32,
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Volume name → why it must not be served (first problem found).
    pub refused: BTreeMap<String, String>,
}

/// Audits every chunk map in `store` against `tiers`.
pub fn audit(store: &Store, tiers: &TierSet) -> crate::Result<Audit> {
    let volumes = store.volumes()?;
    let index: HashMap<&str, usize> = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let mut uses = Vec::new();
    let mut audit = Audit::default();
    let mut refuse = |name: &str, why: String| {
        audit.refused.entry(name.to_string()).or_insert(why);
    };
    let mut unowned = 0u64;
    store.for_each_chunk(|vol, chunk, word| {
        let Some(m) = Mapping::from_persistent(word) else {
            return;
        };
        let Some(&i) = index.get(vol) else {
            unowned += 1;
            return;
        };
        let units = volumes[i].chunk_size.0 / UNIT_BYTES;
        let Some(tier) = tiers.get(m.tier) else {
            refuse(
                vol,
                format!(
                    "chunk {chunk} maps to tier_id {}, which no tier has",
                    m.tier
                ),
            );
            return;
        };
        let (_, total) = tier.usage();
        if (m.unit + units) * UNIT_BYTES > total {
            refuse(
                vol,
                format!(
                    "chunk {chunk} maps to unit {} of tier '{}', beyond its {} bytes",
                    m.unit,
                    tier.name(),
                    total
                ),
            );
            return;
        }
        uses.push(Use {
            tier: m.tier,
            start: m.unit,
            units,
            volume: i,
            chunk,
        });
    })?;
    if unowned > 0 {
        warn!(
            "metadata store {}: {unowned} chunk-map entries belong to no stored volume; ignored",
            store.path().display()
        );
    }
    uses.sort_by_key(|u| (u.tier, u.start));
    // Extents are aligned runs; an overlap is with the run that reaches
    // furthest among those before it on the same tier.
    let mut reach: Option<Use> = None;
    for u in &uses {
        if let Some(r) = reach.filter(|r| r.tier == u.tier && r.start + r.units > u.start) {
            let (a, b) = (&volumes[r.volume].name, &volumes[u.volume].name);
            let tier = tiers.get(u.tier).map(|t| t.name()).unwrap_or("?");
            let why = format!(
                "extent at unit {} of tier '{tier}' is referenced twice: volume '{a}' chunk {} and volume '{b}' chunk {}",
                u.start, r.chunk, u.chunk
            );
            refuse(a, why.clone());
            refuse(b, why);
        }
        if reach.is_none_or(|r| r.tier != u.tier || u.start + u.units > r.start + r.units) {
            reach = Some(*u);
        }
    }
    Ok(audit)
}

/// Claims, as far as possible, the extents of a volume that is not opened
/// (kept but not served, or refused), so no other volume is given them.
pub fn claim_unserved(store: &Store, tiers: &TierSet, name: &str) -> crate::Result<()> {
    let Some(meta) = store.volume(name)? else {
        return Ok(());
    };
    for (_, word) in store.chunk_map(name)? {
        if let Some(m) = Mapping::from_persistent(word) {
            if let Some(t) = tiers.get(m.tier) {
                // A double reference was claimed by the other volume: fine.
                let _ = t.claim(m.unit * UNIT_BYTES, meta.chunk_size.0);
            }
        }
    }
    Ok(())
}
