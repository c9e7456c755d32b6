//! How often the PII detector fires on text that holds no personal data: the Shakespeare
//! corpus and the repository's own Rust sources (or the files and directories given), with
//! every hit listed
//! so that each can be judged.
//!
//! ```text
//! cargo run -p meshtrain-data --release --example pii_false_positives -- [PATH...]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let groups: Vec<(String, Vec<PathBuf>)> = if args.is_empty() {
        let mut rs = Vec::new();
        rust_files(&root.join("crates"), &mut rs);
        vec![
            (
                "Shakespeare (configs/data/tinyshakespeare.txt)".into(),
                vec![root.join("configs/data/tinyshakespeare.txt")],
            ),
            ("the repository's Rust sources (crates/**/*.rs)".into(), rs),
        ]
    } else {
        let mut files = Vec::new();
        for a in args {
            if a.is_dir() {
                rust_files(&a, &mut files);
            } else {
                files.push(a);
            }
        }
        vec![("given paths (directories: their *.rs files)".into(), files)]
    };
    for (what, files) in groups {
        let mut bytes = 0usize;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut hits = Vec::new();
        for f in &files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            bytes += text.len();
            for finding in data::pii::scan(&text) {
                *counts.entry(finding.kind.name()).or_default() += 1;
                let line = text[..finding.range.start].matches('\n').count() + 1;
                let shown = f.strip_prefix(&root).unwrap_or(f).display().to_string();
                hits.push(format!(
                    "  {shown}:{line}: {} {:?}",
                    finding.kind.name(),
                    &text[finding.range]
                ));
            }
        }
        println!(
            "{what}: {} files, {:.2} MB, {} findings {counts:?}",
            files.len(),
            bytes as f64 / 1e6,
            hits.len()
        );
        for h in hits {
            println!("{h}");
        }
    }
}
