//! The demo's JavaScript tests, run by `cargo test`:
//!
//! - `js_unit_tests`: `node --test demo/test/unit/` (the client library
//!   against an in-memory server, and against proto/vectors);
//! - `browser_e2e`: builds the demo, starts a server on a free port serving
//!   it, and runs `node --test demo/test/e2e/` (Playwright driving Debian's
//!   headless Chromium) against it. Screenshots land in `artifacts/e2e/`.
//! - `browser_history_panel`: the same against a server that checks tokens
//!   (`demo/test/e2e-auth/`: the history panel, with authors and a reader).
//! - `editors_e2e`: stock editors beside the demo, as their own docs set them
//!   up (`tests/editors/`): TipTap 3 with `@hocuspocus/provider` on
//!   `/hocuspocus` in two pages, and CodeMirror 6 with y-codemirror.next on
//!   `/yjs/{room}` in the demo's room; asserts on the text and the named,
//!   coloured carets and presence list each page shows.
//!
//! What they need is installed when missing: the npm packages of `demo/` and
//! `tests/editors/` (`npm ci` from the committed lockfiles; tests/interop's
//! too, for the y-websocket editor of `people.e2e.test.js`) and
//! `/usr/bin/chromium` (`apt-get install -y chromium`; needs root, as on CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chorus::config::Config;

#[path = "it/tap.rs"]
mod tap;
use chorus::http::BackgroundServer;

/// Setup steps (npm ci, build, apt) must not run twice at once.
static SETUP: Mutex<()> = Mutex::new(());

/// The demo is built once per run: a second build would replace the files
/// a running test is being served.
static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo() -> PathBuf {
    repo().join("demo")
}

fn editors() -> PathBuf {
    repo().join("tests").join("editors")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` to completion (output passed through); panics with `what` on failure.
fn run(what: &str, cmd: &mut Command, limit: Duration) {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let status = wait(child, limit, what);
    assert!(status.success(), "{what} failed ({status}): {cmd:?}");
}

/// Waits for `child`, killing it after `limit`.
fn wait(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}");
            }
            Err(e) => panic!("{what}: waiting failed: {e}"),
        }
    }
}

fn apt_install(packages: &[&str]) {
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
        Duration::from_secs(600),
    );
    run(
        &format!("apt-get install {packages:?}"),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        Duration::from_secs(1200),
    );
}

/// Node and the demo's npm packages.
fn ensure_node_deps() {
    if !have("node") || !have("npm") {
        apt_install(&["nodejs", "npm"]);
    }
    ensure_npm_packages(&demo());
}

/// The npm packages of `dir` (from its committed lockfile).
fn ensure_npm_packages(dir: &Path) {
    if !dir.join("node_modules/.package-lock.json").is_file() {
        run(
            &format!("npm ci ({})", dir.display()),
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir),
            Duration::from_secs(900),
        );
    }
}

fn ensure_chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !path.exists() {
        apt_install(&["chromium", "fonts-dejavu-core"]);
    }
    assert!(
        path.exists(),
        "{} is missing after apt-get install chromium",
        path.display()
    );
    path
}

/// Runs `node --test` on the test files of `dir` (under `base`) with the
/// TAP reporter, and judges it by its counts: at least one test passed,
/// none failed or was cancelled (an exit code alone passes with no tests).
fn node_test(base: &Path, dir: &str, envs: &[(&str, &str)], limit: Duration) {
    use std::io::Read;
    let files = tap::test_files(&base.join(dir));
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=tap", "--test-concurrency=1"])
        .args(files.iter().map(|f| format!("{dir}{f}")))
        .current_dir(base)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped());
    let what = format!("node --test {dir}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = wait(child, limit, &what);
    let out = reader.join().expect("stdout reader");
    // Passed through, as before, for the log of a failing run.
    print!("{out}");
    tap::assert_tap_green(&what, status.success(), &out, "");
}

#[test]
fn js_unit_tests() {
    {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        ensure_node_deps();
    }
    node_test(&demo(), "test/unit/", &[], Duration::from_secs(300));
}

/// npm packages, the demo build and Chromium (its path), once.
fn browser_setup() -> PathBuf {
    let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    BUILT
        .get_or_init(|| {
            ensure_node_deps();
            // people.e2e.test.js drives a stock y-websocket editor too.
            let interop = repo().join("tests").join("interop");
            if !interop.join("node_modules/y-websocket").is_dir() {
                run(
                    "npm ci (tests/interop)",
                    Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund"])
                        .current_dir(&interop),
                    Duration::from_secs(900),
                );
            }
            run(
                "demo build",
                Command::new("node")
                    .arg(Path::new("scripts").join("build.mjs"))
                    .current_dir(demo()),
                Duration::from_secs(300),
            );
            ensure_chromium()
        })
        .clone()
}

/// Serves the built demo (`tweak` adjusts the config) and runs the
/// browser tests of `dir` (under `base`) against it.
fn run_browser_tests(
    base: &Path,
    dir: &str,
    tweak: impl FnOnce(&mut Config),
    envs: &[(&str, &str)],
) {
    let chromium = browser_setup();
    let mut config = Config::ephemeral();
    config.workers = 2;
    config.room_threads = 2;
    config.log_level = "warn".into();
    config.demo_dir = demo().join("dist");
    tweak(&mut config);
    let server = BackgroundServer::spawn(config).expect("server starts");
    let url = format!("http://{}", server.addr);
    let artifacts = repo().join("artifacts").join("e2e");
    let mut all = vec![
        ("CHORUS_URL", url.as_str()),
        ("CHROMIUM_PATH", chromium.to_str().expect("utf-8 path")),
    ];
    let artifacts = artifacts.to_string_lossy();
    all.push(("CHORUS_ARTIFACTS", &artifacts));
    all.extend_from_slice(envs);
    node_test(base, dir, &all, Duration::from_secs(600));
    server.shutdown();
}

#[test]
fn browser_e2e() {
    run_browser_tests(&demo(), "test/e2e/", |_| {}, &[]);
}

#[test]
fn browser_history_panel() {
    const SECRET: &str = "browser-history-test-secret";
    run_browser_tests(
        &demo(),
        "test/e2e-auth/",
        |c| c.auth_secret = Some(SECRET.into()),
        &[("CHORUS_AUTH_SECRET", SECRET)],
    );
}

#[test]
fn editors_e2e() {
    browser_setup();
    {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        ensure_npm_packages(&editors());
        run(
            "editor pages build",
            Command::new("node").arg("build.mjs").current_dir(editors()),
            Duration::from_secs(300),
        );
    }
    run_browser_tests(&editors(), "./", |_| {}, &[]);
}

#[test]
fn missing_demo_build_is_a_clear_503() {
    let mut config = Config::ephemeral();
    config.workers = 1;
    config.room_threads = 1;
    config.log_level = "warn".into();
    config.demo_dir = repo().join("target").join("no-such-demo-dir");
    let server = BackgroundServer::spawn(config).expect("server starts");
    let (status, body) = http_get(server.addr, "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("npm --prefix demo start"), "{body}");
    let (status, _) = http_get(server.addr, "/assets/widget.js");
    assert_eq!(status, 503);
    let (status, _) = http_get(server.addr, "/assets/../Cargo.toml");
    assert_eq!(status, 404);
    server.shutdown();
}

/// A minimal HTTP/1.1 GET (status, body) without an HTTP client dependency.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {raw}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
