//! A private PostgreSQL for a benchmark, and a Twenty-style `person` table
//! in it to search, as a CRM built on Postgres full-text search does.
//!
//! [`start`] runs `initdb` and `pg_ctl start` on a temporary data directory
//! (loopback only, a free port, `fsync` and synchronous commit off), or says
//! why it cannot (PostgreSQL not installed). The server is stopped and its
//! directory deleted when the [`Postgres`] is dropped, and by a watchdog
//! shell when the benchmark process is gone without dropping it.
//!
//! The schema is the one Twenty (an open-source CRM) gives a person, cut to
//! what search reads: `name`, `emails text[]`, `phones text[]` (national
//! numbers, as Twenty stores them beside the country code),
//! `last_engagement_at`, and a generated `tsvector` of the name with the
//! `simple` configuration under a GIN index, and no index on
//! `last_engagement_at` unless asked for. Emails and phones are looked
//! up through helper tables with a B-tree each (an unnested copy of the
//! arrays). [`Peer::search`] answers a query as typed: digits by phone,
//! `@` by email prefix, anything else by name with a prefix per token
//! (`to_tsquery('simple', 'tan:* & ann:*')`), most recent engagement first.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::{Client, NoTls, Statement};

use crm_indexer::IndexedCustomer;

/// The programs the peer needs.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A running private PostgreSQL.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// `runuser -u <user> --` when the benchmark runs as root (PostgreSQL
    /// refuses to), else nothing.
    as_user: Vec<String>,
    pub version: String,
}

/// Starts PostgreSQL, or says why it cannot.
pub fn start() -> Result<Postgres, String> {
    for program in PROGRAMS {
        if !on_path(program) {
            return Err(format!("`{program}` is not installed"));
        }
    }
    let version = Command::new("postgres")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix("search-bench-pg")
        .tempdir()
        .map_err(|e| format!("no temporary directory: {e}"))?;
    let as_user = if is_root() {
        let Some((uid, gid)) = user_ids("postgres") else {
            return Err("running as root and there is no `postgres` user to run it as".into());
        };
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .map_err(|e| format!("cannot hand the data directory to `postgres`: {e}"))?;
        ["runuser", "-u", "postgres", "--"]
            .map(String::from)
            .to_vec()
    } else {
        Vec::new()
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))?;
    let pg = Postgres {
        dir,
        port,
        as_user,
        version,
    };
    let data = pg.data();
    let data_arg = data.to_string_lossy().to_string();
    pg.run(
        "initdb",
        &[
            "-D",
            &data_arg,
            "-U",
            "bench",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
    )?;
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c shared_buffers=1GB -c maintenance_work_mem=512MB -c max_connections=100 \
         -c max_wal_size=4GB -c checkpoint_timeout=30min",
        pg.dir.path().display()
    );
    let log = pg.dir.path().join("server.log");
    let log_arg = log.to_string_lossy().to_string();
    // Stop it and delete its directory when this process is gone.
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {user} pg_ctl -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        user = pg.as_user.join(" "),
        data = data.display(),
        dir = pg.dir.path().display(),
    );
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start a watchdog shell: {e}"))?;
    std::thread::spawn(move || watchdog.wait());
    pg.run(
        "pg_ctl",
        &[
            "-D", &data_arg, "-o", &options, "-l", &log_arg, "-w", "start",
        ],
    )
    .map_err(|e| {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        format!("{e}; server log: {}", log.trim())
    })?;
    Ok(pg)
}

impl Postgres {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut cmd = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{program}`: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{program}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A new connection over loopback TCP (as an application server's).
    pub async fn connect(&self) -> Client {
        let config = format!(
            "host=127.0.0.1 port={} user=bench dbname=postgres",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgres connection: {e}");
            }
        });
        client
    }

    /// Creates the `person` table and its helpers, loads `docs` with `COPY`,
    /// then builds the indexes and analyzes (as a bulk import would).
    /// `recency_index` adds a B-tree on `last_engagement_at`, which Twenty
    /// does not have: with it the planner may walk customers by recency and
    /// test each against the query instead of sorting every match.
    pub async fn load(
        &self,
        docs: impl Iterator<Item = IndexedCustomer>,
        recency_index: bool,
    ) -> u64 {
        let client = self.connect().await;
        client
            .batch_execute(
                "CREATE TABLE person (
                    id uuid PRIMARY KEY,
                    name text NOT NULL,
                    emails text[] NOT NULL,
                    phones text[] NOT NULL,
                    last_engagement_at timestamptz,
                    search_vector tsvector GENERATED ALWAYS AS (to_tsvector('simple', name)) STORED
                );
                CREATE TABLE person_email (email text NOT NULL, person_id uuid NOT NULL);
                CREATE TABLE person_phone (number text NOT NULL, person_id uuid NOT NULL);",
            )
            .await
            .unwrap();
        let sink = client
            .copy_in("COPY person (id, name, emails, phones, last_engagement_at) FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        let mut buf = String::with_capacity(1 << 20);
        let mut rows = 0u64;
        for doc in docs {
            let c = &doc.customer;
            let phones: Vec<String> = c.phones.iter().map(national).collect();
            let emails: Vec<&str> = c.emails.iter().map(|e| e.as_str()).collect();
            buf.push_str(&c.id.to_string());
            buf.push('\t');
            copy_text(&mut buf, c.name.as_deref().unwrap_or_default());
            buf.push('\t');
            array(&mut buf, emails.iter().copied());
            buf.push('\t');
            array(&mut buf, phones.iter().map(String::as_str));
            buf.push('\t');
            match c.last_engagement_at {
                Some(t) => buf.push_str(&t.to_rfc3339()),
                None => buf.push_str("\\N"),
            }
            buf.push('\n');
            rows += 1;
            if buf.len() > (1 << 20) - 4096 {
                sink.send(Bytes::from(std::mem::take(&mut buf)))
                    .await
                    .unwrap();
                buf.reserve(1 << 20);
            }
        }
        if !buf.is_empty() {
            sink.send(Bytes::from(buf)).await.unwrap();
        }
        let copied = sink.finish().await.unwrap();
        assert_eq!(copied, rows);
        // One statement at a time: `VACUUM` refuses a transaction block.
        for statement in [
            "INSERT INTO person_email SELECT unnest(emails), id FROM person",
            "INSERT INTO person_phone SELECT unnest(phones), id FROM person",
            "CREATE INDEX person_search_vector ON person USING GIN (search_vector)",
            "CREATE INDEX person_email_email ON person_email (email)",
            "CREATE INDEX person_phone_number ON person_phone (number)",
            "VACUUM ANALYZE person",
            "VACUUM ANALYZE person_email",
            "VACUUM ANALYZE person_phone",
        ] {
            client.batch_execute(statement).await.unwrap();
        }
        if recency_index {
            client
                .batch_execute(
                    "CREATE INDEX person_last_engagement ON person (last_engagement_at DESC NULLS LAST);
                     ANALYZE person",
                )
                .await
                .unwrap();
        }
        rows
    }

    /// The server's memory for this data set: the tables and their indexes.
    pub async fn size(&self) -> u64 {
        let client = self.connect().await;
        let row = client
            .query_one(
                "SELECT (pg_total_relation_size('person') + pg_total_relation_size('person_email')
                        + pg_total_relation_size('person_phone'))::bigint",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().to_string_lossy().to_string();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]) {
            eprintln!("stopping PostgreSQL: {e}");
        }
        // The temporary directory deletes itself.
    }
}

/// One connection's prepared statements.
pub struct Peer {
    client: Client,
    by_name: Statement,
    by_email: Statement,
    by_phone: Statement,
    by_ending: Statement,
    by_inside: Statement,
}

impl Peer {
    pub async fn new(pg: &Postgres) -> Peer {
        let client = pg.connect().await;
        let by_name = client
            .prepare(
                "SELECT id::text FROM person
                 WHERE search_vector @@ to_tsquery('simple', $1)
                 ORDER BY last_engagement_at DESC NULLS LAST LIMIT $2",
            )
            .await
            .unwrap();
        let by_email = client
            .prepare(
                "SELECT p.id::text FROM person_email e JOIN person p ON p.id = e.person_id
                 WHERE e.email >= $1 AND e.email < $1 || chr(1114111)
                 ORDER BY p.last_engagement_at DESC NULLS LAST LIMIT $2",
            )
            .await
            .unwrap();
        let by_phone = client
            .prepare(
                "SELECT p.id::text FROM person_phone n JOIN person p ON p.id = n.person_id
                 WHERE n.number = $1
                 ORDER BY p.last_engagement_at DESC NULLS LAST LIMIT $2",
            )
            .await
            .unwrap();
        // The last digits of a number: a pattern that has to read every
        // number, as a `LIKE '%…%'` filter on phone fields does.
        let by_ending = client
            .prepare(
                "SELECT p.id::text FROM person_phone n JOIN person p ON p.id = n.person_id
                 WHERE n.number LIKE '%' || $1
                 ORDER BY p.last_engagement_at DESC NULLS LAST LIMIT $2",
            )
            .await
            .unwrap();
        // Digits inside a number, the same way.
        let by_inside = client
            .prepare(
                "SELECT p.id::text FROM person_phone n JOIN person p ON p.id = n.person_id
                 WHERE n.number LIKE '%' || $1 || '%'
                 ORDER BY p.last_engagement_at DESC NULLS LAST LIMIT $2",
            )
            .await
            .unwrap();
        Peer {
            client,
            by_name,
            by_email,
            by_phone,
            by_ending,
            by_inside,
        }
    }

    /// The ids found for `q`, best first, at most `limit`.
    pub async fn search(&self, q: &str, limit: usize) -> Vec<String> {
        let limit = limit as i64;
        let q = q.trim();
        let rows = if q.len() <= 4 && !q.is_empty() && q.chars().all(|c| c.is_ascii_digit()) {
            self.client.query(&self.by_ending, &[&q, &limit]).await
        } else if (5..=7).contains(&q.len()) && q.chars().all(|c| c.is_ascii_digit()) {
            self.client.query(&self.by_inside, &[&q, &limit]).await
        } else if !q.is_empty() && q.chars().all(|c| c.is_ascii_digit()) {
            self.client.query(&self.by_phone, &[&q, &limit]).await
        } else if q.contains('@') {
            let q = q.to_lowercase();
            self.client.query(&self.by_email, &[&q, &limit]).await
        } else {
            let Some(tsquery) = prefix_tsquery(q) else {
                return Vec::new();
            };
            self.client.query(&self.by_name, &[&tsquery, &limit]).await
        };
        rows.unwrap().iter().map(|r| r.get(0)).collect()
    }
}

/// `tan:* & ann:*` for `Ann Tan`: every token as a prefix, lowercase,
/// letters and digits only (as the `simple` configuration splits a name).
pub fn prefix_tsquery(q: &str) -> Option<String> {
    let tokens: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| format!("{}:*", t.to_lowercase()))
        .collect();
    (!tokens.is_empty()).then(|| tokens.join(" & "))
}

/// The national number (`81226418`), or the digits when the metadata does
/// not know the number.
pub fn national(phone: &crm_models::PhoneNumber) -> String {
    phone
        .national_number()
        .unwrap_or_else(|| phone.digits().to_string())
}

/// A value for `COPY ... FROM STDIN` in text format.
fn copy_text(buf: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

/// A `text[]` literal (`{"a","b"}`) for `COPY` in text format.
fn array<'a>(buf: &mut String, items: impl Iterator<Item = &'a str>) {
    buf.push('{');
    for (i, item) in items.enumerate() {
        if i > 0 {
            buf.push(',');
        }
        buf.push('"');
        for c in item.chars() {
            // Escaped once for the array literal, once for COPY.
            match c {
                '"' => buf.push_str("\\\\\""),
                '\\' => buf.push_str("\\\\\\\\"),
                c => copy_text(buf, c.encode_utf8(&mut [0; 4])),
            }
        }
        buf.push('"');
    }
    buf.push('}');
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `(uid, gid)` of a user, from `/etc/passwd`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}
