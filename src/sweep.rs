//! `liger bench --sweep`: every case over a range of memory budgets, drawn as time (a ratio to
//! the GEMM floor measured in the same run) against peak extra memory, one curve per case, with
//! the peers' points read from a JSON file beside it: an SVG drawn with `plotters`, and the
//! points as JSON.
//!
//! The drawing is a pure function of the measured points and the peers' file (tested without a
//! GPU); the measuring is [`crate::bench::run`] once per budget. A peer's time is divided by
//! the floor measured for the same case (the median over the budgets), so every point on the
//! picture is against one floor per case.

use std::collections::BTreeMap;

use plotters::prelude::*;

use crate::Error;
use crate::bench::BenchRow;

/// One measured point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// The case (a `liger bench` case name).
    pub case: String,
    /// The working-memory budget it ran under, bytes.
    pub budget: usize,
    /// Median device ms.
    pub ms: f64,
    /// The GEMM floor measured with it, ms.
    pub floor_ms: f64,
    /// Peak extra memory, bytes.
    pub peak_bytes: usize,
}

impl SweepPoint {
    /// The point of bench row `r`, run under `budget`.
    pub fn from_row(r: &BenchRow, budget: usize) -> Self {
        SweepPoint {
            case: r.case.clone(),
            budget,
            ms: r.ms,
            floor_ms: r.floor_ms,
            peak_bytes: r.peak_bytes,
        }
    }
}

/// A peer's measured point: its time and peak extra memory (returned gradients excluded) for
/// one of the bench's cases.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// The peer (`Liger Kernel 0.8.5`, …).
    pub peer: String,
    /// The bench case it ran.
    pub case: String,
    /// Its forward+backward time, ms.
    pub ms: f64,
    /// Its peak extra memory, GiB.
    pub peak_gib: f64,
}

fn file_error(path: &str, why: String) -> Error {
    Error::File {
        path: path.into(),
        why,
    }
}

/// The `points` array of a JSON file (the peers' file and a sweep's `--json` share the shape).
fn points_array(text: &str, path: &str) -> Result<Vec<serde_json::Value>, Error> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| file_error(path, format!("not JSON: {e}")))?;
    match v.get("points") {
        Some(serde_json::Value::Array(points)) => Ok(points.clone()),
        _ => Err(file_error(path, "no `points` array".into())),
    }
}

/// Reads the peers' file: `{"points": [{"peer", "case", "ms", "peak_gib"}, …]}` (other keys
/// are notes and ignored); `path` names the file in errors.
pub fn parse_peers(text: &str, path: &str) -> Result<Vec<Peer>, Error> {
    let bad = |why: String| file_error(path, why);
    points_array(text, path)?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = |k: &str| {
                p.get(k)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("point {i} has no string `{k}`")))
            };
            let f = |k: &str| {
                p.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(format!("point {i} has no non-negative number `{k}`")))
            };
            Ok(Peer {
                peer: s("peer")?,
                case: s("case")?,
                ms: f("ms")?,
                peak_gib: f("peak_gib")?,
            })
        })
        .collect()
}

/// Reads the points of an earlier sweep's JSON ([`json`]'s `points`), so that a sweep can be
/// measured in several calls (a device call has a time limit) and drawn once; `path` names
/// the file in errors.
pub fn parse_points(text: &str, path: &str) -> Result<Vec<SweepPoint>, Error> {
    let bad = |why: String| file_error(path, why);
    points_array(text, path)?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = |k: &str| {
                p.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(format!("point {i} has no non-negative number `{k}`")))
            };
            let n = |k: &str| {
                p.get(k)
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| bad(format!("point {i} has no byte count `{k}`")))
            };
            let floor_ms = f("gemm_floor_ms")?;
            if floor_ms <= 0.0 {
                return Err(bad(format!("point {i} has a floor of {floor_ms} ms")));
            }
            Ok(SweepPoint {
                case: p
                    .get("case")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| bad(format!("point {i} has no string `case`")))?
                    .to_string(),
                budget: n("budget_bytes")?,
                ms: f("median_ms")?,
                floor_ms,
                peak_bytes: n("peak_extra_bytes")?,
            })
        })
        .collect()
}

/// The floor of each case: the median of its points' floors.
fn floors(points: &[SweepPoint]) -> BTreeMap<&str, f64> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for p in points {
        by.entry(p.case.as_str()).or_default().push(p.floor_ms);
    }
    by.into_iter()
        .map(|(c, mut f)| {
            f.sort_by(f64::total_cmp);
            (c, f[f.len() / 2])
        })
        .collect()
}

const GIB: f64 = (1u64 << 30) as f64;

/// The SVG of a sweep: x = peak extra memory (GiB), y = time / GEMM floor; a curve per case
/// (its points in order of memory), a cross per peer point whose case was measured.
pub fn svg(points: &[SweepPoint], peers: &[Peer]) -> Result<String, Error> {
    let plot = |e: String| Error::Bench(format!("drawing the sweep: {e}"));
    if points.is_empty() {
        return Err(Error::Bench(
            "a sweep with no measured point has nothing to draw".into(),
        ));
    }
    let floor = floors(points);
    let mut curves: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        curves
            .entry(p.case.as_str())
            .or_default()
            .push((p.peak_bytes as f64 / GIB, p.ms / p.floor_ms));
    }
    for c in curves.values_mut() {
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let peer_pts: Vec<(&Peer, f64, f64)> = peers
        .iter()
        .filter_map(|p| Some((p, p.peak_gib, p.ms / floor.get(p.case.as_str())?)))
        .collect();
    let xs = curves
        .values()
        .flatten()
        .map(|p| p.0)
        .chain(peer_pts.iter().map(|p| p.1));
    let ys = curves
        .values()
        .flatten()
        .map(|p| p.1)
        .chain(peer_pts.iter().map(|p| p.2));
    let xmax = xs.fold(0.0f64, f64::max) * 1.1 + 0.05;
    let ymax = ys.fold(1.0f64, f64::max).min(20.0) * 1.08;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "time against peak extra memory (lower left is better)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..xmax, 0.9..ymax)
            .map_err(|e| plot(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("peak extra memory (GiB)")
            .y_desc("time / GEMM floor (same run)")
            .draw()
            .map_err(|e| plot(e.to_string()))?;
        for (i, (case, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| plot(e.to_string()))?
                .label(format!("liger-rs: {case}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| plot(e.to_string()))?;
        }
        let names: Vec<&str> = curves.keys().copied().collect();
        for (p, x, y) in &peer_pts {
            let k = names.iter().position(|c| *c == p.case).unwrap_or(0);
            let color = Palette99::pick(k).to_rgba();
            let label = format!("{}: {}", p.peer, p.case);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((*x, y.min(ymax)))
                        + Cross::new((0, 0), 6, color.stroke_width(2))
                        + Text::new(label, (8, -8), ("sans-serif", 11)),
                ))
                .map_err(|e| plot(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| plot(e.to_string()))?;
        root.present().map_err(|e| plot(e.to_string()))?;
    }
    Ok(out)
}

/// The sweep's points (with each ratio) and the peers drawn, as JSON.
pub fn json(points: &[SweepPoint], peers: &[Peer]) -> serde_json::Value {
    let floor = floors(points);
    serde_json::json!({
        "points": points.iter().map(|p| serde_json::json!({
            "case": p.case, "budget_bytes": p.budget, "median_ms": p.ms,
            "gemm_floor_ms": p.floor_ms, "ratio": p.ms / p.floor_ms,
            "peak_extra_bytes": p.peak_bytes,
        })).collect::<Vec<_>>(),
        "peers": peers.iter().filter_map(|p| {
            let f = floor.get(p.case.as_str())?;
            Some(serde_json::json!({
                "peer": p.peer, "case": p.case, "ms": p.ms, "peak_gib": p.peak_gib,
                "ratio": p.ms / f,
            }))
        }).collect::<Vec<_>>(),
    })
}
