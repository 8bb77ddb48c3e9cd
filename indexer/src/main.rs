//! `crm-indexer`: applies domain events to the search index, and rebuilds or
//! verifies it from the store.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "crm-indexer",
    version,
    about = "Keeps the CRM search index in step with the store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the event stream and apply it to the index.
    Run,
    /// Rebuild every index key from the store.
    Rebuild,
    /// Compare the index with the store; exit non-zero on any difference.
    Verify,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run | Command::Rebuild | Command::Verify => {
            anyhow::bail!(
                "run, rebuild and verify are not wired to the store and the event stream yet"
            )
        }
    }
}
