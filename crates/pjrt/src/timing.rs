//! Timing a module on one device with zero-filled arguments, for benches
//! that compare programs from elsewhere (e.g. JAX's exported step) on the
//! same plugin.

use std::time::Instant;

use crate::{Buffer, Client, CompileOptions, Error, Result};

/// Compile seconds and median execute seconds of `mlir` over `iterations`
/// runs on device 0. Arguments start as zeros; outputs that replace donated
/// arguments are fed back, so a donating training step runs as in a loop.
pub fn time_module(client: &Client, mlir: &str, iterations: usize) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let exe = client.compile(mlir, &CompileOptions::single())?;
    let compile = t0.elapsed().as_secs_f64();
    let params = exe.executable().optimized_hlo()?.parameters;
    let mut args: Vec<Buffer> = params
        .iter()
        .map(|p| {
            let ty = p.element_type.ok_or_else(|| {
                Error::invalid(
                    "time_module",
                    format!("unsupported parameter type {}", p.primitive_type),
                )
            })?;
            client.buffer_from_bytes(ty, &vec![0u8; p.size_in_bytes() as usize], &p.dims, 0)
        })
        .collect::<Result<_>>()?;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let outs = exe.execute(&[args.iter().collect()])?;
        times.push(t.elapsed().as_secs_f64());
        let mut outs = outs.into_iter().next().unwrap_or_default();
        for (i, a) in args.iter_mut().enumerate() {
            if a.is_deleted()? && i < outs.len() {
                std::mem::swap(a, &mut outs[i]);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((compile, times[times.len() / 2]))
}
