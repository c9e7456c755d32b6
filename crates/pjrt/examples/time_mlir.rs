//! Times any single-device StableHLO module on the CPU plugin with
//! zero-filled arguments: `cargo run --release -p meshtrain-pjrt --example
//! time_mlir -- FILE.mlir [ITERATIONS]`. Prints compile seconds and the
//! median execute seconds. Used to run JAX's exported step through the same
//! plugin as meshtrain's (scripts/bench_jax_step.py --export).

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: time_mlir FILE.mlir [ITERATIONS]")?;
    let iterations: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let mlir = std::fs::read_to_string(path)?;
    let client = pjrt::cpu_client(1)?;
    let t0 = Instant::now();
    let exe = client.compile(&mlir, &pjrt::CompileOptions::single())?;
    let compile = t0.elapsed().as_secs_f64();
    let params = exe.executable().optimized_hlo()?.parameters;
    let mut times = Vec::new();
    let mut bufs: Vec<pjrt::Buffer> = params
        .iter()
        .map(|p| {
            let ty = p.element_type.ok_or("unsupported parameter type")?;
            let bytes = vec![0u8; p.size_in_bytes() as usize];
            Ok(client.buffer_from_bytes(ty, &bytes, &p.dims, 0)?)
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    for _ in 0..iterations {
        let t = Instant::now();
        let outs = exe.execute(&[bufs.iter().collect()])?;
        times.push(t.elapsed().as_secs_f64());
        // Donated arguments come back as the leading outputs of a step; keep
        // feeding the outputs that match the parameters so donation works.
        let mut outs = outs.into_iter().next().unwrap_or_default();
        for (i, b) in bufs.iter_mut().enumerate() {
            if b.is_deleted()? && i < outs.len() {
                *b = std::mem::replace(&mut outs[i], client.buffer_from_host(&[0u8], &[1], 0)?);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    println!("{compile:.3} {:.4}", times[times.len() / 2]);
    Ok(())
}
