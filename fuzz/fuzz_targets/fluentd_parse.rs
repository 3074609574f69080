//! The fluentd configuration parser and translator never panic, whatever the bytes.
//! Run: `cargo +nightly fuzz run fluentd_parse` (from the repository root; needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| (name.len() % 2 == 0).then(|| "v".to_string());
    if let Ok(root) = logship::fluentd::parse::parse_str(text, std::path::Path::new("fuzz.conf"), &env, 0) {
        let _ = logship::fluentd::translate::translate(&root, &env);
    }
});
