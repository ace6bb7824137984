//! `vgas rustc` and `RUSTC_WRAPPER=vgas`: sccache's job for Rust on the swarm. Cargo runs
//! `vgas <rustc> ARGS` for every crate; a call that compiles one crate into files (`args`)
//! gets a key over everything that decides its outputs (`key`); a hit in the swarm-wide
//! build cache writes every output back byte for byte and prints what rustc printed; a miss
//! compiles here, streams rustc's output through as it comes (cargo's pipelining waits on
//! it), or, for a library crate a worker with the identical rustc can take, compiles there
//! (`remote`), and stores the outputs for every later build on any host. A call the cache cannot
//! take (a proc-macro, incremental, `-C target-cpu=native`...) runs unchanged, its reason
//! counted in `vgas build`'s summary; so does every call when the swarm cannot be reached.

pub mod args;
pub mod key;
mod outputs;
pub mod remote;
mod run;

pub use run::run;

/// How `vgas` was called as a rustc wrapper: `vgas rustc ARGS`, or cargo's `RUSTC_WRAPPER`
/// form, `vgas /path/to/rustc ARGS` (also `clippy-driver`, which cargo clippy puts there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsRustc {
    /// The compiler to run, as given.
    pub rustc: String,
    pub args: Vec<String>,
}

impl AsRustc {
    pub fn from_argv(argv: &[String]) -> Option<AsRustc> {
        let first = argv.get(1)?;
        let base = first.rsplit('/').next().unwrap_or(first);
        let is_rustc = base == "rustc"
            || base.starts_with("rustc-")
            || base == "clippy-driver"
            || (first.contains('/') && base.starts_with("rustc"));
        is_rustc.then(|| AsRustc {
            rustc: first.clone(),
            args: argv[2..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn cargo_and_by_hand_calls_are_rustc_calls() {
        let cargo = AsRustc::from_argv(&argv(
            "/usr/bin/vgas /root/.rustup/toolchains/x/bin/rustc --crate-name a src/lib.rs",
        ))
        .unwrap();
        assert_eq!(cargo.rustc, "/root/.rustup/toolchains/x/bin/rustc");
        assert_eq!(cargo.args, argv("--crate-name a src/lib.rs"));
        let by_hand = AsRustc::from_argv(&argv("vgas rustc -vV")).unwrap();
        assert_eq!((by_hand.rustc.as_str(), by_hand.args.len()), ("rustc", 1));
        for other in [
            "vgas build -- cargo build",
            "vgas /usr/bin/gcc -c a.c",
            "vgas",
        ] {
            assert_eq!(AsRustc::from_argv(&argv(other)), None, "{other}");
        }
    }
}
