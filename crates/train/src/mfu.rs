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

/// Peak dense bf16 FLOP/s of one accelerator, by the device kind its PJRT
/// plugin reports (vendor data sheets: Cloud TPU system-architecture pages,
/// NVIDIA H100/H200 data sheets, dense, without sparsity). `None` for
/// kinds not listed (CPUs are measured instead).
pub fn chip_peak_flops(kind: &str) -> Option<f64> {
    let k = kind.to_ascii_lowercase();
    let table: [(&[&str], f64); 6] = [
        (&["v5 lite", "v5e", "v5litepod"], 197e12),
        (&["v6 lite", "v6e"], 918e12),
        (&["v5p", "tpu v5"], 459e12),
        (&["h100 pcie"], 756e12),
        (&["h100"], 989e12),
        (&["h200"], 989e12),
    ];
    table
        .iter()
        .find(|(names, _)| names.iter().any(|n| k.contains(n)))
        .map(|(_, peak)| *peak)
}

/// The peak FLOP/s of a whole job of `devices` devices of `kind` over
/// `hosts` processes: a known accelerator's peak times the devices; a
/// CPU's measured rate (`measured`, one process's cores, shared by its
/// virtual devices) times the hosts; any other device's measured rate
/// times the devices. `per_device` (`train.peak_flops_per_device`)
/// overrides the table and the measurement.
pub fn job_peak_flops(
    kind: &str,
    devices: usize,
    hosts: usize,
    per_device: Option<f64>,
    measured: impl FnOnce() -> pjrt::Result<f64>,
) -> pjrt::Result<f64> {
    if let Some(p) = per_device.or_else(|| chip_peak_flops(kind)) {
        return Ok(p * devices as f64);
    }
    let m = measured()?;
    Ok(if kind.eq_ignore_ascii_case("cpu") {
        m * hosts as f64
    } else {
        m * devices as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_are_known_by_their_plugin_kinds() {
        assert_eq!(chip_peak_flops("TPU v5 lite"), Some(197e12));
        assert_eq!(chip_peak_flops("TPU v6 lite"), Some(918e12));
        assert_eq!(chip_peak_flops("TPU v5p"), Some(459e12));
        assert_eq!(chip_peak_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(chip_peak_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(chip_peak_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(chip_peak_flops("cpu"), None);
    }

    #[test]
    fn a_job_peak_counts_every_device() {
        // 256 v5e chips: 256 x 197 TFLOP/s, whatever one chip measures.
        let p = job_peak_flops("TPU v5 lite", 256, 64, None, || Ok(1.0)).unwrap();
        assert_eq!(p, 256.0 * 197e12);
        // 8 virtual CPU devices share one host's cores; 2 hosts have twice.
        assert_eq!(
            job_peak_flops("cpu", 8, 1, None, || Ok(5e10)).unwrap(),
            5e10
        );
        assert_eq!(
            job_peak_flops("cpu", 8, 2, None, || Ok(5e10)).unwrap(),
            1e11
        );
        assert_eq!(
            job_peak_flops("cpu", 8, 1, Some(1e9), || Ok(5e10)).unwrap(),
            8e9
        );
    }
}
