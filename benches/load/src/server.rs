//! The server process `--spawn` starts, and stops when the run ends.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::target::socket_addr;

/// A server started by this tool: stopped (SIGTERM, then SIGKILL after 3 s)
/// when dropped.
pub struct Spawned(Child);

impl Spawned {
    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = self.0.id();
        // SIGTERM first (graceful), then SIGKILL after 3 s.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sh -c "exec {cmd}"` and waits (30 s at most) until the port of
/// `url` accepts connections.
pub fn spawn_server(cmd: &str, url: &str) -> Result<Spawned> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd}"))?;
    let spawned = Spawned(child);
    let addr = socket_addr(url)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{cmd} did not listen on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(spawned)
}
