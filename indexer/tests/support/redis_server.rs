//! A Redis for tests: `CRM_TEST_REDIS_URL` if set, else one `redis-server`
//! per test process, started on a free port on first use and stopped when the
//! process exits. Tests keep apart by key prefix ([`unique_prefix`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const TEST_COMMAND: &str = "./scripts/test.sh";

/// Keeps the server's watchdog alive: when the test process exits, its end of
/// the watchdog's stdin closes and the watchdog stops the server.
struct Server {
    url: String,
    _watchdog: Mutex<(Child, ChildStdin)>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The URL of a Redis the tests may use.
pub async fn redis_url() -> String {
    if let Ok(url) = std::env::var("CRM_TEST_REDIS_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    tokio::task::spawn_blocking(|| SERVER.get_or_init(start).url.clone())
        .await
        .expect("starting redis-server panicked")
}

/// A key prefix no other test uses: `crmtest:<uuid>:`.
pub fn unique_prefix() -> String {
    format!("crmtest:{}:", uuid::Uuid::new_v4())
}

fn start() -> Server {
    match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(_) | Err(_) => panic!(
            "redis-server is not installed or does not run; run the tests with {TEST_COMMAND}, \
             which installs it, or set CRM_TEST_REDIS_URL"
        ),
    }
    let port = free_port();
    // `sh` runs the server and stops it once its stdin (our pipe) closes.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"redis-server "$@" & pid=$!; cat >/dev/null; kill "$pid"; wait "$pid""#)
        .arg("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); run {TEST_COMMAND}"));
    let stdin = child.stdin.take().expect("piped stdin");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pong(port) {
        if Instant::now() > deadline {
            panic!(
                "redis-server on port {port} did not answer PING within 10 s; run {TEST_COMMAND}"
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server exited at start ({status}); run {TEST_COMMAND}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        url: format!("redis://127.0.0.1:{port}/"),
        _watchdog: Mutex::new((child, stdin)),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
