//! Phone parsing throughput: our `crm_models::PhoneNumber::parse` (on
//! `rlibphonenumber`) against the same logic on the `phonenumber` 0.3 crate,
//! which it was first written on and which this benchmark retired.
//!
//! Run with `cargo bench -p crm-models --bench phone_parse`.
//! `PHONE_BENCH_N` sets the number of inputs (default 100000).
//!
//! Each case parses + validates + formats to E.164. Throughput is measured in a
//! pass without per-call timing; p50/p99 come from a second pass that times
//! every call with `Instant` (its ~20-40 ns overhead is included in both crates'
//! figures). With 2 threads each thread parses the whole input set (starting at
//! a different offset), released together by a barrier; parses/s is all parses
//! over wall time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crm_models::{PhoneNumber, Region};
use std::str::FromStr;

use phonenumber::country;

/// Parse, validate and format to E.164; `None` when refused.
type ParseFn = fn(&Input) -> Option<String>;

/// One input as the API would receive it: what was typed and the caller's region.
struct Input {
    raw: String,
    region: Option<Region>,
    pn_region: Option<country::Id>,
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn input(raw: String, region: Option<&str>) -> Input {
    Input {
        raw,
        region: region.map(|r| Region::parse(r).unwrap()),
        pn_region: region.map(|r| country::Id::from_str(r).unwrap()),
    }
}

fn generate(n: usize) -> Vec<Input> {
    let mut rng = Rng(0x00C0_FFEE_u64);
    (0..n)
        .map(|_| {
            let kind = rng.below(100);
            match kind {
                // Singapore mobiles, typed four ways (48%).
                0..=47 => {
                    let first = rng.pick(&["8", "9"]);
                    let sub = format!("{first}{}", rng.digits(7));
                    let (a, b) = sub.split_at(4);
                    let raw = match kind % 4 {
                        0 => format!("+65 {a} {b}"),
                        1 => format!("(065) {a}-{b}"),
                        2 => format!("0065 {sub}"),
                        _ => sub.clone(),
                    };
                    input(raw, Some("SG"))
                }
                // UK mobiles with the trunk 0 (12%).
                48..=59 => input(format!("07{} {}", rng.digits(3), rng.digits(6)), Some("GB")),
                // US numbers (12%).
                60..=71 => {
                    let area = rng.pick(&["415", "212", "646", "312", "206", "617"]);
                    let exch = format!("{}{}", 2 + rng.below(8), rng.digits(2));
                    input(format!("({area}) {exch}-{}", rng.digits(4)), Some("US"))
                }
                // Indian mobiles typed with +91 by SG-based staff (12%).
                72..=83 => input(format!("+91 98{}", rng.digits(8)), Some("SG")),
                // Garbage and near misses (16%).
                _ => {
                    let raw = match rng.below(8) {
                        0 => String::new(),
                        1 => "call me".to_string(),
                        2 => rng.digits(2),
                        3 => format!("+999 {} {}", rng.digits(4), rng.digits(4)),
                        4 => format!("1{}", rng.digits(7)),
                        5 => format!("{}ext{}", rng.digits(8), rng.digits(3)),
                        6 => rng.digits(45),
                        _ => format!("+65 {}", rng.digits(5)),
                    };
                    input(raw, Some("SG"))
                }
            }
        })
        .collect()
}

/// `crm_models::PhoneNumber::parse`'s logic, step for step, on phonenumber 0.3.
fn pn_parse(raw: &str, region: Option<country::Id>) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.chars().count() > 40 {
        return None;
    }
    let mut digits = String::with_capacity(raw.len());
    for (i, c) in raw.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '(' | ')' | '.' | '/' | '\u{a0}' => {}
            _ => return None,
        }
    }
    if digits.len() < 4 {
        return None;
    }
    if raw.starts_with('+') {
        return pn_international(&digits);
    }
    if let Some(rest) = digits.strip_prefix("00") {
        if let Some(p) = pn_international(rest) {
            return Some(p);
        }
    }
    let region = region?;
    if let Some(p) = pn_valid(phonenumber::parse(Some(region), &digits).ok()?) {
        return Some(p);
    }
    if let Some(cc) = phonenumber::metadata::DATABASE
        .by_id(region.as_ref())
        .map(|m| m.country_code().to_string())
    {
        let without_zero = digits.strip_prefix('0').unwrap_or(&digits);
        if without_zero.starts_with(&cc) {
            if let Some(p) = pn_international(without_zero) {
                return Some(p);
            }
        }
    }
    None
}

fn pn_international(digits: &str) -> Option<String> {
    pn_valid(phonenumber::parse(None, format!("+{digits}")).ok()?)
}

fn pn_valid(n: phonenumber::PhoneNumber) -> Option<String> {
    if !phonenumber::is_valid(&n) {
        return None;
    }
    Some(n.format().mode(phonenumber::Mode::E164).to_string())
}

fn ours(i: &Input) -> Option<String> {
    PhoneNumber::parse(&i.raw, i.region)
        .ok()
        .map(|p| p.as_str().to_owned())
}

fn theirs(i: &Input) -> Option<String> {
    pn_parse(&i.raw, i.pn_region)
}

struct Measured {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// From the throughput pass, if `/proc/thread-self/schedstat` is readable:
    /// CPU time the threads got, and time they were runnable but waiting for a core.
    on_cpu: Option<Duration>,
    runqueue: Option<Duration>,
    wall: Duration,
}

/// This thread's (time on CPU, time runnable but waiting for a CPU), in ns (Linux).
fn schedstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Runs `f` over every input on `threads` threads at once.
fn measure(inputs: &[Input], threads: usize, f: ParseFn) -> Measured {
    let n = inputs.len();
    let offset = |t: usize| t * n / threads;

    // Throughput pass: no per-call timing.
    let barrier = Barrier::new(threads + 1);
    let (start, sched) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let before = schedstat();
                    for k in 0..n {
                        black_box(f(black_box(&inputs[(offset(t) + k) % n])));
                    }
                    let after = schedstat();
                    before.zip(after).map(|(b, a)| (a.0 - b.0, a.1 - b.1))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let sched: Option<Vec<(u64, u64)>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        (start, sched)
    });
    let wall = start.elapsed();
    let per_sec = (n * threads) as f64 / wall.as_secs_f64();
    let on_cpu = sched
        .as_ref()
        .map(|v| Duration::from_nanos(v.iter().map(|x| x.0).sum()));
    let runqueue = sched.map(|v| Duration::from_nanos(v.iter().map(|x| x.1).sum()));

    // Latency pass: every call timed.
    let barrier = Barrier::new(threads);
    let mut lat: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(n);
                    barrier.wait();
                    for k in 0..n {
                        let i = &inputs[(offset(t) + k) % n];
                        let start = Instant::now();
                        black_box(f(black_box(i)));
                        lat.push(start.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    lat.sort_unstable();
    let q = |p: f64| Duration::from_nanos(lat[((lat.len() - 1) as f64 * p) as usize]);
    Measured {
        per_sec,
        p50: q(0.50),
        p99: q(0.99),
        on_cpu,
        runqueue,
        wall,
    }
}

fn main() {
    let n: usize = std::env::var("PHONE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let inputs = generate(n);

    // Warm up: builds both crates' lazily loaded metadata and fills
    // phonenumber's regex cache, so neither start-up is timed.
    let warm = n.min(10_000);
    for i in &inputs[..warm] {
        black_box(ours(i));
        black_box(theirs(i));
    }

    // Agreement on the E.164 result.
    let (mut valid_ours, mut valid_theirs, mut same, mut differ) = (0, 0, 0, 0);
    let mut examples = Vec::new();
    for i in &inputs {
        let (a, b) = (ours(i), theirs(i));
        valid_ours += usize::from(a.is_some());
        valid_theirs += usize::from(b.is_some());
        if a == b {
            same += usize::from(a.is_some());
        } else {
            differ += 1;
            if examples.len() < 8 {
                let region = i.region.map(|r| r.to_string());
                examples.push(format!(
                    "  {:?} ({}): ours={:?} phonenumber={:?}",
                    i.raw,
                    region.as_deref().unwrap_or("-"),
                    a,
                    b
                ));
            }
        }
    }
    println!("inputs: {n} (deterministic mix)");
    println!(
        "valid: ours (rlibphonenumber) {valid_ours}, phonenumber 0.3 {valid_theirs}; \
         same E.164 on {same}; disagreements: {differ}"
    );
    for e in &examples {
        println!("{e}");
    }
    println!();

    let cases: [(&str, ParseFn); 2] = [
        ("crm_models::PhoneNumber::parse (rlibphonenumber 2.2)", ours),
        ("same logic on phonenumber 0.3", theirs),
    ];
    println!(
        "| implementation | threads | parses/s | p50 | p99 | parses per CPU-s | cores got | waiting for a core | blocked |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut one = [0.0f64; 2];
    for (c, (name, f)) in cases.iter().enumerate() {
        for threads in [1, 2] {
            let m = measure(&inputs, threads, *f);
            if threads == 1 {
                one[c] = m.per_sec;
            }
            let scale = if threads == 2 {
                format!(" (x{:.2})", m.per_sec / one[c])
            } else {
                String::new()
            };
            // Of the threads' wall time: share on a core, share runnable but
            // waiting for one (machine load), and the rest, asleep (a lock).
            let sched = match (m.on_cpu, m.runqueue) {
                (Some(cpu), Some(rq)) => {
                    let total = m.wall.as_secs_f64() * threads as f64;
                    let (cpu, rq) = (cpu.as_secs_f64(), rq.as_secs_f64());
                    format!(
                        "{:.0} | {:.2} | {:.0}% | {:.0}%",
                        (n * threads) as f64 / cpu,
                        cpu / m.wall.as_secs_f64(),
                        100.0 * rq / total,
                        (100.0 * (total - cpu - rq) / total).max(0.0),
                    )
                }
                _ => "n/a | n/a | n/a | n/a".to_string(),
            };
            println!(
                "| {name} | {threads} | {:.0}{scale} | {:.2} µs | {:.2} µs | {sched} |",
                m.per_sec,
                m.p50.as_nanos() as f64 / 1000.0,
                m.p99.as_nanos() as f64 / 1000.0,
            );
        }
    }
}
