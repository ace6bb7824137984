//! The `cuda` task kind on the wire: CUDA C source compiled with NVRTC to PTX for a target
//! architecture, and (unless `compile_only`) its kernel launched on a leased device with the
//! grid, block and arguments the spec gives. Input buffers come from the task's files, output
//! buffers go back as artifacts.
//!
//! ```json
//! {"kind":"cuda","cuda":{"source":"extern \"C\" __global__ void add(...) {...}",
//!   "entry":"add","grid":[4,1,1],"block":[256,1,1],
//!   "args":[{"in":"a.bin"},{"in":"b.bin"},{"out":{"path":"c.bin","bytes":4096}},{"u32":1024}]},
//!  "files":[{"path":"a.bin","base64":"..."},{"path":"b.bin","base64":"..."}]}
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::check_relative_path;
use crate::error::VgaError;
use crate::limits::MAX_ARTIFACT_BYTES;

/// Longest CUDA source a task may carry inline (a submit is at most `MAX_SUBMIT_BYTES` anyway).
pub const MAX_CUDA_SOURCE_BYTES: usize = 1024 * 1024;
/// Most NVRTC options one task may pass.
pub const MAX_NVRTC_OPTIONS: usize = 64;
/// Most kernel arguments: CUDA allows 32 KiB of parameters; 256 plain ones are far below it.
pub const MAX_KERNEL_ARGS: usize = 256;
/// Threads per block: 1024 on every architecture since compute 2.0.
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
/// The PTX artifact of a cuda task.
pub const PTX_ARTIFACT: &str = "kernel.ptx";

fn bad<T>(message: impl Into<String>) -> Result<T, VgaError> {
    Err(VgaError::InvalidTask(message.into()))
}

/// A `cuda` task's own part (`"cuda": {...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaSpec {
    /// CUDA C++ source; the entry must be `extern "C"` so its name is not mangled.
    pub source: String,
    /// The kernel (`__global__` function) to launch, and whose presence in the PTX is checked.
    pub entry: String,
    /// The virtual architecture, `compute_90` (`sm_90` is taken as `compute_90`). Default: the
    /// leased device's; for compile-only tasks, NVRTC's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// More NVRTC options (`-DN=4`, `--use_fast_math`); `-arch` goes in `arch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Compile to PTX only (no GPU needed): the PTX is the task's artifact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compile_only: bool,
    #[serde(default = "ones")]
    pub grid: [u32; 3],
    #[serde(default = "ones")]
    pub block: [u32; 3],
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_mem_bytes: u32,
    /// The kernel's parameters, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<KernelArg>,
}

fn ones() -> [u32; 3] {
    [1, 1, 1]
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One kernel parameter: a device buffer (copied from an input file, or zeroed and copied back
/// as an artifact) or a scalar passed by value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KernelArg {
    /// A buffer filled from this input file.
    In(String),
    /// A buffer filled from this input file, sent back as an artifact of the same path.
    Inout(String),
    /// A zeroed buffer of `bytes`, sent back as an artifact at `path`.
    Out {
        path: String,
        bytes: u64,
    },
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// Checks an architecture name and returns the virtual one NVRTC compiles for
/// (`sm_90` → `compute_90`).
pub fn virtual_arch(arch: &str) -> Result<String, VgaError> {
    let digits = arch
        .strip_prefix("compute_")
        .or_else(|| arch.strip_prefix("sm_"))
        .filter(|d| (2..=4).contains(&d.len()))
        .filter(|d| {
            let (num, suffix) = d.split_at(d.len() - usize::from(d.ends_with(['a', 'f'])));
            num.bytes().all(|b| b.is_ascii_digit()) && suffix.len() <= 1
        });
    match digits {
        Some(d) => Ok(format!("compute_{d}")),
        None => bad(format!(
            "\"cuda.arch\" {arch:?} is not like \"compute_90\" or \"sm_90\""
        )),
    }
}

impl CudaSpec {
    /// Checks everything that can be checked without a worker; `inputs` are the task's input
    /// file paths, which `in` and `inout` arguments must name.
    pub fn validate(&self, inputs: &BTreeSet<&str>) -> Result<(), VgaError> {
        if self.source.trim().is_empty() || self.source.len() > MAX_CUDA_SOURCE_BYTES {
            return bad(format!(
                "\"cuda.source\" must be 1 byte to {} KiB of CUDA C",
                MAX_CUDA_SOURCE_BYTES >> 10
            ));
        }
        if self.source.contains('\0') {
            return bad("\"cuda.source\" must not contain NUL");
        }
        let ident = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && s.len() <= 256
        };
        if !ident(&self.entry) {
            return bad(format!(
                "\"cuda.entry\" {:?} must be the kernel's C name",
                self.entry
            ));
        }
        if let Some(a) = &self.arch {
            virtual_arch(a)?;
        }
        if self.options.len() > MAX_NVRTC_OPTIONS {
            return bad(format!("at most {MAX_NVRTC_OPTIONS} \"cuda.options\""));
        }
        for o in &self.options {
            if o.is_empty() || o.contains('\0') {
                return bad(format!("NVRTC option {o:?} is not valid"));
            }
            if o.starts_with("-arch") || o.starts_with("--gpu-architecture") {
                return bad("give the architecture as \"cuda.arch\", not as an option");
            }
        }
        if self.compile_only {
            if !self.args.is_empty() {
                return bad("a compile-only cuda task launches nothing: it has no \"args\"");
            }
            return Ok(());
        }
        for (what, dims) in [("grid", self.grid), ("block", self.block)] {
            if dims.contains(&0) {
                return bad(format!("\"cuda.{what}\" dimensions must be at least 1"));
            }
        }
        let threads: u64 = self.block.iter().map(|&d| u64::from(d)).product();
        if threads > MAX_THREADS_PER_BLOCK {
            return bad(format!(
                "a block of {threads} threads is more than {MAX_THREADS_PER_BLOCK}"
            ));
        }
        if self.args.len() > MAX_KERNEL_ARGS {
            return bad(format!("at most {MAX_KERNEL_ARGS} kernel \"args\""));
        }
        let mut outputs = BTreeSet::new();
        for a in &self.args {
            match a {
                KernelArg::In(p) | KernelArg::Inout(p) if !inputs.contains(p.as_str()) => {
                    return bad(format!("kernel argument {p:?} names no input file"));
                }
                KernelArg::Out { path, bytes } => {
                    check_relative_path(path)?;
                    if *bytes == 0 || *bytes > MAX_ARTIFACT_BYTES {
                        return bad(format!(
                            "output buffer {path:?} must be 1 byte to {} MiB",
                            MAX_ARTIFACT_BYTES >> 20
                        ));
                    }
                    if inputs.contains(path.as_str()) {
                        return bad(format!(
                            "output buffer {path:?} is also an input file (use \"inout\")"
                        ));
                    }
                }
                _ => {}
            }
            if let Some(p) = a.output_path() {
                if !outputs.insert(p) {
                    return bad(format!("two output buffers are both {p:?}"));
                }
            }
        }
        Ok(())
    }
}

impl KernelArg {
    /// The artifact this argument's buffer becomes, if it is sent back.
    pub fn output_path(&self) -> Option<&str> {
        match self {
            KernelArg::Inout(p) | KernelArg::Out { path: p, .. } => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> CudaSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_launch_spec_parses_with_defaults() {
        let s = spec(
            r#"{"source":"extern \"C\" __global__ void k(float *x) {}","entry":"k",
                "args":[{"in":"x.bin"},{"out":{"path":"y.bin","bytes":16}},{"u32":4},{"f32":1.5}]}"#,
        );
        assert_eq!(s.grid, [1, 1, 1]);
        assert_eq!(s.args[2], KernelArg::U32(4));
        let inputs = BTreeSet::from(["x.bin"]);
        s.validate(&inputs).unwrap();
        assert!(
            s.validate(&BTreeSet::new()).is_err(),
            "x.bin is not an input"
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let inputs = BTreeSet::from(["x.bin"]);
        let cases = [
            (r#"{"source":" ","entry":"k"}"#, "cuda.source"),
            (r#"{"source":"x","entry":"k-1"}"#, "cuda.entry"),
            (r#"{"source":"x","entry":"k","arch":"hopper"}"#, "cuda.arch"),
            (
                r#"{"source":"x","entry":"k","options":["-arch=sm_90"]}"#,
                "cuda.arch",
            ),
            (
                r#"{"source":"x","entry":"k","block":[1024,2,1]}"#,
                "2048 threads",
            ),
            (r#"{"source":"x","entry":"k","grid":[0,1,1]}"#, "at least 1"),
            (
                r#"{"source":"x","entry":"k","compile_only":true,"args":[{"u32":1}]}"#,
                "compile-only",
            ),
            (
                r#"{"source":"x","entry":"k","args":[{"out":{"path":"../y","bytes":4}}]}"#,
                "..",
            ),
            (
                r#"{"source":"x","entry":"k","args":[{"out":{"path":"y","bytes":0}}]}"#,
                "1 byte",
            ),
            (
                r#"{"source":"x","entry":"k","args":[{"inout":"x.bin"},{"out":{"path":"x.bin","bytes":4}}]}"#,
                "also an input",
            ),
        ];
        for (json, want) in cases {
            let e = spec(json).validate(&inputs).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        assert!(
            serde_json::from_str::<CudaSpec>(r#"{"source":"x","entry":"k","gird":[1,1,1]}"#)
                .is_err()
        );
    }

    #[test]
    fn architectures_are_checked_and_made_virtual() {
        assert_eq!(virtual_arch("sm_90").unwrap(), "compute_90");
        assert_eq!(virtual_arch("compute_100a").unwrap(), "compute_100a");
        for bad in ["sm_", "compute_9", "sm_9x0", "90", "compute_90ab"] {
            assert!(virtual_arch(bad).is_err(), "{bad}");
        }
    }
}
