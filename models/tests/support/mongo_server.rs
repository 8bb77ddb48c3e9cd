//! A MongoDB-compatible server for the integration tests, hermetically.
//!
//! With `CRM_TEST_MONGODB_URI` set, tests use that server. Otherwise the first
//! test that asks starts one `secantusd-py --storage-path :memory:` (the PyPI
//! package `secantusdb`) on a free port, and every test of the same test binary
//! shares it; each test then works in its own database.
//!
//! # Lifetime
//!
//! Rust runs no destructors for statics at exit, so the server is not stopped
//! by a `Drop`. Instead it runs under a small `sh` watchdog: a loop that checks
//! once a second whether the test process is still alive (`kill -0 <pid>`) and
//! sends the server SIGTERM when it is not (secantusd then removes its
//! in-memory temporary directory). This also works when the test process is
//! killed, and the server outlives the test run by at most about a second.
//! The watchdog and server run in their own process group, so a Ctrl-C in the
//! terminal reaches the test process only; if the server cannot be started,
//! the whole group is terminated.
//!
//! # Finding the server
//!
//! `secantusd-py` on `PATH`, else in `$CRM_TEST_VENV/bin`, else in
//! `<workspace root>/.venv/bin`. When it is missing or does not come up within
//! 30 seconds, the test panics with a message that says how to fix it:
//! nothing is skipped silently.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const URI_VAR: &str = "CRM_TEST_MONGODB_URI";
const VENV_VAR: &str = "CRM_TEST_VENV";
const SERVER_BIN: &str = "secantusd-py";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port, in case another process takes ours in between.
const START_ATTEMPTS: usize = 3;

/// The shell watchdog: `$1` test pid, `$2` server binary, `$3` port, `$4` log file.
const WATCHDOG: &str = r#"
"$2" --host 127.0.0.1 --port "$3" --storage-path :memory: >"$4" 2>&1 </dev/null &
server=$!
( while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -TERM "$server" 2>/dev/null ) &
watch=$!
wait "$server"
status=$?
kill "$watch" 2>/dev/null
kill -0 "$1" 2>/dev/null || rm -f "$4"
exit $status
"#;

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// The URI of the test server, starting it on first use. Panics, naming the
/// fix, when there is none.
pub fn mongodb_uri() -> String {
    match SERVER.get_or_init(start) {
        Ok(uri) => uri.clone(),
        Err(reason) => panic!(
            "no MongoDB-compatible server for the tests: {reason}\n\
             Run the tests with `./scripts/test.sh` (it installs what is missing), \
             or install the server yourself with `pip install secantusdb` \
             (on PATH, in ${VENV_VAR}/bin or in <workspace>/.venv/bin), \
             or set {URI_VAR} to a MongoDB server."
        ),
    }
}

fn start() -> Result<String, String> {
    if let Ok(uri) = std::env::var(URI_VAR) {
        if !uri.trim().is_empty() {
            return Ok(uri);
        }
    }
    let binary = find_server().ok_or_else(|| {
        format!(
            "`{SERVER_BIN}` was not found on PATH, in ${VENV_VAR}/bin ({}) or in {}",
            std::env::var(VENV_VAR).unwrap_or_else(|_| "unset".into()),
            workspace_root().join(".venv/bin").display()
        )
    })?;
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        match start_on_free_port(&binary) {
            Ok(port) => return Ok(format!("mongodb://127.0.0.1:{port}/?directConnection=true")),
            Err(e) => failures.push(e),
        }
    }
    Err(format!(
        "`{}` did not start: {}",
        binary.display(),
        failures.join("; ")
    ))
}

fn workspace_root() -> PathBuf {
    // Every crate's manifest sits one level below the workspace root.
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"));
    krate.parent().unwrap_or(krate).to_path_buf()
}

fn find_server() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(venv) = std::env::var_os(VENV_VAR) {
        dirs.push(PathBuf::from(venv).join("bin"));
    }
    dirs.push(workspace_root().join(".venv/bin"));
    dirs.into_iter()
        .map(|d| d.join(SERVER_BIN))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Starts the server under the watchdog and waits until it accepts connections.
fn start_on_free_port(binary: &Path) -> Result<u16, String> {
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!(
        "crm-test-secantusd-{}-{port}.log",
        std::process::id()
    ));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(binary)
        .arg(port.to_string())
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    match wait_until_ready(&mut child, port) {
        Ok(()) => Ok(port),
        Err(e) => {
            stop_group(&mut child);
            let tail = log_tail(&log);
            let _ = std::fs::remove_file(&log);
            Err(format!("port {port}: {e}{tail}"))
        }
    }
}

fn wait_until_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited ({status})"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Still ours? (Another process could have taken the port meanwhile,
            // in which case ours exits with "address in use".)
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the server exited ({status})"));
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not accepting connections after {}s",
                STARTUP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Terminates the watchdog's process group (the watchdog and the server).
fn stop_group(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("\n--- server log (last lines) ---\n{tail}\n---")
}
