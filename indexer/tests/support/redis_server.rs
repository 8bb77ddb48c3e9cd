//! A Redis for tests.
//!
//! With `CRM_TEST_REDIS_URL` set, tests use that server. Otherwise the first
//! test that asks starts one `redis-server` for the whole test process, on a
//! free port, without persistence; a watchdog shell stops it when the test
//! process is gone. Either way each test gets its own key prefix, so tests
//! run in parallel without seeing each other's keys.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const HOW_TO_FIX: &str = "redis-server is needed by the index tests: run the README's test \
    command `./scripts/test.sh` (it installs redis-server when missing), or set \
    CRM_TEST_REDIS_URL to a Redis you already have";

/// The URL of the test Redis; starts it on first use.
pub fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("CRM_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => start(),
    })
    .clone()
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("crmtest:{}:", uuid::Uuid::new_v4().simple())
}

fn start() -> String {
    match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "redis-server --version failed ({}): {HOW_TO_FIX}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run redis-server ({e}): {HOW_TO_FIX}"),
    }
    let port = free_port();
    // The shell starts redis-server, then waits while this test process
    // lives; when it is gone (the harness exits without running our
    // destructors), it stops the server.
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
           --protected-mode yes --logfile '' >/dev/null 2>&1 & r=$!; \
         trap 'kill $r 2>/dev/null' EXIT INT TERM; \
         while kill -0 {pid} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done",
        pid = std::process::id()
    );
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): {HOW_TO_FIX}"));
    // Reaps the watchdog if it ends while the tests still run.
    std::thread::spawn(move || watchdog.wait());
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if answers_ping(port) {
            return format!("redis://127.0.0.1:{port}/0");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server on port {port} did not answer PING within 15 s: {HOW_TO_FIX}");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Every key starting with `prefix`.
pub fn keys_with_prefix(url: &str, prefix: &str) -> Vec<Vec<u8>> {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut conn = client
        .get_connection()
        .expect("a connection to the test Redis");
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .expect("KEYS");
    keys.sort();
    keys
}

/// Deletes a test's keys when dropped (best effort), so a shared Redis named
/// by `CRM_TEST_REDIS_URL` is left as it was found.
pub struct DeleteOnDrop {
    pub url: String,
    pub prefix: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut conn)
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(&key).query(&mut conn);
        }
    }
}
