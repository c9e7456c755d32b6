//! Every object the binding creates is destroyed through the API: thousands
//! of compile / transfer / execute / read / drop cycles keep the resident
//! memory of the process flat. (Its own binary, so no other test shares
//! the process while it measures.)

use pjrt::CompileOptions;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn cycle(client: &pjrt::Client, i: usize) {
    // A fresh constant each time, so the compile cannot be served from a cache.
    let mlir = format!(
        "func.func public @main(%a: tensor<128x128xf32> {{tf.aliasing_output = 0 : i32}}, %b: tensor<128x128xf32>) -> (tensor<128x128xf32>, tensor<f32>) {{
           %c = stablehlo.constant dense<{i}.0> : tensor<128x128xf32>
           %0 = stablehlo.add %a, %b : tensor<128x128xf32>
           %1 = stablehlo.add %0, %c : tensor<128x128xf32>
           %z = stablehlo.constant dense<0.0> : tensor<f32>
           %2 = stablehlo.reduce(%1 init: %z) applies stablehlo.add across dimensions = [0, 1] : (tensor<128x128xf32>, tensor<f32>) -> tensor<f32>
           return %1, %2 : tensor<128x128xf32>, tensor<f32>
         }}"
    );
    let exe = client.compile(&mlir, &CompileOptions::single()).unwrap();
    let data = vec![1.0f32; 128 * 128];
    let a = client.buffer_from_host(&data, &[128, 128], 0).unwrap();
    let b = client.buffer_from_host(&data, &[128, 128], 0).unwrap();
    let out = exe.execute(&[vec![&a, &b]]).unwrap();
    let sum = out[0][1].to_host::<f32>().unwrap()[0];
    assert_eq!(sum, (2.0 + i as f32) * 16384.0);
    let _ = exe.executable().memory_stats().unwrap();
    // A failing call creates and must destroy a PJRT_Error.
    assert!(a.to_host::<f32>().is_err());
}

#[test]
fn thousands_of_cycles_keep_resident_memory_flat() {
    let client = pjrt::cpu_client(1).unwrap();
    for i in 0..300 {
        cycle(&client, i);
    }
    let before = resident_bytes();
    for i in 300..2300 {
        cycle(&client, i);
    }
    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    // 2000 cycles move 256 MB through host-to-device buffers and create
    // 2000 executables; a leak of any of them would add far more than this.
    assert!(
        growth < 24 << 20,
        "resident memory grew by {} MiB over 2000 cycles",
        growth >> 20
    );
    eprintln!("resident: {} MiB -> {} MiB", before >> 20, after >> 20);
}
