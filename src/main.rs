//! The `spillway` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spillway::config::Config;

/// Spillway: a self-hosted, Firehose-compatible delivery daemon.
#[derive(Parser)]
#[command(name = "spillway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT, then drain and exit.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit non-zero, naming the file, line and field, if it is invalid.
    Validate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
                // Plugins are compiled and initialised here too, so that a module the daemon
                // would refuse fails validation.
                for ds in &c.delivery_streams {
                    if let Err(e) = spillway::transform::Transforms::load(&ds.processing, None) {
                        eprintln!(
                            "error: {}: delivery stream {}: {e}",
                            config.display(),
                            ds.name.as_str()
                        );
                        return ExitCode::from(2);
                    }
                }
                println!(
                    "{}: ok ({} delivery stream{})",
                    config.display(),
                    c.delivery_streams.len(),
                    if c.delivery_streams.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(spillway::daemon::run(config)) {
                Ok(()) => {
                    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr; the level comes from `SPILLWAY_LOG` (error, warn, info, debug, trace; default info).
fn init_logging() {
    let level = std::env::var("SPILLWAY_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
