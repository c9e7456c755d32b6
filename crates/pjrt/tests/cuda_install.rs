//! The CUDA 12 install on a machine without a GPU: `install(Cuda12)` (the
//! plugin and the 13 NVIDIA wheels of its `with-cuda` extra, about 3.3 GB,
//! cached in `$MESHTRAIN_HOME` after the first run) gives a tree in which
//! every library the plugin needs resolves inside the tree, the driver
//! (`libcuda.so.1`) excepted:
//! - by meshtrain's resolver, from the dynamic sections (`DT_NEEDED`,
//!   `DT_RPATH`/`DT_RUNPATH`) of the plugin and each library, plus the
//!   sonames the plugin `dlopen`s, which must cover every NVIDIA library
//!   of the tree named in the plugin's string table;
//! - by the system's dynamic loader, `ld.so --list` on the plugin and on
//!   every library the resolver found;
//! - ptxas from the tree runs, and libdevice is where XLA looks for it;
//! - by loading them: the plugin opens (preloading its libraries) and
//!   initialises; with no driver, creating a client fails with an error
//!   that says so.
//!
//! CUDA 13 (another 2.6 GB) runs the same checks with `-- --ignored`.
//! If the wheels cannot be fetched the tests say SKIPPED and return, except
//! under CI (`CI` set), where that is a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pjrt::install::{self, Backend, cuda};

fn installed(backend: Backend) -> Option<PathBuf> {
    match install::resolve(backend, None) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("the {backend:?} install failed, and CI must run this check: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the {backend:?} install failed: {e}");
            None
        }
    }
}

fn major(backend: Backend) -> u32 {
    if backend == Backend::Cuda13 { 13 } else { 12 }
}

/// The resolver: every need inside the tree, or system/driver.
fn check_resolution(plugin: &Path, backend: Backend) -> cuda::Resolution {
    let m = major(backend);
    assert_eq!(cuda::plugin_major(plugin), Some(m));
    let r = cuda::resolve(plugin, m).unwrap();
    assert!(r.problems().is_empty(), "{:#?}", r.problems());
    // The plugin's own dynamic section: C runtime only, and an RPATH into
    // the tree's nvidia/ directory.
    let d = pjrt::elf::read_dynamic(plugin).unwrap();
    for n in &d.needed {
        assert!(cuda::SYSTEM.contains(&n.as_str()), "plugin needs {n}");
    }
    let origin = plugin.parent().unwrap();
    let in_tree: Vec<_> = d
        .search_dirs(origin)
        .into_iter()
        .filter(|p| p.is_dir() && p.canonicalize().unwrap().starts_with(&r.root))
        .collect();
    assert!(
        in_tree.len() >= 3,
        "RPATH {:?} finds little of the tree",
        d.rpath
    );
    // Every dlopened soname is in the tree, and so are cuDNN's sub-libraries.
    for n in cuda::dlopened(m) {
        match &r.needs[*n].0 {
            cuda::Found::Runpath(p) | cuda::Found::Preloaded(p) => {
                assert!(p.starts_with(&r.root), "{n} at {}", p.display())
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    assert!(
        r.needs
            .keys()
            .filter(|n| n.starts_with("libcudnn_"))
            .count()
            >= 5,
        "{:?}",
        r.needs.keys()
    );
    // The only driver library needed is libcuda.so.1 (cuDNN's runtime
    // compiled engines link it too).
    let drivers: BTreeSet<&str> = r
        .needs
        .iter()
        .filter(|(_, (f, _))| *f == cuda::Found::Driver)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(drivers, BTreeSet::from(["libcuda.so.1"]));
    // Preload order: every library after the tree libraries it needs.
    for (i, p) in r.preload.iter().enumerate() {
        for n in pjrt::elf::read_dynamic(p).unwrap().needed {
            if let Some((cuda::Found::Runpath(q) | cuda::Found::Preloaded(q), _)) = r.needs.get(&n)
            {
                let j = r.preload.iter().position(|x| x == q);
                assert!(j.is_some_and(|j| j < i), "{} before its {n}", p.display());
            }
        }
    }
    r
}

/// Every NVIDIA library of the tree that the plugin names (`cublas`,
/// `nccl`, ... as NUL-terminated strings, the way XLA's DSO loader builds
/// `lib<name>.so.<version>`) is in the dlopen list.
fn check_dlopen_list_covers_plugin_strings(plugin: &Path, r: &cuda::Resolution, m: u32) {
    let mut bases = BTreeSet::new();
    for dir in cuda::library_dirs(&r.root) {
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            if let Some(base) = n.strip_prefix("lib").and_then(|s| s.split(".so").next())
                && n.contains(".so")
            {
                bases.insert(base.to_string());
            }
        }
    }
    let bytes = std::fs::read(plugin).unwrap();
    // `nvvm` is also the directory of libdevice (`<toolkit>/nvvm/libdevice`),
    // which is how the plugin names it; XLA compiles with LLVM's NVPTX
    // backend and loads no libnvvm.
    bases.remove("nvvm");
    let wanted: BTreeSet<&[u8]> = bases.iter().map(|b| b.as_bytes()).collect();
    let named: BTreeSet<String> = bytes
        .split(|b| *b == 0)
        .filter(|s| wanted.contains(s))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert!(named.len() >= 8, "the plugin names only {named:?}");
    for b in named {
        assert!(
            cuda::dlopened(m)
                .iter()
                .any(|d| d.starts_with(&format!("lib{b}.so"))),
            "the plugin names `{b}` but lib{b}.so.* is not in the dlopen list"
        );
    }
}

/// The toolkit files XLA runs and reads: ptxas runs (no GPU needed to
/// print its version) and is the plugin's CUDA release; libdevice is there.
fn check_toolkit(r: &cuda::Resolution, m: u32) {
    let dir = cuda::toolkit_dir(&r.root, m);
    assert!(
        dir.join("nvvm/libdevice/libdevice.10.bc").is_file(),
        "{}",
        dir.display()
    );
    let out = Command::new(dir.join("bin/ptxas"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let release = if m >= 13 {
        "release 13.0"
    } else {
        "release 12.9"
    };
    assert!(text.contains(release), "{text}");
}

/// The same plugin in a tree holding only cuBLAS: the resolver names every
/// other library as missing (the check can fail).
fn check_incomplete_tree_is_refused(plugin: &Path, r: &cuda::Resolution, m: u32) {
    let tmp = std::env::temp_dir().join(format!("meshtrain-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let origin = tmp.join(format!("jax_plugins/xla_cuda{m}"));
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::create_dir_all(tmp.join("nvidia")).unwrap();
    let lib = if m >= 13 { "cu13" } else { "cublas" };
    std::os::unix::fs::symlink(
        r.root.join("nvidia").join(lib),
        tmp.join("nvidia").join(lib),
    )
    .unwrap();
    let fake = origin.join("xla_cuda_plugin.so");
    std::os::unix::fs::symlink(plugin, &fake).unwrap();
    let partial = cuda::resolve(&fake, m).unwrap();
    let problems = partial.problems().join("\n");
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        problems.contains("libcudnn.so.9") && problems.contains("libnccl.so.2"),
        "{problems}"
    );
}

/// The system loader's dry run: `ld.so --list` of the plugin and of every
/// tree library, with the tree's library directories on the search path
/// (as the preloaded libraries are at run time) and, since the driver is
/// the one library the tree does not hold, a placeholder file named
/// `libcuda.so.1` (a copy of the system's `libdl.so.2`; `--list` maps
/// objects, it runs and binds nothing) so that the loader lists the rest.
fn check_loader_dry_run(plugin: &Path, r: &cuda::Resolution) {
    let ld = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-x86-64.so.2"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("the x86-64 dynamic loader");
    let placeholder = std::env::temp_dir().join(format!("meshtrain-driver-{}", std::process::id()));
    std::fs::create_dir_all(&placeholder).unwrap();
    let libdl = Command::new(ld)
        .args(["--list", "/bin/sh"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.split("=> ").nth(1).filter(|_| l.contains("libc.so.6")))
                .map(|p| PathBuf::from(p.split(" (").next().unwrap()))
        })
        .expect("libc.so.6 of /bin/sh");
    std::fs::copy(
        libdl.parent().unwrap().join("libdl.so.2"),
        placeholder.join("libcuda.so.1"),
    )
    .unwrap();
    let mut path: Vec<String> = cuda::library_dirs(&r.root)
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    path.push(placeholder.display().to_string());
    let path = path.join(":");
    let mut objects = vec![plugin.to_path_buf()];
    for (f, _) in r.needs.values() {
        if let cuda::Found::Runpath(p) | cuda::Found::Preloaded(p) = f {
            objects.push(p.clone());
        }
    }
    let mut listed = 0;
    for o in &objects {
        let out = Command::new(ld)
            .args(["--library-path", &path, "--list"])
            .arg(o)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ld.so --list {}:\n{text}",
            o.display()
        );
        for line in text.lines() {
            let Some((name, rest)) = line.trim().split_once(" => ") else {
                continue; // the vdso and the loader itself
            };
            let at = PathBuf::from(rest.split(" (").next().unwrap());
            assert!(
                !rest.contains("not found"),
                "{}: {name} not found",
                o.display()
            );
            let at = at.canonicalize().unwrap_or(at);
            let ok =
                at.starts_with(&r.root) || name == "libcuda.so.1" || cuda::SYSTEM.contains(&name);
            assert!(
                ok,
                "{}: {name} resolves outside the tree, to {}",
                o.display(),
                at.display()
            );
            listed += 1;
        }
    }
    std::fs::remove_dir_all(&placeholder).unwrap();
    assert!(listed > objects.len(), "ld.so listed almost nothing");
}

/// Loads the plugin (preloading the tree's libraries) in a child process,
/// so that its hundreds of MB of libraries leave this test's address space
/// with it; the child is this test binary running `child_load`.
fn check_loads(backend: Backend) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_load", "--nocapture", "--ignored"])
        .env("MESHTRAIN_CHILD_BACKEND", format!("{backend:?}"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CHILD OK"), "{text}");
}

/// Run by `check_loads` only.
#[test]
#[ignore = "run by the cuda12/cuda13 tests in a child process"]
fn child_load() {
    let backend = match std::env::var("MESHTRAIN_CHILD_BACKEND").as_deref() {
        Ok("Cuda12") => Backend::Cuda12,
        Ok("Cuda13") => Backend::Cuda13,
        _ => return,
    };
    let path = install::find_installed(backend).expect("installed by the parent");
    let plugin = pjrt::Plugin::load(&path).expect("the plugin and its libraries load");
    let (maj, min) = plugin.api_version();
    assert!(maj == 0 && min >= pjrt::HEADER_API_VERSION.1, "{maj}.{min}");
    let m = major(backend);
    match (pjrt::Client::new(&plugin, &[]), cuda::driver_problem(m)) {
        (Err(e), Some(_)) => {
            let e = e.to_string();
            eprintln!("client without a driver: {e}");
            assert!(
                e.contains("no NVIDIA driver") && e.contains("libcuda.so.1"),
                "{e}"
            );
        }
        (Ok(c), None) => eprintln!("a driver is here: {} devices", c.devices().len()),
        (Err(e), None) => eprintln!("a driver loads here, but no client: {e}"),
        (Ok(_), Some(why)) => panic!("a client without a driver? {why}"),
    }
    println!("CHILD OK");
}

fn check(backend: Backend) {
    let t = std::time::Instant::now();
    let Some(plugin) = installed(backend) else {
        return;
    };
    eprintln!(
        "{backend:?}: installed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    let r = check_resolution(&plugin, backend);
    check_dlopen_list_covers_plugin_strings(&plugin, &r, major(backend));
    eprintln!(
        "{backend:?}: resolved in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    check_toolkit(&r, major(backend));
    check_incomplete_tree_is_refused(&plugin, &r, major(backend));
    let t = std::time::Instant::now();
    check_loader_dry_run(&plugin, &r);
    eprintln!(
        "{backend:?}: ld.so dry run in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    check_loads(backend);
    eprintln!("{backend:?}: loaded in {:.1} s", t.elapsed().as_secs_f64());
    // A second resolve finds the complete install without fetching.
    assert_eq!(install::find_installed(backend), Some(plugin));
}

#[test]
fn cuda12_install_resolves_inside_its_tree() {
    check(Backend::Cuda12);
}

#[test]
#[ignore = "installs CUDA 13 (2.6 GB): cargo test -p meshtrain-pjrt --test cuda_install -- --ignored"]
fn cuda13_install_resolves_inside_its_tree() {
    check(Backend::Cuda13);
}
