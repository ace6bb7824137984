//! What every harness part stands on: where the repository and the built binaries are, free
//! ports, bounded polling, and [`Proc`], a child process killed and reaped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The host id a test worker `id` runs under: each is a host of its own, as on a LAN.
pub fn simulated_host(id: &str) -> String {
    format!("simulated-{id}")
}

/// A built binary of the workspace: from `VGAS_BIN_DIR` when set (benchmarks use release
/// builds), else the debug build that `scripts/test.sh` makes before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("VGAS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"))
                .join("debug")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

pub(crate) fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = repo_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range: a port from that range (what binding port 0 gives)
    // can be taken, before the process it is meant for binds it, as the local port of any
    // connection the suite opens meanwhile.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (FREE_PORTS_FROM, low.max(FREE_PORTS_FROM + 1000));
    for _ in 0..FREE_PORT_TRIES {
        let port = from + (uuid::Uuid::new_v4().as_u128() % u128::from(to - from)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The lowest port [`free_port`] picks: above the well-known and most registered services.
const FREE_PORTS_FROM: u16 = 20000;

/// Random ports [`free_port`] tries before it takes one from the kernel.
const FREE_PORT_TRIES: usize = 64;

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed (SIGKILL) and reaped on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// A guard for `child`, started as `name` with its output going to `log`.
    pub(crate) fn started(name: impl Into<String>, child: Child, log: PathBuf) -> Proc {
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    /// A guard with no process of its own (a cluster's, whose servers have guards of theirs),
    /// reading `log`.
    pub(crate) fn stand_in(name: impl Into<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.into(),
            child: None,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its exit status if it has exited (not reaped yet), without waiting.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    return Ok(st);
                }
            } else {
                bail!("{} already reaped", self.name);
            }
            if Instant::now() > end {
                bail!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
