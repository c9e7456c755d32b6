//! `tokenize` filters: planted duplicates, personal data and evaluation overlaps are removed
//! from the shards, and the report counts them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use data::shard::{Manifest, Shard};
use data::{DedupMode, FilterOptions, FilterReport, InputFormat, PiiMode, TokenizeOptions};

/// A small deterministic generator (xorshift*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The distinct words of the smoke corpus.
fn vocabulary() -> Vec<String> {
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let mut words: Vec<String> = text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
        .collect();
    words.sort();
    words.dedup();
    words
}

fn random_doc(rng: &mut Rng, vocab: &[String], words: usize) -> Vec<String> {
    (0..words)
        .map(|_| vocab[rng.below(vocab.len())].clone())
        .collect()
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(path, lines.concat()).unwrap();
}

/// Runs `tokenize` on JSONL documents with `filter`; returns the report and the decoded
/// documents of the shards.
fn run(dir: &Path, docs: &[String], filter: FilterOptions) -> (FilterReport, Vec<String>) {
    let input = dir.join("in.jsonl");
    write_jsonl(&input, docs);
    let out = dir.join(format!("out-{}", rand_name()));
    let opts = TokenizeOptions {
        inputs: vec![input.display().to_string()],
        output: out.clone(),
        format: InputFormat::Jsonl,
        filter,
        ..Default::default()
    };
    let tok = common::smoke_tokenizer();
    let s = data::tokenize(&tok, &opts, &|_| {}).unwrap();
    assert!(s.issues.is_empty(), "{:?}", s.issues);
    let m = Manifest::read(&out).unwrap();
    let mut texts = Vec::new();
    for info in &m.shards {
        let shard = Shard::open(&out.join(&info.file)).unwrap();
        for i in 0..shard.documents() {
            let mut ids = Vec::new();
            shard.read_doc(i, &mut ids);
            texts.push(tok.decode(&ids).unwrap());
        }
    }
    assert_eq!(s.filter.documents_out as usize, texts.len());
    assert_eq!(s.filter.tokens_out, s.tokens);
    (s.filter, texts)
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn planted_duplicates_are_removed_with_high_precision_and_recall() {
    let vocab = vocabulary();
    assert!(vocab.len() > 5000);
    let mut rng = Rng(0x5eed);
    // 500 unique documents, then 100 exact copies (other case and spacing), 100 near copies
    // (1 or 2 words changed in 200-400) and 60 hard negatives (the first third of an original,
    // then new text: Jaccard well under 0.8), in random order after their originals.
    let originals: Vec<Vec<String>> = (0..500)
        .map(|_| {
            let n = 200 + rng.below(200);
            random_doc(&mut rng, &vocab, n)
        })
        .collect();
    let mut docs: Vec<String> = originals.iter().map(|d| d.join(" ")).collect();
    let mut planted: Vec<(String, bool)> = Vec::new(); // (text, is a duplicate)
    for _ in 0..100 {
        let d = &originals[rng.below(originals.len())];
        planted.push((d.join("  ").to_uppercase() + "\n", true));
    }
    for _ in 0..100 {
        let mut d = originals[rng.below(originals.len())].clone();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(d.len());
            d[at] = vocab[rng.below(vocab.len())].clone();
        }
        planted.push((d.join(" "), true));
    }
    for _ in 0..60 {
        let d = &originals[rng.below(originals.len())];
        let mut n = d[..d.len() / 3].to_vec();
        n.extend(random_doc(&mut rng, &vocab, d.len() - d.len() / 3));
        planted.push((n.join(" "), false));
    }
    for i in (1..planted.len()).rev() {
        planted.swap(i, rng.below(i + 1));
    }
    let dup_count = planted.iter().filter(|p| p.1).count();
    docs.extend(planted.iter().map(|p| p.0.clone()));

    let dir = tempfile::tempdir().unwrap();
    let filter = FilterOptions {
        dedup: DedupMode::Near,
        ..Default::default()
    };
    let (report, kept) = run(dir.path(), &docs, filter);
    // Which planted documents were removed: compare the surviving texts.
    let mut survivors: HashMap<&str, usize> = HashMap::new();
    for k in &kept {
        *survivors.entry(k.as_str()).or_default() += 1;
    }
    for o in &docs[..500] {
        assert!(
            survivors.contains_key(o.as_str()),
            "an original was removed"
        );
    }
    let mut removed_dups = 0;
    let mut removed_negatives = 0;
    for (text, dup) in &planted {
        if !survivors.contains_key(text.as_str()) {
            if *dup {
                removed_dups += 1;
            } else {
                removed_negatives += 1;
            }
        }
    }
    let removed = removed_dups + removed_negatives;
    let precision = removed_dups as f64 / removed as f64;
    let recall = removed_dups as f64 / dup_count as f64;
    eprintln!("precision {precision:.3}, recall {recall:.3}, report {report:?}");
    assert!(
        precision >= 0.95 && recall >= 0.95,
        "precision {precision}, recall {recall}"
    );
    assert_eq!(report.exact_duplicates, 100);
    assert_eq!(
        report.exact_duplicates + report.near_duplicates,
        removed as u64
    );
    assert_eq!(report.documents_in, docs.len() as u64);
    assert_eq!(report.documents_out, kept.len() as u64);
    assert!(report.tokens_in > report.tokens_out && report.bytes_in > report.bytes_out);
    assert_eq!(report.dedup_lsh, (16, 8));

    // Exact mode removes only the exact copies.
    let filter = FilterOptions {
        dedup: DedupMode::Exact,
        ..Default::default()
    };
    let (report, _) = run(dir.path(), &docs, filter);
    assert_eq!((report.exact_duplicates, report.near_duplicates), (100, 0));
}

/// Planted personal and sensitive data: `(text, is sensitive)`.
fn planted_pii(rng: &mut Rng) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let names = ["ada", "alan", "grace", "edsger", "barbara", "donald"];
    for i in 0..12 {
        let name = names[i % names.len()];
        out.push((
            format!("{name}.{}@mail{}.example.org", rng.below(1000), i),
            false,
        ));
        let phone = match i % 4 {
            0 => format!("+44 20 7946 {:04}", rng.below(10000)),
            1 => format!("({}) 555-{:04}", 200 + rng.below(700), rng.below(10000)),
            2 => format!("+49 30 {:07}", 1_000_000 + rng.below(9_000_000)),
            _ => format!("{}-555-{:04}", 200 + rng.below(700), rng.below(10000)),
        };
        out.push((phone, false));
        out.push((card(rng), true));
        out.push((
            format!(
                "{:03}-{:02}-{:04}",
                100 + rng.below(500),
                10 + rng.below(89),
                1000 + rng.below(8999)
            ),
            true,
        ));
    }
    out
}

/// A random Visa number in groups of four with a valid Luhn digit.
fn card(rng: &mut Rng) -> String {
    let mut d: Vec<u32> = vec![4];
    d.extend((0..14).map(|_| rng.below(10) as u32));
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 0 {
                let y = 2 * x;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    d.push((10 - sum % 10) % 10);
    let s: String = d.iter().map(|x| char::from(b'0' + *x as u8)).collect();
    format!("{} {} {} {}", &s[..4], &s[4..8], &s[8..12], &s[12..])
}

#[test]
fn planted_personal_data_is_found_and_never_reaches_the_shards() {
    let mut rng = Rng(42);
    let vocab = vocabulary();
    let pii = planted_pii(&mut rng);
    // Each planted item inside its own document of prose; plus clean documents.
    let mut docs = Vec::new();
    for (item, _) in &pii {
        let before = random_doc(&mut rng, &vocab, 20).join(" ");
        let after = random_doc(&mut rng, &vocab, 20).join(" ");
        docs.push(format!("{before}: {item}, {after}."));
    }
    let clean = 40;
    for _ in 0..clean {
        docs.push(random_doc(&mut rng, &vocab, 60).join(" "));
    }
    let sensitive = pii.iter().filter(|p| p.1).count() as u64;
    let personal = pii.len() as u64 - sensitive;
    for item in &pii {
        assert_eq!(
            data::pii::scan(&item.0).len(),
            1,
            "detector misses {:?}",
            item.0
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let with = |mode| FilterOptions {
        pii: Some(mode),
        ..Default::default()
    };
    let (report, kept) = run(dir.path(), &docs, with(PiiMode::Redact));
    assert_eq!(report.pii_personal_docs, personal);
    assert_eq!(report.pii_sensitive_docs, sensitive);
    assert_eq!(report.documents_out, docs.len() as u64);
    assert_eq!(report.pii_findings["email"], 12);
    assert_eq!(report.pii_findings["phone"], 12);
    assert_eq!(report.pii_findings["credit_card"], 12);
    assert_eq!(report.pii_findings["ssn"], 12);
    let all = kept.concat();
    for (item, _) in &pii {
        assert!(
            !all.contains(item.as_str()),
            "{item:?} survived into the shards"
        );
        let digits: String = item.chars().filter(char::is_ascii_digit).collect();
        assert!(!all.contains(&digits), "the digits of {item:?} survived");
    }
    for p in ["<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<SSN>"] {
        assert_eq!(all.matches(p).count(), 12, "{p}");
    }

    let (report, kept) = run(dir.path(), &docs, with(PiiMode::Drop));
    assert_eq!(report.pii_dropped, pii.len() as u64);
    assert_eq!(kept.len(), clean);
    let (report, kept) = run(dir.path(), &docs, with(PiiMode::Count));
    assert_eq!(
        report.pii_personal_docs + report.pii_sensitive_docs,
        pii.len() as u64
    );
    assert!(
        kept.concat().contains(pii[0].0.as_str()),
        "count changes nothing"
    );
}

#[test]
fn a_13_gram_overlap_with_an_evaluation_set_is_dropped() {
    let mut rng = Rng(7);
    let vocab = vocabulary();
    let question = random_doc(&mut rng, &vocab, 30);
    let eval = tempfile::tempdir().unwrap();
    let eval_file = eval.path().join("eval.jsonl");
    std::fs::write(
        &eval_file,
        format!(
            "{}\n{}\n",
            serde_json::json!({ "question": question.join(" "), "answer": "yes" }),
            serde_json::json!({ "question": "too short" })
        ),
    )
    .unwrap();
    let mut docs: Vec<String> = (0..30)
        .map(|_| random_doc(&mut rng, &vocab, 80).join(" "))
        .collect();
    // 13 words of the question inside a training document (other case and punctuation), and
    // 12 in another.
    let thirteen = question[5..18].join(", ").to_uppercase();
    docs[3] = format!("{} {thirteen}. {}", docs[3], docs[4]);
    let twelve = question[5..17].join(" ");
    docs[8] = format!("{} {twelve} {}", docs[8], docs[9]);
    let dir = tempfile::tempdir().unwrap();
    let filter = FilterOptions {
        decontaminate: vec![PathBuf::from(&eval_file)],
        ..Default::default()
    };
    let (report, kept) = run(dir.path(), &docs, filter);
    assert_eq!(report.decontaminated, 1);
    assert_eq!((report.eval_texts, report.eval_texts_too_short), (2, 1));
    assert_eq!(kept.len(), docs.len() - 1);
    assert!(!kept.iter().any(|k| k.contains(&thirteen)));
}

#[test]
fn shakespeare_has_no_personal_data() {
    // Precision on prose: the shipped corpus trips no rule.
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let found = data::pii::scan(&text);
    let shown: Vec<&str> = found
        .iter()
        .take(5)
        .map(|f| &text[f.range.clone()])
        .collect();
    assert!(found.is_empty(), "{} findings, e.g. {shown:?}", found.len());
}

#[test]
fn the_dedup_index_stays_small() {
    // 20k short distinct documents: the index costs well under 1 kB per kept document (the
    // module docs say about 0.5 GB per million).
    let mut d = data::dedup::Deduper::new(DedupMode::Near, 0.8).unwrap();
    for i in 0..20_000u64 {
        let text = format!(
            "doc {i} alpha {} beta {} gamma {} delta",
            i * 7,
            i * 13,
            i * 31
        );
        let keys = data::dedup::DocKeys::of(&text, DedupMode::Near);
        assert_eq!(d.check(&keys), data::dedup::Verdict::Unique);
    }
    let per_doc = d.heap_bytes() as f64 / 20_000.0;
    eprintln!("{per_doc:.0} bytes per document");
    assert!(
        (256.0..1000.0).contains(&per_doc),
        "{per_doc} bytes per document"
    );
}
