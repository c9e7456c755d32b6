//! Fine-tuning starts from a Hugging Face checkpoint (`model.init =
//! "hf:DIR"`, shape from its config.json): the first step's loss equals
//! `eval` of that checkpoint on the same rows.

use std::path::PathBuf;

#[test]
fn first_step_loss_of_an_hf_init_equals_its_eval() {
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gemma/tests/golden/multi_head/model");
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..8).map(|i| ((r * 11 + i * 5) % 95 + 1) as u32).collect())
        .collect();
    let tokens = dir.path().join("rows.json");
    std::fs::write(
        &tokens,
        serde_json::json!({ "input_ids": rows }).to_string(),
    )
    .unwrap();
    let text = format!(
        r#"[model]
init = "hf:{model}"
[data]
format = "tokens"
path = {tokens:?}
seq_len = 8
batch_size = 4
shuffle = false
[train]
steps = 1
run_dir = {run:?}
peak_flops_per_device = 1e11
export_final = false
"#,
        model = model.display(),
        tokens = tokens.display().to_string(),
        run = dir.path().join("run").display().to_string()
    );
    let cfg = train::TrainConfig::from_toml(&text, "test", &[]).unwrap();
    assert_eq!(
        cfg.model.resolve().unwrap().vocab_size,
        96,
        "the shape comes from config.json"
    );
    let summary = train::train(&cfg, false).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let eval = train::eval::evaluate(&client, &model, &tokens, 4).unwrap();
    let step0 = summary.losses[0].1 as f64;
    assert!(
        (step0 - eval.loss).abs() < 1e-5 * eval.loss,
        "train step 0 {step0} vs eval {}",
        eval.loss
    );
    assert_eq!(eval.tokens, 28);
}
