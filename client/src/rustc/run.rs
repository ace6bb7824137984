//! One `rustc` call through the wrapper: pass it through, serve it from the cache, compile it
//! on a worker, or compile it here; store what compiled. The wrapper never fails a compile
//! that rustc alone would pass: when the key, the swarm or the cache cannot be had, the call
//! runs as if the wrapper were not there, and a crate that failed on a worker compiles here
//! again (so a worker's fault is never the build's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vgas_shared::farm::{compiler_tag, BuildUpdate, Origin};

use super::args::{parse, CrateCall, RustcArgs};
use super::key::{crate_inputs, identify_memo, KeyInputs, RustCompiler};
use super::remote::{not_remote, Remote, RemoteCrate};
use super::{outputs, AsRustc};
use crate::api::Swarm;
use crate::farm::cache::BuildCache;
use crate::farm::context::Updates;
use crate::farm::placement::Placement;
use crate::farm::wrapper::{
    build_updates_subject, note_local, segment_deadline_from_env, settings_from_env,
    ENV_WRAPPER_DIR,
};

/// Most output of one rustc call kept to replay on a hit (8 MiB of diagnostics); a call that
/// prints more still runs and prints all of it, but is not stored.
const MAX_CAPTURED_OUTPUT: usize = 8 * 1024 * 1024;

/// Runs the call; returns the exit code.
pub async fn run(call: AsRustc) -> i32 {
    let crate_call = match parse(&call.args) {
        RustcArgs::Crate(c) => c,
        RustcArgs::Probe => return exec(&call),
        RustcArgs::Uncacheable(why) => {
            note_local(&format!("rustc: {why}"));
            return exec(&call);
        }
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match cached(&call, &crate_call, &cwd).await {
        Ok(code) => code,
        Err(e) => {
            tracing::debug!("rustc call not cached: {e:#}");
            note_local(&format!("rustc: {e:#}"));
            exec(&call)
        }
    }
}

/// Replaces this process with the compiler itself.
fn exec(call: &AsRustc) -> i32 {
    use std::os::unix::process::CommandExt as _;
    let e = std::process::Command::new(&call.rustc)
        .args(&call.args)
        .exec();
    eprintln!("vgas: run {}: {e}", call.rustc);
    127
}

/// The compiler, the key, the files the compile reads and the environment rustc reads.
struct Keyed {
    compiler: RustCompiler,
    key: String,
    files: Vec<PathBuf>,
    env: BTreeMap<String, String>,
}

fn keyed(rustc: &str, c: &CrateCall, cwd: &Path) -> Result<Keyed> {
    let memo = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from);
    let compiler = identify_memo(rustc, memo.as_deref()).context("the compiler's identity")?;
    let inputs = crate_inputs(rustc, c, cwd).context("the crate's inputs")?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let k = KeyInputs {
        compiler: &compiler,
        call: c,
        cwd,
        env: &env,
        inputs: &inputs,
    };
    Ok(Keyed {
        key: k.key()?,
        files: k.files(),
        env: k.rustc_env(),
        compiler,
    })
}

/// One call's connection to the swarm.
struct Conn {
    swarm: Swarm,
    cache: BuildCache,
    updates: Updates,
}

/// The key (compiler identity and the crate's inputs) while the swarm connects.
async fn cached(call: &AsRustc, c: &CrateCall, cwd: &Path) -> Result<i32> {
    let keying = {
        let (rustc, c, cwd) = (call.rustc.clone(), c.clone(), cwd.to_owned());
        tokio::task::spawn_blocking(move || keyed(&rustc, &c, &cwd))
    };
    let connecting = async {
        let conn = settings_from_env()?;
        let client = crate::connect::connect(&conn, "vgas-rustc").await?;
        let swarm = Swarm::new(client.clone(), conn.subjects.clone());
        let cache = BuildCache::open(&swarm.js, &conn.subjects)
            .await?
            .on_host(&conn.state_dir);
        let updates = Updates::new(client.clone(), build_updates_subject(&conn), None);
        anyhow::Ok(Conn {
            swarm,
            cache,
            updates,
        })
    };
    let (k, conn) = tokio::join!(keying, connecting);
    let k = k.context("keying")??;
    let conn = conn.context("the swarm's build cache")?;
    let unit = format!("rust:{}", c.unit_name());
    let hit = match conn.cache.lookup(&k.key).await {
        Ok(hit) => hit,
        Err(e) => {
            tracing::debug!("build cache lookup: {e:#}");
            None
        }
    };
    if let Some(hit) = hit {
        match outputs::restore(c, cwd, &hit.object) {
            Ok(printed) => {
                print_replay(&printed.stdout, &printed.stderr);
                conn.updates
                    .send(BuildUpdate::Cached {
                        segment: unit.clone(),
                        saved_ms: printed.compile_ms,
                        direct: false,
                    })
                    .await;
                done(&conn, &unit, Origin::Cache, 0, 0).await;
                // The build's updates reach the server before this process ends: `vgas
                // build` counts them once its command has ended.
                conn.swarm.sync(crate::api::REQUEST_TIMEOUT).await;
                return Ok(0);
            }
            Err(e) => tracing::warn!(key = k.key, "a cached rustc output did not restore ({e:#})"),
        }
    }
    let code = miss(call, c, cwd, &k, &conn, &unit).await;
    conn.swarm.sync(crate::api::REQUEST_TIMEOUT).await;
    code
}

async fn done(conn: &Conn, unit: &str, origin: Origin, compile_ms: u64, overhead_ms: u64) {
    conn.updates
        .send(BuildUpdate::Done {
            segment: unit.to_owned(),
            origin,
            compile_ms,
            overhead_ms,
            diagnostics: String::new(),
        })
        .await;
}

/// A miss: on a worker when one can take it, else (or when that fails) here; stored after.
async fn miss(
    call: &AsRustc,
    c: &CrateCall,
    cwd: &Path,
    k: &Keyed,
    conn: &Conn,
    unit: &str,
) -> Result<i32> {
    let names = {
        let (rustc, c2, cwd2) = (call.rustc.clone(), c.clone(), cwd.to_owned());
        tokio::task::spawn_blocking(move || outputs::names(&rustc, &c2, &cwd2)).await??
    };
    let why_here = match not_remote(c, &k.files) {
        Some(why) => why,
        None => match Placement::from_env()
            .here(&conn.swarm, &compiler_tag(&k.compiler.identity))
            .await
        {
            Some(here) => format!("rustc: {}", here.reason),
            None => {
                let remote = RemoteCrate {
                    swarm: &conn.swarm,
                    updates: &conn.updates,
                    unit,
                    call: c,
                    cwd,
                    compiler: &k.compiler,
                    files: &k.files,
                    env: k.env.clone(),
                    outputs: names.clone(),
                    deadline: segment_deadline_from_env(),
                };
                match remote.compile().await {
                    Ok(Remote::Compiled {
                        stdout,
                        stderr,
                        worker,
                        compile_ms,
                        overhead_ms,
                    }) => {
                        print_replay(&stdout, &stderr);
                        done(conn, unit, Origin::Worker { worker }, compile_ms, overhead_ms).await;
                        let printed = Printed {
                            stdout,
                            stderr,
                            compile_ms,
                        };
                        store(conn, k, (c, cwd), &names, printed).await;
                        return Ok(0);
                    }
                    Ok(Remote::Failed { worker, exit_code }) => format!(
                        "rustc: failed on worker {worker} (exit code {exit_code}), compiled here to be sure"
                    ),
                    Ok(Remote::Unavailable(why)) => format!("rustc: the swarm could not: {why}"),
                    Err(e) => format!("rustc: the swarm could not: {e:#}"),
                }
            }
        },
    };
    tracing::debug!(unit, "{why_here}");
    let started = Instant::now();
    let (code, printed) = compile_here(call, cwd).await?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let origin = Origin::Local { reason: why_here };
    if code != 0 {
        conn.updates
            .send(BuildUpdate::Failed {
                segment: unit.to_owned(),
                origin,
                exit_code: code,
                diagnostics: String::new(),
            })
            .await;
        return Ok(code);
    }
    done(conn, unit, origin, compile_ms, 0).await;
    match printed {
        Some((stdout, stderr)) => {
            let printed = Printed {
                stdout,
                stderr,
                compile_ms,
            };
            store(conn, k, (c, cwd), &names, printed).await;
        }
        None => tracing::debug!(unit, "rustc's output is too large or not UTF-8; not stored"),
    }
    Ok(0)
}

/// What a compile printed, and how long it took: kept with its outputs.
struct Printed {
    stdout: String,
    stderr: String,
    compile_ms: u64,
}

/// Packs the outputs `names` in the call's `--out-dir` and stores them under the key; a
/// failure costs only a later build a compile.
async fn store(
    conn: &Conn,
    k: &Keyed,
    (c, cwd): (&CrateCall, &Path),
    names: &[String],
    p: Printed,
) {
    let compile_ms = p.compile_ms;
    let stored = async {
        let (c2, cwd2, names) = (c.clone(), cwd.to_owned(), names.to_vec());
        let packed = tokio::task::spawn_blocking(move || {
            outputs::gather(&c2, &cwd2, &names, p.stdout, p.stderr, compile_ms)
        })
        .await??;
        conn.cache
            .store(&k.key, &packed, &Default::default(), "", compile_ms)
            .await
    };
    if let Err(e) = stored.await {
        tracing::warn!(key = k.key, "rustc outputs not stored: {e:#}");
    }
}

/// Prints what rustc printed, whole, before the call ends (with the standard handles: a
/// tokio handle's flush waits only for writes made through that same handle).
fn print_replay(stdout: &str, stderr: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().lock().write_all(stderr.as_bytes());
    let _ = std::io::stderr().flush();
}

/// Copies `from` to `to` as it comes, keeping a copy up to [`MAX_CAPTURED_OUTPUT`] (`None`
/// past it).
async fn tee(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) -> Option<Vec<u8>> {
    let mut kept = Some(Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = to.write_all(&buf[..n]).await;
        let _ = to.flush().await;
        if let Some(k) = kept.as_mut() {
            if k.len() + n > MAX_CAPTURED_OUTPUT {
                kept = None;
            } else {
                k.extend_from_slice(&buf[..n]);
            }
        }
    }
    kept
}

/// Compiles here, streaming rustc's output through; the exit code and what it printed (when
/// it is UTF-8 and within the capture bound).
async fn compile_here(call: &AsRustc, cwd: &Path) -> Result<(i32, Option<(String, String)>)> {
    let mut child = tokio::process::Command::new(&call.rustc)
        .args(&call.args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", call.rustc))?;
    let (out, err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (stdout, stderr, status) = tokio::join!(
        tee(out, tokio::io::stdout()),
        tee(err, tokio::io::stderr()),
        child.wait()
    );
    let code = status.context("wait for rustc")?.code().unwrap_or(1);
    let printed = stdout
        .zip(stderr)
        .and_then(|(o, e)| Some((String::from_utf8(o).ok()?, String::from_utf8(e).ok()?)));
    Ok((code, printed))
}
