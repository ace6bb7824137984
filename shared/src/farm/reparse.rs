//! How a compiler is handed `-E -fdirectives-only` output so that its object is the one a
//! local compile writes, debug info included.
//!
//! The obvious way, `-fpreprocessed -fdirectives-only`, compiles the same code, but GCC
//! records every option it was given in `DW_AT_producer`, and `-fdirectives-only` is not on
//! its list of ignored ones: with `-g`, every distributed object differed from a local one in
//! that one string. Compiling the text as ordinary source instead (*reparsing*) records
//! nothing extra, and GCC honours the line markers in ordinary source too (same include
//! chains, same system-header exemptions, same `__FILE__` and `__LINE__`). Three things
//! differ and are mended here or by the caller:
//!
//! - The predefined macros that the preprocessed text lists under `<built-in>` are dropped:
//!   the compiler defines them itself, from the same flags, and redefining a built-in warns.
//!   Everything else stays, markers included, so the include stack is the same.
//! - The `# 1 "<cwd>//"` line that `-g` adds (the working directory) is dropped: only
//!   preprocessed mode reads it; ordinary source would take it for the file's name.
//! - The main input's name is the compile's own input file: the caller maps it back with
//!   `-fdebug-prefix-map=<input>=<primary>` (not recorded in `DW_AT_producer`) and passes
//!   `-nostdinc` (every header is already inlined; it also stops the implicit
//!   `stdc-predef.h`, which the text already holds).
//!
//! Not reparsed (preprocessed mode is used, whose only difference is that one string): units
//! compiled with `-pedantic` or `-Wpedantic` (GCC calls line markers in ordinary source "a GCC
//! extension" there), units that use `__BASE_FILE__` (it would name the input file), and text
//! whose first line is not a line marker GCC wrote.

/// The text to compile as ordinary source, and the main file's name as its first line marker
/// gives it (`src/lapi.c`, or an absolute path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reparsed {
    pub text: Vec<u8>,
    pub primary: String,
}

/// `pp` (the output of `-E -fdirectives-only`) made fit to compile as ordinary source with
/// `args`, or `None` when it must be compiled in preprocessed mode (see the module's notes).
pub fn reparse(pp: &[u8], args: &[String]) -> Option<Reparsed> {
    if args.iter().any(|a| a.contains("pedantic"))
        || memchr::memmem::find(pp, b"__BASE_FILE__").is_some()
    {
        return None;
    }
    let mut lines = pp.split_inclusive(|&b| b == b'\n');
    let first = lines.next()?;
    let primary = marker_name(first)?;
    let mut text = Vec::with_capacity(pp.len());
    text.extend_from_slice(first);
    let mut section_is_builtin = false;
    let mut prologue = true;
    let mut rest_at = first.len();
    for (i, line) in lines.enumerate() {
        let name = marker_name(line);
        if i == 0 && name.as_deref().is_some_and(|n| n.ends_with("//")) {
            rest_at += line.len();
            continue; // the working directory
        }
        match name.as_deref() {
            Some("<built-in>") => section_is_builtin = true,
            Some("<command-line>") => section_is_builtin = false,
            // The first marker of anything else: built-ins come only first.
            Some(_) => prologue = false,
            None => {}
        }
        if !prologue {
            break;
        }
        rest_at += line.len();
        if section_is_builtin && name.is_none() {
            continue;
        }
        text.extend_from_slice(line);
    }
    text.extend_from_slice(&pp[rest_at..]);
    Some(Reparsed { text, primary })
}

/// The file name of a GCC line marker (`# 12 "src/a.c" 1 3`), unescaped; `None` for any
/// other line, and for names with escapes other than `\\` and `\"`.
fn marker_name(line: &[u8]) -> Option<String> {
    let rest = line.strip_prefix(b"# ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let quoted = rest[digits..].strip_prefix(b" \"")?;
    let mut name = Vec::new();
    let mut bytes = quoted.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' => return String::from_utf8(name).ok(),
            b'\\' => match bytes.next() {
                Some(&e @ (b'\\' | b'"')) => name.push(e),
                _ => return None,
            },
            b'\n' => return None,
            _ => name.push(b),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PP: &str = "# 0 \"src/a.c\"\n# 1 \"/home/u/p//\"\n# 0 \"<built-in>\"\n#define __STDC__ 1\n# 0 \"<built-in>\"\n#define __GNUC__ 12\n# 0 \"<command-line>\"\n#define FOO 3\n# 1 \"/usr/include/stdc-predef.h\" 1 3 4\n#define __STDC_IEC_559__ 1\n# 0 \"<command-line>\" 2\n# 1 \"src/a.c\"\nint main(void) { return FOO; }\n# 0 \"<built-in>\"\nstays\n";

    fn no_args() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn built_ins_and_the_working_directory_go_and_everything_else_stays() {
        let r = reparse(PP.as_bytes(), &no_args()).expect("reparsed");
        assert_eq!(r.primary, "src/a.c");
        let want = "# 0 \"src/a.c\"\n# 0 \"<built-in>\"\n# 0 \"<built-in>\"\n# 0 \"<command-line>\"\n#define FOO 3\n# 1 \"/usr/include/stdc-predef.h\" 1 3 4\n#define __STDC_IEC_559__ 1\n# 0 \"<command-line>\" 2\n# 1 \"src/a.c\"\nint main(void) { return FOO; }\n# 0 \"<built-in>\"\nstays\n";
        assert_eq!(String::from_utf8(r.text).unwrap(), want);
    }

    #[test]
    fn without_debug_info_there_is_no_working_directory_line() {
        let pp = "# 0 \"a.c\"\n# 0 \"<built-in>\"\n#define X 1\n# 1 \"a.c\"\nint x;";
        let r = reparse(pp.as_bytes(), &no_args()).unwrap();
        assert_eq!(
            String::from_utf8(r.text).unwrap(),
            "# 0 \"a.c\"\n# 0 \"<built-in>\"\n# 1 \"a.c\"\nint x;"
        );
    }

    #[test]
    fn what_reparsing_would_change_stays_preprocessed() {
        assert_eq!(reparse(PP.as_bytes(), &["-Wpedantic".into()]), None);
        assert_eq!(reparse(PP.as_bytes(), &["-pedantic-errors".into()]), None);
        let base = format!("{PP}const char *b = __BASE_FILE__;\n");
        assert_eq!(reparse(base.as_bytes(), &no_args()), None);
        assert_eq!(reparse(b"int x;\n", &no_args()), None);
        assert_eq!(reparse(b"", &no_args()), None);
    }

    #[test]
    fn marker_names_are_unescaped_and_odd_ones_refused() {
        assert_eq!(
            marker_name(b"# 1 \"/a b/\\\"q\\\\.c\" 1 3 4\n").as_deref(),
            Some("/a b/\"q\\.c")
        );
        assert_eq!(marker_name(b"# 12 \"x.h\"").as_deref(), Some("x.h"));
        assert_eq!(marker_name(b"# \"x.h\"\n"), None);
        assert_eq!(marker_name(b"#define X 1\n"), None);
        assert_eq!(marker_name(b"# 1 \"a\\nb\"\n"), None);
        assert_eq!(marker_name(b"# 1 \"unterminated\n"), None);
    }
}
