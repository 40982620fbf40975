//! The preference losses' test cases, shared by the CPU suite (`tests/preference_losses.rs`,
//! against naive formulas) and the GPU suite (CUDA against the CPU executor): the families
//! and DPO types, the peers' hyperparameter grid, random data and the inputs by name.
#![allow(dead_code)]

use half::bf16;
use liger::prelude::*;
use liger::{ChunkedLoss, TensorData};

use super::{normal, randn, targets};

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub s: usize,
    pub t: usize,
    pub h: usize,
    pub v: usize,
}

pub const SMALL: Shape = Shape {
    s: 6,
    t: 47,
    h: 31,
    v: 123,
};
pub const LARGE: Shape = Shape {
    s: 16,
    t: 128,
    h: 64,
    v: 512,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fam {
    Dpo(&'static str),
    Cpo,
    Simpo,
    Orpo,
    Kto,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ref {
    Head,
    Logps,
    None,
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub fam: Fam,
    pub beta: f64,
    pub eps: f64,
    pub alpha: f64,
    pub gamma: f64,
    pub tau: f64,
    pub average: bool,
    pub nll: bool,
    pub ignore: i64,
    pub bias: bool,
    pub reference: Ref,
    pub kl: bool,
    pub nll_target: bool,
}

impl Case {
    pub fn base(fam: Fam) -> Case {
        Case {
            fam,
            beta: 0.1,
            eps: 0.0,
            alpha: 1.0,
            gamma: 0.5,
            tau: 0.05,
            average: false,
            nll: false,
            ignore: -100,
            bias: false,
            reference: match fam {
                Fam::Dpo(_) => Ref::Head,
                _ => Ref::None,
            },
            kl: false,
            nll_target: false,
        }
    }

    pub fn loss(&self) -> &'static dyn ChunkedLoss {
        match self.fam {
            Fam::Dpo(_) => &Dpo,
            Fam::Cpo => &Cpo,
            Fam::Simpo => &Simpo,
            Fam::Orpo => &Orpo,
            Fam::Kto => &Kto,
        }
    }

    pub fn params(&self) -> ParamSet {
        let b = |v: bool| if v { "true" } else { "false" };
        let p = ParamSet::new().float("beta", self.beta as f32);
        match self.fam {
            Fam::Dpo(t) => p
                .float("label_smoothing", self.eps as f32)
                .float("alpha", self.alpha as f32)
                .float("discopop_tau", self.tau as f32)
                .variant("loss_type", t)
                .variant("average", b(self.average))
                .variant("nll", b(self.nll)),
            Fam::Cpo => p
                .float("label_smoothing", self.eps as f32)
                .float("alpha", self.alpha as f32)
                .variant("average", b(self.average))
                .variant("nll", b(self.nll)),
            Fam::Simpo => p
                .float("label_smoothing", self.eps as f32)
                .float("alpha", self.alpha as f32)
                .float("gamma", self.gamma as f32)
                .variant("nll", b(self.nll)),
            Fam::Orpo => p,
            Fam::Kto => p.variant("average", b(self.average)),
        }
    }

    /// Whether the per-sequence log-probs are averaged.
    pub fn averaged(&self) -> bool {
        match self.fam {
            Fam::Dpo("Ipo") | Fam::Simpo | Fam::Orpo => true,
            _ => self.average,
        }
    }

    pub fn paired(&self) -> bool {
        self.fam != Fam::Kto
    }
}

pub struct Data {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub xr: Vec<f32>,
    pub wr: Vec<f32>,
    pub br: Option<Vec<f32>>,
    pub target: Vec<i64>,
    pub nll_target: Vec<i64>,
    pub preference: Vec<bool>,
    pub kl: f32,
    pub ref_logps: Vec<f32>,
}

pub fn data(sh: Shape, seed: u64, c: &Case) -> Data {
    let mut rng = fastrand::Rng::with_seed(seed);
    let wsd = 1.2 / (sh.h as f64).sqrt();
    Data {
        x: randn(&mut rng, sh.s * sh.t * sh.h, 1.0),
        w: randn(&mut rng, sh.v * sh.h, wsd),
        b: c.bias.then(|| randn(&mut rng, sh.v, 0.5)),
        xr: randn(&mut rng, sh.s * sh.t * sh.h, 1.0),
        wr: randn(&mut rng, sh.v * sh.h, wsd),
        br: c.bias.then(|| randn(&mut rng, sh.v, 0.5)),
        target: targets(&mut rng, sh.s, sh.t, sh.v, c.ignore),
        nll_target: (0..sh.s * sh.t)
            .map(|_| {
                loop {
                    let id = rng.usize(0..sh.v) as i64;
                    if id != c.ignore {
                        break id;
                    }
                }
            })
            .collect(),
        preference: (0..sh.s).map(|i| i % 3 != 1 && rng.bool()).collect(),
        kl: normal(&mut rng, 1.0) as f32,
        ref_logps: randn(&mut rng, sh.s, 20.0)
            .into_iter()
            .map(|v| -v.abs() - 5.0)
            .collect(),
    }
}

pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

pub fn inputs<'a>(
    c: &Case,
    sh: Shape,
    d: &'a Data,
    x: &'a TensorData<'a>,
    w: &'a TensorData<'a>,
) -> InputSet<'a> {
    inputs_with_reference(
        c,
        sh,
        d,
        x,
        w,
        TensorData::F32(&d.xr),
        TensorData::F32(&d.wr),
    )
}

/// [`inputs`] with the reference head's `x` and `W` given (the CUDA executor wants every head
/// in one dtype).
pub fn inputs_with_reference<'a>(
    c: &Case,
    sh: Shape,
    d: &'a Data,
    x: &'a TensorData<'a>,
    w: &'a TensorData<'a>,
    xr: TensorData<'a>,
    wr: TensorData<'a>,
) -> InputSet<'a> {
    let head = |x: TensorData<'a>, w: TensorData<'a>, b: &'a Option<Vec<f32>>| {
        let xv = TensorView::new(x, &[sh.s, sh.t, sh.h]).expect("x");
        let wv = TensorView::new(w, &[sh.v, sh.h]).expect("w");
        match b {
            Some(b) => Head::with_bias(xv, wv, TensorView::new(&b[..], &[sh.v]).expect("b")),
            None => Head::new(xv, wv),
        }
    };
    let mut set = InputSet::new().head("policy", head(*x, *w, &d.b)).tensor(
        "target",
        TensorView::new(&d.target[..], &[sh.s, sh.t]).expect("t"),
    );
    match c.reference {
        Ref::Head => {
            set = set.head("reference", head(xr, wr, &d.br));
        }
        Ref::Logps => {
            set = set.tensor(
                "ref_logps",
                TensorView::new(&d.ref_logps[..], &[sh.s]).expect("r"),
            );
        }
        Ref::None => {}
    }
    if c.nll_target {
        set = set.tensor(
            "nll_target",
            TensorView::new(&d.nll_target[..], &[sh.s, sh.t]).expect("nt"),
        );
    }
    if c.fam == Fam::Kto {
        set = set.tensor(
            "preference",
            TensorView::new(&d.preference[..], &[sh.s]).expect("pref"),
        );
        if c.kl {
            set = set.tensor(
                "kl",
                TensorView::new(std::slice::from_ref(&d.kl), &[]).expect("kl"),
            );
        }
    }
    set
}

pub const DPO_TYPES: [&str; 11] = [
    "Sigmoid", "Hinge", "Ipo", "Robust", "ExoPair", "NcaPair", "BcoPair", "SppoHard", "ApoZero",
    "ApoDown", "Discopop",
];

/// The ε each DPO type is tested with (the peers': robust 0.1, exo_pair 1e-3).
pub fn dpo_eps(t: &str) -> f64 {
    match t {
        "Robust" => 0.1,
        "ExoPair" => 1e-3,
        "Sigmoid" => 0.1,
        _ => 0.0,
    }
}

/// The peers' DPO grid: (ignore, β) ∈ {(−100, 0.1), (42, 0.2)} with bias, NLL and averaging
/// flipped between them; the reference as a head and as precomputed log-probs.
pub fn dpo_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for t in DPO_TYPES {
        let base = Case {
            eps: dpo_eps(t),
            ..Case::base(Fam::Dpo(t))
        };
        out.push(Case {
            average: true,
            bias: true,
            ..base
        });
        out.push(Case {
            ignore: 42,
            beta: 0.2,
            nll: true,
            alpha: 0.85,
            reference: Ref::Logps,
            ..base
        });
    }
    out
}

pub fn other_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (ignore, beta, alpha, gamma) in [(-100, 0.1, 1.0, 0.5), (42, 0.2, 0.85, 0.85)] {
        for eps in [0.0, 0.1] {
            let bias = eps > 0.0;
            out.push(Case {
                ignore,
                beta,
                alpha,
                eps,
                bias,
                nll: true,
                ..Case::base(Fam::Cpo)
            });
            out.push(Case {
                ignore,
                beta,
                alpha,
                eps,
                bias,
                gamma,
                nll: ignore == 42,
                ..Case::base(Fam::Simpo)
            });
        }
        out.push(Case {
            ignore,
            beta,
            bias: ignore == 42,
            ..Case::base(Fam::Orpo)
        });
        out.push(Case {
            ignore,
            beta,
            nll_target: true,
            ..Case::base(Fam::Orpo)
        });
        for reference in [Ref::Head, Ref::Logps, Ref::None] {
            out.push(Case {
                ignore,
                beta,
                reference,
                kl: reference != Ref::Logps,
                average: ignore == 42,
                bias: reference == Ref::Head,
                ..Case::base(Fam::Kto)
            });
        }
    }
    out
}
