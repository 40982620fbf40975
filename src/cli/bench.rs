//! `liger bench`: the built-in losses on the GPU against the GEMM floor.

use super::out;
use crate::Error;

pub(crate) fn bench(
    budget: &str,
    reps: usize,
    json: Option<&str>,
    profile: bool,
    only: &str,
) -> Result<(), Error> {
    let budget = crate::runtime::plan::parse_bytes(budget)?;
    let rows = crate::bench::run(budget, reps, profile, only)?;
    out(&crate::bench::table(&rows, budget));
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&crate::bench::json(&rows, budget)).unwrap_or_default();
        std::fs::write(path, text).map_err(|e| Error::File {
            path: path.into(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}
