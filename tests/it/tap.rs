//! Judging `node --test` runs by their counted results (TAP reporter).
//! Shared by `tests/it/interop.rs` and `tests/browser.rs` (included there
//! with `#[path]`).

#![allow(dead_code)]

/// The `# pass`, `# fail` and `# cancelled` counts of a TAP summary (`node
/// --test --test-reporter=tap`); `None` when a count is missing.
pub fn tap_counts(stdout: &str) -> Option<(u64, u64, u64)> {
    let count = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|n| n.trim().parse().ok()))
    };
    Some((count("# pass ")?, count("# fail ")?, count("# cancelled ")?))
}

/// Judges a `node --test` run by its counted results, not its exit code
/// alone (zero test files pass with `# fail 0`): at least one test passed,
/// none failed or was cancelled.
pub fn assert_tap_green(what: &str, success: bool, stdout: &str, stderr: &str) {
    let counts = tap_counts(stdout);
    assert!(
        success && matches!(counts, Some((pass, 0, 0)) if pass > 0),
        "{what}: exit ok {success}, counts (pass, fail, cancelled) {counts:?}:\n{stdout}\n{stderr}"
    );
}

/// The test files (`*.test.mjs` / `*.test.js`) of `dir`, named explicitly:
/// how `node --test` takes a directory differs between Node versions.
pub fn test_files(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("test dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs") || n.ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no test files in {}", dir.display());
    files
}

#[test]
fn tap_counts_read_the_summary() {
    let tap = "TAP version 13\nok 1 - a\n1..1\n# tests 1\n# suites 0\n# pass 1\n# fail 0\n# cancelled 0\n# skipped 0\n";
    assert_eq!(tap_counts(tap), Some((1, 0, 0)));
    // Node 23's default (spec) reporter prints no such lines.
    assert_eq!(tap_counts("ℹ tests 1\nℹ pass 1\nℹ fail 0\n"), None);
}
