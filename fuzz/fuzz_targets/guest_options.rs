//! Any model name and option tokens: parsing never panics, and an accepted
//! configuration prints options that parse back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viommu::models::GuestModel;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut toks = text.split_whitespace();
    let model = toks.next().unwrap_or("");
    let opts: Vec<&str> = toks.collect();
    if let Ok(cfg) = GuestModel::from_options(model, &opts) {
        let printed: Vec<String> = cfg.options().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let printed: Vec<&str> = printed.iter().map(String::as_str).collect();
        let again = GuestModel::from_options(cfg.model_name(), &printed).expect("printed options parse");
        assert_eq!(again, cfg);
    }
});
