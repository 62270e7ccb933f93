//! `include/actc.h` is what cbindgen makes of the crate now: a changed signature or doc that
//! did not reach the header fails here. `ACTC_UPDATE_HEADER=1` rewrites it instead.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .unwrap()
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/actc.h");
    if std::env::var_os("ACTC_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `ACTC_UPDATE_HEADER=1 cargo test -p actc-capi --test header` and commit it",
        path.display()
    );
}
