//! Shared by the gemma tests: the transformers goldens' tensors.
#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::path::Path;

/// The tensors of `dir/golden.safetensors` (written by
/// scripts/gen_model_golden.py), as little-endian 4-byte words by name.
pub fn golden_tensors(dir: &Path) -> HashMap<String, Vec<[u8; 4]>> {
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let words = t
                .data()
                .chunks_exact(4)
                .map(|c| c.try_into().unwrap())
                .collect();
            (name, words)
        })
        .collect()
}

/// The f32 tensor `name`.
pub fn f32s(t: &HashMap<String, Vec<[u8; 4]>>, name: &str) -> Vec<f32> {
    t[name].iter().map(|w| f32::from_le_bytes(*w)).collect()
}

/// The i32 tensor `name`.
pub fn i32s(t: &HashMap<String, Vec<[u8; 4]>>, name: &str) -> Vec<i32> {
    t[name].iter().map(|w| i32::from_le_bytes(*w)).collect()
}
