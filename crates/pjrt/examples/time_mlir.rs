//! Times any single-device StableHLO module on the CPU plugin with
//! zero-filled arguments: `cargo run --release -p meshtrain-pjrt --example
//! time_mlir -- FILE.mlir [ITERATIONS]`. Prints compile seconds and the
//! median execute seconds.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: time_mlir FILE.mlir [ITERATIONS]")?;
    let iterations: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let mlir = std::fs::read_to_string(path)?;
    let (compile, median) = pjrt::time_module(&pjrt::cpu_client(1)?, &mlir, iterations)?;
    println!("{compile:.3} {median:.4}");
    Ok(())
}
