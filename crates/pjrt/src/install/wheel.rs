//! Pinned wheels: fetching them (pip, or a local wheelhouse), checking each
//! against its pinned sha256, and unpacking every file with its `RECORD`
//! hash checked.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::PluginPackage;
use crate::{Error, Result};

/// One pinned wheel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wheel {
    /// Package name on the package index (normalised).
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// The exact wheel file name.
    pub file: &'static str,
    /// sha256 of the wheel file.
    pub sha256: &'static str,
    /// Size of the wheel file in bytes.
    pub size: u64,
}

impl Wheel {
    /// The wheel's platform tags (`manylinux_2_27_x86_64`, ...), from its name.
    pub fn platforms(&self) -> Vec<&'static str> {
        let stem = self.file.strip_suffix(".whl").unwrap_or(self.file);
        stem.rsplit('-')
            .next()
            .map(|t| t.split('.').collect())
            .unwrap_or_default()
    }
}

/// The Python that runs pip (`MESHTRAIN_PYTHON`, else `python3`).
pub(crate) fn python() -> String {
    std::env::var("MESHTRAIN_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Fetches `wheels` into `tmp` and checks each against its pinned sha256:
/// from `$MESHTRAIN_WHEELHOUSE` when set (no network: every file must be
/// there), else with one `pip download --require-hashes` (pip's progress
/// bars on stderr). Returns the files, in the order of `wheels`.
pub(crate) fn fetch(
    pkg: &PluginPackage,
    wheels: &[&Wheel],
    tmp: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    if wheels.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let house = std::env::var_os("MESHTRAIN_WHEELHOUSE").filter(|v| !v.is_empty());
    let files: Vec<PathBuf> = if let Some(house) = house {
        let house = PathBuf::from(house);
        wheels
            .iter()
            .map(|w| {
                let p = house.join(w.file);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!(
                        "MESHTRAIN_WHEELHOUSE={} has no {} (sha256 {}); fetch it where the \
                         package index is reachable with `python3 -m pip download --no-deps \
                         --only-binary=:all: --python-version {} --platform {} {}=={}`",
                        house.display(),
                        w.file,
                        w.sha256,
                        pkg.python_version,
                        w.platforms()
                            .first()
                            .copied()
                            .unwrap_or("manylinux_2_27_x86_64"),
                        w.package,
                        w.version
                    ))
                }
            })
            .collect::<std::result::Result<_, _>>()?
    } else {
        pip_download(pkg, wheels, tmp)?;
        wheels.iter().map(|w| tmp.join(w.file)).collect()
    };
    for (w, f) in wheels.iter().zip(&files) {
        if !f.is_file() {
            return Err(format!("pip reported success but left no {}", f.display()));
        }
        let got = sha256_file(f).map_err(|e| e.to_string())?;
        if got != w.sha256 {
            return Err(format!(
                "sha256 of {} is {got}, pinned {}; refusing it",
                f.display(),
                w.sha256
            ));
        }
    }
    Ok(files)
}

fn pip_download(
    pkg: &PluginPackage,
    wheels: &[&Wheel],
    tmp: &Path,
) -> std::result::Result<(), String> {
    let python = python();
    // Hash-checking mode: pip considers only the files with these hashes,
    // so it picks exactly the pinned file, and checks it as it downloads.
    let req = tmp.join("requirements.txt");
    let text: String = wheels
        .iter()
        .map(|w| format!("{}=={} --hash=sha256:{}\n", w.package, w.version, w.sha256))
        .collect();
    fs::write(&req, text).map_err(|e| format!("writing {}: {e}", req.display()))?;
    let mut platforms: Vec<&str> = wheels.iter().flat_map(|w| w.platforms()).collect();
    platforms.sort_unstable();
    platforms.dedup();
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args([
            "--require-hashes",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args([
            "--progress-bar",
            "on",
            "--python-version",
            pkg.python_version,
        ]);
    for p in &platforms {
        cmd.args(["--platform", p]);
    }
    let status = cmd
        .arg("-d")
        .arg(tmp)
        .arg("-r")
        .arg(&req)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr())) // keep stdout for the command's own output
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| {
            format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set MESHTRAIN_PYTHON")
        })?;
    if !status.success() {
        return Err(format!(
            "`{python} -m pip download -r {}` failed ({status}); without the package index, \
             set MESHTRAIN_WHEELHOUSE to a directory holding the pinned wheels",
            req.display()
        ));
    }
    Ok(())
}

/// The unpadded url-safe base64 of `bytes`, as wheel `RECORD`s write hashes.
pub(crate) fn b64_urlsafe(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `RECORD`'s entries: path -> (`sha256=<b64>` hash, size), `None` for the
/// unhashed ones (`RECORD` itself, signatures).
pub(crate) fn parse_record(
    text: &str,
) -> std::result::Result<HashMap<String, Option<String>>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.rsplitn(3, ',');
        let (_size, hash, path) = (parts.next(), parts.next(), parts.next());
        let (Some(hash), Some(path)) = (hash, path) else {
            return Err(format!(
                "RECORD line {}: {line:?} is not path,hash,size",
                i + 1
            ));
        };
        let path = path.trim_matches('"').to_string();
        let hash = match hash {
            "" => None,
            h => Some(
                h.strip_prefix("sha256=")
                    .ok_or_else(|| format!("RECORD line {}: hash {h:?} is not sha256", i + 1))?
                    .to_string(),
            ),
        };
        out.insert(path, hash);
    }
    Ok(out)
}

/// Unpacks every file of wheel `w` (at `file`) under `dir`, checking each
/// against the wheel's `RECORD` (which the pinned wheel hash covers): a
/// file missing from `RECORD`, or differing from it, is refused. Each file
/// is written under a temporary name and renamed into place; executables
/// (`ptxas`) keep their mode. Shows a progress bar.
pub(crate) fn unpack_all(w: &Wheel, file: &Path, dir: &Path) -> std::result::Result<(), String> {
    let f = File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| format!("{} is not a wheel: {e}", file.display()))?;
    let record_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with(".dist-info/RECORD") && n.matches('/').count() == 1)
        .ok_or_else(|| format!("{} has no .dist-info/RECORD", w.file))?;
    let mut text = String::new();
    zip.by_name(&record_name)
        .and_then(|mut r| r.read_to_string(&mut text).map_err(Into::into))
        .map_err(|e| format!("{}: reading {record_name}: {e}", w.file))?;
    let mut record = parse_record(&text).map_err(|e| format!("{}: {e}", w.file))?;
    let total: u64 = (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().map(|m| m.size()))
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "unpacking {msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        // invariant: a constant template.
        .expect("valid template"),
    );
    bar.set_message(format!("{} {}", w.package, w.version));
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..zip.len() {
        let mut m = zip
            .by_index(i)
            .map_err(|e| format!("{}: member {i}: {e}", w.file))?;
        if m.is_dir() {
            continue;
        }
        let name = m.name().to_string();
        let rel = m
            .enclosed_name()
            .ok_or_else(|| format!("{}: member {name:?} escapes the install directory", w.file))?;
        let expected = record
            .remove(&name)
            .ok_or_else(|| format!("{}: {name} is not listed in RECORD", w.file))?;
        let dest = dir.join(&rel);
        // invariant: `enclosed_name` is relative and non-empty, joined to the install directory.
        let parent = dest.parent().expect("a file has a parent");
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        let partial = PathBuf::from(format!("{}.partial-{}", dest.display(), std::process::id()));
        let mut out =
            File::create(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
        let mut h = Sha256::new();
        loop {
            let n = m
                .read(&mut buf)
                .map_err(|e| format!("{}: unpacking {name}: {e}", w.file))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| format!("writing {}: {e}", partial.display()))?;
            bar.inc(n as u64);
        }
        drop(out);
        let got = b64_urlsafe(&h.finalize());
        if let Some(want) = &expected
            && *want != got
        {
            let _ = fs::remove_file(&partial);
            return Err(format!(
                "{}: {name} has sha256 {got}, its RECORD says {want}; refusing it",
                w.file
            ));
        }
        if expected.is_none()
            && name != record_name
            && !name.ends_with(".jws")
            && !name.ends_with(".p7s")
        {
            let _ = fs::remove_file(&partial);
            return Err(format!("{}: RECORD gives {name} no hash", w.file));
        }
        if let Some(mode) = m.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&partial, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", partial.display()))?;
        }
        fs::rename(&partial, &dest)
            .map_err(|e| format!("renaming into {}: {e}", dest.display()))?;
    }
    bar.finish_and_clear();
    if let Some(missing) = record.keys().next() {
        return Err(format!(
            "{}: RECORD lists {missing}, which the wheel lacks",
            w.file
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_record_encoding() {
        // sha256("") as RECORD files write it.
        let d = Sha256::digest(b"");
        assert_eq!(
            b64_urlsafe(&d),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        assert_eq!(b64_urlsafe(b"f"), "Zg");
        assert_eq!(b64_urlsafe(b"fo"), "Zm8");
        assert_eq!(b64_urlsafe(b"foo"), "Zm9v");
    }

    #[test]
    fn record_lines_and_platform_tags() {
        let r =
            parse_record("a/b.so,sha256=AAA,12\n\"c,d.py\",sha256=BBB,3\nx.dist-info/RECORD,,\n")
                .unwrap();
        assert_eq!(r["a/b.so"].as_deref(), Some("AAA"));
        assert_eq!(r["c,d.py"].as_deref(), Some("BBB"));
        assert_eq!(r["x.dist-info/RECORD"], None);
        assert!(
            parse_record("a,md5=x,1")
                .unwrap_err()
                .contains("not sha256")
        );
        let w = Wheel {
            package: "p",
            version: "1",
            file: "p-1-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            sha256: "",
            size: 0,
        };
        assert_eq!(
            w.platforms(),
            ["manylinux2014_x86_64", "manylinux_2_17_x86_64"]
        );
    }

    #[test]
    fn unpack_checks_every_file_against_record() {
        let dir = std::env::temp_dir().join(format!("meshtrain-wheel-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let make = |name: &str, files: &[(&str, &[u8])], record: &str| {
            let path = dir.join(name);
            let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            for (n, data) in files {
                z.start_file(*n, opts).unwrap();
                z.write_all(data).unwrap();
            }
            z.start_file("p-1.dist-info/RECORD", opts).unwrap();
            z.write_all(record.as_bytes()).unwrap();
            z.finish().unwrap();
            path
        };
        let w = Wheel {
            package: "p",
            version: "1",
            file: "p-1-py3-none-any.whl",
            sha256: "",
            size: 0,
        };
        let h = b64_urlsafe(&Sha256::digest(b"hello"));
        let good = make(
            "good.whl",
            &[("p/bin/tool", b"hello")],
            &format!("p/bin/tool,sha256={h},5\np-1.dist-info/RECORD,,\n"),
        );
        let out = dir.join("tree");
        unpack_all(&w, &good, &out).unwrap();
        let tool = out.join("p/bin/tool");
        assert_eq!(fs::read(&tool).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let bad = make(
            "bad.whl",
            &[("p/bin/tool", b"HELLO")],
            &format!("p/bin/tool,sha256={h},5\np-1.dist-info/RECORD,,\n"),
        );
        let e = unpack_all(&w, &bad, &dir.join("t2")).unwrap_err();
        assert!(e.contains("p/bin/tool") && e.contains("refusing"), "{e}");
        assert!(!dir.join("t2/p/bin/tool").exists());
        let unlisted = make("u.whl", &[("p/x", b"hello")], "p-1.dist-info/RECORD,,\n");
        let e = unpack_all(&w, &unlisted, &dir.join("t3")).unwrap_err();
        assert!(e.contains("not listed in RECORD"), "{e}");
        let lacking = make(
            "l.whl",
            &[],
            &format!("p/gone,sha256={h},5\np-1.dist-info/RECORD,,\n"),
        );
        let e = unpack_all(&w, &lacking, &dir.join("t4")).unwrap_err();
        assert!(e.contains("p/gone"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
