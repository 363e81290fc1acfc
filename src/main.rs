//! The `switchyard` command line.
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use switchyard::sim::SimArgs;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run a simulated OpenAI-compatible model server (latency model, prefix
    /// KV cache, fault injection) for demos, tests and benches.
    Sim(SimArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Plain text when piped, so scripts can read `addr=...` from the log.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => switchyard::sim::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "switchyard failed");
            ExitCode::FAILURE
        }
    }
}
