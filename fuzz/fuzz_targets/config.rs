//! Configuration loading on arbitrary text: it must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // `spill_dir` and `ca_file` touch the file system: keep them out of the input.
        if text.contains("spill_dir") || text.contains("ca_file") {
            return;
        }
        if let Err(e) = voxgate::config::Config::from_toml_with_env(text, "fuzz.toml", &|_| None) {
            // Rendering the error must work too.
            let _ = e.to_string();
        }
    }
});
