//! What `tokenize` removes or rewrites before tokenizing: duplicates, contaminated documents,
//! personal and sensitive data. See [`FilterOptions`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Tokenizer;
use crate::decontam::Contamination;
use crate::dedup::{DedupMode, Deduper, DocKeys, Verdict};
use crate::pii::{PiiClass, PiiKind};
use crate::{Error, Result};

/// What to do with personal and sensitive data (`--pii`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// Count documents with findings; change nothing.
    Count,
    /// Replace each finding by its placeholder, such as `<EMAIL>`.
    Redact,
    /// Leave out documents with any finding.
    Drop,
}

/// The filters of [`crate::tokenize`], applied in this order to each document:
///
/// 1. exact duplicates, then near-duplicates ([`crate::dedup`]), in input order;
/// 2. decontamination against evaluation texts ([`crate::decontam`]);
/// 3. personal and sensitive data ([`crate::pii`]), on the documents still kept.
///
/// A document left out is counted once, by the first filter that removes it.
#[derive(Debug, Clone)]
pub struct FilterOptions {
    /// `--dedup`.
    pub dedup: DedupMode,
    /// `--dedup-threshold`: estimated Jaccard similarity at which documents are near-duplicates.
    pub dedup_threshold: f64,
    /// `--pii`; `None` does not scan.
    pub pii: Option<PiiMode>,
    /// `--decontaminate`: evaluation files.
    pub decontaminate: Vec<PathBuf>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            dedup: DedupMode::None,
            dedup_threshold: crate::dedup::DEFAULT_THRESHOLD,
            pii: None,
            decontaminate: Vec::new(),
        }
    }
}

impl FilterOptions {
    /// Whether any filter is on.
    pub fn active(&self) -> bool {
        self.dedup != DedupMode::None || self.pii.is_some() || !self.decontaminate.is_empty()
    }
}

/// What the filters did (`meshtrain tokenize --report FILE.json` writes it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterReport {
    /// Usable documents read (bad ones are in `skipped_bad_input`).
    pub documents_in: u64,
    /// Documents written.
    pub documents_out: u64,
    /// Left out: same normalised text as an earlier document.
    pub exact_duplicates: u64,
    /// Left out: near-duplicate of an earlier kept document.
    pub near_duplicates: u64,
    /// Left out: shares a 13-gram with an evaluation text.
    pub decontaminated: u64,
    /// Documents with personal data (of those that reached the PII filter).
    pub pii_personal_docs: u64,
    /// Documents with sensitive data (of those that reached the PII filter).
    pub pii_sensitive_docs: u64,
    /// Left out by `--pii drop`.
    pub pii_dropped: u64,
    /// Findings by kind (`email`, `phone`, `ip_address`, `credit_card`, `ssn`, `secret`).
    pub pii_findings: BTreeMap<String, u64>,
    /// Text bytes of the documents read.
    pub bytes_in: u64,
    /// Text bytes of the documents written (after redaction).
    pub bytes_out: u64,
    /// Tokens of the documents read (left-out ones are tokenized only to be counted).
    pub tokens_in: u64,
    /// Tokens written.
    pub tokens_out: u64,
    /// Documents that could not be used (invalid UTF-8 or JSON, empty, ...).
    pub skipped_bad_input: u64,
    /// `--dedup`.
    pub dedup: DedupMode,
    /// `--dedup-threshold`.
    pub dedup_threshold: f64,
    /// LSH bands and rows per band for `near`.
    pub dedup_lsh: (usize, usize),
    /// Bytes held by the duplicate index at the end.
    pub dedup_index_bytes: u64,
    /// `--pii`.
    pub pii: Option<PiiMode>,
    /// Evaluation texts read for decontamination.
    pub eval_texts: u64,
    /// Of those, texts under 13 words, which cannot be matched.
    pub eval_texts_too_short: u64,
    /// Distinct evaluation 13-grams.
    pub eval_ngrams: u64,
}

impl FilterReport {
    /// Writes the report as pretty JSON (to a temporary name, then renamed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        // invariant: a report of numbers and strings always serializes.
        let text = serde_json::to_string_pretty(self).expect("report serializes");
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

impl std::fmt::Display for FilterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "filter: {} documents in, {} out: {} exact duplicates, {} near duplicates, \
             {} decontaminated, PII in {} documents personal and {} sensitive ({} dropped); \
             {:.1} MB -> {:.1} MB of text, {} -> {} tokens; dedup index {:.1} MB",
            self.documents_in,
            self.documents_out,
            self.exact_duplicates,
            self.near_duplicates,
            self.decontaminated,
            self.pii_personal_docs,
            self.pii_sensitive_docs,
            self.pii_dropped,
            self.bytes_in as f64 / 1e6,
            self.bytes_out as f64 / 1e6,
            self.tokens_in,
            self.tokens_out,
            self.dedup_index_bytes as f64 / 1e6,
        )
    }
}

/// Why a document is left out, or that it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Keep,
    Exact,
    Near,
    Contaminated,
    PiiDropped,
}

/// A document's text and what the filters need of it, computed in parallel.
pub(super) struct Prepared {
    pub text: String,
    keys: Option<DocKeys>,
    contaminated: bool,
}

/// A document after all filters.
pub(super) struct Outcome {
    pub fate: Fate,
    /// Its tokens, when written.
    pub ids: Option<Vec<u32>>,
    tokens_in: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Findings per [`PiiKind::ALL`] index.
    kinds: [u32; 6],
}

/// The filters' state for one `tokenize` run.
pub(super) struct Filter {
    opts: FilterOptions,
    dedup: Deduper,
    contam: Option<Contamination>,
    pub report: FilterReport,
}

impl Filter {
    pub fn new(opts: &FilterOptions) -> Result<Self> {
        let dedup = Deduper::new(opts.dedup, opts.dedup_threshold)?;
        let contam = if opts.decontaminate.is_empty() {
            None
        } else {
            Some(Contamination::from_files(&opts.decontaminate)?)
        };
        let report = FilterReport {
            dedup: opts.dedup,
            dedup_threshold: opts.dedup_threshold,
            dedup_lsh: if opts.dedup == DedupMode::Near {
                dedup.bands_rows()
            } else {
                (0, 0)
            },
            pii: opts.pii,
            eval_texts: contam.as_ref().map_or(0, |c| c.texts),
            eval_texts_too_short: contam.as_ref().map_or(0, |c| c.too_short),
            eval_ngrams: contam.as_ref().map_or(0, |c| c.ngrams() as u64),
            ..FilterReport::default()
        };
        Ok(Filter {
            opts: opts.clone(),
            dedup,
            contam,
            report,
        })
    }

    /// Step 1 (parallel): the hashes each filter needs.
    pub fn prepare(&self, text: String) -> Prepared {
        let keys =
            (self.opts.dedup != DedupMode::None).then(|| DocKeys::of(&text, self.opts.dedup));
        let contaminated = self.contam.as_ref().is_some_and(|c| c.contains(&text));
        Prepared {
            text,
            keys,
            contaminated,
        }
    }

    /// Step 2 (in input order): duplicates and contamination.
    pub fn decide(&mut self, p: &Prepared) -> Fate {
        let verdict = p
            .keys
            .as_ref()
            .map_or(Verdict::Unique, |k| self.dedup.check(k));
        match verdict {
            Verdict::Exact => Fate::Exact,
            Verdict::Near => Fate::Near,
            Verdict::Unique if p.contaminated => Fate::Contaminated,
            Verdict::Unique => Fate::Keep,
        }
    }

    /// Step 3 (parallel): personal data and tokens. An `Err` is a tokenizer failure on a
    /// document to be written.
    pub fn finish(
        &self,
        p: Prepared,
        mut fate: Fate,
        tok: &Tokenizer,
    ) -> std::result::Result<Outcome, String> {
        let bytes_in = p.text.len() as u64;
        let mut kinds = [0u32; 6];
        let count = |text: &str| tok.encode(text).map_or(0, |ids| ids.len() as u64);
        if fate != Fate::Keep {
            return Ok(Outcome {
                fate,
                ids: None,
                tokens_in: count(&p.text),
                bytes_in,
                bytes_out: 0,
                kinds,
            });
        }
        let mut text = p.text;
        let mut tokens_in = None;
        if let Some(mode) = self.opts.pii {
            let found = crate::pii::scan(&text);
            for f in &found {
                let k = PiiKind::ALL
                    .iter()
                    .position(|&k| k == f.kind)
                    // invariant: PiiKind::ALL lists every kind.
                    .expect("a kind");
                kinds[k] += 1;
            }
            if !found.is_empty() {
                match mode {
                    PiiMode::Count => {}
                    PiiMode::Drop => fate = Fate::PiiDropped,
                    PiiMode::Redact => {
                        tokens_in = Some(count(&text));
                        text = crate::pii::redact(&text, &found);
                    }
                }
            }
        }
        if fate != Fate::Keep {
            return Ok(Outcome {
                fate,
                ids: None,
                tokens_in: count(&text),
                bytes_in,
                bytes_out: 0,
                kinds,
            });
        }
        let ids = tok.encode(&text).map_err(|e| e.to_string())?;
        Ok(Outcome {
            fate,
            tokens_in: tokens_in.unwrap_or(ids.len() as u64),
            bytes_out: text.len() as u64,
            ids: Some(ids),
            bytes_in,
            kinds,
        })
    }

    /// Step 4 (in input order): counts a document's outcome.
    pub fn count(&mut self, o: &Outcome) {
        let r = &mut self.report;
        r.documents_in += 1;
        r.bytes_in += o.bytes_in;
        r.tokens_in += o.tokens_in;
        match o.fate {
            Fate::Keep => {
                r.documents_out += 1;
                r.bytes_out += o.bytes_out;
                r.tokens_out += o.ids.as_ref().map_or(0, |i| i.len() as u64);
            }
            Fate::Exact => r.exact_duplicates += 1,
            Fate::Near => r.near_duplicates += 1,
            Fate::Contaminated => r.decontaminated += 1,
            Fate::PiiDropped => r.pii_dropped += 1,
        }
        let mut classes = [false; 2];
        for (k, &n) in PiiKind::ALL.iter().zip(&o.kinds) {
            if n > 0 {
                *r.pii_findings.entry(k.name().to_string()).or_default() += n as u64;
                classes[(k.class() == PiiClass::Sensitive) as usize] = true;
            }
        }
        r.pii_personal_docs += classes[0] as u64;
        r.pii_sensitive_docs += classes[1] as u64;
    }

    /// The report at the end of the run.
    pub fn finish_report(&mut self, skipped: usize) -> FilterReport {
        self.report.skipped_bad_input = skipped as u64;
        self.report.dedup_index_bytes = self.dedup.heap_bytes();
        self.report.clone()
    }
}
