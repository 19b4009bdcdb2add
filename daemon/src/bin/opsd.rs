//! The `opsd` daemon.

use std::io::IsTerminal;

use clap::Parser;
use opsd::config::{Config, Flags, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opsd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=off"));
    // Colours only for a person at a terminal: a log file or a journal gets
    // plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let config_format = config.log_format;
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("opsd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(opsd::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Said once: as a log record for JSON logs (a collector reads
        // those), else as the last line on stderr.
        Err(e) => {
            match config_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("opsd: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
