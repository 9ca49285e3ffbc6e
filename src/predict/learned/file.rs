//! Model file reading and writing (see the parent module for the layout).

use std::path::Path;

use burn::{
    module::{Module, ModuleVisitor, Param},
    store::ModuleRecord,
    tensor::{Bytes, Device, Tensor},
};
use serde::{Deserialize, Serialize};

use super::model::{Arch, Net};
use crate::{
    predict::{features::N_FEATURES, Error, Result},
    profile::HISTORY_EPOCHS,
};

const MAGIC: &[u8; 8] = b"TIERBLKM";
pub const FORMAT_VERSION: u32 = 1;
/// Largest header accepted, to refuse garbage before allocating.
const MAX_HEADER: usize = 1 << 20;

/// What a model file says about its network and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    pub format_version: u32,
    pub arch: Arch,
    pub hidden: usize,
    pub n_features: usize,
    pub history_epochs: usize,
    pub seed: u64,
    /// Requests per epoch the training replay used.
    pub epoch_requests: u64,
    pub chunk_sizes: Vec<u64>,
    /// Trace files and the share of each (from its start) used for training.
    pub trained_on: Vec<String>,
    pub train_fraction: f64,
    pub examples: usize,
    pub train_loss: f32,
    pub valid_loss: f32,
    /// Epochs ahead the training target looked (1: the next epoch only;
    /// older files lack the field).
    #[serde(default = "one_epoch")]
    pub horizon: usize,
}

fn one_epoch() -> usize {
    1
}

pub fn save(path: &Path, header: &ModelHeader, net: &Net) -> Result<()> {
    let write_err = |source| Error::WriteModel {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(header).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        message: format!("cannot encode header: {e}"),
    })?;
    let weights = net
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| Error::ModelFile {
            path: path.to_path_buf(),
            message: format!("cannot encode weights: {e}"),
        })?;
    let mut b = Vec::with_capacity(12 + json.len() + weights.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(&json);
    b.extend_from_slice(&weights);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    // Write then rename, so a crash never leaves a half-written model.
    let tmp = path.with_extension("bpk.tmp");
    std::fs::write(&tmp, &b).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

pub fn load(path: &Path) -> Result<(ModelHeader, Net)> {
    let b = std::fs::read(path).map_err(|source| Error::ReadModel {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&b).map_err(|message| Error::ModelFile {
        path: path.to_path_buf(),
        message,
    })
}

fn parse(b: &[u8]) -> std::result::Result<(ModelHeader, Net), String> {
    if b.len() < 12 || &b[..8] != MAGIC {
        return Err(
            "not a tierblk model file (bad magic; expected a file written by `tierblk train`)"
                .into(),
        );
    }
    let len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER || 12 + len > b.len() {
        return Err(format!(
            "truncated or corrupt header (claims {len} bytes, file has {})",
            b.len()
        ));
    }
    let header: ModelHeader =
        serde_json::from_slice(&b[12..12 + len]).map_err(|e| format!("corrupt header: {e}"))?;
    if header.format_version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (this tierblk reads version {FORMAT_VERSION})",
            header.format_version
        ));
    }
    if header.n_features != N_FEATURES || header.history_epochs != HISTORY_EPOCHS {
        return Err(format!(
            "model expects {} features over {} epochs, this tierblk computes {N_FEATURES} over {HISTORY_EPOCHS}",
            header.n_features, header.history_epochs
        ));
    }
    if header.hidden < 2 || header.hidden > 1024 {
        return Err(format!(
            "hidden size {} out of range 2..=1024",
            header.hidden
        ));
    }
    let fresh = Net::new(header.arch, header.hidden, &Device::flex());
    let want = dtypes(&fresh);
    // burn loads each weight in the dtype the file names and checks only
    // its byte length, and not even that for quantized dtypes: a weight
    // stored as I32, U32, Bool(U32) (one byte of the file turns F32 into
    // I32) or QFloat panics inside `try_load_record`, one stored as Flex32
    // panics the first forward pass. The record does not show its dtypes,
    // so the first kind is caught as a panic (this crate unwinds on
    // panic), the second refused below.
    let weights = b[12 + len..].to_vec();
    let (arch, hidden) = (header.arch, header.hidden);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights))
            .map_err(|e| format!("corrupt weights: {e}"))
            .and_then(|record| {
                fresh.try_load_record(record).map_err(|e| {
                    format!("weights do not fit a {arch} with hidden size {hidden}: {e}")
                })
            })
    }))
    .map_err(|_| "corrupt weights: burn panicked loading them (see above)".to_string())?;
    let net = loaded?;
    let got = dtypes(&net);
    if let Some(((path, d), (_, w))) = got.iter().zip(&want).find(|(g, w)| g != w) {
        return Err(format!(
            "corrupt weights: {path} is stored as {d}, the network computes in {w}"
        ));
    }
    Ok((header, net))
}

/// The dtype of each float parameter of `net`, in visiting order.
fn dtypes(net: &Net) -> Vec<(String, String)> {
    #[derive(Default)]
    struct Dtypes {
        path: Vec<String>,
        out: Vec<(String, String)>,
    }
    impl ModuleVisitor for Dtypes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let dtype = format!("{:?}", param.val().dtype());
            self.out.push((self.path.join("."), dtype));
        }
    }
    let mut v = Dtypes::default();
    net.visit(&mut v);
    v.out
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn header(arch: Arch) -> ModelHeader {
        ModelHeader {
            format_version: FORMAT_VERSION,
            arch,
            hidden: 8,
            n_features: N_FEATURES,
            history_epochs: HISTORY_EPOCHS,
            seed: 1,
            epoch_requests: 100,
            chunk_sizes: vec![65536],
            trained_on: vec![],
            train_fraction: 0.5,
            examples: 0,
            train_loss: 0.0,
            valid_loss: 0.0,
            horizon: 1,
        }
    }

    #[test]
    fn model_round_trips_and_bad_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        for arch in [Arch::Mlp, Arch::Gru] {
            let p = dir.path().join(format!("{arch}.bpk"));
            let net = Net::new(arch, 8, &Device::flex());
            save(&p, &header(arch), &net).unwrap();
            let (h, _) = load(&p).unwrap();
            assert_eq!(h, header(arch));
        }
        let p = dir.path().join("mlp.bpk");
        let good = std::fs::read(&p).unwrap();

        let bad = dir.path().join("bad.bpk");
        std::fs::write(&bad, b"hello world, not a model").unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.bpk") && e.contains("not a tierblk model"),
            "{e}"
        );

        std::fs::write(&bad, &good[..good.len() - 40]).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("weights"), "{e}");

        let mut h = header(Arch::Mlp);
        h.hidden = 16;
        save(&bad, &h, &Net::new(Arch::Mlp, 8, &Device::flex())).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");

        let e = load(&dir.path().join("missing.bpk"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.bpk"), "{e}");
    }
}
