//! The PJRT profiler extension: the CPU plugin has none (and says which
//! extensions it has); libtpu has one, whose session hands back a
//! well-formed serialized XSpace even on a machine without TPUs.

use pjrt::{Plugin, Profiler};

/// `PJRT_Extension_Type_Profiler`.
const PROFILER: u32 = 1;

#[test]
fn the_cpu_plugin_has_no_profiler_extension() {
    let path = pjrt::install::resolve(pjrt::install::Backend::Cpu, None).unwrap();
    let plugin = Plugin::load(path).unwrap();
    let types = plugin.extension_types();
    assert!(!types.is_empty(), "the CPU plugin chains extensions");
    assert!(!types.contains(&PROFILER), "{types:?}");
    assert!(!plugin.has_profiler());
    assert!(Profiler::start(&plugin).unwrap().is_none());
}

#[test]
fn libtpu_profiles_a_session_into_an_xspace() {
    let plugin = match pjrt::install::resolve(pjrt::install::Backend::Tpu, None) {
        Ok(path) => Plugin::load(path).unwrap(),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED (fails under CI=true): libtpu could not be installed: {e}");
            return;
        }
        Err(e) => panic!("libtpu could not be installed: {e}"),
    };
    assert!(plugin.extension_types().contains(&PROFILER));
    assert!(plugin.has_profiler());
    let session = Profiler::start(&plugin)
        .unwrap()
        .expect("libtpu has a profiler");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let xspace = session.stop().unwrap();
    // XSpace: field 1 (planes) and 4 (hostnames) are length-delimited (key
    // bytes 0x0a and 0x22); an empty space is empty bytes.
    assert!(
        xspace.is_empty() || [0x0a, 0x12, 0x1a, 0x22].contains(&xspace[0]),
        "{:02x?}",
        &xspace[..xspace.len().min(16)]
    );
    eprintln!("libtpu XSpace: {} bytes", xspace.len());
}
