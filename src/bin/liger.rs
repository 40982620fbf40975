//! The `liger` command line; see `liger --help` and the crate's `cli` module.

fn main() -> std::process::ExitCode {
    liger::cli::main()
}
