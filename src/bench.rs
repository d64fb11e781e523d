//! `sluice bench`: see below.
#[derive(clap::Args)]
pub struct BenchArgs {}
pub fn main(_args: BenchArgs) -> Result<(), String> { Err("not yet".into()) }
