//! The README's shell examples, run in order against a fresh server, so that
//! they cannot rot.
//!
//! Every ```` ```sh ```` block of README.md is run with bash (`set -euo
//! pipefail`), one block at a time and in order; the variables a block sets
//! (`NAME=...` at the start of a line) are handed to the next blocks. `curl`
//! fails on any 4xx/5xx answer (`--fail-with-body`), so an example that stops
//! working fails the test. The server is the real application on a free port
//! with the README's own first admin and region; `$CRM` names it (the
//! README's default, `http://localhost:8080`, is what a reader has).
//!
//! A block preceded by `<!-- readme-test: skip: <reason> -->` is not run: the
//! two commands themselves (this test is part of the second), Docker, and
//! long-running workers. The test checks that every skip gives a reason and
//! that the skipped blocks are exactly the known ones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::spawn_app_with;
use crm_models::Region;

/// One ```` ```sh ```` block of the README.
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    skip: Option<String>,
}

const SKIP_MARK: &str = "<!-- readme-test: skip:";

fn readme_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    let mut last_text_line = "";
    for (i, line) in readme.lines().enumerate() {
        if current.is_some() && line.trim_start().starts_with("```") {
            blocks.push(current.take().expect("a block is open"));
            continue;
        }
        match current.as_mut() {
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None if line.trim_start().starts_with("```") => {
                let info = line.trim_start().trim_start_matches('`').trim();
                let skip = last_text_line
                    .trim()
                    .strip_prefix(SKIP_MARK)
                    .map(|rest| rest.trim_end_matches("-->").trim().to_string());
                if info == "sh" || info == "bash" || info == "shell" {
                    current = Some(Block {
                        line: i + 1,
                        text: String::new(),
                        skip,
                    });
                } else {
                    // Another language: consume it as a block that is never run.
                    current = Some(Block {
                        line: i + 1,
                        text: String::new(),
                        skip: Some(format!("not shell ({info})")),
                    });
                }
            }
            None => {
                if !line.trim().is_empty() {
                    last_text_line = line;
                }
            }
        }
    }
    assert!(current.is_none(), "README.md has an unclosed code block");
    blocks
}

/// Names assigned at the start of a line (`NAME=...`), to hand to later blocks.
fn assigned_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, _) = line.split_once('=')?;
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && name.starts_with(|c: char| c.is_ascii_uppercase());
            ok.then(|| name.to_string())
        })
        .collect()
}

fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("README.md")
}

#[test]
fn skipped_blocks_are_the_known_ones_and_say_why() {
    let readme = std::fs::read_to_string(readme_path()).expect("README.md");
    let blocks = readme_blocks(&readme);
    let shell: Vec<&Block> = blocks
        .iter()
        .filter(|b| !b.skip.as_deref().unwrap_or("").starts_with("not shell"))
        .collect();
    assert!(
        shell.len() >= 8,
        "README.md has {} shell blocks",
        shell.len()
    );
    let mut skipped = Vec::new();
    for b in &shell {
        if let Some(reason) = &b.skip {
            assert!(
                reason.len() >= 10,
                "the skip before README.md line {} gives no reason",
                b.line
            );
            let first = b.text.lines().next().unwrap_or("").to_string();
            skipped.push(first);
        }
    }
    // The run and test commands, Docker, the indexer's long-running worker
    // commands and the release-built device simulator. Anything else must run.
    let known = [
        "CRM_ADMIN_EMAIL=admin@example.com CRM_ADMIN_PASSWORD='change-me-now-please' \\",
        "./scripts/test.sh",
        "crm-indexer run       # relay the store's events to crm:events and consume them in group `indexer`; run several to share the work",
        "cargo run --release -p crm-mobile-bridge --bin crm-device-sim -- \\",
        "CRM_JWT_SECRET=$(openssl rand -base64 48) CRM_ADMIN_EMAIL=admin@example.com \\",
        "WEBHOOK=$(curl -s $CRM/v1/webhooks -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\",
    ];
    for s in &skipped {
        assert!(
            known.contains(&s.as_str()),
            "README.md skips a block the test does not know: {s:?}; make it runnable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run_in_order() {
    let readme = std::fs::read_to_string(readme_path()).expect("README.md");
    let blocks = readme_blocks(&readme);
    // The README's first start: its admin and its region.
    let app = spawn_app_with(|config| {
        config.admin_email = Some("admin@example.com".into());
        config.admin_password = Some("change-me-now-please".into());
        config.default_region = Some("SG".into());
    })
    .await;
    assert_eq!(app.state.default_region, Region::parse("SG").ok());
    let work = tempfile::tempdir().expect("a temporary directory");
    let state = work.path().join("variables.sh");
    std::fs::write(&state, "").expect("the variables file");
    let mut names = BTreeSet::new();
    let mut ran = 0;
    let mut transcript = String::new();
    for block in blocks.iter().filter(|b| b.skip.is_none()) {
        names.extend(assigned_names(&block.text));
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        let script = format!(
            "set -euo pipefail\n\
             curl() {{ command curl --fail-with-body --show-error --max-time 20 \"$@\"; }}\n\
             source {state}\n\
             {text}\n\
             declare -p {keep} > {state} 2>/dev/null || true\n",
            state = state.display(),
            text = block.text,
            keep = keep.join(" "),
        );
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("bash")
                .arg("-c")
                .arg(&script)
                .env("CRM", &app.address)
                .env("CRM_ADMIN_PASSWORD", "change-me-now-please")
                .current_dir(work.path())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("README.md line {}: the block ran over 60 s", block.line))
        .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        transcript.push_str(&format!("--- README.md line {}\n{stdout}", block.line));
        assert!(
            output.status.success(),
            "the README block at line {} failed ({}):\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            block.line,
            output.status,
            block.text
        );
        ran += 1;
        // Searches read the index, which follows the store's events: bring it
        // up to date before the next block, as a reader's pause would.
        app.state
            .projector
            .rebuild(|_| {})
            .await
            .expect("the index rebuilds");
    }
    assert!(ran >= 7, "only {ran} README blocks ran");
    // What the examples promise: the customer created first is found by
    // search and caller-ID, and has the SMS on its timeline.
    for expected in ["Ann Tan", "Is the flat still available?", "sms"] {
        assert!(
            transcript.contains(expected),
            "no README example printed {expected:?}:\n{transcript}"
        );
    }
    let variables = std::fs::read_to_string(&state).expect("the variables file");
    for name in ["TOKEN", "CUSTOMER_ID"] {
        assert!(
            variables.contains(&format!("{name}=")),
            "the README never sets ${name}: {variables}"
        );
    }
}
