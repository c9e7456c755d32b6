//! Model FLOPs and the device's peak, for MFU.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use gemma::GemmaConfig;

/// Training FLOPs per token, PaLM's formula: `6 N + 12 L H Q T`, with `N`
/// every parameter (the tied head's matmul counts; the embedding lookup
/// costs none but is the same matrix), `L` layers, `H` heads, `Q` head
/// width and `T` the sequence length.
pub fn flops_per_token(c: &GemmaConfig, seq_len: usize) -> f64 {
    6.0 * c.num_params() as f64 + 12.0 * (c.layers * c.heads * c.head_dim * seq_len) as f64
}

/// Measures one device's peak matmul rate in FLOP/s for a step computing
/// in bf16 or f32, compiled with the XLA options the step is compiled with
/// (on CPU they pick the matmul library, so a peak measured without them
/// can sit below what the step reaches). For bf16 it is the better of the
/// bf16 and f32 rates: XLA's CPU backend widens bf16 matmuls to f32, which
/// can run faster than its bf16 path.
pub fn measure_peak_flops(
    client: &pjrt::Client,
    bf16: bool,
    xla_options: &[(String, pjrt::XlaOption)],
) -> pjrt::Result<f64> {
    let f32 = matmul_rate(client, false, xla_options)?;
    Ok(if bf16 {
        f32.max(matmul_rate(client, true, xla_options)?)
    } else {
        f32
    })
}

/// Whether bf16 matmuls run faster on this CPU plugin when the program
/// widens them to f32 ([`gemma::Matmuls::F32`]): its measured f32 matmul
/// rate beats its bf16 rate. The CPU plugin computes some bf16 matmuls by
/// widening them itself, on every use, and its bf16 kernels' speed depends
/// on the CPU (2 cores here: 250 GFLOP/s f32 against 149 bf16).
pub fn cpu_bf16_widened_is_faster(
    client: &pjrt::Client,
    xla_options: &[(String, pjrt::XlaOption)],
) -> pjrt::Result<bool> {
    Ok(matmul_rate(client, false, xla_options)? > matmul_rate(client, true, xla_options)?)
}

/// One device's matmul rate in FLOP/s in bf16 or f32: four chained 1024^3
/// matmuls, best of 5 after a warm-up; measured once per process for each
/// platform, dtype and set of options.
fn matmul_rate(
    client: &pjrt::Client,
    bf16: bool,
    xla_options: &[(String, pjrt::XlaOption)],
) -> pjrt::Result<f64> {
    static RATES: OnceLock<Mutex<HashMap<String, f64>>> = OnceLock::new();
    let key = format!("{} {bf16} {xla_options:?}", client.platform_name());
    let rates = RATES.get_or_init(Default::default);
    if let Some(&r) = rates.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(r);
    }
    let r = measure_rate(client, bf16, xla_options)?;
    rates
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, r);
    Ok(r)
}

fn measure_rate(
    client: &pjrt::Client,
    bf16: bool,
    xla_options: &[(String, pjrt::XlaOption)],
) -> pjrt::Result<f64> {
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
    let options = pjrt::CompileOptions {
        xla_options: xla_options.to_vec(),
        ..pjrt::CompileOptions::single()
    };
    let exe = client.compile(&mlir, &options)?;
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

/// The arithmetic a step's matmuls run in, which picks the peak to divide by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matmuls {
    /// bf16 operands.
    Bf16,
    /// f32 operands at XLA's default precision: one bf16 pass on TPU,
    /// TF32 tensor cores on NVIDIA GPUs.
    F32,
    /// f32 at `matmul_precision = "highest"`: six bf16 passes on TPU,
    /// the non-tensor-core f32 units on NVIDIA GPUs.
    F32Highest,
}

/// Peak dense FLOP/s of one accelerator for `m`, by the device kind its
/// PJRT plugin reports (vendor data sheets: Cloud TPU system-architecture
/// pages, NVIDIA H100/H200 data sheets, dense, without sparsity). `None`
/// for kinds not listed (CPUs are measured instead, in the compute dtype).
pub fn chip_peak_flops(kind: &str, m: Matmuls) -> Option<f64> {
    let k = kind.to_ascii_lowercase();
    // (names, bf16, f32 at default precision, f32 at highest precision)
    let table: [(&[&str], f64, f64, f64); 6] = [
        (
            &["v5 lite", "v5e", "v5litepod"],
            197e12,
            197e12,
            197e12 / 6.0,
        ),
        (&["v6 lite", "v6e"], 918e12, 918e12, 918e12 / 6.0),
        (&["v5p", "tpu v5"], 459e12, 459e12, 459e12 / 6.0),
        (&["h100 pcie"], 756e12, 378e12, 51.2e12),
        (&["h100"], 989e12, 494.7e12, 66.9e12),
        (&["h200"], 989e12, 494.7e12, 66.9e12),
    ];
    table
        .iter()
        .find(|(names, ..)| names.iter().any(|n| k.contains(n)))
        .map(|&(_, bf16, f32, highest)| match m {
            Matmuls::Bf16 => bf16,
            Matmuls::F32 => f32,
            Matmuls::F32Highest => highest,
        })
}

/// The peak FLOP/s of a whole job of `devices` devices of `kind` over
/// `hosts` processes: a known accelerator's peak for `matmuls` times the devices; a
/// CPU's measured rate (`measured`, one process's cores, shared by its
/// virtual devices) times the hosts; any other device's measured rate
/// times the devices. `per_device` (`train.peak_flops_per_device`)
/// overrides the table and the measurement.
pub fn job_peak_flops(
    kind: &str,
    matmuls: Matmuls,
    devices: usize,
    hosts: usize,
    per_device: Option<f64>,
    measured: impl FnOnce() -> pjrt::Result<f64>,
) -> pjrt::Result<f64> {
    if let Some(p) = per_device.or_else(|| chip_peak_flops(kind, matmuls)) {
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
        let bf16 = |k| chip_peak_flops(k, Matmuls::Bf16);
        assert_eq!(bf16("TPU v5 lite"), Some(197e12));
        assert_eq!(bf16("TPU v6 lite"), Some(918e12));
        assert_eq!(bf16("TPU v5p"), Some(459e12));
        assert_eq!(bf16("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(bf16("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(bf16("NVIDIA H200"), Some(989e12));
        assert_eq!(bf16("cpu"), None);
    }

    #[test]
    fn an_f32_step_is_measured_against_the_f32_peak() {
        // A GPU runs f32 matmuls on TF32 tensor cores, half the bf16 rate;
        // at the highest precision on its f32 units.
        let h100 = |m| chip_peak_flops("NVIDIA H100 80GB HBM3", m).unwrap();
        assert_eq!(h100(Matmuls::F32), 494.7e12);
        assert_eq!(h100(Matmuls::F32Highest), 66.9e12);
        // A TPU's default f32 matmul is one bf16 pass; the highest is six.
        let v5e = |m| chip_peak_flops("TPU v5 lite", m).unwrap();
        assert_eq!(v5e(Matmuls::F32), 197e12);
        assert_eq!(v5e(Matmuls::F32Highest), 197e12 / 6.0);
    }

    #[test]
    fn a_job_peak_counts_every_device() {
        // 256 v5e chips: 256 x 197 TFLOP/s, whatever one chip measures.
        let p = job_peak_flops("TPU v5 lite", Matmuls::Bf16, 256, 64, None, || Ok(1.0)).unwrap();
        assert_eq!(p, 256.0 * 197e12);
        // 8 virtual CPU devices share one host's cores; 2 hosts have twice.
        assert_eq!(
            job_peak_flops("cpu", Matmuls::F32, 8, 1, None, || Ok(5e10)).unwrap(),
            5e10
        );
        assert_eq!(
            job_peak_flops("cpu", Matmuls::F32, 8, 2, None, || Ok(5e10)).unwrap(),
            1e11
        );
        assert_eq!(
            job_peak_flops("cpu", Matmuls::F32, 8, 1, Some(1e9), || Ok(5e10)).unwrap(),
            8e9
        );
    }
}
