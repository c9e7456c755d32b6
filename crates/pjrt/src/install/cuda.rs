//! The NVIDIA libraries a CUDA plugin loads, where its install tree holds
//! them, and loading them before the plugin.
//!
//! The CUDA plugin links only the C runtime (`DT_NEEDED`: libc, libm,
//! libdl, librt, libpthread, libstdc++, libgcc_s) and `dlopen`s every CUDA
//! library by soname ([`dlopened`]). Its `DT_RPATH` names
//! `$ORIGIN/../../nvidia/{cublas,cudnn,cuda_runtime,...}/lib` (CUDA 12) or
//! `$ORIGIN/../../nvidia/{cu13,cudnn,nccl}/lib` (CUDA 13), the layout of
//! the NVIDIA wheels in a Python `site-packages`, which meshtrain's install
//! tree reproduces. Some libraries are missing from that `RPATH`
//! (cuSOLVER, NVRTC, NVSHMEM on CUDA 12), and some NVIDIA libraries need
//! others from sibling wheels that their own `RUNPATH` does not name, so,
//! as JAX's plugin loader does, [`preload`] opens every library the plugin
//! and its libraries need, dependencies first, by full path; the plugin's
//! later `dlopen` of a soname then finds the loaded copy. Only the driver
//! ([`DRIVER`]) is left to the system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf;
use crate::{Error, Result};

/// Sonames the CUDA 12 plugin opens at run time (XLA's `dso_loader`: the
/// names `cudart`, `cublas`, `cublasLt`, `cufft`, `cusolver`, `cusparse`,
/// `cupti`, `nvJitLink`, `nvrtc`, `cudnn`, `nccl` in the plugin with
/// CUDA 12's library versions; NVSHMEM with
/// `--xla_gpu_experimental_enable_nvshmem`), the driver excepted.
pub const CUDA12_DLOPEN: &[&str] = &[
    "libcudart.so.12",
    "libcublasLt.so.12",
    "libcublas.so.12",
    "libcufft.so.11",
    "libcusolver.so.11",
    "libcusparse.so.12",
    "libcupti.so.12",
    "libnvJitLink.so.12",
    "libnvrtc.so.12",
    "libcudnn.so.9",
    "libnccl.so.2",
    "libnvshmem_host.so.3",
];

/// Sonames the CUDA 13 plugin opens at run time, the driver excepted.
pub const CUDA13_DLOPEN: &[&str] = &[
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcufft.so.12",
    "libcusolver.so.12",
    "libcusparse.so.12",
    "libcupti.so.13",
    "libnvJitLink.so.13",
    "libnvrtc.so.13",
    "libcudnn.so.9",
    "libnccl.so.2",
    "libnvshmem_host.so.3",
];

/// The NVIDIA driver's libraries: the only ones a CUDA install leaves to
/// the system (`libcuda.so.1`; NVML is opened by NCCL when present).
pub const DRIVER: &[&str] = &["libcuda.so.1", "libnvidia-ml.so.1"];

/// Libraries the system provides: the C and C++ runtime every glibc Linux
/// system has (the wheels are `manylinux_2_27`: glibc 2.27 or newer; the
/// plugin itself links libstdc++ and libgcc_s), and zlib, which cuDNN's
/// sub-libraries link (`libz.so.1`, in every mainstream distribution and
/// CUDA base image; no NVIDIA wheel ships it).
pub const SYSTEM: &[&str] = &[
    "libz.so.1",
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libutil.so.1",
];

/// Libraries that a library of the install opens at run time from its own
/// directory, by file-name prefix: cuDNN's sub-libraries (`libcudnn.so.9`
/// loads `libcudnn_graph.so.9`, `libcudnn_ops.so.9`, ...), NVRTC's builtins,
/// and NVSHMEM's default (unique-id) bootstrap. NVSHMEM's network transports
/// and its MPI/PMIx/OpenSHMEM bootstraps need the host's InfiniBand, UCX,
/// libfabric or MPI stack and are left out (NVSHMEM is off unless
/// `--xla_gpu_experimental_enable_nvshmem`).
pub const COMPANIONS: &[(&str, &str)] = &[
    ("libcudnn.so.9", "libcudnn_"),
    ("libnvrtc.so.12", "libnvrtc-builtins"),
    ("libnvrtc.so.13", "libnvrtc-builtins"),
    ("libnvshmem_host.so.3", "nvshmem_bootstrap_uid"),
];

/// The NVIDIA driver these installs need at least: CUDA 12.x libraries run
/// on any R525 driver (minor-version compatibility; XLA compiles with the
/// installed ptxas, so no driver JIT of newer PTX is needed); CUDA 13 needs
/// R580.
pub fn min_driver(cuda_major: u32) -> &'static str {
    if cuda_major >= 13 {
        "580.65.06"
    } else {
        "525.60.13"
    }
}

/// The CUDA major version of a plugin at `.../xla_cuda12/...` or
/// `.../xla_cuda13/...`.
pub fn plugin_major(plugin: &Path) -> Option<u32> {
    let dir = plugin.parent()?.file_name()?.to_str()?;
    dir.strip_prefix("xla_cuda")?.parse().ok()
}

/// [`CUDA12_DLOPEN`] or [`CUDA13_DLOPEN`].
pub fn dlopened(cuda_major: u32) -> &'static [&'static str] {
    if cuda_major >= 13 {
        CUDA13_DLOPEN
    } else {
        CUDA12_DLOPEN
    }
}

/// The root of the `site-packages`-like tree a CUDA plugin sits in (the
/// directory holding `nvidia/`), as its `RPATH` looks for it:
/// `$ORIGIN/../../nvidia` or `$ORIGIN/../nvidia`.
pub fn tree_root(plugin: &Path) -> Option<PathBuf> {
    let origin = plugin.parent()?;
    [origin.join("../.."), origin.join("..")]
        .into_iter()
        .find(|r| r.join("nvidia").is_dir())
        .and_then(|r| r.canonicalize().ok())
}

/// The CUDA toolkit directory of a tree, where XLA finds `bin/ptxas`
/// (compiling its PTX to GPU code) and `nvvm/libdevice/libdevice.10.bc`:
/// the plugin looks in `$ORIGIN/../../nvidia/cuda_nvcc` (CUDA 12, the
/// nvidia-cuda-nvcc-cu12 wheel) or `$ORIGIN/../../nvidia/cu13` (CUDA 13).
pub fn toolkit_dir(root: &Path, cuda_major: u32) -> PathBuf {
    root.join("nvidia").join(if cuda_major >= 13 {
        "cu13"
    } else {
        "cuda_nvcc"
    })
}

/// The library directories of a tree: `nvidia/*/lib`, sorted.
pub fn library_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("nvidia"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("lib")))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// How a needed library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// In the tree, through the `RUNPATH`/`RPATH` of the object needing it.
    Runpath(PathBuf),
    /// In the tree, only through [`preload`] (no `RUNPATH` of the object
    /// needing it names its directory).
    Preloaded(PathBuf),
    /// Outside the tree, through a `RUNPATH`/`RPATH` (not allowed).
    Outside(PathBuf),
    /// A C runtime library ([`SYSTEM`]).
    System,
    /// A driver library ([`DRIVER`]).
    Driver,
    /// Nowhere.
    Missing,
}

/// Where every library a CUDA plugin needs comes from.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The tree's root.
    pub root: PathBuf,
    /// Each needed soname, with how it was found and what needs it
    /// (`plugin`, `plugin (dlopen)` or a library's soname).
    pub needs: BTreeMap<String, (Found, BTreeSet<String>)>,
    /// The libraries to open before the plugin, dependencies first.
    pub preload: Vec<PathBuf>,
}

impl Resolution {
    /// Needed sonames that resolve nowhere, or outside the tree, with what
    /// needs them (the driver excepted).
    pub fn problems(&self) -> Vec<String> {
        self.needs
            .iter()
            .filter_map(|(name, (found, by))| {
                let by = by.iter().cloned().collect::<Vec<_>>().join(", ");
                match found {
                    Found::Missing => Some(format!("{name} (needed by {by}) is not in the tree")),
                    Found::Outside(p) => Some(format!(
                        "{name} (needed by {by}) resolves outside the tree, to {}",
                        p.display()
                    )),
                    _ => None,
                }
            })
            .collect()
    }
}

/// Resolves every library the CUDA plugin at `plugin` needs (its
/// `DT_NEEDED`, the sonames it `dlopen`s, and theirs, transitively) inside
/// its tree, as the dynamic loader would after [`preload`].
pub fn resolve(plugin: &Path, cuda_major: u32) -> Result<Resolution> {
    let root = tree_root(plugin).ok_or_else(|| {
        Error::invalid(
            "CUDA plugin",
            format!(
                "{}: no nvidia/ directory at $ORIGIN/../.. or $ORIGIN/.. (not an install tree)",
                plugin.display()
            ),
        )
    })?;
    let tree_dirs = library_dirs(&root);
    let plugin_dyn = elf::read_dynamic(plugin)?;
    // invariant: a plugin path is a file inside a directory.
    let origin = plugin.parent().expect("a file has a parent");
    let plugin_dirs = plugin_dyn.search_dirs(origin);
    let mut needs: BTreeMap<String, (Found, BTreeSet<String>)> = BTreeMap::new();
    // (soname, needed by, the needing object's search dirs)
    let mut queue: Vec<(String, String, Vec<PathBuf>)> = Vec::new();
    for n in &plugin_dyn.needed {
        queue.push((n.clone(), "plugin".into(), plugin_dirs.clone()));
    }
    for n in dlopened(cuda_major) {
        queue.push((n.to_string(), "plugin (dlopen)".into(), plugin_dirs.clone()));
    }
    let mut deps: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut roots = Vec::new();
    while let Some((name, by, dirs)) = queue.pop() {
        if let Some((_, who)) = needs.get_mut(&name) {
            who.insert(by);
            continue;
        }
        if by == "plugin (dlopen)" {
            roots.push(name.clone());
        }
        let found = find(&name, &dirs, &tree_dirs, &root);
        if let Found::Runpath(p) | Found::Preloaded(p) = &found {
            for (lib, prefix) in COMPANIONS {
                if *lib == name {
                    // invariant: a found library path is a file inside a directory.
                    let dir = p.parent().expect("a file has a parent").to_path_buf();
                    for c in companions(&dir, prefix)? {
                        queue.push((c, format!("{name} (dlopen)"), vec![dir.clone()]));
                    }
                }
            }
            let d = elf::read_dynamic(p)?;
            // invariant: a found library path is a file inside a directory.
            let own = d.search_dirs(p.parent().expect("a file has a parent"));
            for n in &d.needed {
                queue.push((n.clone(), name.clone(), own.clone()));
            }
            deps.insert(p.clone(), d.needed.clone());
        }
        needs.insert(name, (found, BTreeSet::from([by])));
    }
    // Dependencies first: a depth-first walk from the dlopened sonames.
    let path_of = |n: &str| match needs.get(n) {
        Some((Found::Runpath(p) | Found::Preloaded(p), _)) => Some(p.clone()),
        _ => None,
    };
    let mut preload = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        p: PathBuf,
        deps: &BTreeMap<PathBuf, Vec<String>>,
        path_of: &dyn Fn(&str) -> Option<PathBuf>,
        seen: &mut BTreeSet<PathBuf>,
        out: &mut Vec<PathBuf>,
    ) {
        if !seen.insert(p.clone()) {
            return;
        }
        for n in deps.get(&p).into_iter().flatten() {
            if let Some(q) = path_of(n) {
                visit(q, deps, path_of, seen, out);
            }
        }
        out.push(p);
    }
    roots.sort_by_key(|n| dlopened(cuda_major).iter().position(|d| d == n));
    for n in &roots {
        if let Some(p) = path_of(n) {
            visit(p, &deps, &path_of, &mut seen, &mut preload);
        }
    }
    Ok(Resolution {
        root,
        needs,
        preload,
    })
}

/// Files of `dir` whose names start with `prefix` and hold `.so`.
fn companions(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("reading", dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.contains(".so"))
        .collect();
    out.sort();
    Ok(out)
}

fn find(name: &str, dirs: &[PathBuf], tree_dirs: &[PathBuf], root: &Path) -> Found {
    if SYSTEM.contains(&name) {
        return Found::System;
    }
    if DRIVER.contains(&name) {
        return Found::Driver;
    }
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            let p = p.canonicalize().unwrap_or(p);
            return if p.starts_with(root) {
                Found::Runpath(p)
            } else {
                Found::Outside(p)
            };
        }
    }
    for d in tree_dirs {
        let p = d.join(name);
        if p.is_file() {
            return Found::Preloaded(p.canonicalize().unwrap_or(p));
        }
    }
    Found::Missing
}

/// Opens, dependencies first, every NVIDIA library of the tree the CUDA
/// plugin at `plugin` needs (a no-op for a plugin outside such a tree, which
/// then relies on the system's library path). The libraries stay loaded.
pub fn preload(plugin: &Path) -> Result<()> {
    let Some(major) = plugin_major(plugin) else {
        return Ok(());
    };
    if tree_root(plugin).is_none() {
        return Ok(());
    }
    let r = resolve(plugin, major)?;
    for lib in &r.preload {
        // SAFETY: loading a library runs its initialisers; these are the
        // NVIDIA runtime libraries the plugin itself would load.
        let l = unsafe {
            libloading::os::unix::Library::open(
                Some(lib),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
            )
        }
        .map_err(|e| Error::Load {
            path: lib.clone(),
            message: format!("preloading the CUDA plugin's libraries: {e}"),
        })?;
        std::mem::forget(l); // loaded for the life of the process, as the plugin is
    }
    Ok(())
}

/// Why the NVIDIA driver cannot be used, if it cannot: `libcuda.so.1` does
/// not load.
pub fn driver_problem(cuda_major: u32) -> Option<String> {
    // SAFETY: opening the driver library runs its initialisers, as the
    // plugin's own dlopen of it would.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(l) => {
            std::mem::forget(l);
            None
        }
        Err(e) => Some(format!(
            "no NVIDIA driver: libcuda.so.1 cannot be loaded ({e}). meshtrain's CUDA {cuda_major} \
             install holds every other library; install an NVIDIA driver {} or newer",
            min_driver(cuda_major)
        )),
    }
}
