//! Child processes of a test that it must be able to kill and start again:
//! a `redis-server` of its own ([`RedisProcess`]), the `crm-api` binary
//! ([`ApiProcess`]), and a watchdog that ends a child when the test process
//! is gone ([`watch`]).
//!
//! Included with `#[path = "common/processes.rs"] mod processes;` by the
//! tests and benches that need it.

#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic fails the test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HOW_TO_FIX_REDIS: &str = "redis-server is needed: run the README's test command \
    `./scripts/test.sh` (it installs redis-server when missing), then run the tests again";

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Starts a watchdog shell that SIGKILLs `pid` once this test process is
/// gone (the harness exits without running destructors, or is killed). It
/// ends by itself when `pid` ends.
pub fn watch(pid: u32) {
    let script =
        "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
                  kill -0 \"$1\" 2>/dev/null || kill -9 \"$2\" 2>/dev/null";
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh runs");
    // Reaps the watchdog when it ends while the test still runs.
    std::thread::spawn(move || watchdog.wait());
}

/// Whether a Redis answers `PING` on this port.
pub fn answers_ping(port: u16) -> bool {
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

/// A `redis-server` of the test's own on a fixed port, which the test can
/// SIGKILL and start again. With `persistent`, it keeps an append-only file
/// fsynced on every write in its directory, so that a restart after a kill
/// finds what it held (as a production Redis with AOF does); otherwise it
/// keeps nothing.
pub struct RedisProcess {
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts one on a free port; `dir` holds its files (and log).
    pub fn start(dir: &Path, persistent: bool) -> RedisProcess {
        let mut redis = RedisProcess {
            port: free_port(),
            dir: dir.to_path_buf(),
            persistent,
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port (after [`RedisProcess::kill`]) and
    /// waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        std::fs::create_dir_all(&self.dir).unwrap();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--daemonize", "no"]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): {HOW_TO_FIX_REDIS}"));
        watch(child.id());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server on port {port} exited ({status}): {log}\n{HOW_TO_FIX_REDIS}");
            }
            if answers_ping(self.port) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {port} did not answer PING within 15 s: {HOW_TO_FIX_REDIS}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `crm-api` child process, started again after each kill on a new port.
/// Its output goes to a log file per start; the logs are printed when the
/// test fails.
pub struct ApiProcess {
    env: Vec<(String, String)>,
    logs: tempfile::TempDir,
    log_files: Vec<PathBuf>,
    child: Option<Child>,
    pub address: String,
}

impl ApiProcess {
    pub fn new(env: Vec<(String, String)>) -> ApiProcess {
        ApiProcess {
            env,
            logs: tempfile::tempdir().unwrap(),
            log_files: Vec::new(),
            child: None,
            address: String::new(),
        }
    }

    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        // Nothing of the developer's own configuration leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("CRM_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts crm-api and waits until `/readyz` answers 200.
    pub async fn start(&mut self, client: &reqwest::Client) {
        assert!(self.child.is_none());
        let port = free_port();
        let log = self
            .logs
            .path()
            .join(format!("crm-api-{}.log", self.log_files.len()));
        let out = std::fs::File::create(&log).unwrap();
        let child = self
            .command(Path::new(env!("CARGO_BIN_EXE_crm-api")))
            .env("CRM_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("crm-api starts");
        watch(child.id());
        self.log_files.push(log);
        self.child = Some(child);
        self.address = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("crm-api exited at start-up ({status}); see its log below");
            }
            let ready = client.get(format!("{}/readyz", self.address)).send().await;
            if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "crm-api did not answer /readyz within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for log in &self.log_files {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {} (last lines) ---\n{}",
                    log.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

/// The `crm-indexer` binary built beside `crm-api` (by `cargo test
/// --workspace`, as the README's test command runs it).
pub fn crm_indexer_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_crm-api")).with_file_name("crm-indexer");
    assert!(
        path.is_file(),
        "{} does not exist: build it first with `cargo build --workspace` (the README's \
         `./scripts/test.sh` runs `cargo test --workspace`, which builds it)",
        path.display()
    );
    path
}
