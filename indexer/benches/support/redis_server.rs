//! A private `redis-server` for a benchmark: a free port, no persistence,
//! stopped by a watchdog shell when the benchmark process is gone.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOW_TO_FIX: &str = "this benchmark starts its own redis-server: run the README's test \
    command `./scripts/test.sh` once (it installs redis-server when missing), then run the \
    benchmark again";

/// Starts `redis-server --port <free> --save '' --appendonly no`; returns its URL.
/// `DEBUG` is allowed from loopback, for [`finish_resizing`] (Redis 7 and
/// later need telling; earlier ones allow it and do not know the option).
pub fn start() -> String {
    let debug = match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let major = text
                .split_once("v=")
                .and_then(|(_, v)| v.split('.').next())
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_some_and(|m| m >= 7) {
                "--enable-debug-command local"
            } else {
                ""
            }
        }
        Ok(out) => panic!(
            "redis-server --version failed ({}): {HOW_TO_FIX}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run redis-server ({e}): {HOW_TO_FIX}"),
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
           --protected-mode yes {debug} --logfile '' >/dev/null 2>&1 & r=$!; \
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

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// `redis-server --version`, first line.
pub fn version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `nproc`, the CPU model name and the memory of this machine.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpus} CPUs (nproc), {model}, {mem_gib:.0} GiB RAM")
}

/// Whether Redis is moving its key table to a bigger one (`DEBUG HTSTATS`).
/// A Redis that refuses `DEBUG` is said not to be, with a warning.
async fn resizing(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let stats: Result<String, _> = redis::cmd("DEBUG")
        .arg("HTSTATS")
        .arg(0)
        .query_async(conn)
        .await;
    match stats {
        Ok(stats) => stats.contains("rehashing target"),
        Err(e) => {
            eprintln!("DEBUG HTSTATS refused ({e}): measuring without waiting for a resize");
            false
        }
    }
}

/// Brings Redis to the state it spends its life in before a measurement.
///
/// Redis grows its key table when the key count passes a power of two and
/// then moves the keys over a step at a time: one step per key read or
/// written, plus 1 ms every 100 ms when idle. A pre-load of a million
/// customers (about 5 million keys) ends in the middle of such a move, which
/// idle would take a minute or more, and during which every key read looks
/// in both tables and pays for a step. A long-running Redis is past it until
/// its key count doubles again. This drives the move to its end with cheap
/// reads (`EXISTS` of a key that is not there, each a step) and returns how
/// long that took.
pub async fn finish_resizing(url: &str) -> std::time::Duration {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let t = Instant::now();
    while resizing(&mut conn).await {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            pipe.cmd("EXISTS").arg(&["bench:absent"; 1000]).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    t.elapsed()
}
