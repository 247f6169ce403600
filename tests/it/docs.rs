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
