//! `liger bench --sweep`'s picture and peers' file, without a GPU: the SVG drawn from measured
//! points (one curve per case, the peers' points against the same floor) and the file's errors.

use liger::sweep::{Peer, SweepPoint, json, parse_peers, parse_points, svg};

fn point(case: &str, budget_mib: usize, ms: f64, floor: f64, peak_mib: usize) -> SweepPoint {
    SweepPoint {
        case: case.into(),
        budget: budget_mib << 20,
        ms,
        floor_ms: floor,
        peak_bytes: peak_mib << 20,
    }
}

#[test]
fn the_sweep_draws_a_curve_per_case_and_the_peers_points() {
    let points = vec![
        point("flce S1 8x1024", 512, 50.1, 37.2, 480),
        point("flce S1 8x1024", 2048, 39.8, 37.1, 1990),
        point("flce S1 8x1024", 1024, 42.2, 37.3, 1000),
        point("jsd S1 8x1024 teacher head", 1024, 77.1, 49.4, 1010),
        point("jsd S1 8x1024 teacher head", 2048, 69.2, 49.4, 1995),
    ];
    let peers = vec![
        Peer {
            peer: "Liger Kernel 0.8.5".into(),
            case: "flce S1 8x1024".into(),
            ms: 53.8,
            peak_gib: 0.061,
        },
        Peer {
            peer: "quack-kernels".into(),
            case: "flce S1 8x1024".into(),
            ms: 41.4,
            peak_gib: 1.96,
        },
        // A case the sweep did not measure has no floor: not drawn.
        Peer {
            peer: "Liger Kernel 0.8.5".into(),
            case: "grpo S1 8x1024 dapo no ref".into(),
            ms: 467.5,
            peak_gib: 4.0,
        },
    ];
    let s = svg(&points, &peers).expect("draws");
    if let Ok(path) = std::env::var("LIGER_SWEEP_SVG") {
        std::fs::write(path, &s).expect("writes the picture");
    }
    assert!(
        s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
        "{s}"
    );
    assert!(s.matches("<polyline").count() >= 2, "a curve per case");
    assert!(s.contains("liger-rs: flce S1 8x1024"));
    assert!(s.contains("liger-rs: jsd S1 8x1024 teacher head"));
    assert!(s.contains("quack-kernels: flce S1 8x1024"));
    assert!(!s.contains("grpo"), "no floor, no point");
    assert!(s.contains("peak extra memory (GiB)") && s.contains("time / GEMM floor"));
    // One marker per measured point.
    assert_eq!(s.matches("<circle").count(), points.len());
    // The JSON: each ratio against the case's median floor (37.2 for FLCE).
    let j = json(&points, &peers);
    let liger = &j["peers"][0];
    assert!((liger["ratio"].as_f64().expect("ratio") - 53.8 / 37.2).abs() < 1e-12);
    assert_eq!(j["peers"].as_array().map(Vec::len), Some(2));
    assert_eq!(j["points"].as_array().map(Vec::len), Some(5));
}

#[test]
fn an_empty_sweep_and_bad_peer_files_say_what_is_wrong() {
    let err = svg(&[], &[]).expect_err("nothing to draw").to_string();
    assert!(err.contains("no measured point"), "{err}");
    for (text, needle) in [
        ("not json", "not JSON"),
        ("{}", "no `points` array"),
        (
            r#"{"points": [{"peer": "x", "case": "y", "ms": -1, "peak_gib": 1}]}"#,
            "`ms`",
        ),
        (
            r#"{"points": [{"peer": "x", "ms": 1, "peak_gib": 1}]}"#,
            "`case`",
        ),
    ] {
        let err = parse_peers(text, "peers.json").expect_err(text).to_string();
        assert!(
            err.contains(needle) && err.starts_with("peers.json"),
            "{text}: {err}"
        );
    }
}

#[test]
fn the_repositorys_peer_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/peers-h200.json");
    let text = std::fs::read_to_string(path).expect("bench/peers-h200.json");
    let peers = parse_peers(&text, path).expect("parses");
    assert!(peers.len() >= 8);
    assert!(
        peers
            .iter()
            .any(|p| p.peer.starts_with("Liger Kernel") && p.case == "flce S1 8x1024")
    );
}

/// A sweep measured in parts is drawn once: `--add` reads earlier `--json` files, and an empty
/// `--budgets` measures nothing (no GPU needed).
#[test]
fn earlier_sweeps_are_drawn_with_add() {
    let dir = std::env::temp_dir().join(format!("liger-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let part = |name: &str, pts: &[SweepPoint]| {
        let path = dir.join(name);
        let text = serde_json::to_string(&json(pts, &[])).expect("json");
        // What `--json` writes reads back as the same points.
        assert_eq!(parse_points(&text, "x").expect("parses"), pts);
        std::fs::write(&path, text).expect("writes");
        path.to_string_lossy().into_owned()
    };
    let a = part("a.json", &[point("flce S1 8x1024", 512, 50.1, 37.2, 480)]);
    let b = part(
        "b.json",
        &[
            point("flce S1 8x1024", 2048, 39.8, 37.1, 1990),
            point("jsd S1 8x1024 teacher head", 2048, 69.2, 49.4, 1995),
        ],
    );
    let out = dir.join("sweep.svg");
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/peers-h200.json");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_liger"))
        .args([
            "bench",
            "--sweep",
            "--budgets",
            "",
            "--peers",
            peers,
            "--add",
            &a,
            "--add",
            &b,
        ])
        .arg("--svg")
        .arg(&out)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(stdout.contains("(3 points)"), "{stdout}");
    let picture = std::fs::read_to_string(&out).expect("the svg");
    assert_eq!(picture.matches("<circle").count(), 3);
    assert!(picture.contains("Liger Kernel 0.8.5: flce S1 8x1024"));
    // A bad points file is named.
    std::fs::write(dir.join("bad.json"), "{\"points\": [{\"case\": 1}]}").expect("writes");
    let bad = dir.join("bad.json").to_string_lossy().into_owned();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_liger"))
        .args([
            "bench",
            "--sweep",
            "--budgets",
            "",
            "--peers",
            peers,
            "--add",
            &bad,
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("bad.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
