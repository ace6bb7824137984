//! The command line that compiles one segment, the same wherever it runs (a worker's
//! sandbox, or the submitter's machine when a plan compiles a segment there): the input file,
//! the flags around the user's, and the prefix maps that make debug info name the
//! submitter's files and directory rather than where the compile ran.

use std::borrow::Cow;
use std::path::Path;

use super::reparse::reparse;
use super::{CompileSpec, Language, SEGMENT_OBJECT};

/// Where a reparsed unit's input goes, relative to where the compiler runs: a directory of
/// its own, so the main file's own name cannot meet a shipped file of the same name.
const REPARSED_INPUT_DIR: &str = ".vgas-input";

/// The input file's path, relative to where the compiler runs. Text compiled as ordinary
/// source ([`reparse`], `primary` the main file's name) is named as the main file is: GCC
/// names a unit's static constructors after its input file's name
/// (`_GLOBAL__sub_I_ctx.cpp`), not after its line markers, so under any other name every
/// C++ object with a global constructor differed from a local one in that symbol. A name
/// GCC's prefix maps cannot carry (`=`) keeps `vgas-segment.i`/`.ii`, as does text compiled
/// in preprocessed mode, where GCC takes the name from the first line marker.
pub fn input_file(language: Language, primary: Option<&str>) -> String {
    let own = primary
        .and_then(|p| Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains('=') && *n != "." && *n != "..");
    match (own, language) {
        (Some(name), _) => format!("{REPARSED_INPUT_DIR}/{name}"),
        (None, Language::C) => "vgas-segment.i".into(),
        (None, Language::Cxx) => "vgas-segment.ii".into(),
    }
}

/// What goes in the input file for `source` (the segment's bytes), and the main file's name
/// when preprocessed text is compiled as ordinary source (see [`reparse`]); pass that name
/// to [`compile_argv`].
pub fn compile_input(c: &CompileSpec, source: Cow<'_, [u8]>) -> (Vec<u8>, Option<String>) {
    match c.preprocessed.then(|| reparse(&source, &c.args)).flatten() {
        Some(r) => (r.text, Some(r.primary)),
        None => (source.into_owned(), None),
    }
}

/// The compiler's argv when it runs in `cwd`: `<compiler> -x <lang> [-fpreprocessed
/// -fdirectives-only | -nostdinc] <args> [-fdebug-prefix-map=<cwd>=<compile.cwd>]
/// [-fdebug-prefix-map=<input>=<primary>] -c <input> -o vgas-segment.o`. `primary` is the
/// main file's name when preprocessed text is compiled as ordinary source ([`reparse`]):
/// debug info then names it, as a local compile's does, and not the input file. A `cwd`
/// holding `=` cannot be mapped (GCC splits the map at its first `=`); its debug info then
/// names `cwd`.
pub fn compile_argv(
    compiler: &Path,
    c: &CompileSpec,
    cwd: &Path,
    primary: Option<&str>,
) -> Vec<String> {
    let mut argv = vec![
        compiler.display().to_string(),
        "-x".into(),
        c.language.x_arg().into(),
    ];
    let primary = primary.filter(|_| c.preprocessed);
    let input = input_file(c.language, primary);
    if c.preprocessed {
        match primary {
            None => argv.extend(["-fpreprocessed".into(), "-fdirectives-only".into()]),
            Some(_) => {
                // Every header is inlined already; this also stops the implicit
                // stdc-predef.h, whose macros the text holds.
                argv.push("-nostdinc".into());
                if c.language == Language::Cxx {
                    argv.push("-nostdinc++".into());
                }
            }
        }
    }
    argv.extend(c.args.iter().cloned());
    let here = cwd.display().to_string();
    if !c.cwd.is_empty() && !here.contains('=') {
        // After the user's own maps, so it is tried first for this directory; mapped to what
        // their maps make of the submitter's directory, as a local compile's debug info says.
        argv.push(format!(
            "-fdebug-prefix-map={here}={}",
            remap_as_gcc(&c.cwd, &c.args)
        ));
    }
    if let Some(primary) = primary {
        // Last, so it is tried first; the whole input name, so nothing else matches it.
        argv.push(format!(
            "-fdebug-prefix-map={input}={}",
            remap_as_gcc(primary, &c.args)
        ));
    }
    argv.extend(["-c".into(), input, "-o".into(), SEGMENT_OBJECT.into()]);
    argv
}

/// What GCC's debug prefix maps in `args` (`-fdebug-prefix-map=OLD=NEW`,
/// `-ffile-prefix-map=OLD=NEW`) make of `path`: the last map whose OLD is a prefix of it
/// wins, and only once.
pub fn remap_as_gcc(path: &str, args: &[String]) -> String {
    args.iter()
        .rev()
        .filter_map(|a| {
            a.strip_prefix("-fdebug-prefix-map=")
                .or_else(|| a.strip_prefix("-ffile-prefix-map="))
        })
        .filter_map(|m| m.split_once('='))
        .find_map(|(old, new)| path.strip_prefix(old).map(|rest| format!("{new}{rest}")))
        .unwrap_or_else(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_has_the_segment_flags_in_order() {
        let c = CompileSpec {
            language: Language::Cxx,
            args: vec!["-O2".into(), "-g".into()],
            preprocessed: true,
            cwd: "/home/u/p".into(),
            ..CompileSpec::default()
        };
        let argv = compile_argv(
            Path::new("/usr/bin/g++"),
            &c,
            Path::new("/w/task-1/src"),
            None,
        );
        let want = [
            "/usr/bin/g++",
            "-x",
            "c++",
            "-fpreprocessed",
            "-fdirectives-only",
            "-O2",
            "-g",
            "-fdebug-prefix-map=/w/task-1/src=/home/u/p",
            "-c",
            "vgas-segment.ii",
            "-o",
            "vgas-segment.o",
        ];
        assert_eq!(argv, want);
        let plain = CompileSpec::default();
        let argv = compile_argv(Path::new("/usr/bin/gcc"), &plain, Path::new("/w/t"), None);
        assert_eq!(
            argv,
            [
                "/usr/bin/gcc",
                "-x",
                "c",
                "-c",
                "vgas-segment.i",
                "-o",
                "vgas-segment.o"
            ]
        );
    }

    #[test]
    fn the_task_directory_maps_to_what_the_users_own_maps_make_of_the_submitters() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(remap_as_gcc("/home/me/src", &[]), "/home/me/src");
        assert_eq!(
            remap_as_gcc("/home/me/src", &args(&["-ffile-prefix-map=/home/me/src=."])),
            "."
        );
        // The last matching map wins, as in GCC.
        assert_eq!(
            remap_as_gcc(
                "/home/me/src",
                &args(&[
                    "-fdebug-prefix-map=/home/me=/X",
                    "-fdebug-prefix-map=/home=/Y"
                ])
            ),
            "/Y/me/src"
        );
        assert_eq!(
            remap_as_gcc(
                "/home/me/src",
                &args(&[
                    "-fdebug-prefix-map=/other=/Z",
                    "-fmacro-prefix-map=/home=/M"
                ])
            ),
            "/home/me/src"
        );
    }

    #[test]
    fn reparsed_text_is_compiled_as_source_with_its_name_mapped_back() {
        let c = CompileSpec {
            language: Language::Cxx,
            args: vec!["-g".into(), "-ffile-prefix-map=/home/u/p=.".into()],
            preprocessed: true,
            cwd: "/home/u/p".into(),
            ..CompileSpec::default()
        };
        let argv = compile_argv(
            Path::new("/usr/bin/g++"),
            &c,
            Path::new("/w/t"),
            Some("/home/u/p/a.cc"),
        );
        let want = [
            "/usr/bin/g++",
            "-x",
            "c++",
            "-nostdinc",
            "-nostdinc++",
            "-g",
            "-ffile-prefix-map=/home/u/p=.",
            "-fdebug-prefix-map=/w/t=.",
            "-fdebug-prefix-map=.vgas-input/a.cc=./a.cc",
            "-c",
            ".vgas-input/a.cc",
            "-o",
            "vgas-segment.o",
        ];
        assert_eq!(argv, want);
        // A source that is not preprocessed has no main file to map back.
        let plain = CompileSpec {
            preprocessed: false,
            ..c
        };
        let argv = compile_argv(
            Path::new("/usr/bin/g++"),
            &plain,
            Path::new("/w/t"),
            Some("a.cc"),
        );
        assert!(
            !argv
                .iter()
                .any(|a| a.contains(".vgas-input") || a == "-nostdinc"),
            "{argv:?}"
        );
    }

    #[test]
    fn a_reparsed_input_is_named_as_its_main_file_and_a_preprocessed_one_is_not() {
        // GCC names static constructors after the input file: `_GLOBAL__sub_I_ctx.cpp`.
        assert_eq!(
            input_file(Language::Cxx, Some("/home/u/zmq/src/ctx.cpp")),
            ".vgas-input/ctx.cpp"
        );
        assert_eq!(
            input_file(Language::C, Some("lapi.c")),
            ".vgas-input/lapi.c"
        );
        assert_eq!(input_file(Language::Cxx, None), "vgas-segment.ii");
        assert_eq!(input_file(Language::C, None), "vgas-segment.i");
        // A name a prefix map cannot carry, or none at all, keeps the segment's own.
        assert_eq!(input_file(Language::C, Some("src/a=b.c")), "vgas-segment.i");
        assert_eq!(input_file(Language::C, Some("src/..")), "vgas-segment.i");
        assert_eq!(input_file(Language::Cxx, Some("")), "vgas-segment.ii");
    }
}
