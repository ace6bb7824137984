//! The build farm's wire types (seed names kept): an `EnvSpec` names a toolchain, a
//! `CompileSpec` is one translation unit as a task carries it, a `BuildPlan` is what any NATS
//! client publishes on `vgas.build.submit`, and `update` holds a build's stream and results
//! (`BuildUpdate`, `BuildOutput`, `TargetBinary`). Also the pure parts
//! every side must compute alike: the cache key and the capability tag of a compiler identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::VgaError;
use crate::names::{check_module_ref, check_relative_path};

pub mod command;
pub mod diagnostics;
pub mod packed;
pub mod plan;
pub mod reparse;
pub mod rustc;
pub mod step;
pub use diagnostics::{parse_diagnostics, Diagnostic, DiagnosticReport};
pub use plan::{
    BuildAccepted, BuildPlan, LinkSpec, PlanSegment, MAX_PLAN_SEGMENTS, SAFE_LINKER_OPTIONS,
};
pub use step::PlanStep;
pub mod update;
pub use update::{
    BuildOutput, BuildStats, BuildUpdate, Origin, TargetBinary, MAX_UPDATE_DIAGNOSTICS,
};

/// The toolchains an `EnvSpec` may name.
pub const TOOLCHAIN_NAMES: &[&str] = &["gcc", "g++", "clang", "clang++", "rustc", "conda"];

/// Prefix of the capability tag a worker offers for each compiler identity it has.
pub const COMPILER_TAG_PREFIX: &str = "compiler:";

/// Hex digits of the identity kept in the capability tag: 128 bits, far past any accidental
/// collision; the worker checks the whole identity before it compiles.
const COMPILER_TAG_HEX: usize = 32;

/// A toolchain a build asks for (seed: `EnvSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// One of [`TOOLCHAIN_NAMES`].
    pub toolchain: String,
    /// A version requirement: `12`, `12.2`, `=12.2.0`, `>=11`, `<13` (compared by numeric
    /// components against the toolchain's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The exact compiler identity (`sha256:<hex>`, see [`CompilerIdentity`]): only this
    /// compiler will do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Conda only: the packages of the environment (`"python=3.11"`, `"numpy"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Conda only: channels, in order (default `conda-forge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

impl EnvSpec {
    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if !TOOLCHAIN_NAMES.contains(&self.toolchain.as_str()) {
            return bad(format!(
                "toolchain {:?} is not one of {TOOLCHAIN_NAMES:?}",
                self.toolchain
            ));
        }
        if let Some(v) = &self.version {
            VersionReq::parse(v)?;
        }
        if let Some(id) = &self.identity {
            check_module_ref(id).map_err(|_| {
                VgaError::InvalidTask(format!(
                    "compiler identity {id:?} must be \"sha256:\" and 64 lowercase hex digits"
                ))
            })?;
        }
        if self.toolchain == "conda" {
            if self.packages.is_empty() {
                return bad("a conda environment needs \"packages\"".into());
            }
        } else if !self.packages.is_empty() || !self.channels.is_empty() {
            return bad("\"packages\" and \"channels\" are for conda environments only".into());
        }
        for p in self.packages.iter().chain(&self.channels) {
            if p.is_empty() || p.starts_with('-') || p.chars().any(|c| c.is_whitespace()) {
                return bad(format!("conda package or channel {p:?} is not valid"));
            }
        }
        Ok(())
    }

    /// A stable key for the environment's directory: the same spec reuses the same one.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..12])
    }
}

/// A version requirement of an [`EnvSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionReq {
    op: &'static str,
    parts: Vec<u64>,
}

impl VersionReq {
    pub fn parse(s: &str) -> Result<Self, VgaError> {
        let s = s.trim();
        let (op, rest) = ["<=", ">=", "=", "<", ">"]
            .iter()
            .find_map(|op| s.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("", s));
        let parts: Option<Vec<u64>> = rest.trim().split('.').map(|p| p.parse().ok()).collect();
        match parts {
            Some(parts) if !parts.is_empty() && parts.len() <= 4 => Ok(VersionReq { op, parts }),
            _ => Err(VgaError::InvalidTask(format!(
                "version requirement {s:?} must look like 12, 12.2, =12.2.0, >=11 or <13"
            ))),
        }
    }

    /// Whether `version` (a dotted number, `12.2.0`) meets the requirement. A bare `12.2`
    /// matches every 12.2.x.
    pub fn matches(&self, version: &str) -> bool {
        let have: Vec<u64> = version.split('.').map_while(|p| p.parse().ok()).collect();
        if have.is_empty() {
            return false;
        }
        let n = self.parts.len();
        let prefix: Vec<u64> = (0..n).map(|i| have.get(i).copied().unwrap_or(0)).collect();
        let ord = prefix.cmp(&self.parts);
        match self.op {
            "" | "=" => ord.is_eq(),
            ">=" => ord.is_ge(),
            "<=" => ord.is_le(),
            ">" => ord.is_gt(),
            _ => ord.is_lt(),
        }
    }
}

/// What exactly a compiler is: the same identity means the same objects for the same input.
/// `hash` covers the driver and the compiler proper (`cc1`, `cc1plus`) where they differ.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CompilerIdentity {
    /// `gcc`, `g++`, `clang`, `clang++`, `rustc`.
    pub name: String,
    /// The first line of `--version`.
    pub version_line: String,
    /// The dotted version (`12.2.0`).
    pub version: String,
    /// `-dumpmachine` (`x86_64-linux-gnu`).
    pub target: String,
    /// `sha256:<hex>` over the version line, the target and the binaries' bytes.
    pub hash: String,
}

impl CompilerIdentity {
    /// The capability tag of this identity, as workers offer it and segments need it.
    pub fn tag(&self) -> String {
        compiler_tag(&self.hash)
    }
}

/// The capability tag for a compiler identity `sha256:<hex>`.
pub fn compiler_tag(hash: &str) -> String {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    format!(
        "{COMPILER_TAG_PREFIX}{}",
        &hex[..hex.len().min(COMPILER_TAG_HEX)]
    )
}

/// The language a segment is compiled as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    #[default]
    C,
    #[serde(rename = "c++")]
    Cxx,
}

impl Language {
    /// The `-x` value for source code of this language.
    pub fn x_arg(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cxx => "c++",
        }
    }
}

/// The bytes of a source: exactly one of plain `text`, `lz4` (a size-prefixed LZ4 block, as
/// `lz4_flex::compress_prepend_size` writes; base64 in JSON), or `object`: `sha256:<hex>` of the
/// bytes, stored under that name in the build sources Object Store bucket, or, with
/// `offered_by`, served by the submitter of that build (see [`Source::offered`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A size-prefixed LZ4 block: base64 in JSON, binary in MessagePack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lz4: Option<packed::Base64Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// With `object` only: the build whose submitter serves the object, as a size-prefixed
    /// LZ4 block, to a request on `<prefix>.build.<id>.source` carrying the name
    /// ([`crate::subjects::Subjects::build_source`]). The bytes then cross the server once,
    /// submitter to worker, and never enter the task's record or a bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_by: Option<crate::ids::BuildId>,
}

impl Source {
    pub fn validate(&self) -> Result<(), VgaError> {
        match (&self.text, &self.lz4, &self.object) {
            (Some(_), None, None) | (None, Some(_), None) => Ok(()),
            (None, None, Some(o)) => check_module_ref(o),
            _ => Err(VgaError::InvalidTask(
                "a source gives exactly one of \"text\", \"lz4\" or \"object\"".into(),
            )),
        }?;
        if self.offered_by.is_some() && self.object.is_none() {
            return Err(VgaError::InvalidTask(
                "a source's \"offered_by\" names who serves its \"object\": it needs one".into(),
            ));
        }
        Ok(())
    }

    /// The bytes of an inline source; `None` for an object reference.
    pub fn inline_bytes(&self, max: usize) -> Result<Option<Vec<u8>>, VgaError> {
        if let Some(t) = &self.text {
            return Ok(Some(t.as_bytes().to_vec()));
        }
        match &self.lz4 {
            Some(packed) => unpack_source(&packed.0, max).map(Some),
            None => Ok(None),
        }
    }

    /// A source the submitter of build `build` serves by its name `object`.
    pub fn offered(object: crate::names::ModuleRef, build: crate::ids::BuildId) -> Source {
        Source {
            object: Some(object.as_str().to_owned()),
            offered_by: Some(build),
            ..Default::default()
        }
    }

    /// An inline, compressed source.
    pub fn packed(bytes: &[u8]) -> Source {
        Source {
            lz4: Some(packed::Base64Bytes(lz4_flex::compress_prepend_size(bytes))),
            ..Default::default()
        }
    }
}

/// One translation unit as a `compile` task carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileSpec {
    /// The exact compiler (`sha256:<hex>` identity); the task also needs its capability tag.
    pub compiler: String,
    #[serde(default)]
    pub language: Language,
    /// Flags that shape the object (`-O2`, `-g`, `-fPIC`, `-Wall`, `-std=c99`...): no
    /// `-c`, `-o`, input files, or preprocessor flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The source's name as the user gave it (`src/lapi.c`), for diagnostics and debug info.
    pub source_name: String,
    pub source: Source,
    /// True: `source` is the submitter's `-fdirectives-only` preprocessed output (macros kept,
    /// so diagnostics match a local build). False: a self-contained source compiled as it is.
    #[serde(default)]
    pub preprocessed: bool,
    /// The submitter's working directory: debug info names it instead of the task directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// The compiler's working directory inside the task directory, where the user's files
    /// (shipped in the task's `files` so diagnostics can quote their lines) sit at the same
    /// relative paths as on the submitter (`src/_/_` when they reach two levels up).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workdir: String,
    /// The files the compiler writes beside the object because of `args` (`su` for
    /// `-fstack-usage`), by extension: the worker sends each back as the artifact
    /// `vgas-segment.<ext>`. Must be exactly [`side_outputs_of`] the args, so none is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_outputs: Vec<String>,
    /// The user's files (the unit's own source and headers) for diagnostics to quote, each by
    /// content name in the build sources bucket: uploaded once per build and fetched once per
    /// worker, where inline they would ride in every copy of every unit's task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<SegmentFile>,
}

/// A user's file a worker fetches from the build sources bucket and places at `path` (relative
/// to the task directory) before the compile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentFile {
    pub path: String,
    /// `sha256:<hex>` of the bytes, which is the object's name in the bucket.
    pub object: String,
}

/// The object a worker's compile writes, and the artifact that carries it back.
pub const SEGMENT_OBJECT: &str = "vgas-segment.o";

/// Flags that make the compiler write a file beside the object, named after it with this
/// extension (`-o dir/x.o` writes `dir/x.su`), which a worker returns and the cache keeps.
pub const SIDE_OUTPUT_FLAGS: &[(&str, &str)] =
    &[("-fstack-usage", "su"), ("-fcallgraph-info", "ci")];

/// The side outputs `args` ask for, by extension, in [`SIDE_OUTPUT_FLAGS`]'s order.
pub fn side_outputs_of(args: &[String]) -> Vec<String> {
    SIDE_OUTPUT_FLAGS
        .iter()
        .filter(|(flag, _)| {
            args.iter().any(|a| {
                a == flag
                    || a.strip_prefix(flag)
                        .is_some_and(|rest| rest.starts_with('='))
            })
        })
        .map(|(_, ext)| (*ext).to_owned())
        .collect()
}

/// The artifact name of side output `ext` (`vgas-segment.su`).
pub fn side_output_name(ext: &str) -> String {
    format!("vgas-segment.{ext}")
}

/// Assembler options (`-Wa,a,b`) a worker's assembler may be given: any but those that read
/// files the worker does not have (`-I`, `@file`) or write files of their own (listings
/// `-a...`, dependencies `--MD`, `-o`).
pub fn is_distributable_assembler_option(part: &str) -> bool {
    const WRITES_OR_READS: &[&str] = &["-a", "--MD", "-o", "-I", "@", "--listing", "-M"];
    !part.is_empty() && !WRITES_OR_READS.iter().any(|p| part.starts_with(p))
}

impl CompileSpec {
    pub fn validate(&self) -> Result<(), VgaError> {
        check_module_ref(&self.compiler).map_err(|_| {
            VgaError::InvalidTask(format!(
                "\"compiler\" {:?} must be an identity \"sha256:<64 hex>\"",
                self.compiler
            ))
        })?;
        self.source.validate()?;
        if self.source_name.is_empty() || self.source_name.contains('\0') {
            return Err(VgaError::InvalidTask(
                "\"source_name\" must name the source".into(),
            ));
        }
        if !self.workdir.is_empty() {
            check_relative_path(&self.workdir)?;
        }
        if self.files.len() > crate::limits::MAX_INPUT_FILES {
            return Err(VgaError::InvalidTask(format!(
                "a segment names at most {} files",
                crate::limits::MAX_INPUT_FILES
            )));
        }
        for f in &self.files {
            check_relative_path(&f.path)?;
            check_module_ref(&f.object).map_err(|_| {
                VgaError::InvalidTask(format!(
                    "file {:?}: \"object\" {:?} must be \"sha256:<64 hex>\"",
                    f.path, f.object
                ))
            })?;
        }
        for a in &self.args {
            if is_forbidden_compile_arg(a) {
                return Err(VgaError::InvalidTask(format!(
                    "compile flag {a:?} is not allowed in a segment (vgas adds -c, -o and the input; \
                     flags that read or write other files run locally)"
                )));
            }
        }
        let wanted = side_outputs_of(&self.args);
        if self.side_outputs != wanted {
            return Err(VgaError::InvalidTask(format!(
                "\"side_outputs\" must be {wanted:?}: the files these flags write beside the object"
            )));
        }
        Ok(())
    }
}

/// Flags a segment must not carry: they name inputs or outputs of their own, or load code
/// into the compiler (plugins), or ask for output other than one object.
pub fn is_forbidden_compile_arg(a: &str) -> bool {
    const EXACT: &[&str] = &[
        "-c",
        "-o",
        "-E",
        "-S",
        "-M",
        "-MM",
        "-MD",
        "-MMD",
        "-MF",
        "-MT",
        "-MQ",
        "-include",
        "-imacros",
        "-x",
        "-save-temps",
        "-specs",
        "-B",
        "-wrapper",
        "--save-temps",
        "-gsplit-dwarf",
    ];
    const PREFIX: &[&str] = &[
        "-o",
        "-fplugin",
        "-specs=",
        "-save-temps=",
        "-B",
        "-Wp,",
        "-Xassembler",
        "-fprofile-use",
        "-fprofile-generate",
        "-fdump-",
        "@",
    ];
    if let Some(parts) = a.strip_prefix("-Wa,") {
        return !parts.split(',').all(is_distributable_assembler_option);
    }
    EXACT.contains(&a) || PREFIX.iter().any(|p| a.starts_with(p)) || !a.starts_with('-')
}

/// The cache key of one segment: SHA-256 over everything that shapes the object. The
/// preprocessed text (`source`, by its content name: the text is hashed once, for the key
/// and for the name a worker fetches it by) already holds every header and macro; the source
/// name reaches debug info and `__FILE__`; the directory matters only with debug info.
pub fn cache_key(
    compiler: &str,
    language: Language,
    args: &[String],
    source_name: &str,
    cwd: &str,
    source: &crate::names::ModuleRef,
) -> String {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    // 2: a worker's input carries the unit's own name (`command::input_file`); objects
    // cached before named their static constructors after `vgas-segment.ii`. 3: the text by
    // its content name.
    field(&mut h, b"vgas-build-cache-3");
    field(&mut h, compiler.as_bytes());
    field(&mut h, language.x_arg().as_bytes());
    for a in args {
        field(&mut h, a.as_bytes());
    }
    field(&mut h, source_name.as_bytes());
    if args.iter().any(|a| a.starts_with("-g") && a != "-g0") {
        field(&mut h, cwd.as_bytes());
    }
    field(&mut h, source.as_str().as_bytes());
    hex::encode(h.finalize())
}

/// One cache entry, the value in the build cache KV bucket under the segment's cache key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheEntry {
    /// The object's name in the build objects bucket (the cache key).
    pub object: String,
    pub size: u64,
    /// `sha256:<hex>` of the object's bytes, checked on every hit.
    pub sha256: String,
    /// What the compile printed (warnings), replayed on a hit.
    pub stderr: String,
    /// How long the compile took: what a hit saves.
    pub compile_ms: u64,
    pub created_ms: u64,
    /// The side outputs (`-fstack-usage`'s `.su`...) by extension, written beside the object
    /// on a hit.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub side: BTreeMap<String, String>,
}

/// A source's size-prefixed LZ4 block (`Source::lz4`, or an offered source's answer)
/// unpacked, refused before any byte is unpacked when it says it holds more than `max`.
pub fn unpack_source(packed: &[u8], max: usize) -> Result<Vec<u8>, VgaError> {
    let bad = |m: String| VgaError::InvalidTask(m);
    let Some(size) = packed.first_chunk::<4>() else {
        return Err(bad("source: lz4 block too short".into()));
    };
    let size = u32::from_le_bytes(*size) as usize;
    if size > max {
        return Err(bad(format!("source: {size} bytes unpacked, over {max}")));
    }
    lz4_flex::decompress_size_prepended(packed)
        .map_err(|e| bad(format!("source: bad lz4 block: {e}")))
}

#[cfg(test)]
#[path = "farm_tests.rs"]
mod tests;
