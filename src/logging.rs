//! Log set-up: human-readable or JSON lines through `tracing`. Request lines carry the request id via the `infer` span.

use crate::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

pub fn init(config: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
