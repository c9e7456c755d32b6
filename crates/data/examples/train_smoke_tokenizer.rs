//! Trains the committed smoke-run tokenizer `configs/data/shakespeare-bpe8k.json` on
//! `configs/data/tinyshakespeare.txt` (run from the workspace root):
//!
//! ```text
//! cargo run -p meshtrain-data --release --example train_smoke_tokenizer
//! ```

use std::path::{Path, PathBuf};

fn main() -> data::Result<()> {
    let corpus = PathBuf::from("configs/data/tinyshakespeare.txt");
    let out = Path::new("configs/data/shakespeare-bpe8k.json");
    let t = std::time::Instant::now();
    let tok = data::train_bpe(&[corpus], 8192, out)?;
    println!(
        "{} pieces in {:.1} s -> {}",
        tok.vocab_size(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
