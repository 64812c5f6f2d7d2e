//! Any host profile text: parsing never panics; an accepted profile has a
//! power-of-two page size and usable ranges inside its aperture.
#![no_main]

use iommufd_sim::profile::SimHostSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(spec) = SimHostSpec::parse(&text) {
        assert!(spec.page_size.is_power_of_two());
        for r in spec.usable_ranges() {
            assert!(spec.aperture.covers(&r));
        }
    }
});
