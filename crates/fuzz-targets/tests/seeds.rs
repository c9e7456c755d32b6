//! Writes the generated seed inputs of `fuzz/corpus` (valid messages,
//! tokenizer and shards that the fuzzer starts mutating from). Run once by
//! hand: `cargo test -p meshtrain-fuzz-targets --test seeds -- --ignored`.

use std::path::{Path, PathBuf};

use cluster::proto::*;
use prost::Message;

fn corpus(target: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn call(method: u8, msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![method];
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_seeds() {
    let member = Some(Member {
        process_id: 0,
        incarnation: 1,
    });
    let calls: Vec<(&str, Vec<u8>)> = vec![
        (
            "register",
            call(
                0,
                &RegisterRequest {
                    protocol_version: 1,
                    host: "h".into(),
                    devices: 1,
                    backend: "cpu".into(),
                    software_version: cluster::fuzz::FUZZ_VERSION.into(),
                    config_digest: String::new(),
                },
            ),
        ),
        (
            "heartbeat",
            call(
                1,
                &HeartbeatRequest {
                    member,
                    generation: 0,
                },
            ),
        ),
        (
            "barrier",
            call(
                2,
                &BarrierRequest {
                    member,
                    generation: 0,
                    name: "start-0".into(),
                    timeout_ms: 1,
                },
            ),
        ),
        (
            "kv",
            [
                call(
                    3,
                    &KvPutRequest {
                        key: "k".into(),
                        value: vec![1, 2, 3].into(),
                        allow_overwrite: false,
                    },
                ),
                call(
                    4,
                    &KvGetRequest {
                        key: "k".into(),
                        timeout_ms: 1,
                    },
                ),
                call(5, &KvTryGetRequest { key: "k".into() }),
                call(6, &KvDeleteRequest { key: "k".into() }),
            ]
            .concat(),
        ),
        (
            "metrics",
            call(
                7,
                &ReportMetricsRequest {
                    member,
                    step: 3,
                    json: "{\"loss\": 1.5}".into(),
                },
            ),
        ),
        (
            "checkpoint",
            call(
                8,
                &CommitCheckpointRequest {
                    member,
                    generation: 0,
                    step: 2,
                    ok: true,
                    error: String::new(),
                    timeout_ms: 1,
                },
            ),
        ),
        ("leave", call(9, &LeaveRequest { member })),
        (
            "chunk",
            call(
                10,
                &AllReduceChunk {
                    header: Some(AllReduceHeader {
                        member,
                        generation: 0,
                        step: 1,
                        dtype: DType::DtypeF32 as i32,
                        len: 2,
                        timeout_ms: 1,
                    }),
                    data: vec![0u8; 8].into(),
                },
            ),
        ),
    ];
    for (name, bytes) in calls {
        std::fs::write(corpus("rpc").join(format!("seed-{name}")), bytes).unwrap();
    }

    // A tokenizer trained on a few lines.
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog 12 + 30 = 42\n".repeat(20),
    )
    .unwrap();
    let tok_path = tmp.path().join("tokenizer.json");
    let tok = data::train_bpe(&[text], 300, &tok_path).unwrap();
    std::fs::copy(&tok_path, corpus("tokenizer").join("seed-bpe.json")).unwrap();

    // Shards, plain and masked, each as an archive of the directory.
    for masked in [false, true] {
        let dir = tmp.path().join(format!("shards-{masked}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = data::shard::shard_file_name(0);
        let mut w = if masked {
            data::shard::ShardWriter::create_masked(&dir.join(&file)).unwrap()
        } else {
            data::shard::ShardWriter::create(&dir.join(&file)).unwrap()
        };
        for d in 0..3u32 {
            let doc: Vec<u32> = (0..5 + d).map(|i| i + 2).collect();
            if masked {
                let mask: Vec<u8> = (0..doc.len()).map(|i| (i % 2) as u8).collect();
                w.push_masked(&doc, &mask).unwrap();
            } else {
                w.push(&doc).unwrap();
            }
        }
        let info = w.finish().unwrap();
        let m = data::shard::Manifest {
            format: "meshtrain-shards".into(),
            version: if masked { 2 } else { 1 },
            tokenizer: "seed".into(),
            vocab_size: tok.vocab_size(),
            bos_id: tok.bos_id(),
            eos_id: tok.eos_id(),
            pad_id: tok.pad_id(),
            documents: info.documents,
            tokens: info.tokens,
            shards: vec![info],
            loss_mask: masked,
        };
        m.write(&dir).unwrap();
        let archive = archive_of(&dir);
        std::fs::write(
            corpus("shards").join(format!("seed-{}", if masked { "masked" } else { "plain" })),
            archive,
        )
        .unwrap();
    }
}

/// The flat directory `dir` in the targets' archive format.
pub fn archive_of(dir: &Path) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    fuzz_targets::pack(&refs)
}
