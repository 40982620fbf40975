//! The `liger` command line; see `liger --help` and the crate's `cli` module.

/// Counts the host heap, which `liger run` reports beside the working-memory budget.
#[global_allocator]
static HEAP: liger::cli::heap::CountingAlloc = liger::cli::heap::CountingAlloc;

fn main() -> std::process::ExitCode {
    liger::cli::main()
}
