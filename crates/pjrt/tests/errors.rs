//! Every way a plugin could kill the process is refused in Rust first, and
//! every plugin error arrives as a Rust error with the plugin's message.

use pjrt::{Client, CompileOptions, Error, OptionValue, Plugin};

fn plugin() -> std::sync::Arc<Plugin> {
    let path = pjrt::install::resolve(pjrt::install::Backend::Cpu, None).unwrap();
    Plugin::load(path).unwrap()
}

#[test]
fn plugin_reports_a_supported_api_version() {
    let p = plugin();
    let (major, minor) = p.api_version();
    assert_eq!(major, 0);
    assert!(minor >= pjrt::HEADER_API_VERSION.1, "{minor}");
}

#[test]
fn wrongly_typed_option_is_refused_before_the_plugin_sees_it() {
    let err = Client::new(
        &plugin(),
        &[("cpu_device_count", OptionValue::Str("8".into()))],
    )
    .unwrap_err();
    assert!(matches!(err, Error::OptionType { .. }), "{err}");
    assert!(err.to_string().contains("cpu_device_count"), "{err}");
    let err = Client::new(&plugin(), &[("cpu_device_count", OptionValue::Int(0))]).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn unknown_option_is_the_plugins_error_with_its_message() {
    let err = Client::new(&plugin(), &[("no_such_option", OptionValue::Int(1))]).unwrap_err();
    match err {
        Error::Pjrt { call, message, .. } => {
            assert_eq!(call, "PJRT_Client_Create");
            assert!(
                message.contains("no_such_option") || message.contains("Unexpected option"),
                "{message}"
            );
        }
        other => panic!("expected a PJRT error, got {other}"),
    }
}

#[test]
fn malformed_program_is_a_compile_error_not_a_crash() {
    let c = pjrt::cpu_client(1).unwrap();
    let err = c
        .compile(
            "func.func @main( this is not mlir",
            &CompileOptions::single(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Pjrt {
                call: "PJRT_Client_Compile",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_compile_options_are_refused_before_compiling() {
    let c = pjrt::cpu_client(4).unwrap();
    let mlir = "func.func public @main(%a: tensor<f32>) -> tensor<f32> { return %a : tensor<f32> }";
    let mut dup = CompileOptions::spmd(2);
    dup.device_assignment = Some(vec![vec![1, 1]]);
    assert!(
        c.compile(mlir, &dup)
            .unwrap_err()
            .to_string()
            .contains("appears twice")
    );
    let zero = CompileOptions {
        num_replicas: 0,
        ..CompileOptions::single()
    };
    assert!(
        c.compile(mlir, &zero)
            .unwrap_err()
            .to_string()
            .contains("at least 1")
    );
    assert!(
        c.compile(mlir, &CompileOptions::spmd(16))
            .unwrap_err()
            .to_string()
            .contains("the client has 4")
    );
}

#[test]
fn transfer_and_execute_misuse_gives_clear_errors() {
    let c = pjrt::cpu_client(2).unwrap();
    let err = c
        .buffer_from_host(&[1.0f32, 2.0, 3.0], &[2, 2], 0)
        .unwrap_err();
    assert!(err.to_string().contains("[2, 2]"), "{err}");
    let err = c.buffer_from_host(&[1.0f32], &[1], 5).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let b = c.buffer_from_host(&[1i32, 2], &[2], 0).unwrap();
    let err = b.to_host::<f32>().unwrap_err();
    assert!(err.to_string().contains("S32"), "{err}");
    let mlir =
        "func.func public @main(%a: tensor<2xi32>) -> tensor<2xi32> { return %a : tensor<2xi32> }";
    let exe = c.compile(mlir, &CompileOptions::single()).unwrap();
    let err = exe.execute(&[vec![&b], vec![&b]]).unwrap_err();
    assert!(err.to_string().contains("runs on 1 devices"), "{err}");
    let other = pjrt::cpu_client(1).unwrap();
    let foreign = other.buffer_from_host(&[1i32, 2], &[2], 0).unwrap();
    let err = exe.execute(&[vec![&foreign]]).unwrap_err();
    assert!(err.to_string().contains("another client"), "{err}");
    // The plugin itself would run this and read a wrong buffer: refused here.
    let wrong = c.buffer_from_host(&[1.0f32, 2.0], &[2], 0).unwrap();
    let err = exe.execute(&[vec![&wrong]]).unwrap_err();
    assert!(
        err.to_string().contains("argument 0 on device 0 is F32[2]"),
        "{err}"
    );
    let short = c.buffer_from_host(&[1i32], &[1], 0).unwrap();
    let err = exe.execute(&[vec![&short]]).unwrap_err();
    assert!(err.to_string().contains("expects Some(S32)[2]"), "{err}");
    let err = exe.execute(&[vec![&b, &b]]).unwrap_err();
    assert!(err.to_string().contains("takes 1 arguments"), "{err}");
}

#[test]
fn missing_plugin_file_is_an_io_error_naming_it() {
    let err = Plugin::load("/nonexistent/plugin.so").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/plugin.so"), "{err}");
    let err = Plugin::load("/etc/hostname").unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
}
