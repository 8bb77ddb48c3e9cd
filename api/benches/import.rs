//! Bulk import and export on the embedded store.
//!
//! `cargo bench -p crm-api --bench import [-- --customers 1000000 --engagements 500000]`
//!
//! Writes a CSV of new customers (name, phone, email: every row a new
//! person) and one of SMS engagements naming those customers by phone, in a
//! temporary directory; imports both with the import `crm-api import` and
//! `POST /v1/imports` run (chunks of 1,000 through the service), then
//! exports every customer as CSV to a file. Prints rows per second and the
//! process's resident memory: before each phase and the most it reached
//! during it (sampled after every chunk or page).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crm_api::bulk::export::{Export, ExportRequest, Format, Kind, RawExportRequest};
use crm_api::bulk::import::{Job, NewImport};
use crm_models::import::{ImportFormat, ImportKind};
use crm_models::service::Crm;
use crm_models::store::{EmbeddedStore, Store};

struct Args {
    customers: usize,
    engagements: usize,
}

fn args() -> Args {
    let mut a = Args {
        customers: 1_000_000,
        engagements: 500_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--customers", Some(n)) => a.customers = n,
            ("--engagements", Some(n)) => a.engagements = n,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Resident memory now, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn phone(i: usize) -> String {
    format!("+65 9{:03} {:04}", (i / 10_000) % 1000, i % 10_000)
}

fn customers_csv(path: &Path, n: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "Full Name,Mobile,E-mail").unwrap();
    for i in 0..n {
        writeln!(f, "Customer {i},{},Customer.{i}@Acme.io", phone(i)).unwrap();
    }
    f.flush().unwrap();
}

fn engagements_csv(path: &Path, n: usize, customers: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "customer_phone,channel,direction,occurred_at,body,client_event_id"
    )
    .unwrap();
    for i in 0..n {
        let who = (i * 7919) % customers;
        writeln!(
            f,
            "{},sms,{},2026-11-{:02}T{:02}:{:02}:00Z,Is the flat still available? ({i}),bench-{i}",
            phone(who),
            if i % 2 == 0 { "inbound" } else { "outbound" },
            1 + i % 28,
            i % 24,
            i % 60
        )
        .unwrap();
    }
    f.flush().unwrap();
}

async fn import(
    crm: &Crm,
    path: &Path,
    kind: ImportKind,
    mapping: &[(&str, &str)],
) -> (u64, f64, f64) {
    let record = NewImport {
        kind,
        format: ImportFormat::Csv,
        dry_run: false,
        mapping: mapping
            .iter()
            .map(|(c, f)| (c.to_string(), f.to_string()))
            .collect(),
        region: Some("SG".into()),
        created_by: "bench".into(),
        idempotency_key: None,
        bytes_total: Some(std::fs::metadata(path).unwrap().len()),
    }
    .record(uuid::Uuid::now_v7());
    crm.store().insert_import(&record).await.unwrap();
    let job = Job::open(crm.clone(), record, path.to_path_buf())
        .await
        .unwrap();
    let before = rss_mib();
    let mut peak = before;
    let started = Instant::now();
    let done = job.run(|_| peak = peak.max(rss_mib())).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(done.counts.rejected, 0, "{:?}", done.counts);
    println!(
        "  {:?}: {} rows in {seconds:.1} s = {:.0} rows/s; created {}, linked {}, duplicates {}; RSS {before:.0} MiB before, at most {peak:.0} MiB",
        kind,
        done.counts.rows_read,
        done.counts.rows_read as f64 / seconds,
        done.counts.created,
        done.counts.linked,
        done.counts.duplicates,
    );
    (done.counts.rows_read, seconds, peak)
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let customers_file = dir.path().join("customers.csv");
    let engagements_file = dir.path().join("engagements.csv");
    customers_csv(&customers_file, a.customers);
    engagements_csv(&engagements_file, a.engagements, a.customers);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("data")).unwrap());
    let crm = Crm::new(store.clone());
    println!(
        "import and export on the embedded store: {} customers, {} engagements",
        a.customers, a.engagements
    );
    import(
        &crm,
        &customers_file,
        ImportKind::Customers,
        &[
            ("Full Name", "name"),
            ("Mobile", "phones"),
            ("E-mail", "emails"),
        ],
    )
    .await;
    if a.engagements > 0 {
        import(&crm, &engagements_file, ImportKind::Engagements, &[]).await;
    }

    let request = ExportRequest::parse(
        Kind::Customers,
        &RawExportRequest {
            format: Some("csv"),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(request.format, Format::Csv);
    let out_path = dir.path().join("export.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path).unwrap());
    let before = rss_mib();
    let mut peak = before;
    let started = Instant::now();
    let mut export = Export::new(store.clone(), request);
    let mut rows = 0u64;
    while let Some(part) = export.next_part().await.unwrap() {
        out.write_all(&part.bytes).unwrap();
        rows += part.rows;
        peak = peak.max(rss_mib());
    }
    out.flush().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  export customers (csv): {rows} rows ({:.0} MiB) in {seconds:.1} s = {:.0} rows/s; RSS {before:.0} MiB before, at most {peak:.0} MiB",
        std::fs::metadata(&out_path).unwrap().len() as f64 / (1024.0 * 1024.0),
        rows as f64 / seconds
    );
}
