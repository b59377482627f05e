//! Fuzzes bundle parsing and config decoding/validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_config::bundle::Bundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::parse(data) {
        for (name, bytes) in bundle.entries() {
            assert_eq!(bundle.get(name), Some(bytes));
        }
        if let Ok(config) = bundle.node_config() {
            assert!(config.validate().is_ok());
            for vm in &config.vms {
                assert!(bundle.get(&vm.kernel).is_some());
            }
        }
    }
});
