//! The fuzz targets of meshtrain, one function per input surface, each
//! taking the fuzzer's bytes. `fuzz/` (its own Cargo workspace) runs them
//! under libFuzzer with coverage (`scripts/fuzz.sh TARGET SECONDS`); this
//! crate's tests replay the committed corpus under `fuzz/corpus/TARGET/`
//! (every crash found included) with a plain `cargo test`.
//!
//! A target passes an input when the code under test returns, `Ok` or a
//! typed error: a panic, an abort, a hang or an allocation far beyond the
//! input's size is a finding. Each returns whether the input was accepted
//! all the way (the valid seeds must be, or the target tests nothing).
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// A target: the fuzzer's bytes in, whether they were accepted out.
pub type Target = fn(&[u8]) -> bool;

/// Every target, by the name used in `fuzz/` and `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("hf_config", hf_config),
    ("safetensors", safetensors),
    ("checkpoint", checkpoint),
    ("tokens", tokens),
    ("chat", chat),
    ("shards", shards),
    ("tokenizer", tokenizer),
    ("rpc", rpc),
];

/// A TOML job config, then after a line `---` one `--set KEY=VALUE`
/// override per line: loaded, validated, and on success written back and
/// loaded again.
pub fn config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (toml, sets) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    match train::TrainConfig::from_toml(toml, "fuzz.toml", &sets) {
        Ok(cfg) => train::TrainConfig::from_toml(&cfg.to_toml(), "written back", &[]).is_ok(),
        Err(_) => false,
    }
}

/// A Hugging Face `config.json`.
pub fn hf_config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    gemma::GemmaConfig::from_hf_json(&text, Path::new("config.json")).is_ok()
}

/// A tiny model's `config.json` (the shapes `safetensors` inputs are
/// checked against): the golden `multi_query` model of `crates/gemma`.
const TINY_HF_CONFIG: &str = include_str!("../../gemma/tests/golden/multi_query/model/config.json");

/// A `model.safetensors` next to a tiny model's `config.json`, loaded as a
/// Hugging Face checkpoint: headers that lie about offsets, dtypes or
/// shapes must be errors.
pub fn safetensors(data: &[u8]) -> bool {
    let dir = scratch("safetensors");
    let files = [
        ("config.json", TINY_HF_CONFIG.as_bytes()),
        ("model.safetensors", data),
    ];
    write_files(&dir, &files) && gemma::hf::load(&dir).is_ok()
}

/// A checkpoint directory written from an archive (see [`unpack`]),
/// opened and verified, then every tensor and the config read. An archive
/// without a `COMMITTED` marker has its checksums made right first (each
/// listed file's size and sha256 in the manifest, then the marker), so
/// that mutations reach past the integrity checks into the manifest's
/// tensors, pieces and shapes.
pub fn checkpoint(data: &[u8]) -> bool {
    let dir = scratch("checkpoint").join("step_4");
    let files = unpack(data);
    let mut files: Vec<(String, Vec<u8>)> =
        files.into_iter().map(|(n, b)| (n, b.to_vec())).collect();
    if !files.iter().any(|(n, _)| n == "COMMITTED") {
        fix_checksums(&mut files);
    }
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    if !write_files(&dir, &files) {
        return false;
    }
    let Ok(c) = train::checkpoint::Checkpoint::open(&dir) else {
        return false;
    };
    let mut ok = c.config().is_ok();
    let names: Vec<String> = c.manifest.tensors.iter().map(|t| t.name.clone()).collect();
    for name in names {
        ok &= c.tensor(&name).is_ok();
    }
    ok
}

/// Sets each listed file's `bytes` and `sha256` in `manifest.json` to the
/// archive's, and adds the `COMMITTED` marker of the result.
fn fix_checksums(files: &mut Vec<(String, Vec<u8>)>) {
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| -> String {
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let Some(i) = files.iter().position(|(n, _)| n == "manifest.json") else {
        return;
    };
    let Ok(mut m) = serde_json::from_slice::<serde_json::Value>(&files[i].1) else {
        return;
    };
    if let Some(list) = m.get_mut("files").and_then(|f| f.as_array_mut()) {
        for f in list {
            let Some(path) = f.get("path").and_then(|p| p.as_str()).map(str::to_string) else {
                continue;
            };
            if let Some((_, bytes)) = files.iter().find(|(n, _)| *n == path) {
                f["bytes"] = serde_json::json!(bytes.len());
                f["sha256"] = serde_json::json!(hex(bytes));
            }
        }
    }
    let Ok(text) = serde_json::to_vec_pretty(&m) else {
        return;
    };
    files.push(("COMMITTED".into(), hex(&text).into_bytes()));
    files[i].1 = text;
}

/// A `tokens` data file, as JSON and as JSONL (with and without loss
/// masks), rows of at most 16 tokens.
pub fn tokens(data: &[u8]) -> bool {
    let dir = scratch("tokens");
    let mut ok = false;
    for name in ["rows.json", "rows.jsonl"] {
        ok |= write_files(&dir, &[(name, data)])
            && data::loader::read_token_rows_with_mask(&dir.join(name), 16).is_ok();
    }
    ok
}

/// Chat data: one conversation (JSON) per line, parsed and rendered in the
/// Gemma chat format.
pub fn chat(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut ok = true;
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Ok(messages) = data::chat::parse_conversation(&v)
        {
            let _ = data::chat::render(&messages);
            let _ = data::chat::render_prompt(&messages);
        } else {
            ok = false;
        }
    }
    ok
}

/// A shard directory written from an archive (see [`unpack`]): its
/// manifest read, every shard it lists opened and verified, every
/// document read.
pub fn shards(data: &[u8]) -> bool {
    let dir = scratch("shards");
    let files = unpack(data);
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    if !write_files(&dir, &files) {
        return false;
    }
    let Ok(m) = data::shard::Manifest::read(&dir) else {
        return false;
    };
    let mut ok = true;
    for s in &m.shards {
        // The harness opens only files of its own directory.
        if s.file.contains('/') || s.file.contains("..") {
            ok = false;
            continue;
        }
        let Ok(shard) = data::shard::Shard::open(&dir.join(&s.file)) else {
            ok = false;
            continue;
        };
        if shard.verify().is_err() {
            ok = false;
            continue;
        }
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for i in 0..shard.documents().min(1 << 16) {
            if shard.masked() {
                shard.read_doc_masked(i, &mut ids, &mut mask);
            } else {
                shard.read_doc(i, &mut ids);
            }
        }
    }
    ok
}

/// A `tokenizer.json`, loaded, then used to encode and decode.
pub fn tokenizer(data: &[u8]) -> bool {
    let dir = scratch("tokenizer");
    if !write_files(&dir, &[("tokenizer.json", data)]) {
        return false;
    }
    if let Ok(t) = data::Tokenizer::from_file(&dir.join("tokenizer.json"))
        && let Ok(ids) = t.encode("Hello, world! <start_of_turn>user\n12 + 30 =")
    {
        let _ = t.decode(&[0, 1, 2, u32::MAX]);
        return t.decode(&ids).is_ok();
    }
    false
}

/// Coordinator calls, decoded and handled (see
/// [`cluster::fuzz::handle_calls`]), and the bytes decoded as every message.
pub fn rpc(data: &[u8]) -> bool {
    cluster::fuzz::decode_messages(data);
    cluster::fuzz::handle_calls(data)
}

/// A directory for one target's files, emptied.
fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshtrain-fuzz-{}-{target}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Writes `files` (relative names, see [`unpack`]) into a fresh `dir`;
/// false if the file system refused (not a finding).
fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> bool {
    files.iter().all(|(name, bytes)| {
        let path = dir.join(name);
        path.parent()
            .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
            && std::fs::write(&path, bytes).is_ok()
    })
}

/// A small archive: files separated by lines `@@@ NAME`. Names are
/// relative paths of letters, digits, `.`, `_`, `-` and `/`, at most 64
/// bytes, without empty, `.` or `..` components; others are skipped.
pub fn unpack(data: &[u8]) -> Vec<(String, &[u8])> {
    const SEP: &[u8] = b"@@@ ";
    let mut out = Vec::new();
    let mut rest = data;
    // Everything before the first separator is ignored.
    let Some(start) = find(rest, SEP) else {
        return out;
    };
    rest = &rest[start + SEP.len()..];
    loop {
        let name_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let name = String::from_utf8_lossy(&rest[..name_end]).into_owned();
        rest = &rest[(name_end + 1).min(rest.len())..];
        let (body, next) = match find(rest, b"\n@@@ ") {
            Some(i) => (&rest[..i], Some(&rest[i + 1 + SEP.len()..])),
            None => (rest, None),
        };
        let ok = name.len() <= 64
            && name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if ok {
            out.push((name, body));
        }
        match next {
            Some(n) => rest = n,
            None => return out,
        }
    }
}

/// Packs files into [`unpack`]'s archive format.
pub fn pack(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, bytes)) in files.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(b"@@@ ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(bytes);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
