//! `tokenize`: shards round-trip, bad input is reported with file and line, shards are checked.

mod common;

use data::shard::{Manifest, Shard};
use data::{Error, InputFormat, OnError, TextUnit, TokenizeOptions, tokenize};

fn opts(inputs: Vec<String>, out: &std::path::Path) -> TokenizeOptions {
    TokenizeOptions {
        inputs,
        output: out.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn shards_hold_the_documents_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::smoke_tokenizer();
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let paras: Vec<&str> = text.split("\n\n").take(300).collect();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, paras.join("\n\n")).unwrap();
    let mut o = opts(vec![input.display().to_string()], &dir.path().join("out"));
    o.text_unit = TextUnit::Paragraph;
    o.shard_tokens = 1000; // several shards
    let s = tokenize(&tok, &o, &|_| {}).unwrap();
    assert_eq!(s.documents, 300);
    assert!(s.shards > 2, "{s}");
    assert!(s.issues.is_empty());
    let m = Manifest::read(&o.output).unwrap();
    assert_eq!(m.documents, 300);
    assert_eq!(m.tokens, s.tokens);
    assert_eq!(m.bos_id, 2);
    let mut docs = Vec::new();
    for info in &m.shards {
        let shard = Shard::open(&o.output.join(&info.file)).unwrap();
        shard.verify().unwrap();
        assert_eq!(data::setup::sha256_file(shard.path()).unwrap(), info.sha256);
        for i in 0..shard.documents() {
            let mut ids = Vec::new();
            shard.read_doc(i, &mut ids);
            docs.push(tok.decode(&ids).unwrap());
        }
    }
    let expect: Vec<String> = paras
        .iter()
        .map(|p| p.trim_end_matches('\n').to_string())
        .collect();
    assert_eq!(docs, expect);
    // A second run into the same directory is refused.
    let err = tokenize(&tok, &o, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::smoke_tokenizer();
    let input = common::corpus_path().display().to_string();
    let mut digests = Vec::new();
    for threads in [1, 3] {
        let mut o = opts(vec![input.clone()], &dir.path().join(format!("t{threads}")));
        o.text_unit = TextUnit::Line;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let s = pool.install(|| tokenize(&tok, &o, &|_| {})).unwrap();
        assert!(!s.issues.is_empty()); // blank lines are reported as empty documents
        let m = Manifest::read(&o.output).unwrap();
        digests.push(
            m.shards
                .iter()
                .map(|s| s.sha256.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn bad_jsonl_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::smoke_tokenizer();
    let f = dir.path().join("bad.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"text\": \"good one\"}\n"); // 1
    bytes.extend_from_slice(b"{\"body\": \"no text field\"}\n"); // 2
    bytes.extend_from_slice(b"{\"text\": \"\"}\n"); // 3
    bytes.extend_from_slice(b"{\"text\": \"bad \xff utf8\"}\n"); // 4
    bytes.extend_from_slice(b"{\"text\": 7}\n"); // 5
    bytes.extend_from_slice(b"not json\n"); // 6
    bytes.extend_from_slice(b"{\"text\": \"good two\"}\n"); // 7
    bytes.extend_from_slice(b"{\"text\": \"cut off in the mid"); // 8, truncated
    std::fs::write(&f, &bytes).unwrap();
    let mut o = opts(vec![f.display().to_string()], &dir.path().join("out"));
    o.format = InputFormat::Jsonl;
    let s = tokenize(&tok, &o, &|_| {}).unwrap();
    assert_eq!(s.documents, 2);
    let lines: Vec<u64> = s.issues.iter().map(|i| i.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 8]);
    let msgs: Vec<String> = s.issues.iter().map(|i| i.to_string()).collect();
    let name = f.display().to_string();
    assert!(
        msgs.iter().all(|m| m.starts_with(&format!("{name}:"))),
        "{msgs:?}"
    );
    assert!(msgs[0].contains("missing field \"text\""), "{}", msgs[0]);
    assert!(msgs[1].contains("empty document"), "{}", msgs[1]);
    assert!(msgs[2].contains("invalid UTF-8"), "{}", msgs[2]);
    assert!(msgs[3].contains("expected a string"), "{}", msgs[3]);
    assert!(msgs[4].contains("invalid JSON"), "{}", msgs[4]);
    assert!(msgs[5].contains("truncated"), "{}", msgs[5]);

    // Strict mode refuses at the first one.
    let mut o = opts(vec![f.display().to_string()], &dir.path().join("strict"));
    o.format = InputFormat::Jsonl;
    o.on_error = OnError::Fail;
    let err = tokenize(&tok, &o, &|_| {}).unwrap_err();
    assert!(matches!(err, Error::BadInput { line: 2, .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{name}:2: missing field")),
        "{err}"
    );
}

#[test]
fn bad_text_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::smoke_tokenizer();
    let f = dir.path().join("bad.txt");
    std::fs::write(
        &f,
        b"first paragraph\nstill first\n\nsecond \xc3 broken\n\n\n   \n\nthird\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let mut o = opts(
        vec![f.display().to_string(), empty.display().to_string()],
        &dir.path().join("out"),
    );
    o.text_unit = TextUnit::Paragraph;
    let s = tokenize(&tok, &o, &|_| {}).unwrap();
    assert_eq!(s.documents, 2);
    assert_eq!(s.issues.len(), 2, "{:?}", s.issues);
    assert_eq!(s.issues[0].line, 4);
    assert!(s.issues[0].message.contains("invalid UTF-8"));
    assert_eq!(s.issues[1].file, empty);
    assert!(s.issues[1].message.contains("empty file"));
}

#[test]
fn missing_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let tok = common::smoke_tokenizer();
    let o = opts(
        vec![dir.path().join("nope*.txt").display().to_string()],
        &dir.path().join("o"),
    );
    let err = tokenize(&tok, &o, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("matches no file"), "{err}");
}

#[test]
fn truncated_and_corrupt_shards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 20, 1 << 20);
    let m = Manifest::read(&out).unwrap();
    let path = out.join(&m.shards[0].file);
    let bytes = std::fs::read(&path).unwrap();

    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = Shard::open(&path).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let cfg = data::DataConfig::new(data::DataFormat::Shards, out.to_str().unwrap(), 32, 2);
    let err = data::Loader::new(&cfg, 0, 1, None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    let mut flipped = bytes.clone();
    flipped[20] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(shard.verify().unwrap_err().to_string().contains("checksum"));
    let err = data::Loader::new(&cfg, 0, 1, None).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}
