//! `crm-device-sim`: a fleet of simulated Android devices against a running
//! crm-api. Logs in as staff, enrolls `--devices` devices, uploads each one's
//! synthetic SMS and call log in batches (overlapping, some sent twice, failed
//! ones retried with back-off), then fires caller-ID lookups for the numbers
//! the logs used, and prints throughput and latency percentiles.
//!
//! ```text
//! crm-device-sim --url http://127.0.0.1:8080 --email admin@example.com --password '...' \
//!     --devices 32 --events 2000 --batch 500 --lookup-seconds 10
//! ```

use std::sync::Arc;

use clap::Parser;
use crm_mobile_bridge::sim::{self, percentile, UploadPlan};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Simulated Android devices for the CRM's mobile bridge"
)]
struct Args {
    /// crm-api's base URL.
    #[arg(long, env = "CRM_SIM_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A staff user who enrolls the devices.
    #[arg(long, env = "CRM_SIM_EMAIL")]
    email: String,
    #[arg(long, env = "CRM_SIM_PASSWORD")]
    password: String,
    #[arg(long, default_value_t = 32)]
    devices: usize,
    /// Events in each device's log.
    #[arg(long, default_value_t = 2_000)]
    events: usize,
    /// Events per batch (at most 500).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Events repeated from the previous batch.
    #[arg(long, default_value_t = 10)]
    overlap: usize,
    /// Share of batches sent twice.
    #[arg(long, default_value_t = 0.1)]
    resend_rate: f64,
    /// Distinct counterparts per device.
    #[arg(long, default_value_t = 200)]
    contacts: usize,
    /// Region the devices are enrolled with.
    #[arg(long, default_value = "SG")]
    region: String,
    /// Seconds of caller-ID lookups after the upload (0: none).
    #[arg(long, default_value_t = 10.0)]
    lookup_seconds: f64,
    /// Caller-ID lookups per second, all devices together, spread evenly
    /// (0: each device asks again as soon as it has its answer).
    #[arg(long, default_value_t = 0.0)]
    lookup_rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.url.trim_end_matches('/').to_string();
    let client = sim::client()?;
    let staff = sim::login(&client, &base, &args.email, &args.password).await?;
    let tokens = sim::enroll(&client, &base, &staff, args.devices, Some(&args.region)).await?;
    println!("enrolled {} devices", tokens.len());

    let plan = UploadPlan {
        events_per_device: args.events,
        batch: args.batch,
        overlap: args.overlap,
        resend_rate: args.resend_rate,
        contacts: args.contacts,
        seed: args.seed,
        pass: 0,
    };
    let up = sim::upload_fleet(&client, &base, &tokens, &plan).await?;
    println!(
        "upload: {} devices, {} requests, {} events sent: {} created, {} duplicate, {} rejected, {} retried requests",
        up.devices, up.requests, up.events_sent, up.created, up.duplicates, up.rejected, up.retries
    );
    println!(
        "upload: {:.1} s, {:.0} events/s handled, {:.0} new events/s stored; batch p50 {}, p99 {}",
        up.elapsed.as_secs_f64(),
        up.events_per_second(),
        up.created_per_second(),
        ms(percentile(&up.latencies, 0.5)),
        ms(percentile(&up.latencies, 0.99)),
    );

    if args.lookup_seconds > 0.0 {
        let mut numbers: Vec<String> = (0..args.devices)
            .flat_map(|d| sim::contacts(d, args.contacts, args.seed))
            .map(|(number, _)| number)
            .collect();
        // And some nobody has: caller-ID answers `known: false` for them.
        numbers.extend((0..numbers.len() / 10).map(|i| format!("+65 6{:07}", i)));
        let report = sim::caller_id_fleet(
            &base,
            &tokens,
            Arc::new(numbers),
            args.lookup_seconds,
            sim::pace(args.lookup_rate, tokens.len()),
        )
        .await?;
        println!(
            "caller-id: {} lookups from {} devices, {:.0}/s, {:.1}% known; p50 {}, p99 {}",
            report.lookups,
            tokens.len(),
            report.lookups as f64 / report.elapsed.as_secs_f64(),
            100.0 * report.known as f64 / report.lookups.max(1) as f64,
            ms(percentile(&report.latencies, 0.5)),
            ms(percentile(&report.latencies, 0.99)),
        );
    }
    Ok(())
}
