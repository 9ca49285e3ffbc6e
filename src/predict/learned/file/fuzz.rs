//! Property tests feeding hostile bytes to the `.bpk` model loader:
//! arbitrary bytes, the shipped models (`models/`) with bytes flipped,
//! overwritten, inserted, removed or cut in each of their parts (our
//! header, burnpack's header and metadata, the weights), and the shipped
//! models with header fields set to hostile values. The loader returns an
//! error or a model, never panics, and never makes an allocation out of
//! proportion to the file; a model it returns also scores.

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::sync::OnceLock;

use proptest::{prelude::*, sample::Index};
use serde_json::{json, Value};

use super::*;
use crate::{fuzzing, predict::learned::LearnedPredictor};

/// Largest single allocation loading may make: the network of the
/// largest accepted hidden size is a few MiB.
const MAX_ALLOCATION: usize = 64 << 20;

const MODELS: [&str; 2] = ["default.bpk", "gru.bpk"];

/// A shipped model's bytes (read once per test binary).
fn shipped(name: &str) -> &'static [u8] {
    static CACHE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        MODELS
            .iter()
            .map(|n| {
                let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(n);
                std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            })
            .collect()
    });
    let i = MODELS
        .iter()
        .position(|n| *n == name)
        .expect("a shipped model");
    &all[i]
}

/// The parts of a model file: our JSON header, burnpack's fixed header and
/// CBOR metadata, and the rest (alignment and weights).
fn parts(b: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
    let (json, pack) = b[12..].split_at(len);
    let meta = u32::from_le_bytes(pack[6..10].try_into().expect("4 bytes")) as usize;
    let (meta, weights) = pack.split_at(10 + meta);
    (json, meta, weights)
}

fn assemble(json: &[u8], pack: &[u8]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(json);
    b.extend_from_slice(pack);
    b
}

/// Loads `bytes`; checks the outcome. Returns the header of a model that
/// loaded.
pub fn check(bytes: &[u8]) -> std::result::Result<Option<ModelHeader>, TestCaseError> {
    let _burn = crate::predict::learned::burn_test_lock();
    let (result, largest) = fuzzing::largest_allocation(|| parse(bytes));
    prop_assert!(
        largest <= MAX_ALLOCATION.max(2 * bytes.len()),
        "loading a {}-byte file allocated {largest} bytes at once",
        bytes.len()
    );
    match result {
        Ok((header, net)) => {
            prop_assert_eq!(header.format_version, FORMAT_VERSION);
            prop_assert!((2..=1024).contains(&header.hidden));
            // A model that loads also scores (flipped weights may make the
            // scores NaN: heat maps read NaN as cold).
            let p = LearnedPredictor::new(header.clone(), net);
            let _ = p.idle_score();
            Ok(Some(header))
        }
        Err(msg) => {
            prop_assert!(!msg.trim().is_empty());
            Ok(None)
        }
    }
}

/// Which part of a shipped model a mutation lands in.
#[derive(Debug, Clone, Copy)]
enum Part {
    Header,
    PackMeta,
    Weights,
    Whole,
}

/// A JSON value meant to be wrong for some header field.
fn hostile_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(null),
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(-1),
            json!(1024),
            json!(1025),
            json!(u32::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(1e300),
            json!(""),
            json!("mlp"),
            json!("gru"),
            json!("lstm"),
            json!([]),
            json!([0]),
            json!({}),
            json!(true),
        ]),
        any::<i64>().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
        any::<String>().prop_map(|v| json!(v)),
        (0usize..5000).prop_map(|n| json!(vec![u64::MAX; n])),
        (0usize..300).prop_map(|n| json!(vec!["x".repeat(100); n])),
    ]
}

fn header_field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "format_version",
        "arch",
        "hidden",
        "n_features",
        "history_epochs",
        "seed",
        "epoch_requests",
        "chunk_sizes",
        "trained_on",
        "train_fraction",
        "examples",
        "train_loss",
        "valid_loss",
        "horizon",
        "extra",
    ])
}

fn cbor_text(s: &str) -> Vec<u8> {
    let mut b = if s.len() < 24 {
        vec![0x60 + s.len() as u8]
    } else {
        vec![0x78, s.len() as u8]
    };
    b.extend_from_slice(s.as_bytes());
    b
}

fn cbor_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0xa0 + entries.len() as u8];
    for (k, v) in entries {
        b.extend(cbor_text(k));
        b.extend_from_slice(v);
    }
    b
}

/// burn's tensor dtypes as burnpack's CBOR metadata spells them, the
/// quantized ones included (whose byte length burnpack does not check).
fn cbor_dtypes() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = [
        "F64", "F32", "Flex32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
        "U8", "Bool", "QFloat", "F33",
    ]
    .iter()
    .map(|d| (d.to_string(), cbor_text(d)))
    .collect();
    for store in ["Native", "U8", "U32"] {
        out.push((
            format!("Bool({store})"),
            cbor_map(&[("Bool", cbor_text(store))]),
        ));
    }
    let stores = [
        ("Native", cbor_text("Native")),
        ("PackedU32(0)", cbor_map(&[("PackedU32", vec![0])])),
        ("PackedU32(1)", cbor_map(&[("PackedU32", vec![1])])),
        ("PackedNative(0)", cbor_map(&[("PackedNative", vec![0])])),
    ];
    for value in ["Q8F", "Q8S", "E4M3", "Q4F", "E2M1", "Q2F"] {
        for (store_name, store) in &stores {
            for mode in ["Symmetric", "Lookup"] {
                let scheme = cbor_map(&[
                    ("value", cbor_text(value)),
                    ("store", store.clone()),
                    ("mode", cbor_text(mode)),
                    ("tensor", vec![0xf6]),
                    ("block", vec![0xf6]),
                ]);
                out.push((
                    format!("QFloat({value}, {store_name}, {mode})"),
                    cbor_map(&[("QFloat", scheme)]),
                ));
            }
        }
    }
    out
}

/// `model` with the dtype of its `tensor`th tensor replaced by `dtype`
/// (CBOR), burnpack's metadata length fixed to match.
fn with_dtype(model: &[u8], tensor: usize, dtype: &[u8]) -> Vec<u8> {
    let (json, meta, weights) = parts(model);
    let mut cbor = meta[10..].to_vec();
    let at: Vec<usize> = cbor
        .windows(10)
        .enumerate()
        .filter(|(_, w)| w == b"edtypecF32")
        .map(|(i, _)| i + 6)
        .collect();
    let at = at[tensor % at.len()];
    cbor.splice(at..at + 4, dtype.iter().copied());
    // The tensor data starts at the next multiple of 256 after the
    // metadata: keep it there.
    let aligned = |n: usize| n.div_ceil(256) * 256;
    let data = &weights[aligned(meta.len()) - meta.len()..];
    let mut pack = meta[..6].to_vec();
    pack.extend_from_slice(&(cbor.len() as u32).to_le_bytes());
    pack.extend_from_slice(&cbor);
    pack.resize(aligned(pack.len()), 0);
    pack.extend_from_slice(data);
    assemble(json, &pack)
}

proptest! {
    #![proptest_config(fuzzing::config(20000))]

    #[test]
    fn fuzz_model_arbitrary_bytes(
        magic in any::<bool>(),
        len in prop_oneof![any::<u32>(), 0u32..600],
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let b = if magic {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&rest);
            b
        } else {
            rest
        };
        check(&b)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(8000))]

    #[test]
    fn fuzz_model_mutated_shipped(
        model in prop::sample::select(MODELS.to_vec()),
        part in prop::sample::select(vec![Part::Header, Part::PackMeta, Part::Weights, Part::Whole]),
        muts in fuzzing::mutations(6),
        cut in prop::option::weighted(0.1, any::<Index>()),
        dtype in prop::option::weighted(0.1, (any::<Index>(), any::<Index>())),
    ) {
        let mut b = shipped(model).to_vec();
        if let Some((tensor, d)) = dtype {
            let dtypes = cbor_dtypes();
            b = with_dtype(&b, tensor.index(64), &d.get(&dtypes).1);
        }
        let b = &b[..];
        let (json, meta, weights) = parts(b);
        let mut b = match part {
            Part::Header => assemble(&fuzzing::apply(json, &muts), &[meta, weights].concat()),
            Part::PackMeta => assemble(json, &[&fuzzing::apply(meta, &muts)[..], weights].concat()),
            Part::Weights => assemble(json, &[meta, &fuzzing::apply(weights, &muts)[..]].concat()),
            Part::Whole => fuzzing::apply(b, &muts),
        };
        if let Some(i) = cut {
            b.truncate(i.index(b.len() + 1));
        }
        check(&b)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(8000))]

    #[test]
    fn fuzz_model_hostile_header_fields(
        model in prop::sample::select(MODELS.to_vec()),
        fields in prop::collection::vec((header_field(), hostile_json()), 1..4),
        drop in prop::option::weighted(0.2, header_field()),
    ) {
        let b = shipped(model);
        let (json, meta, weights) = parts(b);
        let mut h: serde_json::Map<String, Value> =
            serde_json::from_slice(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let original = h.clone();
        for (f, v) in fields {
            h.insert(f.to_string(), v);
        }
        if let Some(f) = drop {
            h.remove(f);
        }
        let json = serde_json::to_vec(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(loaded) = check(&assemble(&json, &[meta, weights].concat()))? {
            // The weights only fit the network they were saved from.
            prop_assert_eq!(json!(loaded.arch), original["arch"].clone());
            prop_assert_eq!(json!(loaded.hidden), original["hidden"].clone());
        }
    }
}

#[test]
fn shipped_models_load_and_split_into_their_parts() {
    for m in MODELS {
        let b = shipped(m);
        let (json, meta, weights) = parts(b);
        assert_eq!(assemble(json, &[meta, weights].concat()), b);
        assert!(parse(b).is_ok(), "{m}");
    }
}

/// Every tensor of both shipped models stored as every dtype: a weight in
/// an integer dtype of the right byte length (one byte of the file turns
/// `F32` into `I32`) loaded, then panicked the first forward pass.
#[test]
fn fuzz_model_every_tensor_dtype() {
    let _burn = crate::predict::learned::burn_test_lock();
    for m in MODELS {
        let b = shipped(m);
        let tensors = b.windows(10).filter(|w| w == b"edtypecF32").count();
        for t in 0..tensors {
            for (name, cbor) in cbor_dtypes() {
                let bytes = with_dtype(b, t, &cbor);
                let r = std::panic::catch_unwind(|| {
                    parse(&bytes).map(|(h, net)| LearnedPredictor::new(h, net).idle_score())
                });
                match r {
                    Err(_) => panic!("{m}: tensor {t} as {name} panics the loader"),
                    Ok(Ok(_)) => assert_eq!(name, "F32", "{m}: tensor {t} as {name} loaded"),
                    Ok(Err(e)) => assert_ne!(name, "F32", "{m}: {e}"),
                }
            }
        }
    }
}
