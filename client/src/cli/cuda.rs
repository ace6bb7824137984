//! `vgas submit --cuda kernel.cu --entry add ...`: a `cuda` task from the command line. The
//! kernel's buffers are the task's files (`--file a.bin`), named by `--arg in:a.bin`; output
//! buffers (`--arg out:c.bin:4096`) come back as artifacts like any task's files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vgas_shared::wire::{CudaSpec, KernelArg, TaskKind, TaskSpec};

/// The `cuda` task flags of `vgas submit`.
#[derive(Debug, Default, clap::Args)]
pub struct CudaArgs {
    /// Compile this CUDA C file with NVRTC and launch its kernel on a leased GPU.
    #[arg(long, value_name = "KERNEL.cu", conflicts_with = "wasm")]
    pub cuda: Option<PathBuf>,
    /// The kernel to launch (an `extern "C" __global__` function).
    #[arg(long, value_name = "NAME", requires = "cuda")]
    pub entry: Option<String>,
    /// Target architecture (`compute_90`, `sm_90`) [default: the leased device's].
    #[arg(long, value_name = "ARCH", requires = "cuda")]
    pub arch: Option<String>,
    /// Compile to PTX only (no GPU needed): the PTX comes back as `kernel.ptx`.
    #[arg(long, requires = "cuda")]
    pub compile_only: bool,
    /// Grid dimensions, `X[,Y[,Z]]`.
    #[arg(long, value_name = "X,Y,Z", default_value = "1", requires = "cuda")]
    pub grid: String,
    /// Block dimensions, `X[,Y[,Z]]`.
    #[arg(long, value_name = "X,Y,Z", default_value = "1", requires = "cuda")]
    pub block: String,
    /// A kernel argument, in order (repeatable): `in:FILE`, `inout:FILE`,
    /// `out:FILE:BYTES`, `i32:N`, `u32:N`, `i64:N`, `u64:N`, `f32:X`, `f64:X`.
    #[arg(long = "arg", value_name = "KIND:VALUE", requires = "cuda")]
    pub args: Vec<String>,
    /// An NVRTC option (repeatable), for example `-DN=4`.
    #[arg(
        long = "nvrtc-option",
        value_name = "OPTION",
        requires = "cuda",
        allow_hyphen_values = true
    )]
    pub options: Vec<String>,
}

/// Turns `spec` into a cuda task when `--cuda` is given.
pub fn cuda_spec(mut spec: TaskSpec, args: &CudaArgs) -> Result<TaskSpec> {
    let Some(path) = &args.cuda else {
        return Ok(spec);
    };
    if !spec.cmd.is_empty() {
        bail!("--cuda runs a kernel, not a command: drop what follows `--`");
    }
    let source =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let entry = args
        .entry
        .clone()
        .context("--cuda needs --entry NAME: the kernel to launch")?;
    spec.kind = TaskKind::Cuda;
    spec.cuda = Some(CudaSpec {
        source,
        entry,
        arch: args.arch.clone(),
        options: args.options.clone(),
        compile_only: args.compile_only,
        grid: dims("--grid", &args.grid)?,
        block: dims("--block", &args.block)?,
        shared_mem_bytes: 0,
        args: args
            .args
            .iter()
            .map(|a| kernel_arg(a))
            .collect::<Result<_>>()?,
    });
    Ok(spec)
}

/// `X[,Y[,Z]]`, missing dimensions 1.
fn dims(flag: &str, s: &str) -> Result<[u32; 3]> {
    let mut out = [1u32; 3];
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() > 3 {
        bail!("{flag} {s:?}: at most three dimensions");
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p
            .trim()
            .parse()
            .with_context(|| format!("{flag} {s:?}: {p:?} is not a count"))?;
    }
    Ok(out)
}

/// One `--arg KIND:VALUE`.
fn kernel_arg(s: &str) -> Result<KernelArg> {
    let (kind, value) = s
        .split_once(':')
        .with_context(|| format!("--arg {s:?}: expected KIND:VALUE"))?;
    let num = |what: &str| format!("--arg {s:?}: {value:?} is not {what}");
    Ok(match kind {
        "in" => KernelArg::In(value.to_owned()),
        "inout" => KernelArg::Inout(value.to_owned()),
        "out" => {
            let (path, bytes) = value
                .rsplit_once(':')
                .with_context(|| format!("--arg {s:?}: expected out:FILE:BYTES"))?;
            KernelArg::Out {
                path: path.to_owned(),
                bytes: bytes.parse().with_context(|| num("a byte count"))?,
            }
        }
        "i32" => KernelArg::I32(value.parse().with_context(|| num("an i32"))?),
        "u32" => KernelArg::U32(value.parse().with_context(|| num("a u32"))?),
        "i64" => KernelArg::I64(value.parse().with_context(|| num("an i64"))?),
        "u64" => KernelArg::U64(value.parse().with_context(|| num("a u64"))?),
        "f32" => KernelArg::F32(value.parse().with_context(|| num("an f32"))?),
        "f64" => KernelArg::F64(value.parse().with_context(|| num("an f64"))?),
        other => bail!(
            "--arg {s:?}: unknown kind {other:?} (in, inout, out, i32, u32, i64, u64, f32, f64)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        cuda: CudaArgs,
        #[arg(long)]
        wasm: Option<String>,
    }

    #[test]
    fn nvrtc_options_may_start_with_a_dash() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "vgas",
            "--cuda",
            "k.cu",
            "--entry",
            "k",
            "--nvrtc-option",
            "-DN=4",
            "--nvrtc-option",
            "--use_fast_math",
            "--compile-only",
        ])
        .unwrap();
        assert_eq!(cli.cuda.options, ["-DN=4", "--use_fast_math"]);
        assert!(cli.cuda.compile_only);
        assert!(
            Cli::try_parse_from(["vgas", "--entry", "k"]).is_err(),
            "--entry needs --cuda"
        );
    }

    #[test]
    fn arguments_and_dimensions_parse() {
        assert_eq!(dims("--grid", "4").unwrap(), [4, 1, 1]);
        assert_eq!(dims("--block", "16,16").unwrap(), [16, 16, 1]);
        assert!(dims("--grid", "1,2,3,4").is_err());
        assert!(dims("--grid", "x").is_err());
        assert_eq!(
            kernel_arg("out:c.bin:4096").unwrap(),
            KernelArg::Out {
                path: "c.bin".into(),
                bytes: 4096
            }
        );
        assert_eq!(kernel_arg("f32:1.5").unwrap(), KernelArg::F32(1.5));
        assert_eq!(
            kernel_arg("in:a.bin").unwrap(),
            KernelArg::In("a.bin".into())
        );
        for bad in ["u32:-1", "out:c.bin", "ptr:3", "a.bin"] {
            assert!(kernel_arg(bad).is_err(), "{bad}");
        }
    }
}
