//! The `sluice` command line: `serve`, `models`, `bench`.

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates many small, short-lived buffers (HTTP heads, JSON headers,
/// tensors), and glibc's malloc and free were ~10 % of the gateway's CPU per proxied request (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A KServe V2 inference gateway with dynamic batching and backpressure")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over KServe V2 HTTP.
    Serve(ServeArgs),
    /// List the models in the repository with their input/output signatures and settings.
    Models(ModelsArgs),
    /// Closed-loop load generator over V2 HTTP (and a raw in-process ONNX Runtime baseline).
    Bench(sluice::bench::BenchArgs),
    /// Prints the SHA-256 of an API key read from stdin, for `[[auth.tenants]] key_sha256` (one trailing newline is
    /// ignored).
    HashKey,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); see config/sluice.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Model repository directory (overrides [server] models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// HTTP listen address (overrides [server] http); port 0 picks a free port.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// gRPC listen address (overrides [server] grpc); port 0 picks a free port.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Admin listen address for /metrics and /scaling (overrides [admin] listen); port 0 picks a free port.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// KEDA external scaler gRPC listen address (overrides [scaling.keda] listen); port 0 picks a free port.
    #[arg(long)]
    scaler: Option<SocketAddr>,
    /// Log format (overrides [logging] format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
struct ModelsArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    models: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::read(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// The async runtime; its threads run at `nice` (see `server.runtime_thread_nice`).
fn runtime_at(nice: i32) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || sluice::scheduler::lower_thread_priority(nice))
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    runtime_at(0)
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(models) = args.models {
        config.server.models = models;
    }
    if let Some(http) = args.http {
        config.server.http = http;
    }
    if let Some(grpc) = args.grpc {
        config.server.grpc = grpc;
    }
    if let Some(admin) = args.admin {
        config.admin.listen = admin;
    }
    if let Some(scaler) = args.scaler {
        config.scaling.keda.listen = scaler;
    }
    if let Some(format) = args.log_format {
        config.logging.format = format;
    }
    // Checked after the flags are applied, naming the file (a flag may fix what the file says, e.g. --admin).
    let source = args.config.clone().unwrap_or_else(|| PathBuf::from("the command line"));
    config.validate(&source).map_err(|e| e.to_string())?;
    sluice::logging::init(&config.logging);
    runtime_at(config.server.runtime_thread_nice)?.block_on(async {
        let running = sluice::app::start(&config, sluice::server::shutdown_signal()).await.map_err(|e| e.to_string())?;
        let off = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        let (admin, scaler) = (off(running.admin_addr), off(running.scaler_addr));
        tracing::info!(http = %running.http_addr, grpc = %running.grpc_addr, admin, scaler, models = %config.server.models.display(), "sluice is serving");
        // A stable line on stdout for scripts and tests that start Sluice on port 0.
        println!("sluice listening http={} grpc={} admin={admin} scaler={scaler}", running.http_addr, running.grpc_addr);
        running.wait().await.map_err(|e| format!("server error: {e}"))
    })
}

fn models(args: ModelsArgs) -> Result<(), String> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(models) = args.models {
        config.server.models = models;
    }
    sluice::logging::init(&sluice::config::LoggingConfig { level: "warn".into(), ..config.logging.clone() });
    runtime()?.block_on(async {
        sluice::backend::onnx::init_runtime(config.onnxruntime.library.as_deref()).map_err(|e| e.to_string())?;
        let repo = sluice::repository::Repository::load(&config.server.models, &config.model_defaults, &config.cache, &sluice::metrics::Metrics::new(false)).map_err(|e| e.to_string())?;
        for m in repo.all() {
            let s = &m.settings;
            println!(
                "{}:{}  platform={} provider={} max_batch_size={} instances={} threads={} max_queue_delay={:?} queue={}req/{}rows timeout={:?}",
                m.name, m.version, m.platform, m.execution_provider, s.max_batch_size, s.instances, s.threads, s.max_queue_delay,
                s.queue_capacity, s.queue_max_rows, s.queue_timeout
            );
            for (kind, specs) in [("input ", &m.signature.inputs), ("output", &m.signature.outputs)] {
                for t in specs {
                    println!("    {kind} {:<16} {:<6} {:?}", t.name, t.dtype.v2_name(), t.dims);
                }
            }
        }
        repo.close();
        Ok(())
    })
}

fn hash_key() -> Result<(), String> {
    let mut key = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut key).map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    let key = key.strip_suffix('\n').map(|k| k.strip_suffix('\r').unwrap_or(k)).unwrap_or(&key);
    if key.is_empty() {
        return Err("no key on stdin (e.g. `echo -n \"$KEY\" | sluice hash-key`)".into());
    }
    println!("{}", sluice::admission::auth::hash_key(key));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models(args) => models(args),
        Command::Bench(args) => sluice::bench::main(args),
        Command::HashKey => hash_key(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sluice: error: {message}");
            ExitCode::FAILURE
        }
    }
}
