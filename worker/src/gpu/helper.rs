//! The helper process of a `cuda` task (`vgas-worker __cuda-helper PLAN`), run by the worker
//! inside the native sandbox, so NVRTC's reads of `#include`s, the driver and the kernel get
//! the task's uid, read-only file system, deadline and cancel. It compiles the source to PTX
//! unless the worker found the PTX in the swarm's cache, checks the entry is there, and, when
//! the plan says so, launches the kernel on the one device `CUDA_VISIBLE_DEVICES` leaves it
//! and writes the output buffers into the task directory.
//!
//! A kernel that runs past the deadline is stopped by killing this process: the driver
//! tears its context down with it, and the device is usable by the next task.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vgas_shared::wire::KernelArg;

/// The first argument that makes `vgas-worker` this helper.
pub const HELPER_ARG: &str = "__cuda-helper";

/// Where the helper's inputs sit in the task directory.
pub const WORK_DIR: &str = ".vgas-cuda";
pub const PLAN_FILE: &str = ".vgas-cuda/plan.json";
pub const SOURCE_FILE: &str = ".vgas-cuda/kernel.cu";
pub const PTX_FILE: &str = ".vgas-cuda/kernel.ptx";

/// Exit code of a compile error (NVRTC's log is on stderr), as a compiler's.
pub const EXIT_COMPILE_ERROR: i32 = 1;
/// Exit code of everything else that went wrong before or during the launch.
pub const EXIT_FAILED: i32 = 2;

/// What the worker asks of the helper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub entry: String,
    /// `compute_90`; `None`: NVRTC's default.
    pub arch: Option<String>,
    pub options: Vec<String>,
    /// `None`: compile only.
    pub launch: Option<Launch>,
}

/// The launch of the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
    pub args: Vec<KernelArg>,
}

/// Runs the helper with the plan at `plan` (relative to the working directory, the task
/// directory) and returns the process's exit code.
pub fn main(plan: &str) -> i32 {
    match run(Path::new(plan)) {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

type Failure = (i32, String);

fn failed(message: impl Into<String>) -> Failure {
    (EXIT_FAILED, message.into())
}

fn run(plan_path: &Path) -> Result<(), Failure> {
    let plan: Plan = std::fs::read(plan_path)
        .map_err(|e| failed(format!("cannot read {}: {e}", plan_path.display())))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| failed(format!("bad plan: {e}"))))?;
    let ptx = match std::fs::read_to_string(PTX_FILE) {
        Ok(ptx) => ptx,
        Err(_) => {
            let ptx = compile(&plan)?;
            std::fs::write(PTX_FILE, &ptx).map_err(|e| failed(format!("cannot write PTX: {e}")))?;
            ptx
        }
    };
    if !has_entry(&ptx, &plan.entry) {
        return Err(failed(no_entry(&plan.entry)));
    }
    match &plan.launch {
        Some(launch) => self::launch(&ptx, &plan.entry, launch),
        None => Ok(()),
    }
}

/// NVRTC, loaded from the path the worker gave (its directory is also on the loader's path,
/// for NVRTC's builtins library).
fn compile(plan: &Plan) -> Result<String, Failure> {
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
    if let Some(lib) = std::env::var_os(super::nvrtc::NVRTC_LIB_VAR) {
        // SAFETY: loading NVRTC runs no initialisers with preconditions. Kept loaded (global),
        // so cudarc's load by the same SONAME finds this copy.
        let opened = unsafe {
            libloading::os::unix::Library::open(
                Some(&lib),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        };
        match opened {
            Ok(l) => std::mem::forget(l),
            Err(e) => return Err(failed(format!("cannot load NVRTC: {e}"))),
        }
    }
    // SAFETY: loads and unloads by name, touching no cudarc state.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(failed("NVRTC is not installed on this worker"));
    }
    let source = std::fs::read_to_string(SOURCE_FILE)
        .map_err(|e| failed(format!("cannot read the source: {e}")))?;
    let mut options = plan.options.clone();
    if let Some(arch) = &plan.arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    let opts = CompileOptions {
        options,
        name: Some("kernel.cu".into()),
        ..Default::default()
    };
    match compile_ptx_with_opts(source, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err((
            EXIT_COMPILE_ERROR,
            log.to_string_lossy().trim_end().to_owned(),
        )),
        Err(e) => Err(failed(format!("NVRTC failed: {e}"))),
    }
}

/// Why a PTX without kernel `entry` cannot run it.
pub fn no_entry(entry: &str) -> String {
    format!(
        "the PTX has no kernel {entry:?}: declare it `extern \"C\" __global__` so its name is \
         not mangled"
    )
}

/// Whether the PTX declares kernel `entry` (`.entry entry(` on some line).
pub fn has_entry(ptx: &str, entry: &str) -> bool {
    ptx.lines().any(|l| {
        l.contains(".entry")
            && l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .any(|w| w == entry)
    })
}

/// A device buffer of one kernel parameter, and the file it goes back to after the launch.
struct Buffer {
    slice: cudarc::driver::CudaSlice<u8>,
    back_to: Option<String>,
}

fn launch(ptx: &str, entry: &str, l: &Launch) -> Result<(), Failure> {
    use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
    use cudarc::nvrtc::Ptx;
    // SAFETY: loads and unloads by name, touching no cudarc state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(failed("no CUDA driver (libcuda) on this worker"));
    }
    let cuda =
        |what: &'static str| move |e: cudarc::driver::DriverError| failed(format!("{what}: {e}"));
    let ctx = CudaContext::new(0).map_err(cuda("no usable GPU"))?;
    let stream = ctx.default_stream();
    let module = ctx
        .load_module(Ptx::from_src(ptx))
        .map_err(cuda("loading the PTX"))?;
    let f = module
        .load_function(entry)
        .map_err(cuda("finding the kernel"))?;
    // One entry per parameter: its buffer, or `None` for a scalar (passed from `l.args`).
    let mut buffers: Vec<Option<Buffer>> = Vec::with_capacity(l.args.len());
    for a in &l.args {
        buffers.push(match a {
            KernelArg::In(p) | KernelArg::Inout(p) => {
                let bytes =
                    std::fs::read(p).map_err(|e| failed(format!("cannot read {p}: {e}")))?;
                if bytes.is_empty() {
                    return Err(failed(format!("input buffer {p} is empty")));
                }
                let slice = stream
                    .clone_htod(&bytes)
                    .map_err(cuda("copying an input"))?;
                Some(Buffer {
                    slice,
                    back_to: a.output_path().map(str::to_owned),
                })
            }
            KernelArg::Out { path, bytes } => Some(Buffer {
                slice: stream
                    .alloc_zeros::<u8>(*bytes as usize)
                    .map_err(cuda("allocating an output"))?,
                back_to: Some(path.clone()),
            }),
            _ => None,
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
        block_dim: (l.block[0], l.block[1], l.block[2]),
        shared_mem_bytes: l.shared_mem_bytes,
    };
    let started = Instant::now();
    {
        let mut b = stream.launch_builder(&f);
        for (a, buffer) in l.args.iter().zip(buffers.iter_mut()) {
            match (a, buffer) {
                (_, Some(buffer)) => b.arg(&mut buffer.slice),
                (KernelArg::I32(v), None) => b.arg(v),
                (KernelArg::U32(v), None) => b.arg(v),
                (KernelArg::I64(v), None) => b.arg(v),
                (KernelArg::U64(v), None) => b.arg(v),
                (KernelArg::F32(v), None) => b.arg(v),
                (KernelArg::F64(v), None) => b.arg(v),
                (other, None) => return Err(failed(format!("no buffer for {other:?}"))),
            };
        }
        // SAFETY: the arguments are the ones the spec gives, in its order; a kernel whose
        // parameters differ reads garbage or faults on the device, which the driver reports
        // as an error of this process's context only.
        unsafe { b.launch(cfg) }.map_err(cuda("launching the kernel"))?;
    }
    stream.synchronize().map_err(cuda("running the kernel"))?;
    let ran = started.elapsed();
    for buffer in buffers.iter().flatten() {
        if let Buffer {
            slice,
            back_to: Some(path),
        } = buffer
        {
            let host = stream
                .clone_dtoh(slice)
                .map_err(cuda("copying an output"))?;
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| failed(format!("{path}: {e}")))?;
            }
            std::fs::write(path, host).map_err(|e| failed(format!("cannot write {path}: {e}")))?;
        }
    }
    println!(
        "{entry}<<<{:?}, {:?}>>> ran in {:.3} ms on {}",
        l.grid,
        l.block,
        ran.as_secs_f64() * 1e3,
        ctx.name().unwrap_or_else(|_| "the leased GPU".into())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_their_whole_name() {
        let ptx =
            "//\n.version 9.0\n.target sm_90\n.visible .entry add(\n\t.param .u64 add_param_0\n)\n";
        assert!(has_entry(ptx, "add"));
        assert!(!has_entry(ptx, "ad"));
        assert!(
            !has_entry(ptx, "add_param_0"),
            "a parameter is not an entry"
        );
    }
}
