//! Every integration test, in one test binary: each file of `tests/` is a module here. One binary links once, where
//! nineteen linked nineteen times (most of the test build's time on a 2-core CI machine). Tests of one file run as
//! `cargo test --test integration remote::` (a module-path filter).

mod common;

mod auth;
mod bad_input;
mod batching;
mod cache;
mod cache_redis;
mod cli;
mod drain;
mod fuzz_regressions;
mod grpc;
mod http_api;
mod http_lane;
mod keda_scaler;
mod metrics;
mod redis_tier;
mod reload;
mod remote;
mod scheduler;
mod slowloris;
mod tensor_props;
mod tls;

/// With `autotests = false`, a file of `tests/` that is not declared above would never build or run: every one is.
#[test]
fn every_test_file_is_a_module_here() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let declared = include_str!("main.rs");
    let entries = std::fs::read_dir(&dir).expect("tests/ is readable");
    let mut missing = Vec::new();
    for entry in entries {
        let name = entry.expect("a tests/ entry").file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            if !declared.contains(&format!("\nmod {module};\n")) {
                missing.push(name);
            }
        }
    }
    assert!(missing.is_empty(), "tests/ files not declared in tests/main.rs (they would never run): {missing:?}");
}
