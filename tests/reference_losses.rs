//! The built-in losses through the f64 reference path against naive f64 formulas written
//! here (logits formed from x, W, b), with gradients of x, W and b checked against finite
//! differences of the naive formulas at sampled coordinates. S = 6 sequences, T = 47,
//! H = 31, V = 123, ignore_index -100 and 42, defaults and both sides of every variant.

mod common;

use common::*;
use liger::prelude::*;

const S: usize = 6;
const T: usize = 47;
const H: usize = 31;
const V: usize = 123;

struct HeadData {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    h: usize,
}

impl HeadData {
    fn random(rng: &mut fastrand::Rng, h: usize, bias: bool) -> Self {
        HeadData {
            x: randn(rng, S * T * h, 1.0),
            w: randn(rng, V * h, 0.35),
            b: bias.then(|| randn(rng, V, 0.5)),
            h,
        }
    }

    fn head(&self) -> Head<'_> {
        let x = TensorView::new(&self.x, &[S, T, self.h]).expect("x shape");
        let w = TensorView::new(&self.w, &[V, self.h]).expect("w shape");
        match &self.b {
            Some(b) => Head::with_bias(x, w, TensorView::new(b, &[V]).expect("b shape")),
            None => Head::new(x, w),
        }
    }

    fn logits(&self, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        linear(x, w, b, self.h, V)
    }

    fn parts(&self) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
        (f64s(&self.x), f64s(&self.w), self.b.as_deref().map(f64s))
    }
}

/// Hyperparameters are f32 kernel arguments: the naive formulas use the same rounded values.
fn r32(x: f64) -> f64 {
    f64::from(x as f32)
}

fn valid(t: &[i64], r: usize, ignore: i64) -> bool {
    t[r] != ignore
}

/// Checks the gradients of one head against finite differences of `loss(z)`, where the
/// logits come from the head's (possibly perturbed) x, W, b.
fn check_head_grads(
    what: &str,
    g: &liger::reference::HeadGrad,
    hd: &HeadData,
    rng: &mut fastrand::Rng,
    loss: &dyn Fn(&[f64]) -> f64,
) {
    let (x, w, b) = hd.parts();
    check_fd(&format!("{what} dx"), &g.x, &x, 10, rng, |x2| {
        loss(&hd.logits(x2, &w, b.as_deref()))
    });
    check_fd(&format!("{what} dW"), &g.w, &w, 10, rng, |w2| {
        loss(&hd.logits(&x, w2, b.as_deref()))
    });
    match (&g.b, &b) {
        (Some(gb), Some(b)) => check_fd(&format!("{what} db"), gb, b, 6, rng, |b2| {
            loss(&hd.logits(&x, &w, Some(b2)))
        }),
        (None, None) => {}
        _ => panic!("{what}: bias gradient presence does not match the bias"),
    }
}

// ------------------------------------------------------------------------------------ DPO

#[derive(Clone, Copy)]
struct DpoCfg {
    beta: f64,
    ls: f64,
    alpha: f64,
    average: bool,
    nll: bool,
    hinge: bool,
}

struct DpoNaive {
    loss: f64,
    chosen_rewards: Vec<f64>,
    rejected_rewards: Vec<f64>,
    chosen_logps: Vec<f64>,
    rejected_logps: Vec<f64>,
    nll: f64,
}

fn seq_logps(z: &[f64], t: &[i64], ignore: i64, average: bool) -> Vec<f64> {
    (0..S)
        .map(|s| {
            let rows: Vec<usize> = (s * T..(s + 1) * T)
                .filter(|&r| valid(t, r, ignore))
                .collect();
            let sum: f64 = rows
                .iter()
                .map(|&r| z[r * V + t[r] as usize] - lse(&z[r * V..(r + 1) * V]))
                .sum();
            if average {
                sum / rows.len() as f64
            } else {
                sum
            }
        })
        .collect()
}

fn dpo_naive(zp: &[f64], refs: &[f64], t: &[i64], ignore: i64, c: DpoCfg) -> DpoNaive {
    let c = DpoCfg {
        beta: r32(c.beta),
        ls: r32(c.ls),
        alpha: r32(c.alpha),
        ..c
    };
    let pi = seq_logps(zp, t, ignore, c.average);
    let p = S / 2;
    let mut out = DpoNaive {
        loss: 0.0,
        chosen_rewards: vec![],
        rejected_rewards: vec![],
        chosen_logps: vec![],
        rejected_logps: vec![],
        nll: 0.0,
    };
    for i in 0..p {
        let cm = pi[i] - refs[i];
        let rm = pi[p + i] - refs[p + i];
        let d = c.beta * (cm - rm);
        let l = if c.hinge {
            (1.0 - d).max(0.0)
        } else {
            -(1.0 - c.ls) * log_sigmoid(d) - c.ls * log_sigmoid(-d)
        };
        out.loss += l / p as f64;
        out.chosen_rewards.push(c.beta * cm);
        out.rejected_rewards.push(c.beta * rm);
        out.chosen_logps.push(pi[i]);
        out.rejected_logps.push(pi[p + i]);
    }
    if c.nll {
        let (mut sum, mut n) = (0.0, 0.0);
        for r in (0..p * T).filter(|&r| valid(t, r, ignore)) {
            sum += lse(&zp[r * V..(r + 1) * V]) - zp[r * V + t[r] as usize];
            n += 1.0;
        }
        out.nll = sum / n;
        out.loss += c.alpha * out.nll;
    }
    out
}

fn check_metric(out: &liger::reference::Output, name: &str, want: &[f64]) {
    let m = out.metric(name).unwrap_or_else(|| panic!("metric {name}"));
    assert_eq!(m.values.len(), want.len(), "{name} length");
    for (a, b) in m.values.iter().zip(want) {
        assert!(close(*a, *b, 1e-10, 1e-9), "{name}: {a} vs {b}");
    }
}

fn run_dpo(seed: u64, ignore: i64, c: DpoCfg, use_ref_head: bool, bias: bool, params: DpoParams) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let policy = HeadData::random(&mut rng, H, bias);
    let reference = HeadData::random(&mut rng, 19, bias);
    let t = targets(&mut rng, S, T, V, ignore);
    let (rx, rw, rb) = reference.parts();
    let ref_seq = seq_logps(
        &reference.logits(&rx, &rw, rb.as_deref()),
        &t,
        ignore,
        c.average,
    );
    let ref_logps: Vec<f32> = ref_seq.iter().map(|&v| v as f32).collect();
    let refs: Vec<f64> = if use_ref_head {
        ref_seq.clone()
    } else {
        f64s(&ref_logps)
    };
    let inputs = DpoInputs {
        policy: policy.head(),
        reference: use_ref_head.then(|| reference.head()),
        ref_logps: (!use_ref_head).then(|| TensorView::new(&ref_logps, &[S]).expect("shape")),
        target: TensorView::new(&t, &[S, T]).expect("shape"),
    };
    let out = Dpo
        .reference(&inputs, &params, ignore)
        .expect("reference path");
    let (x, w, b) = policy.parts();
    let zp = policy.logits(&x, &w, b.as_deref());
    let want = dpo_naive(&zp, &refs, &t, ignore, c);
    assert!(
        close(out.loss, want.loss, 1e-10, 1e-9),
        "loss {} vs {} ({})",
        out.loss,
        want.loss,
        out.spec
    );
    check_metric(&out, "chosen_rewards", &want.chosen_rewards);
    check_metric(&out, "rejected_rewards", &want.rejected_rewards);
    check_metric(&out, "chosen_logps", &want.chosen_logps);
    check_metric(&out, "rejected_logps", &want.rejected_logps);
    if c.nll {
        check_metric(&out, "nll_loss", &[want.nll]);
    } else {
        assert!(out.metric("nll_loss").is_none());
    }
    assert_eq!(out.grads.len(), 1, "only the policy head has gradients");
    let g = out.grad("policy").expect("policy gradients");
    check_head_grads("dpo", g, &policy, &mut rng, &|z| {
        dpo_naive(z, &refs, &t, ignore, c).loss
    });
}

#[test]
fn dpo_defaults_sigmoid_sum_reference_head() {
    let c = DpoCfg {
        beta: 0.1,
        ls: 0.0,
        alpha: 1.0,
        average: false,
        nll: false,
        hinge: false,
    };
    run_dpo(1, -100, c, true, false, DpoParams::default());
}

#[test]
fn dpo_sigmoid_average_label_smoothing_nll_bias_ignore_42() {
    let c = DpoCfg {
        beta: 0.2,
        ls: 0.1,
        alpha: 0.7,
        average: true,
        nll: true,
        hinge: false,
    };
    let p = DpoParams {
        beta: 0.2,
        label_smoothing: 0.1,
        alpha: 0.7,
        average: true,
        nll: true,
        loss_type: DpoType::Sigmoid,
        ..DpoParams::default()
    };
    run_dpo(2, 42, c, true, true, p);
}

#[test]
fn dpo_hinge_precomputed_reference_logps() {
    let c = DpoCfg {
        beta: 0.5,
        ls: 0.0,
        alpha: 1.0,
        average: false,
        nll: false,
        hinge: true,
    };
    let p = DpoParams {
        beta: 0.5,
        loss_type: DpoType::Hinge,
        ..DpoParams::default()
    };
    run_dpo(3, 42, c, false, false, p);
}

#[test]
fn dpo_hinge_average_nll_precomputed_reference_bias() {
    let c = DpoCfg {
        beta: 0.3,
        ls: 0.0,
        alpha: 1.0,
        average: true,
        nll: true,
        hinge: true,
    };
    let p = DpoParams {
        beta: 0.3,
        average: true,
        nll: true,
        loss_type: DpoType::Hinge,
        ..DpoParams::default()
    };
    run_dpo(4, -100, c, false, true, p);
}

#[test]
fn dpo_without_any_reference_is_refused_naming_the_input() {
    let mut rng = fastrand::Rng::with_seed(5);
    let policy = HeadData::random(&mut rng, H, false);
    let t = targets(&mut rng, S, T, V, -100);
    let inputs = DpoInputs {
        policy: policy.head(),
        reference: None,
        ref_logps: None,
        target: TensorView::new(&t, &[S, T]).expect("shape"),
    };
    match Dpo.reference(&inputs, &DpoParams::default(), -100) {
        Err(liger::Error::Refused {
            loss,
            input: "ref_logps",
            spec,
        }) if loss == "dpo" => {
            assert!(
                spec.contains("reference=absent") && spec.contains("ref_logps=absent"),
                "{spec}"
            );
        }
        other => panic!("expected a refusal naming ref_logps, got {other:?}"),
    }
    let e = Dpo
        .reference(&inputs, &DpoParams::default(), -100)
        .expect_err("refused");
    assert!(e.to_string().contains("needs input `ref_logps`"), "{e}");
}

// ------------------------------------------------------------------------------------ FLCE

#[derive(Clone, Copy)]
struct FlceCfg {
    ls: f64,
    zs: f64,
    cap: Option<f64>,
    sum: bool,
}

fn flce_naive(z: &[f64], t: &[i64], ignore: i64, c: FlceCfg) -> (f64, f64, f64) {
    let c = FlceCfg {
        ls: r32(c.ls),
        zs: r32(c.zs),
        cap: c.cap.map(r32),
        ..c
    };
    let rows: Vec<usize> = (0..S * T).filter(|&r| valid(t, r, ignore)).collect();
    let n = rows.len() as f64;
    let (mut loss, mut zl, mut hits) = (0.0, 0.0, 0.0);
    for r in rows {
        let x: Vec<f64> = z[r * V..(r + 1) * V]
            .iter()
            .map(|&v| c.cap.map_or(v, |cap| cap * (v / cap).tanh()))
            .collect();
        let l = lse(&x);
        let y = t[r] as usize;
        let mean_z = x.iter().sum::<f64>() / V as f64;
        loss += (1.0 - c.ls) * (l - x[y]) + c.ls * (l - mean_z) + c.zs * l * l;
        zl += c.zs * l * l;
        let am = (0..V).fold(0, |b, k| if x[k] > x[b] { k } else { b });
        hits += f64::from(am == y);
    }
    let d = if c.sum { 1.0 } else { n };
    (loss / d, zl / d, hits / n)
}

fn run_flce(seed: u64, ignore: i64, c: FlceCfg, bias: bool, params: FlceParams) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let head = HeadData::random(&mut rng, H, bias);
    let t = targets(&mut rng, S, T, V, ignore);
    let inputs = FlceInputs {
        logits: head.head(),
        target: TensorView::new(&t, &[S, T]).expect("shape"),
        class_weight: None,
        token_weight: None,
    };
    let out = Flce
        .reference(&inputs, &params, ignore)
        .expect("reference path");
    let (x, w, b) = head.parts();
    let (loss, zl, acc) = flce_naive(&head.logits(&x, &w, b.as_deref()), &t, ignore, c);
    assert!(
        close(out.loss, loss, 1e-10, 1e-9),
        "loss {} vs {loss} ({})",
        out.loss,
        out.spec
    );
    check_metric(&out, "z_loss", &[zl]);
    check_metric(&out, "accuracy", &[acc]);
    let g = out.grad("logits").expect("gradients");
    check_head_grads("flce", g, &head, &mut rng, &|z| {
        flce_naive(z, &t, ignore, c).0
    });
}

#[test]
fn flce_defaults_mean() {
    let c = FlceCfg {
        ls: 0.0,
        zs: 0.0,
        cap: None,
        sum: false,
    };
    run_flce(11, -100, c, false, FlceParams::default());
}

#[test]
fn flce_sum_label_smoothing_z_loss_bias_ignore_42() {
    let c = FlceCfg {
        ls: 0.1,
        zs: 1e-3,
        cap: None,
        sum: true,
    };
    let p = FlceParams {
        label_smoothing: 0.1,
        z_loss_scale: 1e-3,
        reduction: Reduction::Sum,
        ..FlceParams::default()
    };
    run_flce(12, 42, c, true, p);
}

#[test]
fn flce_mean_softcap_label_smoothing() {
    let c = FlceCfg {
        ls: 0.2,
        zs: 1e-2,
        cap: Some(1.5),
        sum: false,
    };
    let p = FlceParams {
        label_smoothing: 0.2,
        z_loss_scale: 1e-2,
        softcap_value: 1.5,
        softcap: true,
        ..FlceParams::default()
    };
    run_flce(13, -100, c, true, p);
}

// ------------------------------------------------------------------------------------ JSD

#[derive(Clone, Copy)]
struct JsdCfg {
    beta: f64,
    tau: f64,
    wh: f64,
    ws: f64,
}

fn jsd_naive(zs: &[f64], zt: &[f64], t: &[i64], ignore: i64, c: JsdCfg) -> (f64, f64, f64) {
    let c = JsdCfg {
        beta: r32(c.beta),
        tau: r32(c.tau),
        wh: r32(c.wh),
        ws: r32(c.ws),
    };
    let rows: Vec<usize> = (0..S * T).filter(|&r| valid(t, r, ignore)).collect();
    let n = rows.len() as f64;
    let (mut soft, mut hard) = (0.0, 0.0);
    for r in rows {
        let su: Vec<f64> = zs[r * V..(r + 1) * V].iter().map(|v| v / c.tau).collect();
        let tu: Vec<f64> = zt[r * V..(r + 1) * V].iter().map(|v| v / c.tau).collect();
        let (ls, lt) = (lse(&su), lse(&tu));
        for k in 0..V {
            let (s, tt) = (su[k] - ls, tu[k] - lt);
            soft += if c.beta == 0.0 {
                tt.exp() * (tt - s)
            } else if c.beta == 1.0 {
                s.exp() * (s - tt)
            } else {
                let m = ((1.0 - c.beta) * s.exp() + c.beta * tt.exp()).ln();
                c.beta * tt.exp() * (tt - m) + (1.0 - c.beta) * s.exp() * (s - m)
            };
        }
        let z = &zs[r * V..(r + 1) * V];
        hard += lse(z) - z[t[r] as usize];
    }
    let (soft, hard) = (soft / n, hard / n);
    (c.wh * hard + c.ws * soft, soft, hard)
}

fn run_jsd(seed: u64, ignore: i64, c: JsdCfg, bias: bool, params: JsdParams) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let student = HeadData::random(&mut rng, H, bias);
    let teacher = HeadData::random(&mut rng, 2 * H, bias);
    let t = targets(&mut rng, S, T, V, ignore);
    let inputs = JsdInputs {
        student: student.head(),
        teacher: teacher.head(),
        target: TensorView::new(&t, &[S, T]).expect("shape"),
    };
    let out = Jsd
        .reference(&inputs, &params, ignore)
        .expect("reference path");
    let (tx, tw, tb) = teacher.parts();
    let zt = teacher.logits(&tx, &tw, tb.as_deref());
    let (x, w, b) = student.parts();
    let (loss, soft, hard) = jsd_naive(&student.logits(&x, &w, b.as_deref()), &zt, &t, ignore, c);
    assert!(
        close(out.loss, loss, 1e-10, 1e-9),
        "loss {} vs {loss}",
        out.loss
    );
    check_metric(&out, "soft_loss", &[soft]);
    check_metric(&out, "hard_loss", &[hard]);
    assert_eq!(out.grads.len(), 1, "the teacher is frozen");
    let g = out.grad("student").expect("gradients");
    check_head_grads("jsd", g, &student, &mut rng, &|z| {
        jsd_naive(z, &zt, &t, ignore, c).0
    });
}

#[test]
fn jsd_defaults() {
    let c = JsdCfg {
        beta: 0.5,
        tau: 1.0,
        wh: 0.5,
        ws: 0.5,
    };
    run_jsd(21, -100, c, false, JsdParams::default());
}

#[test]
fn jsd_interior_beta_temperature_bias_ignore_42() {
    let c = JsdCfg {
        beta: 0.8,
        tau: 2.0,
        wh: 0.0,
        ws: 1.0,
    };
    let p = JsdParams {
        beta: 0.8,
        temperature: 2.0,
        weight_hard: 0.0,
        weight_soft: 1.0,
    };
    run_jsd(22, 42, c, true, p);
}

#[test]
fn jsd_beta_zero_is_forward_kl() {
    let c = JsdCfg {
        beta: 0.0,
        tau: 0.5,
        wh: 1.0,
        ws: 0.5,
    };
    let p = JsdParams {
        beta: 0.0,
        temperature: 0.5,
        weight_hard: 1.0,
        weight_soft: 0.5,
    };
    run_jsd(23, -100, c, false, p);
}

#[test]
fn jsd_beta_one_is_reverse_kl() {
    let c = JsdCfg {
        beta: 1.0,
        tau: 1.5,
        wh: 0.25,
        ws: 0.75,
    };
    let p = JsdParams {
        beta: 1.0,
        temperature: 1.5,
        weight_hard: 0.25,
        weight_soft: 0.75,
    };
    run_jsd(24, 42, c, true, p);
}
