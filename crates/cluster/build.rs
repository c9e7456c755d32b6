//! Generates the gRPC code for `proto/meshtrain/cluster.proto` with the
//! `protoc` shipped by `protoc-bin-vendored`, so nothing needs installing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("meshtrain/cluster.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure()
        // Payloads become `bytes::Bytes`, so chunks are sliced, not copied.
        .bytes(".meshtrain.cluster.v1")
        .compile_protos(&[file], &[root])?;
    Ok(())
}
