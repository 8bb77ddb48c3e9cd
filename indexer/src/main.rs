//! `crm-indexer`: applies domain events to the search index, and rebuilds or
//! verifies it from the store. See [`crm_indexer::cli`] for the commands,
//! their configuration and exit statuses.

use std::process::ExitCode;

use clap::Parser;
use crm_indexer::cli::{self, Cli};
use crm_indexer::startup::{init_tracing, LogOutput};

/// The allocator crm-api uses too: a rebuild encodes millions of short-lived
/// strings and commands on several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries the reports.
    init_tracing(&cli.config.log, cli.config.log_format, LogOutput::Stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    runtime.block_on(cli::execute(cli))
}
