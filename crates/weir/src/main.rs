//! The `weir` binary: parses the command line and hands off to the command's
//! module. Exit codes: 0 success, 1 failure, 2 bad usage or configuration,
//! 3 `task wait` timed out, 4 `task wait` saw the task end dead or canceled.

mod bench;
mod cli;
mod commands;
mod duration;
mod keys;
mod serve;
mod store;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the server allocates many small, short-lived
/// buffers per request, and profiles showed ~25% of server time in glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

/// Exit code of a configuration error (as clap's usage errors).
pub(crate) const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(
        matches!(cli.command, Command::Serve(_) | Command::Worker(_)),
        cli.log_format,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => match serve::config(&args, serve::raise_open_files_limit()) {
                Ok(settings) => match serve::run(settings).await {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    // What only the opened store could tell (a public bind
                    // without a key) is a configuration error too.
                    Err(e) if e.is::<serve::ConfigError>() => {
                        eprintln!("error: {e}");
                        Ok(ExitCode::from(EXIT_CONFIG))
                    }
                    Err(e) => Err(e),
                },
                Err(serve::ConfigError(msg)) => {
                    eprintln!("error: {msg}");
                    Ok(ExitCode::from(EXIT_CONFIG))
                }
            },
            Command::Enqueue(args) => commands::enqueue(args).await,
            Command::Task(cmd) => commands::task(cmd).await,
            Command::Queues(args) => commands::queues(args).await,
            Command::Queue(cmd) => commands::queue(cmd).await,
            Command::Dead(cmd) => commands::dead(cmd).await,
            Command::Schedule(cmd) => commands::schedule(cmd).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Keys(cmd) => keys::run(cmd).await,
            Command::Worker(args) => match worker::config(&args) {
                Ok(config) => worker::run(config).await,
                Err(serve::ConfigError(msg)) => {
                    eprintln!("error: {msg}");
                    Ok(ExitCode::from(EXIT_CONFIG))
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}{}", certificate_hint(&e));
            ExitCode::FAILURE
        }
    }
}

/// What to do about an https:// server whose certificate this client refused
/// (rustls says `invalid peer certificate: UnknownIssuer` and no more), or
/// nothing.
fn certificate_hint(e: &anyhow::Error) -> &'static str {
    if e.chain()
        .any(|cause| cause.to_string().starts_with("invalid peer certificate"))
    {
        " (to trust a private CA, or a self-signed certificate without the CA flag, \
         pass --ca-cert FILE or set WEIR_CA_CERT)"
    } else {
        ""
    }
}

/// Logs go to stderr (stdout is for results and the `listening` line). The
/// filter comes from `WEIR_LOG`, else `RUST_LOG`, else `info` for the server and
/// the worker, `warn` for client commands (the storage engine's own info lines are noise to
/// an operator, so they start at `warn`).
fn init_tracing(server: bool, format: cli::LogFormat) {
    let default = if server { "info" } else { "warn" };
    let filter = ["WEIR_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| EnvFilter::try_from_env(var).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        cli::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        cli::LogFormat::Json => fmt.json().with_current_span(true).init(),
    }
}
