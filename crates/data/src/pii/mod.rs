//! Personal and sensitive data in text: detection, counting and redaction.
//!
//! [`scan`] finds, with the same rules everywhere (`meshtrain tokenize --pii`, and the
//! memorization eval, which asks how many memorized continuations hold such data):
//!
//! | [`PiiKind`] | [`PiiClass`] | what | placeholder |
//! |---|---|---|---|
//! | `Email` | personal | `local@domain.tld` | `<EMAIL>` |
//! | `Phone` | personal | `+CC …` (8–15 digits), NANP `(415) 555-0132`, `415-555-0132`, `415.555.0132` | `<PHONE>` |
//! | `IpAddress` | personal | public IPv4 (first octet ≥ 11) and global IPv6 addresses | `<IP_ADDRESS>` |
//! | `CreditCard` | sensitive | 13–19 digits with a card-network prefix and a valid Luhn digit, in groups of 4 (Amex 4-6-5), or bare after a word like "card" | `<CREDIT_CARD>` |
//! | `Ssn` | sensitive | US social security numbers `123-45-6789` of a valid area, group and serial | `<SSN>` |
//! | `Secret` | sensitive | API keys of known shapes (AWS, GitHub, Slack, Stripe, Google, OpenAI/Anthropic style `sk-…`), `api_key = "…"`-style assignments of a random-looking value, and PEM private-key blocks | `<SECRET>` |
//!
//! Detection favours precision: every pattern is checked after matching (boundaries, checksums,
//! number ranges, prefixes, entropy), so prose and code do not trip it. Private, loopback,
//! link-local, multicast and documentation IP ranges are not personal data and are not
//! reported; neither are phone numbers in national formats other than NANP without their `+`
//! country code. How precision was measured: `cargo run -p meshtrain-data --release --example
//! pii_false_positives` scans the Shakespeare corpus and every Rust source of the repository
//! (the README lists the counts), and `tests/filter.rs` checks that the corpus has none.
//!
//! ```
//! use data::pii::{scan, redact, PiiClass, PiiKind};
//! let text = "Write to ada@example.org or call +44 20 7946 0958.";
//! let found = scan(text);
//! assert_eq!(found.len(), 2);
//! assert_eq!(found[0].kind, PiiKind::Email);
//! assert_eq!(found[0].class(), PiiClass::Personal);
//! assert_eq!(&text[found[1].range.clone()], "+44 20 7946 0958");
//! assert_eq!(redact(text, &found), "Write to <EMAIL> or call <PHONE>.");
//! ```

use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

mod check;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A public IPv4 or IPv6 address.
    IpAddress,
    /// A payment card number (Luhn-checked).
    CreditCard,
    /// A US social security number.
    Ssn,
    /// An API key, token or private-key block.
    Secret,
}

/// The severity class of a finding, as the Gemma report counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiClass {
    /// Identifies a person: email addresses, phone numbers, IP addresses.
    Personal,
    /// Harmful if leaked: payment cards, social security numbers, secrets.
    Sensitive,
}

impl PiiKind {
    /// Every kind, in the order of the table in the module docs.
    pub const ALL: [PiiKind; 6] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::IpAddress,
        PiiKind::CreditCard,
        PiiKind::Ssn,
        PiiKind::Secret,
    ];

    /// Its class.
    pub fn class(self) -> PiiClass {
        match self {
            PiiKind::Email | PiiKind::Phone | PiiKind::IpAddress => PiiClass::Personal,
            PiiKind::CreditCard | PiiKind::Ssn | PiiKind::Secret => PiiClass::Sensitive,
        }
    }

    /// The text that replaces it in [`redact`], e.g. `<EMAIL>`.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "<EMAIL>",
            PiiKind::Phone => "<PHONE>",
            PiiKind::IpAddress => "<IP_ADDRESS>",
            PiiKind::CreditCard => "<CREDIT_CARD>",
            PiiKind::Ssn => "<SSN>",
            PiiKind::Secret => "<SECRET>",
        }
    }

    /// Its name in reports: `email`, `phone`, `ip_address`, `credit_card`, `ssn`, `secret`.
    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::IpAddress => "ip_address",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Ssn => "ssn",
            PiiKind::Secret => "secret",
        }
    }
}

/// One piece of personal or sensitive data in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: PiiKind,
    /// Its byte range in the scanned text.
    pub range: Range<usize>,
}

impl Finding {
    /// Personal or sensitive.
    pub fn class(&self) -> PiiClass {
        self.kind.class()
    }
}

/// Counts of findings in one text, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Personal findings.
    pub personal: usize,
    /// Sensitive findings.
    pub sensitive: usize,
}

/// Counts the findings of each class.
pub fn count_classes(findings: &[Finding]) -> ClassCounts {
    let mut c = ClassCounts::default();
    for f in findings {
        match f.class() {
            PiiClass::Personal => c.personal += 1,
            PiiClass::Sensitive => c.sensitive += 1,
        }
    }
    c
}

/// One compiled pattern and the check its matches must pass.
struct Rule {
    kind: PiiKind,
    re: Regex,
    /// Which capture group is the finding (0: the whole match).
    group: usize,
    check: fn(text: &str, range: Range<usize>) -> bool,
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rule = |kind, pattern: &str, group, check| Rule {
            kind,
            // invariant: the patterns are constants of this module, compiled in its tests.
            re: Regex::new(pattern).expect("PII patterns compile"),
            group,
            check,
        };
        // ASCII word boundaries and classes throughout: faster (the lazy DFA handles them
        // on any input) and what these formats are made of.
        vec![
            rule(
                PiiKind::Secret,
                r"-----BEGIN[A-Z0-9 ]{0,32} PRIVATE KEY(?: BLOCK)?-----(?s:.*?)-----END[A-Z0-9 ]{0,32} PRIVATE KEY(?: BLOCK)?-----",
                0,
                |_, _| true,
            ),
            rule(
                PiiKind::Secret,
                // A BEGIN line whose END is missing: the header and its base64 lines.
                r"-----BEGIN[A-Z0-9 ]{0,32} PRIVATE KEY(?: BLOCK)?-----(?:\r?\n[A-Za-z0-9+/=:, -]+)*\r?\n[A-Za-z0-9+/=]{40,}(?:\r?\n[A-Za-z0-9+/=]+)*",
                0,
                |_, _| true,
            ),
            rule(
                PiiKind::Secret,
                concat!(
                    r"(?-u:\b)(?:",
                    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}",
                    r"|gh[pousr]_[A-Za-z0-9]{36,255}",
                    r"|github_pat_[A-Za-z0-9_]{22,255}",
                    r"|xox[abposr]-[A-Za-z0-9-]{10,250}",
                    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,250}",
                    r"|AIza[0-9A-Za-z_-]{35}",
                    r"|sk-(?:proj-|ant-(?:api[0-9]{2}-)?)?[A-Za-z0-9_-]{32,250}",
                    r")(?-u:\b)"
                ),
                0,
                check::key_shape,
            ),
            rule(
                PiiKind::Secret,
                concat!(
                    r#"(?i)(?:api[_-]?key|secret[_-]?key|access[_-]?key|access[_-]?token|auth[_-]?token|"#,
                    r#"client[_-]?secret|private[_-]?key|password|passwd)["']?\s{0,4}(?::|=|:=|=>)\s{0,4}"#,
                    r#"["']([^"'\s]{16,200})["']"#
                ),
                1,
                check::assigned_secret,
            ),
            rule(
                PiiKind::Email,
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?-u:\b)",
                0,
                check::email,
            ),
            rule(
                PiiKind::CreditCard,
                r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
                0,
                check::card,
            ),
            rule(
                PiiKind::Ssn,
                r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
                0,
                check::ssn,
            ),
            rule(
                PiiKind::Phone,
                r"\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}",
                0,
                check::phone_international,
            ),
            rule(
                PiiKind::Phone,
                r"(?:(?-u:\b)1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[.-])[2-9][0-9]{2}[.-][0-9]{4}",
                0,
                check::phone_nanp,
            ),
            rule(
                PiiKind::IpAddress,
                r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)",
                0,
                check::ipv4,
            ),
            rule(
                PiiKind::IpAddress,
                r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}",
                0,
                check::ipv6,
            ),
        ]
    })
}

/// Finds the personal and sensitive data in `text`, sorted by position, without overlaps
/// (where matches overlap, the earlier rule of the table wins: secrets, then emails, cards,
/// SSNs, phones, IP addresses).
pub fn scan(text: &str) -> Vec<Finding> {
    let mut found: Vec<(usize, Finding)> = Vec::new();
    for (order, rule) in rules().iter().enumerate() {
        if rule.group == 0 {
            for m in rule.re.find_iter(text) {
                if (rule.check)(text, m.range()) {
                    found.push((
                        order,
                        Finding {
                            kind: rule.kind,
                            range: m.range(),
                        },
                    ));
                }
            }
        } else {
            for c in rule.re.captures_iter(text) {
                if let Some(m) = c.get(rule.group)
                    && (rule.check)(text, m.range())
                {
                    found.push((
                        order,
                        Finding {
                            kind: rule.kind,
                            range: m.range(),
                        },
                    ));
                }
            }
        }
    }
    if found.len() <= 1 {
        return found.into_iter().map(|(_, f)| f).collect();
    }
    // Where ranges overlap, the earliest rule's finding is kept: take findings in rule order
    // and keep those that overlap nothing kept so far (kept ranges are disjoint, so only the
    // neighbours by start need checking).
    found.sort_by_key(|(order, f)| (*order, f.range.start));
    let mut kept: std::collections::BTreeMap<usize, Finding> = std::collections::BTreeMap::new();
    for (_, f) in found {
        let before = kept.range(..f.range.end).next_back();
        if before.is_some_and(|(_, k)| k.range.end > f.range.start) {
            continue;
        }
        kept.insert(f.range.start, f);
    }
    kept.into_values().collect()
}

/// `text` with each finding replaced by its kind's placeholder. `findings` must be sorted and
/// disjoint, as [`scan`] returns them.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&text[at..f.range.start]);
        out.push_str(f.kind.placeholder());
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests;
