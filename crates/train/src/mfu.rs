//! Model FLOPs and the device's peak, for MFU.

use std::time::Instant;

use gemma::GemmaConfig;

/// Training FLOPs per token, PaLM's formula: `6 N + 12 L H Q T`, with `N`
/// every parameter (the tied head's matmul counts; the embedding lookup
/// costs none but is the same matrix), `L` layers, `H` heads, `Q` head
/// width and `T` the sequence length.
pub fn flops_per_token(c: &GemmaConfig, seq_len: usize) -> f64 {
    6.0 * c.num_params() as f64 + 12.0 * (c.layers * c.heads * c.head_dim * seq_len) as f64
}

/// Measures one device's matmul rate in FLOP/s for `dtype` (`f32` or
/// `bf16`): four chained 1024^3 matmuls, best of 5 after a warm-up.
pub fn measure_peak_flops(client: &pjrt::Client, bf16: bool) -> pjrt::Result<f64> {
    const N: usize = 1024;
    let ty = if bf16 { "bf16" } else { "f32" };
    let t = format!("tensor<{N}x{N}x{ty}>");
    let mut body = String::new();
    let mut prev = "%x".to_string();
    for i in 0..4 {
        body += &format!(
            "    %d{i} = stablehlo.dot_general {prev}, %w, contracting_dims = [1] x [0] : ({t}, {t}) -> {t}\n"
        );
        prev = format!("%d{i}");
    }
    let mlir = format!(
        "func.func public @main(%x: {t}, %w: {t}) -> {t} {{\n{body}    return {prev} : {t}\n}}"
    );
    let exe = client.compile(&mlir, &pjrt::CompileOptions::single())?;
    let vals: Vec<f32> = (0..N * N)
        .map(|i| ((i % 13) as f32 - 6.0) / 1024.0)
        .collect();
    let (x, w) = if bf16 {
        let v: Vec<pjrt::bf16> = vals.iter().map(|&f| pjrt::bf16::from_f32(f)).collect();
        (
            client.buffer_from_host(&v, &[N as i64, N as i64], 0)?,
            client.buffer_from_host(&v, &[N as i64, N as i64], 0)?,
        )
    } else {
        (
            client.buffer_from_host(&vals, &[N as i64, N as i64], 0)?,
            client.buffer_from_host(&vals, &[N as i64, N as i64], 0)?,
        )
    };
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t0 = Instant::now();
        exe.execute(&[vec![&x, &w]])?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (N * N * N * 4) as f64 / best)
}
