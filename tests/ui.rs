//! Compile-time behaviour of `#[chunked_loss]` with trybuild: every construct of `docs/language.md`
//! compiles (and the pass cases run), and every misuse is a compile error on the user's token
//! (`tests/ui/fail/<category>/*.rs` with its `.stderr`).
//!
//! The `.stderr` files were blessed with the toolchain named in `tests/ui/TOOLCHAIN`; rustc's
//! rendering changes between releases, so another toolchain fails here with a message instead
//! of a wall of diffs. Re-bless with `TRYBUILD=overwrite cargo test --test ui` and review the
//! diff like code (or set `LIGER_UI_ANY_TOOLCHAIN=1` to compare anyway).

#[test]
fn ui() {
    let pinned = include_str!("ui/TOOLCHAIN").trim().to_string();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !version.starts_with(&pinned) && std::env::var_os("LIGER_UI_ANY_TOOLCHAIN").is_none() {
        panic!(
            "tests/ui/**/*.stderr were blessed with `{pinned}` but this is `{version}`: re-bless with TRYBUILD=overwrite and review, or set LIGER_UI_ANY_TOOLCHAIN=1"
        );
    }
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*/*.rs");
}
