//! Reading a compiler command line the way distcc and icecream do: a compile-only invocation
//! of one C or C++ source becomes a segment (the preprocessor flags run here, the flags that
//! shape the object go to the worker); anything the wrapper cannot prove safe to distribute
//! (links, `-E`, assembler input, plugins, response files, `-march=native`, coverage...) runs
//! locally, unchanged, with the reason kept for the report.

use vgas_shared::farm::Language;

/// A compile the swarm can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileJob {
    /// The source as the command named it.
    pub source: String,
    /// The object as the command named it (or the compiler's default, `base.o`).
    pub output: String,
    pub language: Language,
    /// Arguments of the local preprocessing run, without `-c`, `-o` and the source.
    pub pp_args: Vec<String>,
    /// Flags that shape the object, for the worker (joined forms: `--param=x=1`).
    pub compile_args: Vec<String>,
}

/// What to do with one compiler invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Distribute(CompileJob),
    /// Run it here, unchanged; the text says why.
    Local(String),
}

/// Preprocessor flags with a separate value (`-I dir`): they run here only.
const PP_WITH_VALUE: &[&str] = &[
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-imultilib",
    "-MF",
    "-MT",
    "-MQ",
    "-Xpreprocessor",
];
/// Preprocessor flags with the value joined (`-Idir`): here only.
const PP_JOINED: &[&str] = &[
    "-I",
    "-D",
    "-U",
    "-MF",
    "-MT",
    "-MQ",
    "-Wp,",
    "-isystem",
    "-iquote",
    "-idirafter",
];
/// Preprocessor switches: here only.
const PP_SWITCHES: &[&str] = &[
    "-MD",
    "-MMD",
    "-MP",
    "-MG",
    "-nostdinc",
    "-nostdinc++",
    "-H",
    "-C",
    "-CC",
    "-undef",
];
/// Flags with a separate value that shape both steps; sent to the worker joined with `=`.
const BOTH_WITH_VALUE: &[(&str, &str)] = &[
    ("--param", "--param="),
    ("--sysroot", "--sysroot="),
    ("-target", "--target="),
    ("-isysroot", "-isysroot"),
];
/// Link-only flags: meaningless with `-c`, dropped from both steps.
const LINK_WITH_VALUE: &[&str] = &["-L", "-l", "-T", "-u", "-z", "-Xlinker"];
const LINK_JOINED: &[&str] = &["-L", "-l", "-Wl,"];
/// Flags that make the invocation something other than one plain compile, or that read or
/// write files the worker would not have: run locally.
const LOCAL_EXACT: &[&str] = &[
    "-E",
    "-S",
    "-M",
    "-MM",
    "-P",
    "-fsyntax-only",
    "-save-temps",
    "--save-temps",
    "-",
    "-x",
    "-specs",
    "-B",
    "-aux-info",
    "--coverage",
    "-ftest-coverage",
    "-fprofile-arcs",
    "-Xassembler",
    "-fdirectives-only",
    "-fpreprocessed",
    "-frewrite-includes",
    "-wrapper",
];
const LOCAL_PREFIX: &[&str] = &[
    "-fplugin",
    "-specs=",
    "-save-temps=",
    "-B",
    "-Wa,",
    "-fprofile-",
    "-fauto-profile",
    "-fdump-",
    "-fstack-usage",
    "-fcallgraph-info",
    "-march=native",
    "-mtune=native",
    "-mcpu=native",
    "@",
    "-fcoverage",
    "-fdebug-prefix-map",
    "-ffile-prefix-map",
    "-fmacro-prefix-map",
];

/// The language of a source by its extension; `None` for anything not C or C++ source.
fn language_of(source: &str, cxx_driver: bool) -> Option<Language> {
    let ext = source.rsplit_once('.').map(|(_, e)| e)?;
    match ext {
        "c" if cxx_driver => Some(Language::Cxx),
        "c" => Some(Language::C),
        "cc" | "cpp" | "cxx" | "cp" | "c++" | "C" | "CPP" => Some(Language::Cxx),
        _ => None,
    }
}

fn looks_like_source(a: &str) -> bool {
    matches!(
        a.rsplit_once('.').map(|(_, e)| e),
        Some(
            "c" | "cc"
                | "cpp"
                | "cxx"
                | "cp"
                | "c++"
                | "C"
                | "CPP"
                | "i"
                | "ii"
                | "s"
                | "S"
                | "sx"
                | "m"
                | "mm"
                | "f"
                | "f90"
                | "go"
                | "d"
        )
    )
}

/// Classifies one compiler command line (the arguments after the program name).
/// `cxx_driver` is true for `g++`, `c++` and `clang++`, which compile `.c` files as C++.
pub fn classify(args: &[String], cxx_driver: bool) -> Invocation {
    let local = |why: String| Invocation::Local(why);
    let mut compile_only = false;
    let mut output: Option<String> = None;
    let mut sources: Vec<String> = Vec::new();
    let mut pp_args = Vec::new();
    let mut compile_args = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.as_str();
        if a == "-c" {
            compile_only = true;
        } else if a == "-o" {
            match it.next() {
                Some(o) => output = Some(o.clone()),
                None => return local("-o without a file".into()),
            }
        } else if let Some(o) = a.strip_prefix("-o") {
            output = Some(o.to_owned());
        } else if LOCAL_EXACT.contains(&a) || LOCAL_PREFIX.iter().any(|p| a.starts_with(p)) {
            return local(format!("{a} is not distributed"));
        } else if PP_WITH_VALUE.contains(&a) {
            let Some(v) = it.next() else {
                return local(format!("{a} without a value"));
            };
            pp_args.extend([a.to_owned(), v.clone()]);
        } else if PP_SWITCHES.contains(&a) || PP_JOINED.iter().any(|p| a.starts_with(p)) {
            pp_args.push(a.to_owned());
        } else if let Some((_, joined)) = BOTH_WITH_VALUE.iter().find(|(f, _)| *f == a) {
            let Some(v) = it.next() else {
                return local(format!("{a} without a value"));
            };
            pp_args.extend([a.to_owned(), v.clone()]);
            compile_args.push(if joined.ends_with('=') {
                format!("{joined}{v}")
            } else {
                return local(format!("{a} {v} is not distributed"));
            });
        } else if LINK_WITH_VALUE.contains(&a) {
            if it.next().is_none() {
                return local(format!("{a} without a value"));
            }
        } else if LINK_JOINED.iter().any(|p| a.starts_with(p)) {
        } else if a.starts_with('-') {
            pp_args.push(a.to_owned());
            compile_args.push(a.to_owned());
        } else if looks_like_source(a) {
            sources.push(a.to_owned());
        } else {
            return local(format!("{a} is an input other than one source (a link?)"));
        }
    }
    if !compile_only {
        return local("not a compile-only (-c) invocation".into());
    }
    let [source] = sources.as_slice() else {
        return local(format!("{} sources, not one", sources.len()));
    };
    let Some(language) = language_of(source, cxx_driver) else {
        return local(format!("{source} is not C or C++ source"));
    };
    let output = output.unwrap_or_else(|| {
        let base = source.rsplit('/').next().unwrap_or(source);
        let stem = base.rsplit_once('.').map(|(s, _)| s).unwrap_or(base);
        format!("{stem}.o")
    });
    Invocation::Distribute(CompileJob {
        source: source.clone(),
        output,
        language,
        pp_args,
        compile_args,
    })
}

impl CompileJob {
    /// The local preprocessing command's arguments: `-fdirectives-only` keeps macros (so the
    /// worker's diagnostics, macro notes and system-header exemptions match a local compile)
    /// and line markers keep the user's paths. Dependency files are written here, under the
    /// names a plain `-c -o` compile would give them.
    pub fn preprocess_args(&self) -> Vec<String> {
        let mut v = self.pp_args.clone();
        let deps = v.iter().any(|a| a == "-MD" || a == "-MMD");
        if deps {
            if !v.iter().any(|a| a.starts_with("-MF")) {
                let stem = self
                    .output
                    .rsplit_once('.')
                    .map(|(s, _)| s)
                    .unwrap_or(&self.output);
                v.extend(["-MF".into(), format!("{stem}.d")]);
            }
            if !v
                .iter()
                .any(|a| a.starts_with("-MT") || a.starts_with("-MQ"))
            {
                v.extend(["-MT".into(), self.output.clone()]);
            }
        }
        v.extend([
            "-E".into(),
            "-fdirectives-only".into(),
            self.source.clone(),
            "-o".into(),
            "-".into(),
        ]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn job(s: &str) -> CompileJob {
        match classify(&args(s), false) {
            Invocation::Distribute(j) => j,
            Invocation::Local(why) => panic!("{s}: local: {why}"),
        }
    }

    #[test]
    fn a_plain_compile_is_split_into_both_steps() {
        let j = job("-O2 -Wall -DLUA_COMPAT_5_3 -I inc -Iother -std=gnu99 -c lapi.c -o lapi.o");
        assert_eq!(j.source, "lapi.c");
        assert_eq!(j.output, "lapi.o");
        assert_eq!(j.language, Language::C);
        assert_eq!(j.compile_args, args("-O2 -Wall -std=gnu99"));
        assert_eq!(
            j.pp_args,
            args("-O2 -Wall -DLUA_COMPAT_5_3 -I inc -Iother -std=gnu99")
        );
        assert_eq!(
            j.preprocess_args()[j.pp_args.len()..],
            args("-E -fdirectives-only lapi.c -o -")
        );
        for a in &j.compile_args {
            assert!(!vgas_shared::farm::is_forbidden_compile_arg(a), "{a}");
        }
    }

    #[test]
    fn defaults_and_languages() {
        assert_eq!(job("-c src/x.cpp").output, "x.o");
        assert_eq!(job("-c src/x.cpp").language, Language::Cxx);
        let Invocation::Distribute(j) = classify(&args("-c a.c"), true) else {
            panic!()
        };
        assert_eq!(j.language, Language::Cxx, "g++ compiles .c as C++");
        let j = job("--param max-inline-insns-single=10 -c a.c");
        assert_eq!(j.compile_args, args("--param=max-inline-insns-single=10"));
    }

    #[test]
    fn dependency_files_are_written_where_a_local_compile_puts_them() {
        let j = job("-MMD -MP -c a.c -o obj/a.o");
        let pp = j.preprocess_args();
        let s = pp.join(" ");
        assert!(
            s.contains("-MF obj/a.d") && s.contains("-MT obj/a.o"),
            "{s}"
        );
        let j = job("-MD -MT x -MF y.d -c a.c -o a.o");
        let s = j.preprocess_args().join(" ");
        assert_eq!(s.matches("-MF").count(), 1, "{s}");
        assert!(!j.compile_args.iter().any(|a| a.starts_with("-M")));
    }

    #[test]
    fn what_cannot_be_proved_safe_runs_locally() {
        for s in [
            "a.o b.o -o app",
            "a.c -o app",
            "-c a.c b.c",
            "-E a.c",
            "-S a.c",
            "-c a.s",
            "-c a.S",
            "-c a.i",
            "-x c -c a.c",
            "-c a.c -fplugin=x.so",
            "-c a.c @rsp",
            "-c a.c -march=native",
            "-c a.c -Wa,--noexecstack",
            "-c a.c --coverage",
            "-c a.c -save-temps",
            "-c -",
            "-c a.c -o",
            "-c a.c -I",
            "-M a.c",
            "--version",
        ] {
            assert!(
                matches!(classify(&args(s), false), Invocation::Local(_)),
                "{s} should run locally"
            );
        }
    }
}
