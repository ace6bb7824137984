//! Reading a compiler command line the way distcc and icecream do: a compile-only invocation
//! of one C or C++ source becomes a segment (the preprocessor flags run here, the flags that
//! shape the object go to the worker); anything the wrapper cannot prove safe to distribute
//! (links, `-E`, assembler input, plugins, response files, `-march=native`, coverage...) runs
//! locally, unchanged, with the reason kept for the report.

use vgas_shared::farm::{is_distributable_assembler_option, Language};

/// A compile the swarm can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileJob {
    /// The source as the command named it.
    pub source: String,
    /// The object as the command named it (or the compiler's default, `base.o`).
    pub output: String,
    pub language: Language,
    /// The command named the language (`-x c`) rather than leaving it to the extension.
    pub explicit_language: bool,
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
    // Writes a .dwo whose name the object records: the worker's, not the submitter's.
    "-gsplit-dwarf",
];
const LOCAL_PREFIX: &[&str] = &[
    "-fplugin",
    "-specs=",
    "-save-temps=",
    "-B",
    "-fprofile-",
    "-fauto-profile",
    "-fdump-",
    "-march=native",
    "-mtune=native",
    "-mcpu=native",
    "@",
    "-fcoverage",
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

/// Why a call without `-c` runs here: a link, or a driver run (`--version`, `-dumpmachine`).
pub const NOT_A_COMPILE: &str = "a link or another call without -c";

/// Classifies one compiler command line (the arguments after the program name).
/// `cxx_driver` is true for `g++`, `c++` and `clang++`, which compile `.c` files as C++.
pub fn classify(args: &[String], cxx_driver: bool) -> Invocation {
    let local = |why: String| Invocation::Local(why);
    // A link says so, whatever flags it carries (rustc links with `cc -B...`).
    if !args.iter().any(|a| a == "-c") {
        return local(NOT_A_COMPILE.into());
    }
    let mut compile_only = false;
    let mut output: Option<String> = None;
    let mut sources: Vec<String> = Vec::new();
    let mut pp_args = Vec::new();
    let mut compile_args = Vec::new();
    // `-x LANG` in effect, and the one the source was named under.
    let mut explicit: Option<Language> = None;
    let mut other_inputs = 0;
    let mut source_language: Option<Language> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.as_str();
        if a == "-x" || (a.starts_with("-x") && a.len() > 2) {
            let lang = match a.strip_prefix("-x").filter(|l| !l.is_empty()) {
                Some(l) => l,
                None => match it.next() {
                    Some(l) => l.as_str(),
                    None => return local("-x without a language".into()),
                },
            };
            explicit = match lang {
                "c" => Some(Language::C),
                "c++" => Some(Language::Cxx),
                "none" => None,
                other => return local(format!("-x {other} is not distributed")),
            };
        } else if a == "-c" {
            compile_only = true;
        } else if a == "-o" {
            match it.next() {
                Some(o) => output = Some(o.clone()),
                None => return local("-o without a file".into()),
            }
        } else if let Some(o) = a.strip_prefix("-o") {
            output = Some(o.to_owned());
        } else if LOCAL_EXACT.contains(&a) {
            return local(format!("{a} is not distributed"));
        } else if let Some(p) = LOCAL_PREFIX.iter().find(|p| a.starts_with(*p)) {
            // The flag's class, not its value, so the summary can count reasons.
            return local(format!("{p}... is not distributed"));
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
        } else if let Some(parts) = a.strip_prefix("-Wa,") {
            // The worker's assembler is the submitter's (same toolchain identity); only
            // options that read or write files of their own stay here.
            if !parts.split(',').all(is_distributable_assembler_option) {
                return local("-Wa, with an option that reads or writes a file".into());
            }
            compile_args.push(a.to_owned());
        } else if a.starts_with('-') {
            pp_args.push(a.to_owned());
            compile_args.push(a.to_owned());
        } else if explicit.is_some() || looks_like_source(a) {
            sources.push(a.to_owned());
            source_language = explicit;
        } else {
            other_inputs += 1;
        }
    }
    if !compile_only {
        return local(NOT_A_COMPILE.into());
    }
    if other_inputs > 0 {
        return local("an input other than one source".into());
    }
    let [source] = sources.as_slice() else {
        return local(format!("{} sources, not one", sources.len()));
    };
    let Some(language) = source_language.or_else(|| language_of(source, cxx_driver)) else {
        let ext = source.rsplit_once('.').map_or("", |(_, e)| e);
        return local(format!("not C or C++ source (.{ext})"));
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
        explicit_language: source_language.is_some(),
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
        v.extend(["-E".into(), "-fdirectives-only".into()]);
        if self.explicit_language {
            v.extend(["-x".into(), self.language.x_arg().into()]);
        }
        v.extend([self.source.clone(), "-o".into(), "-".into()]);
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
    fn what_peers_distribute_is_distributed() {
        // Prefix maps rewrite paths the line markers carry to the worker anyway; the worker
        // maps its own directory last (see the worker's compile).
        let j = job("-fmacro-prefix-map=/src=. -ffile-prefix-map=/a=/b -fdebug-prefix-map=/c=/d -c a.c -o a.o");
        assert!(j
            .compile_args
            .iter()
            .any(|a| a == "-fmacro-prefix-map=/src=."));
        assert!(j
            .compile_args
            .iter()
            .any(|a| a == "-fdebug-prefix-map=/c=/d"));
        // The worker's assembler is the submitter's.
        let j = job("-Wa,--noexecstack,--gdwarf-5 -c a.c");
        assert_eq!(j.compile_args, args("-Wa,--noexecstack,--gdwarf-5"));
        assert!(j.pp_args.is_empty());
        // An explicit language, also for a source without a C extension.
        let j = job("-x c -c lib/x.inc -o x.o");
        assert_eq!((j.language, j.explicit_language), (Language::C, true));
        let pp = j.preprocess_args().join(" ");
        assert!(pp.ends_with("-x c lib/x.inc -o -"), "{pp}");
        let j = job("-xc++ -c a.c");
        assert_eq!(j.language, Language::Cxx);
        let j = job("-x c -x none -c a.cpp");
        assert_eq!((j.language, j.explicit_language), (Language::Cxx, false));
        // Side outputs come back from the worker.
        let j = job("-fstack-usage -c a.c -o obj/a.o");
        assert_eq!(vgas_shared::farm::side_outputs_of(&j.compile_args), ["su"]);
        for a in &j.compile_args {
            assert!(!vgas_shared::farm::is_forbidden_compile_arg(a), "{a}");
        }
    }

    #[test]
    fn local_reasons_name_the_flag_class_not_its_value() {
        let Invocation::Local(a) = classify(&args("-c a.c -fprofile-use=/x/a.gcda"), false) else {
            panic!()
        };
        let Invocation::Local(b) = classify(&args("-c b.c -fprofile-use=/y/b.gcda"), false) else {
            panic!()
        };
        assert_eq!(a, b);
        assert_eq!(a, "-fprofile-... is not distributed");
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
            "-x assembler -c a.c",
            "-x c-header -c a.h",
            "-c a.c -gsplit-dwarf",
            "-c a.c -fplugin=x.so",
            "-c a.c @rsp",
            "-c a.c -march=native",
            "-c a.c -Wa,-adhln=a.lst",
            "-c a.c -Wa,--noexecstack,-I,inc",
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
