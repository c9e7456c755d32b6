//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/`, the crashes
//! found included) through every target: each input must end in `Ok` or a
//! typed error, never a panic. Runs without libFuzzer, in every
//! `cargo test`.

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_committed_input_is_handled_without_a_panic() {
    for (name, target) in fuzz_targets::TARGETS {
        let dir = corpus(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no inputs", dir.display());
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| target(&bytes));
            let Ok(accepted) = r else {
                panic!("{name}: {} panicked", f.display());
            };
            // The valid seeds get through, or the target would test nothing.
            let seed = f
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-");
            assert!(
                !seed || accepted,
                "{name}: seed {} was refused",
                f.display()
            );
        }
    }
}

#[test]
fn the_archive_format_round_trips() {
    let files: [(&str, &[u8]); 2] = [("manifest.json", b"{}"), ("a.bin", b"\x00@@@ x")];
    let packed = fuzz_targets::pack(&files);
    let back = fuzz_targets::unpack(&packed);
    assert_eq!(back.len(), 2);
    assert_eq!((back[0].0.as_str(), back[0].1), files[0]);
    assert_eq!((back[1].0.as_str(), back[1].1), files[1]);
}
