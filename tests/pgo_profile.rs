//! bench/pgo/: the profile `scripts/build-pgo` builds the shipped binary with (the
//! Docker image's, and what `bench/sysbench.sh` measures). It is LLVM's text profile,
//! gzip'd; these checks read it with gzip alone, no LLVM tools.

use std::path::{Path, PathBuf};
use std::process::Command;

fn pgo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pgo")
}

fn profile_text() -> String {
    let path = pgo_dir().join("shardgate.proftext.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("gzip runs");
    assert!(
        out.status.success(),
        "{} does not decompress: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("a text profile")
}

/// (symbol, sum of its counters) of every function in an LLVM text profile: records
/// separated by blank lines, each a symbol, its hash, its counter count and counters.
fn functions(text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let lines: Vec<&str> = record.lines().filter(|l| !l.is_empty()).collect();
        let Some(name) = lines
            .iter()
            .find(|l| !l.starts_with('#') && !l.starts_with(':'))
        else {
            continue;
        };
        let after = |header: &str| {
            lines
                .iter()
                .position(|l| *l == header)
                .map(|i| i + 1)
                .unwrap_or_else(|| panic!("{name}: no {header:?} line"))
        };
        let n: usize = lines[after("# Num Counters:")]
            .parse()
            .expect("a counter count");
        let first = after("# Counter Values:");
        let sum = lines[first..first + n]
            .iter()
            .map(|v| v.parse::<u64>().expect("a counter"))
            .sum();
        out.push((name.to_string(), sum));
    }
    out
}

#[test]
fn the_kept_profile_is_of_statements_served() {
    let text = profile_text();
    assert!(
        text.lines().any(|l| l == ":ir"),
        "an IR-level instrumentation profile (what -Cprofile-generate records)"
    );
    let funcs = functions(&text);
    assert!(funcs.len() > 500, "{} functions", funcs.len());
    // The training run serves tens of thousands of statements: the code every
    // statement runs (planning, routing, the pool, the wire codec, the session) is
    // in it, counted many times, not an idle proxy's start-up and shutdown.
    for (what, prefix) in [
        ("the plan cache", "_ZN9shardgate7planner5cache"),
        ("routing", "_ZN9shardgate6router"),
        ("the pool", "_ZN9shardgate7backend4pool"),
        ("the wire codec", "_ZN9shardgate8protocol"),
        ("the session", "_ZN9shardgate7session"),
    ] {
        let most = funcs
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, count)| *count)
            .max();
        assert!(
            most.is_some_and(|c| c >= 10_000),
            "{what} ({prefix}...) was counted at most {most:?} times"
        );
    }
}

#[test]
fn the_kept_profile_names_what_it_was_recorded_with() {
    let recorded = std::fs::read_to_string(pgo_dir().join("recorded")).expect("bench/pgo/recorded");
    for key in ["rustc ", "host ", "cargo-lock-sha256 ", "commit ", "date "] {
        let value = recorded
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("bench/pgo/recorded has no {key:?} line"));
        assert!(!value.trim().is_empty(), "{key:?} is empty");
    }
}
