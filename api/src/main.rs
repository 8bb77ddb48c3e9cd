use std::io::BufRead;

use anyhow::Context;
use clap::Parser;
use crm_api::config::{AnalyticsCommand, Cli, Command, UserCommand};
use crm_api::{open_store, shutdown_signal, telemetry, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(&cli.config.log, cli.config.log_format);
    match cli.command {
        None | Some(Command::Serve) => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Some(Command::Export {
            kind,
            format,
            out,
            updated_since,
            channel,
            from,
            to,
            after,
        }) => {
            let args = crm_api::bulk::cli::ExportArgs {
                kind,
                format,
                out,
                updated_since,
                channel,
                from,
                to,
                after,
            };
            crm_api::bulk::cli::export(&cli.config, args).await
        }
        Some(Command::Import {
            file,
            kind,
            format,
            mapping,
            region,
            dry_run,
            resume,
        }) => {
            let args = crm_api::bulk::cli::ImportArgs {
                file,
                kind,
                format,
                mapping,
                region,
                dry_run,
                resume,
            };
            crm_api::bulk::cli::import(&cli.config, args).await
        }
        Some(Command::Repair) => {
            let store = open_store(&cli.config).await?;
            let report = crm_models::service::Crm::new(store).repair().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::Analytics { command }) => {
            let store = open_store(&cli.config).await?;
            let zone = cli.config.analytics.timezone;
            match command {
                AnalyticsCommand::Rebuild => crm_api::analytics::rebuild(store, zone).await,
                AnalyticsCommand::Verify => {
                    if crm_api::analytics::verify(store, zone).await? {
                        Ok(())
                    } else {
                        std::process::exit(1)
                    }
                }
            }
        }
        Some(Command::Openapi) => {
            print!("{}", crm_api::openapi::yaml().map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Some(Command::User {
            command: UserCommand::Create { email, role, name },
        }) => {
            let password = match std::env::var("CRM_NEW_USER_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the password")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let store = open_store(&cli.config).await?;
            let user =
                crm_api::auth::create_user_cli(store, &email, &name, &role, &password).await?;
            println!(
                "created user {} ({}) with role {}",
                user.id, user.email, role
            );
            Ok(())
        }
    }
}
