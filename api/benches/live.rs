//! Live push: how many desktop streams one crm-api holds and what each
//! costs, and how long a ringing phone takes to reach its owner's desktop.
//!
//! `cargo bench -p crm-api --bench live [-- --streams 10000 --lookups 300]`
//!
//! Starts the crm-api binary as a process of its own (embedded store, no
//! Redis), so that its resident memory is the server's alone:
//! - opens `--streams` idle SSE streams (`GET /v1/stream`, an agent of
//!   their own who gets no events) over plain sockets that read nothing, and
//!   reports the server's RSS before and after: memory per stream;
//! - with those streams held, one device asks caller-ID `--lookups` times,
//!   one at a time; its owner's stream receives each `call.incoming`. It
//!   reports the time from sending the lookup to the event arriving on the
//!   stream (p50/p99) beside the lookup's own round trip (the baseline, the
//!   same requests in the same run).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    streams: usize,
    lookups: usize,
}

fn args() -> Args {
    let mut a = Args {
        streams: 10_000,
        lookups: 300,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--streams", Some(n)) => a.streams = n,
            ("--lookups", Some(n)) => a.lookups = n,
            _ => {}
        }
        i += 1;
    }
    a
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

async fn start(dir: &Path) -> Server {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm-api"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CRM_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd
        .env("CRM_LISTEN", format!("127.0.0.1:{port}"))
        .env("CRM_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CRM_DATA_DIR", dir)
        .env("CRM_ADMIN_EMAIL", "bench@example.com")
        .env("CRM_ADMIN_PASSWORD", "bench-password-123")
        .env("CRM_DEFAULT_REGION", "SG")
        .env("CRM_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client
            .get(format!("http://{}/readyz", server.addr))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        assert!(Instant::now() < deadline, "crm-api did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn login(client: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let r: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_string()
}

/// An idle stream on a plain socket: the request and the response headers,
/// then nothing is read.
async fn idle_stream(addr: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed a stream");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let admin = login(&client, &base, "bench@example.com", "bench-password-123").await;
    for email in ["owner@example.com", "idle@example.com"] {
        post(
            &client,
            format!("{base}/v1/users"),
            &admin,
            json!({"email": email, "password": "agent-password-123", "role": "agent", "name": "Agent"}),
        )
        .await;
    }
    let owner = login(&client, &base, "owner@example.com", "agent-password-123").await;
    let idle = login(&client, &base, "idle@example.com", "agent-password-123").await;
    post(
        &client,
        format!("{base}/v1/customers"),
        &owner,
        json!({"name": "Ann Tan", "phones": ["+65 8122 6418"], "emails": ["ann@example.com"]}),
    )
    .await;
    let device = post(
        &client,
        format!("{base}/v1/devices"),
        &owner,
        json!({"name": "Pixel", "default_region": "SG"}),
    )
    .await;
    let device = device["token"].as_str().unwrap().to_string();
    // Warm up the routes once before measuring memory.
    let _ = idle_stream(&server.addr, &idle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let before = rss(pid);

    let started = Instant::now();
    let mut held = Vec::with_capacity(args.streams);
    let mut opening = futures::stream::iter(0..args.streams)
        .map(|_| idle_stream(&server.addr, &idle))
        .buffer_unordered(64);
    while let Some(s) = opening.next().await {
        held.push(s);
    }
    drop(opening);
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(pid);
    let per_stream = after.saturating_sub(before) as f64 / args.streams.max(1) as f64;

    // The owner's desktop.
    let mut stream = client
        .get(format!("{base}/v1/stream"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert!(stream.status().is_success());
    let mut pending = String::new();
    let mut lookup_rtt = Vec::with_capacity(args.lookups);
    let mut to_desktop = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let sent = Instant::now();
        let r = client
            .get(format!("{base}/v1/mobile/caller-id?number=%2B6581226418"))
            .bearer_auth(&device)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let _ = r.bytes().await.unwrap();
        lookup_rtt.push(sent.elapsed());
        // Wait for the next call.incoming on the desktop's stream.
        loop {
            if let Some(end) = pending.find("\n\n") {
                let frame: String = pending.drain(..end + 2).collect();
                if frame.lines().any(|l| l == "event: call.incoming") {
                    to_desktop.push(sent.elapsed());
                    break;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
                .await
                .expect("call.incoming within 10 s")
                .unwrap()
                .expect("the stream goes on");
            pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    lookup_rtt.sort();
    to_desktop.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    println!("live push, crm-api on the embedded store, its own process");
    println!();
    println!("| streams held | opened in | server RSS before | after | per stream |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        held.len(),
        opened_in.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_stream / 1024.0
    );
    println!();
    println!(
        "| with {} streams held, {} lookups one at a time | p50 | p99 |",
        held.len(),
        args.lookups
    );
    println!("| --- | --- | --- |");
    println!(
        "| caller-ID round trip (baseline) | {:.2} ms | {:.2} ms |",
        ms(percentile(&lookup_rtt, 0.5)),
        ms(percentile(&lookup_rtt, 0.99))
    );
    println!(
        "| lookup sent to call.incoming on the owner's stream | {:.2} ms | {:.2} ms |",
        ms(percentile(&to_desktop, 0.5)),
        ms(percentile(&to_desktop, 0.99))
    );
    drop(held);
}
