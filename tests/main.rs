//! Every integration test, in one test binary: each file of `tests/` is a module here. One binary links once, where
//! twenty linked twenty times (most of the test build's time on a 2-core CI machine). Tests of one file run as
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
mod keda_scaler;
mod metrics;
mod redis_tier;
mod reload;
mod remote;
mod scheduler;
mod slowloris;
mod tensor_props;
mod tls;
