//! Documentation stays true: every command-line flag is in the README.

use clap::CommandFactory;

#[test]
fn readme_documents_every_flag() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let cmd = chorus::config::Cli::command();
    let mut missing = Vec::new();
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            if long == "help" || long == "version" {
                continue;
            }
            let flag = format!("`--{long}`");
            if !readme.contains(&flag) {
                missing.push(flag);
            }
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy().to_string();
                if arg.get_long().is_some()
                    && !readme.contains(&env)
                    && readme.contains(&format!("| `--{long}`"))
                {
                    missing.push(env);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md does not mention: {missing:?}"
    );
}

/// Parses a documented default: `4194304 (4 MiB)`, `4 MiB`, `8 KiB`,
/// `5 000`, `500`. `None` for anything else (`(any)`, `off`, prose).
fn documented_number(cell: &str) -> Option<u64> {
    let cell = cell.trim();
    let head = cell.split('(').next().unwrap_or("").trim();
    let digits: String = head.chars().filter(|c| !c.is_whitespace()).collect();
    for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if let Some(n) = digits.strip_suffix(unit) {
            return n.parse::<u64>().ok().map(|n| n * scale);
        }
    }
    digits.parse().ok()
}

/// `(flag, default cell)` of every row of a markdown table whose first cell
/// is a backquoted flag.
fn table_defaults(doc: &str, default_column: usize) -> Vec<(String, String)> {
    doc.lines()
        .filter(|l| l.starts_with("| `--"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let flag = cells.get(1)?.trim_matches('`').trim_start_matches("--");
            Some((flag.to_owned(), cells.get(default_column + 1)?.to_string()))
        })
        .collect()
}

/// Every numeric default that README's and PROTOCOL.md's limit tables state
/// is the flag's real default.
#[test]
fn documented_defaults_match_the_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cmd = chorus::config::Cli::command();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in ["README.md", "proto/PROTOCOL.md"] {
        let doc = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        let rows = table_defaults(&doc, 2);
        assert!(rows.len() > 10, "{file}: no limit table found");
        for (flag, cell) in rows {
            let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(&flag)) else {
                wrong.push(format!("{file}: `--{flag}` is not a flag"));
                continue;
            };
            let Some(documented) = documented_number(&cell) else {
                continue;
            };
            let actual = arg
                .get_default_values()
                .first()
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u64>().ok());
            checked += 1;
            if actual != Some(documented) {
                wrong.push(format!(
                    "{file}: `--{flag}` documented as {cell:?}, default is {actual:?}"
                ));
            }
        }
    }
    assert!(checked > 20, "only {checked} defaults checked");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Every flag's environment variable is `CHORUS_` + the flag in upper
/// case with `_` for `-` (`--log-level` → `CHORUS_LOG_LEVEL`), subcommands
/// included, so an operator can guess every name.
#[test]
fn every_env_var_is_named_after_its_flag() {
    let cmd = chorus::config::Cli::command();
    let mut wrong = Vec::new();
    let mut checked = 0;
    let commands = std::iter::once(&cmd).chain(cmd.get_subcommands());
    for command in commands {
        for arg in command.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let expected = format!("CHORUS_{}", long.to_uppercase().replace('-', "_"));
            checked += 1;
            if env.to_string_lossy() != expected {
                wrong.push(format!(
                    "{}: --{long} reads {env:?}, not {expected}",
                    command.get_name()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} flags checked");
    assert!(wrong.is_empty(), "{wrong:#?}");
}
