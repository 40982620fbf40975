//! Snapshots of every built-in loss's IR stages (surface → gradient → schedule) and of its
//! generated CUDA (one specialisation and schedule each, bf16 GEMMs). Source locations are
//! left out of the surface IR so that editing a loss's comments does not churn them.

use liger::ir::emit::{EmitOptions, GemmDType};

#[test]
fn ir_stages_and_cuda_of_every_builtin() {
    for loss in liger::losses::builtin() {
        let spec = &loss.specializations()[0];
        let p = liger::pipeline(loss, spec).expect("pipeline");
        let module = p
            .module(
                p.schedule().candidates[0],
                &EmitOptions::new(GemmDType::BF16),
            )
            .expect("emits");
        let mut surface = p.surface().expect("a surface IR").clone();
        surface.locs.iter_mut().for_each(|l| *l = None);
        surface.outputs.iter_mut().for_each(|o| o.loc = None);
        let stages = format!(
            "; specialisation: {}\n; ---- surface\n{}; ---- gradient\n{}; ---- schedule\n{}",
            spec.describe(),
            liger::ir::print(&surface),
            liger::ir::print(p.grad()),
            p.schedule().render(p.grad())
        );
        insta::assert_snapshot!(format!("{}_stages", loss.name()), stages);
        insta::assert_snapshot!(format!("{}_cuda", loss.name()), module.source);
    }
}

/// The vocab-parallel form of two losses' modules: FLCE (a log-sum-exp and a target logit in
/// one round) and DPO (log-probabilities of two heads, the sequence values after them).
#[test]
fn vocab_shard_modules_of_flce_and_dpo() {
    for name in ["flce", "dpo"] {
        let loss = liger::losses::builtin()
            .into_iter()
            .find(|l| l.name() == name)
            .expect("built-in");
        let spec = &loss.specializations()[0];
        let p = liger::pipeline(loss, spec).expect("pipeline");
        let opts = EmitOptions {
            vocab_shards: true,
            ..EmitOptions::new(GemmDType::BF16)
        };
        let module = p.module(p.schedule().candidates[0], &opts).expect("emits");
        insta::assert_snapshot!(format!("{name}_cuda_shards"), module.source);
    }
}
