//! Which machine a process runs on, as far as CPUs go: two processes with the same host id
//! share the same processors, so handing work from one to the other gains no compute. The
//! build farm uses it to compile in place when no worker on another host could take a unit.
//!
//! The id is the kernel's boot id (`/proc/sys/kernel/random/boot_id`): containers and network
//! namespaces on one machine share it, as they share its CPUs, and it changes on reboot,
//! which is harmless (workers send it with every heartbeat). `VGAS_HOST_ID` overrides it: tests
//! and benchmarks that simulate several hosts on one machine (workers in their own network
//! namespaces and CPU sets) give each a name of its own.

/// Overrides the host id (see the module's notes).
pub const ENV_HOST_ID: &str = "VGAS_HOST_ID";

/// Where Linux keeps the boot id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This process's host id: `VGAS_HOST_ID` when set and not empty, else the boot id, else
/// the hostname, else `unknown` (then every worker counts as another host, as before).
pub fn host_id() -> String {
    let from_env = std::env::var(ENV_HOST_ID).ok();
    let read = |p: &str| std::fs::read_to_string(p).ok();
    [from_env, read(BOOT_ID), read("/proc/sys/kernel/hostname")]
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// This machine's host name (`localhost` when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_id_is_stable_and_not_empty() {
        let a = super::host_id();
        assert!(!a.is_empty());
        assert_eq!(a, super::host_id());
    }
}
