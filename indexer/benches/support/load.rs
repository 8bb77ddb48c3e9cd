//! Load generation shared by the benchmarks: run an operation from N tasks
//! for a while and report throughput and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

pub struct Stats {
    pub ops: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Share of operations whose check passed.
    pub ok: f64,
}

pub type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, bool> + Send + Sync>;

/// Runs `op` from `concurrency` tasks for `seconds` (after a short warm-up);
/// each call gets a distinct sequence number.
pub async fn run(concurrency: usize, seconds: f64, op: Op) -> Stats {
    let warm_up = Instant::now() + Duration::from_millis(500);
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, seq) = (op.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < warm_up {
                op(seq.fetch_add(1, Ordering::Relaxed)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, seq) = (op.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut ok = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                ok += usize::from(op(seq.fetch_add(1, Ordering::Relaxed)).await);
                latencies.push(t.elapsed());
            }
            (latencies, ok)
        }));
    }
    let mut latencies = Vec::new();
    let mut ok = 0;
    for t in tasks {
        let (l, o) = t.await.unwrap();
        latencies.extend(l);
        ok += o;
    }
    let elapsed = start.elapsed();
    stats(latencies, ok, elapsed)
}

pub fn stats(mut latencies: Vec<Duration>, ok: usize, elapsed: Duration) -> Stats {
    latencies.sort();
    let n = latencies.len().max(1);
    let pct = |p: f64| {
        latencies
            .get(((n as f64 * p) as usize).min(n - 1))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        ops: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        ok: ok as f64 / n as f64,
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
