//! The builder infers types and refuses ill-typed nodes with a typed diagnostic.

use liger_ir::{Builder, DiagKind, InputKind, Level, Op, Type, verify};

#[test]
fn builder_infers_levels_and_refuses_misuse() {
    let mut b = Builder::new("t");
    let z = b.input("z", InputKind::Logits).expect("input");
    let t = b.input("t", InputKind::Target).expect("input");
    let beta = b.input("beta", InputKind::Param).expect("input");
    assert_eq!(
        b.input("z", InputKind::Frozen).expect_err("duplicate").kind,
        DiagKind::DuplicateName
    );
    let lp = b.logprob(z, t).expect("logprob");
    assert_eq!(b.ty(lp), Type::f32(Level::Row));
    let e = b.chosen(lp).expect_err("chosen of a row value");
    assert_eq!(e.kind, DiagKind::LevelMisuse);
    assert!(e.message.contains("seq_sum or seq_mean"), "{}", e.message);
    let e = b
        .op(Op::Select, &[lp, lp, lp])
        .expect_err("float condition");
    assert_eq!(e.kind, DiagKind::DTypeMismatch);
    let m = b.valid(t).expect("valid");
    let s = b
        .op(Op::SeqReduce(liger_ir::op::SeqReduce::Sum), &[lp, m])
        .expect("seq_sum");
    let scaled = b.mul(beta, s).expect("broadcast mul");
    assert_eq!(b.ty(scaled), Type::f32(Level::Seq));
    let c = b.chosen(scaled).expect("chosen");
    let r = b.rejected(scaled).expect("rejected");
    let d = b.sub(c, r).expect("sub");
    let l = b.log_sigmoid(d).expect("log_sigmoid");
    let loss = b.op(Op::Mean, &[l]).expect("mean");
    assert_eq!(b.ty(loss), Type::f32(Level::Batch));
    b.loss(loss);
    verify(&b.finish()).expect("verifies");
}
