//! The `MESHTRAIN_DUMP_HLO` debug switch (its own test binary: it sets the
//! process environment).

use hlo::{Builder, TensorType};

#[test]
fn to_mlir_writes_the_module_when_asked() {
    let dir = std::env::temp_dir().join(format!("hlo-dump-env-{}", std::process::id()));
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var("MESHTRAIN_DUMP_HLO", &dir) };
    let mut b = Builder::new("dumped");
    let x = b.parameter("x", TensorType::f32([2]));
    let y = b.exp(x).unwrap();
    let text = b.build(&[y]).unwrap().to_mlir();
    let written = std::fs::read_to_string(dir.join("dumped.mlir")).unwrap();
    assert_eq!(written, text);
    unsafe { std::env::remove_var("MESHTRAIN_DUMP_HLO") };
    std::fs::remove_dir_all(&dir).unwrap();
}
