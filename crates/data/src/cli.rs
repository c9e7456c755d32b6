//! Clap subcommands and their `run` functions for the `meshtrain` binary (feature `cli`).
//!
//! Wire them as:
//!
//! ```text
//! meshtrain setup tokenizer            -> SetupTokenizerArgs, run_setup_tokenizer
//! meshtrain tokenizer encode|decode|chat|train -> TokenizerArgs, run_tokenizer
//! meshtrain tokenize                   -> TokenizeArgs,       run_tokenize
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::dedup::DedupMode;
use crate::ingest::{FilterOptions, InputFormat, OnError, PiiMode, TextUnit, TokenizeOptions};
use crate::{Tokenizer, cache_dir};

/// `meshtrain setup tokenizer`: fetch the official Gemma tokenizer into the cache.
#[derive(Debug, clap::Args)]
pub struct SetupTokenizerArgs {
    /// Cache directory (default: $MESHTRAIN_HOME, else $XDG_CACHE_HOME/meshtrain, else ~/.cache/meshtrain).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Runs `meshtrain setup tokenizer`.
pub fn run_setup_tokenizer(args: SetupTokenizerArgs) -> anyhow::Result<()> {
    let dir = args.cache_dir.unwrap_or_else(cache_dir);
    let path = crate::setup_tokenizer(&dir)?;
    println!("gemma tokenizer: {}", path.display());
    Ok(())
}

/// `meshtrain tokenizer ...`: inspect or train tokenizers.
#[derive(Debug, clap::Args)]
pub struct TokenizerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

/// The `meshtrain tokenizer` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenizerCommand {
    /// Read text on stdin, print its token ids.
    Encode(EncodeArgs),
    /// Read token ids on stdin (a JSON array or whitespace-separated), print the text.
    Decode(DecodeArgs),
    /// Read one conversation {"messages": [...]} on stdin, show its tokens in Gemma's chat
    /// format and which of them are trained.
    Chat(ChatArgs),
    /// Train a byte-fallback BPE tokenizer on text files.
    Train(TrainArgs),
}

/// `meshtrain tokenizer encode`.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// `gemma` (the official tokenizer) or the path of a tokenizer.json.
    #[arg(long)]
    pub tokenizer: String,
    /// Print one JSON array of integers.
    #[arg(long)]
    pub json: bool,
    /// Put `<bos>` first.
    #[arg(long)]
    pub bos: bool,
}

/// `meshtrain tokenizer decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// `gemma` or the path of a tokenizer.json.
    #[arg(long)]
    pub tokenizer: String,
}

/// `meshtrain tokenizer chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// `gemma` or the path of a tokenizer.json.
    #[arg(long)]
    pub tokenizer: String,
    /// Print {"input_ids": [...], "loss_mask": [...]} instead of the coloured rendering.
    #[arg(long)]
    pub json: bool,
}

/// `meshtrain tokenizer train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Text files to train on.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// Vocabulary size, special and byte pieces included.
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Where to write the tokenizer.json.
    #[arg(long)]
    pub output: PathBuf,
}

/// Runs `meshtrain tokenizer ...`.
pub fn run_tokenizer(args: TokenizerArgs) -> anyhow::Result<()> {
    match args.command {
        TokenizerCommand::Encode(a) => {
            let tok = Tokenizer::load(&a.tokenizer, &cache_dir())?;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading text from stdin (UTF-8 expected)")?;
            let mut ids = Vec::new();
            if a.bos {
                ids.push(tok.bos_id());
            }
            ids.extend(tok.encode(&text)?);
            let line = if a.json {
                serde_json::to_string(&ids)?
            } else {
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!("{line}");
        }
        TokenizerCommand::Decode(a) => {
            let tok = Tokenizer::load(&a.tokenizer, &cache_dir())?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading ids from stdin")?;
            let ids: Vec<u32> = if input.trim_start().starts_with('[') {
                serde_json::from_str(&input)
                    .context("ids on stdin: expected a JSON array of integers")?
            } else {
                input
                    .split_whitespace()
                    .map(|s| {
                        s.parse::<u32>()
                            .with_context(|| format!("{s:?} is not a token id"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let text = tok.decode(&ids)?;
            std::io::stdout().write_all(text.as_bytes())?;
        }
        TokenizerCommand::Chat(a) => {
            let tok = Tokenizer::load(&a.tokenizer, &cache_dir())?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading a conversation from stdin (UTF-8 expected)")?;
            let c = chat_tokens(&tok, &input)?;
            let out = if a.json {
                serde_json::to_string(&c)? + "\n"
            } else {
                render_trained(&tok, &c)?
            };
            std::io::stdout().write_all(out.as_bytes())?;
        }
        TokenizerCommand::Train(a) => {
            let files = crate::ingest::expand_inputs(&a.input)?;
            let tok = crate::train_bpe(&files, a.vocab_size, &a.output)?;
            println!(
                "trained {} pieces on {} files: {}",
                tok.vocab_size(),
                files.len(),
                a.output.display()
            );
        }
    }
    Ok(())
}

/// The conversation on stdin (one JSON object; a file with one non-empty line also works).
fn chat_tokens(tok: &Tokenizer, input: &str) -> anyhow::Result<crate::chat::ChatTokens> {
    let at = |line: usize, m: String| crate::Error::BadInput {
        file: "<stdin>".into(),
        line: line as u64,
        message: m,
    };
    let v: serde_json::Value =
        serde_json::from_str(input).map_err(|e| at(e.line(), format!("invalid JSON: {e}")))?;
    let msgs = crate::chat::parse_conversation(&v).map_err(|m| at(1, m))?;
    Ok(crate::chat::encode_chat(tok, &msgs)?)
}

/// The conversation's text with trained tokens in bold green and the rest dimmed, each token
/// boundary marked by alternating underline, then a count.
fn render_trained(tok: &Tokenizer, c: &crate::chat::ChatTokens) -> anyhow::Result<String> {
    const TRAINED: &str = "\x1b[1;32m";
    const CONTEXT: &str = "\x1b[2m";
    const RESET: &str = "\x1b[0m";
    let mut out = String::new();
    for (k, (&id, &m)) in c.input_ids.iter().zip(&c.loss_mask).enumerate() {
        let text = tok.decode(&[id])?;
        let shown = if text.is_empty() {
            tok.id_to_piece(id).unwrap_or_default()
        } else {
            text
        };
        let style = if m == 1 { TRAINED } else { CONTEXT };
        let underline = if k % 2 == 1 { "\x1b[4m" } else { "" };
        // Newlines stay real newlines, outside the underline.
        for (i, part) in shown.split('\n').enumerate() {
            if i > 0 {
                out.push_str(&format!("{style}\\n{RESET}\n"));
            }
            if !part.is_empty() {
                out.push_str(&format!("{style}{underline}{part}{RESET}"));
            }
        }
    }
    let trained = c.loss_mask.iter().filter(|&&m| m == 1).count();
    out.push_str(&format!(
        "\n{} tokens, {trained} trained ({TRAINED}green{RESET}), {} context ({CONTEXT}dim{RESET})\n",
        c.input_ids.len(),
        c.input_ids.len() - trained
    ));
    Ok(out)
}

/// Input format flag.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// Plain text.
    Text,
    /// One JSON object per line.
    Jsonl,
    /// One conversation {"messages": [...]} per line (Gemma's chat format; the shards carry
    /// the loss mask).
    Chat,
}

/// Text document unit flag.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UnitArg {
    /// A whole file.
    File,
    /// Blank-line separated paragraphs.
    Paragraph,
    /// Each line.
    Line,
}

/// `--dedup` flag.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DedupArg {
    /// Keep every document.
    None,
    /// Remove documents whose normalised text (lowercase, collapsed whitespace) repeats.
    Exact,
    /// Also remove near-duplicates (MinHash LSH over word 5-grams).
    Near,
}

/// `--pii` flag.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PiiArg {
    /// Count documents with personal or sensitive data.
    Count,
    /// Replace each finding with a placeholder such as <EMAIL>.
    Redact,
    /// Leave out documents with any finding.
    Drop,
}

/// `meshtrain tokenize`: corpora to token shards.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// `gemma` or the path of a tokenizer.json.
    #[arg(long)]
    pub tokenizer: String,
    /// Files, directories or glob patterns.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// Output directory for the shards and manifest.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,
    /// JSONL field that holds the text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// What one document is in a text file.
    #[arg(long, value_enum, default_value_t = UnitArg::File)]
    pub text_unit: UnitArg,
    /// Tokens per shard before a new one is started.
    #[arg(long, default_value_t = 1 << 26)]
    pub shard_tokens: u64,
    /// Stop at the first bad document instead of skipping and reporting it.
    #[arg(long)]
    pub strict: bool,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Remove duplicate documents.
    #[arg(long, value_enum, default_value_t = DedupArg::None)]
    pub dedup: DedupArg,
    /// Estimated Jaccard similarity (of word 5-gram sets) at which `--dedup near` removes a
    /// document.
    #[arg(long, default_value_t = crate::dedup::DEFAULT_THRESHOLD)]
    pub dedup_threshold: f64,
    /// Find personal data (emails, phone numbers, IP addresses) and sensitive data (card
    /// numbers, US SSNs, secrets) and count, redact or drop it.
    #[arg(long, value_enum)]
    pub pii: Option<PiiArg>,
    /// Evaluation files (.jsonl, .json or text): drop training documents that share a 13-gram
    /// of words with them.
    #[arg(long, num_args = 1..)]
    pub decontaminate: Vec<PathBuf>,
    /// Write what the filters did as one JSON object.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl From<&TokenizeArgs> for TokenizeOptions {
    fn from(a: &TokenizeArgs) -> Self {
        TokenizeOptions {
            inputs: a.input.clone(),
            output: a.output.clone(),
            format: match a.format {
                FormatArg::Text => InputFormat::Text,
                FormatArg::Jsonl => InputFormat::Jsonl,
                FormatArg::Chat => InputFormat::Chat,
            },
            field: a.field.clone(),
            text_unit: match a.text_unit {
                UnitArg::File => TextUnit::File,
                UnitArg::Paragraph => TextUnit::Paragraph,
                UnitArg::Line => TextUnit::Line,
            },
            shard_tokens: a.shard_tokens,
            on_error: if a.strict {
                OnError::Fail
            } else {
                OnError::Skip
            },
            filter: FilterOptions {
                dedup: match a.dedup {
                    DedupArg::None => DedupMode::None,
                    DedupArg::Exact => DedupMode::Exact,
                    DedupArg::Near => DedupMode::Near,
                },
                dedup_threshold: a.dedup_threshold,
                pii: a.pii.map(|p| match p {
                    PiiArg::Count => PiiMode::Count,
                    PiiArg::Redact => PiiMode::Redact,
                    PiiArg::Drop => PiiMode::Drop,
                }),
                decontaminate: a.decontaminate.clone(),
            },
        }
    }
}

/// Runs `meshtrain tokenize` with a progress bar, then prints the summary and skipped documents.
pub fn run_tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let tok = Tokenizer::load(&args.tokenizer, &cache_dir())?;
    let opts = TokenizeOptions::from(&args);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        // invariant: a constant template.
        .expect("valid template"),
    );
    let progress = |p: crate::ingest::Progress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{} docs, {} tokens", p.documents, p.tokens));
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0))
        .build()?;
    let summary = pool.install(|| crate::tokenize(&tok, &opts, &progress));
    bar.finish_and_clear();
    let summary = summary?;
    println!("{summary}");
    const SHOWN: usize = 20;
    for issue in summary.issues.iter().take(SHOWN) {
        eprintln!("skipped {issue}");
    }
    if summary.issues.len() > SHOWN {
        eprintln!(
            "... and {} more skipped documents",
            summary.issues.len() - SHOWN
        );
    }
    let f = &summary.filter;
    if f.eval_texts_too_short > 0 {
        eprintln!(
            "decontamination: {} of {} evaluation texts have fewer than 13 words and cannot be matched",
            f.eval_texts_too_short, f.eval_texts
        );
    }
    if let Some(path) = &args.report {
        f.write(path)?;
        println!("report in {}", path.display());
    }
    println!("shards in {}", args.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Tokenize(TokenizeArgs),
        Tokenizer(TokenizerArgs),
    }

    fn smoke() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/data/shakespeare-bpe8k.json"
        )
        .into()
    }

    #[test]
    fn tokenize_command_writes_shards() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.jsonl");
        std::fs::write(&input, "{\"body\": \"hello there\"}\n{\"body\": 3}\n").unwrap();
        let out = dir.path().join("out");
        let cli = Cli::try_parse_from([
            "meshtrain",
            "tokenize",
            "--tokenizer",
            &smoke(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--format",
            "jsonl",
            "--field",
            "body",
            "--threads",
            "1",
        ])
        .unwrap();
        let Cmd::Tokenize(args) = cli.cmd else {
            panic!("parsed as tokenize")
        };
        run_tokenize(args).unwrap();
        let m = crate::shard::Manifest::read(&out).unwrap();
        assert_eq!(m.documents, 1);
    }

    #[test]
    fn tokenize_command_filters_and_writes_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.txt");
        let doc = "the cat sat on the mat and looked at the dog across the quiet yard today";
        std::fs::write(
            &input,
            format!("{doc}\n{doc}\nmail ada@example.org about it\nnothing to see here\n"),
        )
        .unwrap();
        let eval = dir.path().join("eval.txt");
        std::fs::write(&eval, "nothing to see here at all").unwrap();
        let out = dir.path().join("out");
        let report = dir.path().join("report.json");
        let cli = Cli::try_parse_from([
            "meshtrain",
            "tokenize",
            "--tokenizer",
            &smoke(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--text-unit",
            "line",
            "--dedup",
            "near",
            "--dedup-threshold",
            "0.9",
            "--pii",
            "redact",
            "--decontaminate",
            eval.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ])
        .unwrap();
        let Cmd::Tokenize(args) = cli.cmd else {
            panic!("parsed as tokenize")
        };
        run_tokenize(args).unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        for (key, value) in [
            ("documents_in", 4),
            ("documents_out", 3),
            ("exact_duplicates", 1),
            ("near_duplicates", 0),
            ("pii_personal_docs", 1),
            ("pii_sensitive_docs", 0),
            // "nothing to see here" has 4 words: no 13-gram, so it is kept.
            ("decontaminated", 0),
            ("eval_texts_too_short", 1),
        ] {
            assert_eq!(r[key], value, "{key} in {r}");
        }
        for key in ["bytes_in", "bytes_out", "tokens_in", "tokens_out"] {
            assert!(r[key].as_u64().unwrap() > 0, "{key} in {r}");
        }
        assert_eq!(r["dedup_threshold"], 0.9);
        assert_eq!(crate::shard::Manifest::read(&out).unwrap().documents, 3);
    }

    #[test]
    fn chat_command_prints_ids_masks_and_colours() {
        let tok = Tokenizer::from_file(std::path::Path::new(&smoke())).unwrap();
        let c = chat_tokens(
            &tok,
            r#"{"messages": [{"role": "user", "content": "2+2?"}, {"role": "model", "content": "4"}]}"#,
        )
        .unwrap();
        assert_eq!(c.input_ids.len(), c.loss_mask.len());
        assert_eq!(c.loss_mask.iter().filter(|&&m| m == 1).count(), 2);
        let json = serde_json::to_value(&c).unwrap();
        assert!(json["input_ids"].is_array() && json["loss_mask"].is_array());
        let shown = render_trained(&tok, &c).unwrap();
        let last = shown.rfind("4\x1b[0m").expect("the answer is shown");
        assert!(shown[..last].rfind("\x1b[1;32m") > shown[..last].rfind("\x1b[2m"));
        assert!(shown.contains("2 trained"), "{shown}");
        let err = chat_tokens(
            &tok,
            r#"{"messages": [{"role": "system", "content": "x"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("<stdin>:1") && err.contains("system"), "{err}");
        let cli = Cli::try_parse_from([
            "meshtrain",
            "tokenizer",
            "chat",
            "--tokenizer",
            "gemma",
            "--json",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Tokenizer(TokenizerArgs {
                command: TokenizerCommand::Chat(ChatArgs { json: true, .. })
            })
        ));
    }

    #[test]
    fn tokenizer_commands_parse() {
        let cli = Cli::try_parse_from([
            "meshtrain",
            "tokenizer",
            "encode",
            "--tokenizer",
            "gemma",
            "--json",
            "--bos",
        ])
        .unwrap();
        let Cmd::Tokenizer(TokenizerArgs {
            command: TokenizerCommand::Encode(e),
        }) = cli.cmd
        else {
            panic!("parsed as tokenizer encode")
        };
        assert!(e.json && e.bos && e.tokenizer == "gemma");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let cli = Cli::try_parse_from([
            "meshtrain",
            "tokenizer",
            "train",
            "--input",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../configs/data/tinyshakespeare.txt"
            ),
            "--vocab-size",
            "600",
            "--output",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let Cmd::Tokenizer(args) = cli.cmd else {
            panic!("parsed as tokenizer")
        };
        run_tokenizer(args).unwrap();
        assert!(Tokenizer::from_file(&out).unwrap().vocab_size() <= 600);
    }
}
