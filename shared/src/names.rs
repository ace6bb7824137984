//! Checked names that the wire types and the build farm's types share: a path inside a task
//! directory, and a content reference (`sha256:` and 64 lowercase hex digits of some bytes,
//! also the name of an object in the modules or build sources bucket, and the form of a
//! compiler identity). Below both `wire` and `farm`, so neither imports the other for them.

use std::fmt;
use std::str::FromStr;

use crate::error::VgaError;

/// Hex digits of a SHA-256.
const MODULE_REF_HEX_DIGITS: usize = 64;

/// A path inside the task directory: relative, no `..`, no empty components.
pub fn check_relative_path(path: &str) -> Result<(), VgaError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != ".." && c != ".");
    if ok {
        Ok(())
    } else {
        Err(VgaError::InvalidTask(format!(
            "file path {path:?} must be relative, inside the task directory, without '..'"
        )))
    }
}

/// The prefix of a module reference; the rest is the SHA-256 of the module's bytes.
pub const MODULE_REF_PREFIX: &str = "sha256:";

/// A module reference: `sha256:` and 64 lowercase hex digits. It is also the module's name in
/// the modules Object Store bucket. [`ModuleRef::parse`] keeps the checked reference.
pub fn check_module_ref(module: &str) -> Result<(), VgaError> {
    ModuleRef::parse(module).map(|_| ())
}

/// A module reference: `sha256:` and 64 lowercase hex digits of the module's bytes, also its
/// name in the modules Object Store bucket. It can only be built checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleRef(String);

impl ModuleRef {
    /// Checks that `module` is `sha256:` and 64 lowercase hex digits.
    pub fn parse(module: &str) -> Result<ModuleRef, VgaError> {
        let hex = module.strip_prefix(MODULE_REF_PREFIX).unwrap_or("");
        if hex.len() == MODULE_REF_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ModuleRef(module.to_owned()))
        } else {
            Err(VgaError::InvalidTask(format!(
                "module {module:?} must be \"sha256:\" and {MODULE_REF_HEX_DIGITS} lowercase hex digits"
            )))
        }
    }

    /// The reference of `bytes`: their SHA-256, the name they have in a content bucket.
    pub fn of(bytes: &[u8]) -> ModuleRef {
        use sha2::{Digest as _, Sha256};
        ModuleRef(format!(
            "{MODULE_REF_PREFIX}{}",
            hex::encode(Sha256::digest(bytes))
        ))
    }

    /// The whole reference, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits, the cache key of the module's bytes.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix(MODULE_REF_PREFIX).unwrap_or_default()
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ModuleRef {
    type Err = VgaError;

    fn from_str(s: &str) -> Result<ModuleRef, VgaError> {
        ModuleRef::parse(s)
    }
}
