//! The submitting side's own CPU per translation unit, on a real one (Lua 5.4.4's `lapi.c`,
//! preprocessed here with the machine's gcc): reading the command line, the cache key over the
//! preprocessed text, the line markers, and the direct-mode check of every file the unit read,
//! with file hashes memoized (inside `vgas build`) and not (a lone `vgas cc`). These are the
//! parts of a cache hit that are not round trips to NATS.
//!
//! Run: `cargo bench -p vgas-master --bench build` (needs gcc and the Lua tree, which
//! `scripts/fetch-c-project.sh` fetches; without them it says so and measures nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use vgas_client::farm::args::{classify, Invocation};
use vgas_client::farm::direct::FileHashes;
use vgas_client::farm::prepare::line_marker_files;
use vgas_shared::farm::{cache_key, Language};

const FLAGS: &str =
    "-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX -c lapi.c -o lapi.o";

fn lua_src() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    let out = Command::new(root.join("scripts/fetch-c-project.sh"))
        .arg("lua")
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.lines().last()?.trim()).join("src"))
}

fn bench(c: &mut Criterion) {
    let Some(src) = lua_src().filter(|s| s.join("lapi.c").exists()) else {
        eprintln!("SKIPPED: no Lua tree (scripts/fetch-c-project.sh lua)");
        return;
    };
    let args: Vec<String> = FLAGS.split_whitespace().map(str::to_owned).collect();
    let Invocation::Distribute(job) = classify(&args, false) else {
        panic!("lapi.c is not distributable");
    };
    let pp = match Command::new("gcc")
        .args(job.preprocess_args())
        .current_dir(&src)
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            eprintln!("SKIPPED: gcc could not preprocess lapi.c");
            return;
        }
    };
    let files: Vec<PathBuf> = line_marker_files(&pp)
        .into_iter()
        .map(|(n, _)| src.join(n))
        .collect();
    eprintln!(
        "lapi.c: {} bytes preprocessed, {} files read",
        pp.len(),
        files.len()
    );

    let mut g = c.benchmark_group("build_unit");
    g.bench_function("classify", |b| b.iter(|| classify(&args, false)));
    g.bench_function("cache_key", |b| {
        b.iter(|| {
            cache_key(
                "sha256:x",
                Language::C,
                &job.compile_args,
                "lapi.c",
                "",
                &vgas_shared::names::ModuleRef::of(&pp),
            )
        })
    });
    g.bench_function("line_markers", |b| b.iter(|| line_marker_files(&pp)));
    g.bench_function("direct_check_uncached", |b| {
        b.iter(|| {
            let h = FileHashes::uncached();
            files.iter().all(|f| h.facts(f).is_some())
        })
    });
    let memo = FileHashes::memoized();
    g.bench_function("direct_check_memoized", |b| {
        b.iter(|| files.iter().all(|f| memo.facts(f).is_some()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
