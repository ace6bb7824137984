//! GPUs on this worker: what the probe finds (cudarc over a dynamically loaded `libcuda`),
//! what a task that leased some may see, NVRTC for `cuda` tasks ([`nvrtc`]), running those
//! tasks ([`task`]) and the helper process that compiles and launches inside the sandbox
//! ([`helper`]).
//!
//! A host without `libcuda` (every CI machine) reports no GPUs: the library is looked for
//! before any cudarc call (cudarc panics on the first call when it is missing), and the
//! probe runs under `catch_unwind` in case a driver lacks a symbol cudarc's bindings name.
//!
//! Tests declare an inventory instead (`VGAS_SIMULATED_GPUS`): leases and visibility work on
//! such devices, and status shows them as simulated; nothing runs on them.

pub mod helper;
pub mod nvrtc;
pub mod task;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vgas_shared::gpu::{ComputeCapability, GpuDevice};

use crate::sandbox::DeviceAccess;

/// A declared inventory for tests: a count (`2`) of simulated 80 GiB compute-9.0 devices, or
/// a JSON array of devices (`[{"name":"Small","memory_total_mb":8000,"compute":"7.5"}]`).
pub const SIMULATED_GPUS_VAR: &str = "VGAS_SIMULATED_GPUS";

/// The GPUs of this worker and what the probe learnt about them.
#[derive(Debug, Clone, Default)]
pub struct Gpus {
    pub devices: Vec<GpuDevice>,
    /// The CUDA driver version (`13.0`), when `libcuda` loaded.
    pub driver: Option<String>,
    /// Why there are none, or what went wrong, for the log.
    pub note: String,
    /// NVRTC, when it loads here.
    pub nvrtc: Option<nvrtc::Nvrtc>,
    /// Device node of each device (`GPU-…` to `/dev/nvidiaN`), from the driver's `/proc` files.
    nodes: HashMap<String, PathBuf>,
    /// Every `/dev/nvidiaN` on the host.
    all_nodes: Vec<PathBuf>,
}

/// The helper program `cuda` tasks run in the sandbox: this worker's own binary, where every
/// user may execute it; otherwise (a binary under a home directory of mode 0700, say) a copy
/// in `work_dir/bin`, which the sandbox uids can reach (the work directory is 0711).
pub fn helper_program(work_dir: &Path) -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the worker's binary: {e}"))?;
    reachable(&exe, &work_dir.join("bin"))
}

/// `file` if every user may read and execute it; otherwise a copy in `dir` (made 0755, its
/// files 0755), made once and again only when `file` changed.
pub(crate) fn reachable(file: &Path, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if reachable_by_all(file) {
        return Ok(file.to_path_buf());
    }
    let name = file
        .file_name()
        .ok_or_else(|| format!("{} names no file", file.display()))?;
    let copy = dir.join(name);
    let fresh = |c: &Path| {
        let (Ok(a), Ok(b)) = (std::fs::metadata(file), std::fs::metadata(c)) else {
            return false;
        };
        a.len() == b.len() && a.modified().ok() <= b.modified().ok()
    };
    if fresh(&copy) {
        return Ok(copy);
    }
    let e = |what: &str| {
        let what = format!("{what} {}", file.display());
        move |err: std::io::Error| format!("cannot {what} where the sandbox reaches it: {err}")
    };
    std::fs::create_dir_all(dir).map_err(e("place"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(e("open"))?;
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".copy.{}.{n}", std::process::id()));
    std::fs::copy(file, &tmp).map_err(e("copy"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(e("open"))?;
    std::fs::rename(&tmp, &copy).map_err(e("place"))?;
    Ok(copy)
}

/// Whether any user may execute `exe`: it and every directory above it allow "others".
fn reachable_by_all(exe: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    mode(exe) & 0o005 == 0o005
        && exe
            .ancestors()
            .skip(1)
            .all(|d| d.as_os_str().is_empty() || mode(d) & 0o001 != 0)
}

/// What one attempt that leased devices runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// `CUDA_VISIBLE_DEVICES`: the leased UUIDs, in lease order.
    pub visible: String,
    /// The device nodes to hide from the task.
    pub access: DeviceAccess,
    /// The lowest compute capability among the leased devices.
    pub compute: ComputeCapability,
}

impl Gpus {
    /// Probes the GPUs (or reads the declared inventory) and NVRTC. Never panics.
    pub fn probe() -> Gpus {
        let nvrtc = nvrtc::Nvrtc::find();
        let mut gpus = match std::env::var(SIMULATED_GPUS_VAR) {
            Ok(spec) if !spec.trim().is_empty() => simulated(&spec),
            _ => probe_driver(),
        };
        gpus.nvrtc = nvrtc;
        gpus.all_nodes = device_nodes();
        gpus.nodes = nodes_by_uuid();
        gpus
    }

    /// What a task that leased `uuids` sees: they must all be this worker's.
    pub fn lease(&self, uuids: &[String]) -> Result<Leased, String> {
        let mut compute: Option<ComputeCapability> = None;
        for u in uuids {
            let Some(d) = self.devices.iter().find(|d| d.uuid == *u) else {
                return Err(format!("GPU {u} is not on this worker"));
            };
            compute = Some(compute.map_or(d.compute, |c| c.min(d.compute)));
        }
        let keep: Vec<&PathBuf> = uuids.iter().filter_map(|u| self.nodes.get(u)).collect();
        // Without the map from UUID to node (no /proc/driver/nvidia), hiding could hide the
        // leased device itself: then only CUDA_VISIBLE_DEVICES narrows what the task sees.
        let hidden = if keep.len() == uuids.len() {
            self.all_nodes
                .iter()
                .filter(|n| !keep.contains(n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        Ok(Leased {
            visible: uuids.join(","),
            access: DeviceAccess { hidden },
            compute: compute.unwrap_or_default(),
        })
    }
}

/// The declared inventory of [`SIMULATED_GPUS_VAR`].
fn simulated(spec: &str) -> Gpus {
    let host = vgas_shared::host::host_id();
    let short: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    let mut devices: Vec<GpuDevice> = match spec.trim().parse::<u32>() {
        Ok(n) => (0..n)
            .map(|i| GpuDevice::simulated(i, String::new()))
            .collect(),
        Err(_) => match serde_json::from_str(spec) {
            Ok(devices) => devices,
            Err(e) => {
                return Gpus {
                    note: format!("{SIMULATED_GPUS_VAR} is neither a count nor a device list: {e}"),
                    ..Default::default()
                }
            }
        },
    };
    for (i, d) in devices.iter_mut().enumerate() {
        d.index = i as u32;
        d.simulated = true;
        if d.uuid.is_empty() {
            d.uuid = format!("GPU-simulated-{short}-{}-{i}", std::process::id());
        }
        if d.memory_free_mb == 0 {
            d.memory_free_mb = d.memory_total_mb;
        }
    }
    Gpus {
        note: format!("{} simulated GPUs declared", devices.len()),
        devices,
        ..Default::default()
    }
}

/// The real probe: none when `libcuda` does not load, never a panic.
fn probe_driver() -> Gpus {
    // SAFETY: loads and unloads the library by name; no cudarc state is touched.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Gpus {
            note: "no GPUs: libcuda is not installed".into(),
            ..Default::default()
        };
    }
    match std::panic::catch_unwind(driver_devices) {
        Ok(Ok((devices, driver))) => Gpus {
            note: format!("{} GPUs, CUDA driver {driver}", devices.len()),
            devices,
            driver: Some(driver),
            ..Default::default()
        },
        Ok(Err(e)) => Gpus {
            note: format!("no GPUs: {e}"),
            ..Default::default()
        },
        Err(_) => Gpus {
            note: "no GPUs: the CUDA driver lacks a function this worker calls".into(),
            ..Default::default()
        },
    }
}

/// Every device's identity, memory and compute capability, and the driver's version.
fn driver_devices() -> Result<(Vec<GpuDevice>, String), String> {
    use cudarc::driver::{result, sys};
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: cudarc::driver::DriverError| format!("{what}: {err}")
    };
    result::init().map_err(e("cuInit"))?;
    let mut version = 0i32;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(e("cuDriverGetVersion"))?;
    let driver = format!("{}.{}", version / 1000, (version % 1000) / 10);
    let count = result::device::get_count().map_err(e("cuDeviceGetCount"))?;
    let mut devices = Vec::new();
    for i in 0..count {
        let dev = result::device::get(i).map_err(e("cuDeviceGet"))?;
        let attr = |a| {
            // SAFETY: `dev` is a valid device handle from cuDeviceGet.
            unsafe { result::device::get_attribute(dev, a) }.map_err(e("cuDeviceGetAttribute"))
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        // SAFETY: as above.
        let total = unsafe { result::device::total_mem(dev) }.map_err(e("cuDeviceTotalMem"))?;
        let uuid = result::device::get_uuid(dev).map_err(e("cuDeviceGetUuid"))?;
        devices.push(GpuDevice {
            index: i as u32,
            uuid: uuid_string(&uuid.bytes.map(|b| b as u8)),
            name: result::device::get_name(dev).map_err(e("cuDeviceGetName"))?,
            memory_total_mb: (total >> 20) as u64,
            memory_free_mb: free_memory(dev).map_or((total >> 20) as u64, |f| (f >> 20) as u64),
            compute: ComputeCapability {
                major: major as u32,
                minor: minor as u32,
            },
            simulated: false,
        });
    }
    Ok((devices, driver))
}

/// Free memory on `dev` now: needs its primary context, retained only for the question.
fn free_memory(dev: cudarc::driver::sys::CUdevice) -> Option<usize> {
    use cudarc::driver::result;
    // SAFETY: the primary context is retained, made current, queried and released in order.
    unsafe {
        let ctx = result::primary_ctx::retain(dev).ok()?;
        let free = result::ctx::set_current(ctx)
            .ok()
            .and_then(|()| result::mem_get_info().ok())
            .map(|(free, _)| free);
        let _ = result::primary_ctx::release(dev);
        free
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
fn uuid_string(b: &[u8; 16]) -> String {
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// Every `/dev/nvidiaN` (a GPU's node; the control nodes have names, not numbers).
fn device_nodes() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut nodes: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("nvidia"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes
}

/// Device UUID to `/dev/nvidia<minor>`, from `/proc/driver/nvidia/gpus/*/information`.
fn nodes_by_uuid() -> HashMap<String, PathBuf> {
    let mut map = HashMap::new();
    let Ok(gpus) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return map;
    };
    for g in gpus.flatten() {
        let Ok(info) = std::fs::read_to_string(g.path().join("information")) else {
            continue;
        };
        if let Some((uuid, minor)) = parse_information(&info) {
            map.insert(uuid, PathBuf::from(format!("/dev/nvidia{minor}")));
        }
    }
    map
}

/// The UUID and device minor in one `information` file of the NVIDIA driver.
fn parse_information(info: &str) -> Option<(String, u32)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_owned())
    };
    Some((field("GPU UUID")?, field("Device Minor")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_libcuda_the_probe_reports_no_gpus_and_does_not_panic() {
        // This machine (and CI) has no libcuda: exactly the path every such worker takes.
        // SAFETY: as in `probe_driver`.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("libcuda is installed here; the no-library path is not what runs");
            return;
        }
        let g = probe_driver();
        assert!(g.devices.is_empty());
        assert_eq!(g.driver, None);
        assert!(g.note.contains("libcuda"), "{}", g.note);
    }

    #[test]
    fn a_helper_under_a_private_directory_is_copied_where_the_sandbox_reaches_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let private = d.path().join("home");
        std::fs::create_dir(&private).unwrap();
        let exe = private.join("tool");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by_all(&exe));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        let all_reach = d.path().ancestors().all(|a| {
            std::fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(true)
        });
        assert_eq!(reachable_by_all(&exe), all_reach);
        // The worker's own binary (here: this test's) ends up somewhere every uid can run.
        let work = tempfile::tempdir().unwrap();
        let helper = helper_program(work.path()).unwrap();
        assert!(helper == std::env::current_exe().unwrap() || helper.starts_with(work.path()));
    }

    #[test]
    fn a_declared_inventory_is_simulated_devices() {
        let g = simulated("2");
        assert_eq!(g.devices.len(), 2);
        assert!(g
            .devices
            .iter()
            .all(|d| d.simulated && d.memory_free_mb > 0));
        assert_ne!(g.devices[0].uuid, g.devices[1].uuid);
        let g = simulated(r#"[{"name":"Small","memory_total_mb":8000,"compute":"7.5"}]"#);
        assert_eq!(
            g.devices[0].compute,
            ComputeCapability { major: 7, minor: 5 }
        );
        assert_eq!(g.devices[0].memory_free_mb, 8000);
        let g = simulated("two");
        assert!(g.devices.is_empty() && g.note.contains(SIMULATED_GPUS_VAR));
    }

    #[test]
    fn a_lease_names_only_this_workers_devices() {
        let mut g = simulated("2");
        let uuids: Vec<String> = g.devices.iter().map(|d| d.uuid.clone()).collect();
        g.all_nodes = vec!["/dev/nvidia0".into(), "/dev/nvidia1".into()];
        g.nodes = HashMap::from([
            (uuids[0].clone(), "/dev/nvidia0".into()),
            (uuids[1].clone(), "/dev/nvidia1".into()),
        ]);
        let l = g.lease(&uuids[1..]).unwrap();
        assert_eq!(l.visible, uuids[1]);
        assert_eq!(l.access.hidden, vec![PathBuf::from("/dev/nvidia0")]);
        assert!(g.lease(&["GPU-elsewhere".to_owned()]).is_err());
    }

    #[test]
    fn driver_information_files_and_uuids_read_as_nvidia_smi_shows_them() {
        let info = "Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0a1b2c3d-0000-1111-2222-333344445555\nDevice Minor: \t 3\n";
        assert_eq!(
            parse_information(info),
            Some(("GPU-0a1b2c3d-0000-1111-2222-333344445555".into(), 3))
        );
        let b: [u8; 16] = [
            0x0a, 0x1b, 0x2c, 0x3d, 0, 0, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55,
            0x55,
        ];
        assert_eq!(uuid_string(&b), "GPU-0a1b2c3d-0000-1111-2222-333344445555");
    }
}
