//! Any script text: parsing and running never panic, and the exit status
//! agrees with the outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let r = viommu::replay::run_script(&text, &mut out);
    let code = viommu::replay::exit_code(&r);
    match r {
        Ok(s) => assert_eq!(code, if s.failed == 0 { 0 } else { 1 }),
        Err(e) => {
            assert_eq!(code, 2);
            assert!(e.line >= 1);
        }
    }
});
