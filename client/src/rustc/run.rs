//! One `rustc` call through the wrapper: pass it through, serve it from the cache, or compile
//! it here and store it. The wrapper never fails a compile that rustc alone would pass: when
//! the key, the swarm or the cache cannot be had, the call runs as if the wrapper were not
//! there.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vgas_shared::farm::{BuildUpdate, Origin};

use super::args::{parse, CrateCall, RustcArgs};
use super::key::{compiler_identity_memo, crate_inputs, KeyInputs};
use super::{outputs, AsRustc};
use crate::farm::cache::BuildCache;
use crate::farm::context::Updates;
use crate::farm::wrapper::{build_updates_subject, note_local, settings_from_env, ENV_WRAPPER_DIR};

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

/// The key (compiler identity and the crate's inputs) while the swarm connects.
async fn cached(call: &AsRustc, c: &CrateCall, cwd: &Path) -> Result<i32> {
    let keying = {
        let (rustc, c, cwd) = (call.rustc.clone(), c.clone(), cwd.to_owned());
        tokio::task::spawn_blocking(move || -> Result<String> {
            let memo = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from);
            let compiler = compiler_identity_memo(&rustc, memo.as_deref())
                .context("the compiler's identity")?;
            let inputs = crate_inputs(&rustc, &c, &cwd).context("the crate's inputs")?;
            let env: Vec<(String, String)> = std::env::vars().collect();
            KeyInputs {
                compiler: &compiler,
                call: &c,
                cwd: &cwd,
                env: &env,
                inputs: &inputs,
            }
            .key()
        })
    };
    let connecting = async {
        let conn = settings_from_env()?;
        let client = crate::connect::connect(&conn, "vgas-rustc").await?;
        let js = async_nats::jetstream::new(client.clone());
        let cache = BuildCache::open(&js, &conn.subjects).await?;
        let updates = Updates::new(client.clone(), build_updates_subject(&conn), None);
        anyhow::Ok((client, cache, updates))
    };
    let (key, swarm) = tokio::join!(keying, connecting);
    let key = key.context("keying")??;
    let (client, cache, updates) = swarm.context("the swarm's build cache")?;
    let unit = format!("rust:{}", c.unit_name());
    let code = match cache.lookup(&key).await {
        Ok(Some(hit)) => match outputs::restore(c, cwd, &hit.object) {
            Ok(printed) => {
                print_replay(&printed.stdout, &printed.stderr).await;
                updates
                    .send(BuildUpdate::Cached {
                        segment: unit.clone(),
                        saved_ms: printed.compile_ms,
                        direct: false,
                    })
                    .await;
                updates
                    .send(BuildUpdate::Done {
                        segment: unit,
                        origin: Origin::Cache,
                        compile_ms: 0,
                        overhead_ms: 0,
                        diagnostics: String::new(),
                    })
                    .await;
                let _ = client.flush().await;
                return Ok(0);
            }
            Err(e) => {
                tracing::warn!(
                    key,
                    "a cached rustc output did not restore ({e:#}); compiling"
                );
                compile_and_store(call, c, cwd, &cache, &key, &updates, &unit).await
            }
        },
        Ok(None) => compile_and_store(call, c, cwd, &cache, &key, &updates, &unit).await,
        Err(e) => {
            tracing::debug!("build cache lookup: {e:#}");
            compile_and_store(call, c, cwd, &cache, &key, &updates, &unit).await
        }
    };
    let _ = client.flush().await;
    code
}

async fn print_replay(stdout: &str, stderr: &str) {
    let _ = tokio::io::stdout().write_all(stdout.as_bytes()).await;
    let _ = tokio::io::stdout().flush().await;
    let _ = tokio::io::stderr().write_all(stderr.as_bytes()).await;
    let _ = tokio::io::stderr().flush().await;
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

/// Compiles here, streaming rustc's output through, and stores a success.
async fn compile_and_store(
    call: &AsRustc,
    c: &CrateCall,
    cwd: &Path,
    cache: &BuildCache,
    key: &str,
    updates: &Updates,
    unit: &str,
) -> Result<i32> {
    let started = Instant::now();
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
    let compile_ms = started.elapsed().as_millis() as u64;
    let origin = Origin::Local {
        reason: "rustc: not in the cache".into(),
    };
    if code != 0 {
        updates
            .send(BuildUpdate::Failed {
                segment: unit.to_owned(),
                origin,
                exit_code: code,
                diagnostics: String::new(),
            })
            .await;
        return Ok(code);
    }
    updates
        .send(BuildUpdate::Done {
            segment: unit.to_owned(),
            origin,
            compile_ms,
            overhead_ms: 0,
            diagnostics: String::new(),
        })
        .await;
    let printed = stdout
        .zip(stderr)
        .and_then(|(o, e)| Some((String::from_utf8(o).ok()?, String::from_utf8(e).ok()?)));
    let Some((stdout, stderr)) = printed else {
        tracing::debug!(key, "rustc's output is too large or not UTF-8; not stored");
        return Ok(0);
    };
    let stored = async {
        let (rustc, c2, cwd2) = (call.rustc.clone(), c.clone(), cwd.to_owned());
        let packed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let names = outputs::names(&rustc, &c2, &cwd2)?;
            outputs::gather(&c2, &cwd2, &names, stdout, stderr, compile_ms)
        })
        .await??;
        cache
            .store(key, &packed, &Default::default(), "", compile_ms)
            .await
    };
    if let Err(e) = stored.await {
        tracing::warn!(key, "rustc outputs not stored: {e:#}");
    }
    Ok(0)
}
