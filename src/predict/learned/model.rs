//! The burn networks: an MLP over the flat features and a GRU over each
//! chunk's per-epoch sequence plus static features. Both output one logit
//! per chunk; the score is its sigmoid.

use burn::{
    module::Module,
    nn::{
        gru::{Gru, GruConfig},
        Linear, LinearConfig,
    },
    tensor::{activation, Device, Tensor},
};
use serde::{Deserialize, Serialize};

use crate::{
    predict::features::{N_FEATURES, N_STATIC_FEATURES, N_STEP_FEATURES},
    profile::HISTORY_EPOCHS,
};

/// Which network a model file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Mlp,
    Gru,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mlp" => Ok(Self::Mlp),
            "gru" => Ok(Self::Gru),
            _ => Err(format!("unknown architecture '{s}' (expected mlp or gru)")),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mlp => "mlp",
            Self::Gru => "gru",
        })
    }
}

/// Two hidden ReLU layers over the flat features.
#[derive(Module, Debug)]
pub struct Mlp {
    l1: Linear,
    l2: Linear,
    out: Linear,
}

impl Mlp {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(N_FEATURES, hidden).init(device),
            l2: LinearConfig::new(hidden, hidden / 2).init(device),
            out: LinearConfig::new(hidden / 2, 1).init(device),
        }
    }

    /// `x`: `[batch, N_FEATURES]` → logits `[batch, 1]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = activation::relu(self.l1.forward(x));
        let x = activation::relu(self.l2.forward(x));
        self.out.forward(x)
    }
}

/// A GRU over the per-epoch sequence, its last state joined with the static
/// features, then a small head.
#[derive(Module, Debug)]
pub struct GruNet {
    gru: Gru,
    head: Linear,
    out: Linear,
}

impl GruNet {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            gru: GruConfig::new(N_STEP_FEATURES, hidden, true).init(device),
            head: LinearConfig::new(hidden + N_STATIC_FEATURES, hidden).init(device),
            out: LinearConfig::new(hidden, 1).init(device),
        }
    }

    /// `seq`: `[batch, H, N_STEP_FEATURES]`, `stat`: `[batch,
    /// N_STATIC_FEATURES]` → logits `[batch, 1]`.
    pub fn forward(&self, seq: Tensor<3>, stat: Tensor<2>) -> Tensor<2> {
        let [batch, steps, _] = seq.shape().dims();
        debug_assert_eq!(steps, HISTORY_EPOCHS);
        let states = self.gru.forward(seq, None);
        let hidden = states.dims()[2];
        let last = states.narrow(1, steps - 1, 1).reshape([batch, hidden]);
        let x = Tensor::cat(vec![last, stat], 1);
        let x = activation::relu(self.head.forward(x));
        self.out.forward(x)
    }
}

/// Either network. One per volume, so the variants' size difference (a
/// few KiB) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    Mlp(Mlp),
    Gru(GruNet),
}

/// The device's random generator is process-wide: seeding it and drawing a
/// network's initial weights happen under this lock, so a network built on
/// another thread (a model being loaded) never takes numbers out of a
/// seeded training run, which would make training irreproducible.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Net {
    /// A network with weights drawn from the device's generator as it is.
    pub fn new(arch: Arch, hidden: usize, device: &Device) -> Self {
        let _init = INIT.lock().unwrap_or_else(|p| p.into_inner());
        Self::build(arch, hidden, device)
    }

    /// A network with weights drawn from the device's generator seeded with
    /// `seed`: the same seed gives the same weights.
    pub fn seeded(arch: Arch, hidden: usize, device: &Device, seed: u64) -> Self {
        let _init = INIT.lock().unwrap_or_else(|p| p.into_inner());
        device.seed(seed);
        Self::build(arch, hidden, device)
    }

    fn build(arch: Arch, hidden: usize, device: &Device) -> Self {
        match arch {
            Arch::Mlp => Self::Mlp(Mlp::new(hidden, device)),
            Arch::Gru => Self::Gru(GruNet::new(hidden, device)),
        }
    }

    /// Logits for a batch given as the flat feature matrix (`[batch,
    /// N_FEATURES]`); the GRU re-derives its layout from the same rows.
    pub fn forward_rows(&self, flat: Tensor<2>, seq: Option<Tensor<3>>) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward(flat),
            Self::Gru(g) => {
                let stat = flat.narrow(1, HISTORY_EPOCHS, N_STATIC_FEATURES);
                let seq = seq.expect("the GRU is always given the sequence layout");
                g.forward(seq, stat)
            }
        }
    }
}
