//! End-to-end tests of the `meshtrain` binary.

use std::process::Command;

fn meshtrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshtrain"))
        .args(args)
        .output()
        .expect("run meshtrain")
}

#[test]
fn devices_json_lists_every_cpu_device() {
    let out = meshtrain(&[
        "devices",
        "--backend",
        "cpu",
        "--device-count",
        "8",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(doc["platform"], "cpu");
    let (major, minor) = doc["api_version"]
        .as_str()
        .unwrap()
        .split_once('.')
        .unwrap();
    assert_eq!(major, "0");
    assert!(minor.parse::<u32>().unwrap() >= 81);
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d["id"], i as i64);
        assert_eq!(d["kind"], "cpu");
        assert_eq!(d["process_index"], 0);
    }
}

#[test]
fn devices_table_is_readable() {
    let out = meshtrain(&["devices", "--device-count", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("platform     cpu") && text.contains("devices      2"),
        "{text}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let out = meshtrain(&["devices", "--backend", "fpga"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown backend `fpga`") && !err.contains("panicked"),
        "{err}"
    );
    let out = meshtrain(&["devices", "--plugin", "/no/such/plugin.so"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/no/such/plugin.so"),
        "{err}"
    );
    let out = meshtrain(&["devices", "--device-count", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at least 1"), "{err}");
}
