//! What this machine offers, read once at start and refreshed per heartbeat where it changes:
//! CPU count, memory, load, host name, and the toolchains on `PATH` with their versions.

use std::process::Command;

use vgas_shared::wire::Toolchain;

/// Programs whose presence (and version) a heartbeat reports; each found one is also a
/// capability tag, so `needs: {"capabilities": ["gcc"]}` reaches only workers with gcc.
pub const TOOLCHAINS: &[&str] = &[
    "cc", "gcc", "g++", "clang", "rustc", "cargo", "python3", "make", "cmake", "ninja",
];

pub use vgas_shared::host::hostname;

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Total memory in MiB, from `/proc/meminfo`.
pub fn memory_mb() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// One-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Finds the toolchains in [`TOOLCHAINS`] on `PATH`, with the first line of `--version`.
pub fn toolchains() -> Vec<Toolchain> {
    TOOLCHAINS
        .iter()
        .filter_map(|name| {
            let path = which(name)?;
            let out = Command::new(&path).arg("--version").output().ok()?;
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            let version = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            Some(Toolchain {
                name: name.to_string(),
                version,
                path: path.display().to_string(),
                identity: None,
            })
        })
        .collect()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        assert!(cpus() >= 1);
        assert!(memory_mb() > 0);
        assert!(!hostname().is_empty());
        // The test machine builds Rust, so rustc is on PATH.
        let tc = toolchains();
        assert!(
            tc.iter()
                .any(|t| t.name == "rustc" && t.version.starts_with("rustc")),
            "{tc:?}"
        );
    }
}
