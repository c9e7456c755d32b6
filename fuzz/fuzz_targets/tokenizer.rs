#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, caught or not; meshtrain catches
    // the panics of the `tokenizers` library on malformed files and turns
    // them into errors. The default hook is restored so that only a panic
    // that escapes the target (caught by libfuzzer-sys) is a finding.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    fuzz_targets::tokenizer(data);
});
