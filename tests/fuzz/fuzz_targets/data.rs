#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| actc_tests::fuzz::data(bytes));
