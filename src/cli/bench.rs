//! `liger bench`: the built-in losses on the GPU against the GEMM floor.

use super::out;
use crate::Error;

pub(crate) fn bench(
    budget: &str,
    reps: usize,
    json: Option<&str>,
    profile: bool,
    only: &str,
    forced: Option<crate::ForcedRows>,
) -> Result<(), Error> {
    let budget = crate::runtime::plan::parse_bytes(budget)?;
    let rows = crate::bench::run(budget, reps, profile, only, forced)?;
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

/// `liger bench --sweep`: every case over `budgets`, the SVG and (with `json`) the points.
pub(crate) fn sweep(
    budgets: &str,
    reps: usize,
    json: Option<&str>,
    peers: &str,
    svg: &str,
    only: &str,
    add: &[String],
) -> Result<(), Error> {
    use crate::sweep::{SweepPoint, parse_peers, parse_points};
    let file = |path: &str, e: std::io::Error| Error::File {
        path: path.into(),
        why: e.to_string(),
    };
    // The peers' file is read first: a bad file fails before any GPU time is spent.
    let text = std::fs::read_to_string(peers).map_err(|e| file(peers, e))?;
    let peers = parse_peers(&text, peers)?;
    let mut earlier = Vec::new();
    for path in add {
        let text = std::fs::read_to_string(path).map_err(|e| file(path, e))?;
        earlier.extend(parse_points(&text, path)?);
    }
    // An empty list measures nothing (no GPU needed): the picture of the `--add` files alone.
    let budgets = budgets
        .split(',')
        .filter(|b| !b.trim().is_empty())
        .map(|b| crate::runtime::plan::parse_bytes(b.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut points = Vec::new();
    for &budget in &budgets {
        match crate::bench::run(budget, reps, false, only, None) {
            Ok(rows) => {
                out(&crate::bench::table(&rows, budget));
                points.extend(rows.iter().map(|r| SweepPoint::from_row(r, budget)));
            }
            // `bench::run` skips a case its budget cannot hold; this is the rest of them.
            Err(Error::Runtime(crate::runtime::Error::Budget { needed, .. })) => {
                eprintln!("budget {budget} B: skipped, a case needs {needed} B");
            }
            Err(e) => return Err(e),
        }
    }
    // This call's points are the ones its JSON keeps; the picture has every point.
    let mut all = earlier;
    all.extend(points.iter().cloned());
    let picture = crate::sweep::svg(&all, &peers)?;
    std::fs::write(svg, picture).map_err(|e| file(svg, e))?;
    out(&format!("wrote {svg} ({} points)\n", all.len()));
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&crate::sweep::json(&points, &peers)).unwrap_or_default();
        std::fs::write(path, text).map_err(|e| file(path, e))?;
    }
    Ok(())
}
