//! memcached's own client conformance suite, `memcapable -a` (ASCII protocol only; Debian's
//! `libmemcached-tools` installs it as `memccapable`), against a real memcached and against
//! the router in front of one (issue 16): every test must pass against both. The run
//! against memcached is the control that the tool and the harness work; the per-test
//! results of both are printed, with the assertion memcapable reports for each failure.
//!
//! memcapable flushes the server it tests: each run gets its own memcached.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::router::Router;
use harness::Memcached;

/// What one memcapable run found.
struct Run {
    /// `(test name, passed, what memcapable printed about it)` in the order it ran them.
    tests: Vec<(String, bool, String)>,
    exit_ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn failed(&self) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    fn print(&self, target: &str) {
        let passed = self.tests.iter().filter(|(_, ok, _)| *ok).count();
        println!(
            "memccapable -a against {target}: {passed}/{} passed, exit {}",
            self.tests.len(),
            if self.exit_ok { "success" } else { "failure" }
        );
        for (name, ok, said) in &self.tests {
            if *ok {
                println!("  {name:<24} pass");
            } else {
                println!("  {name:<24} FAIL  {}", said.replace('\n', " | "));
            }
        }
    }
}

/// The memcapable binary: `memccapable` on Debian, `memcapable` elsewhere.
fn memcapable_bin() -> &'static str {
    for bin in ["/usr/bin/memccapable", "/usr/bin/memcapable"] {
        if std::path::Path::new(bin).exists() {
            return bin;
        }
    }
    panic!("neither memccapable nor memcapable is installed (Debian: apt-get install libmemcached-tools; tests/setup.sh does it)");
}

/// Runs `memccapable -a -v -t 5 -h 127.0.0.1 -p <port>`, killed after 3 minutes.
fn memcapable(port: u16, names: Option<&[String]>) -> Run {
    let mut child = Command::new(memcapable_bin())
        .args([
            "-a",
            "-v",
            "-t",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting memcapable");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for memcapable") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    assert!(
        status.is_some(),
        "memcapable did not finish in 180 s against port {port}; stdout so far:\n{stdout}"
    );
    Run {
        tests: parse(&stdout, names),
        exit_ok: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}

/// memcapable prints each test's name padded to 40 columns, then `[pass]` and a newline
/// when it passed; with `-v`, a failure's assertion follows the name instead (its `[FAIL]`
/// goes to stderr). `names`: the tests to look for, in order (`None`: read them from the
/// padding, which works when every test passed).
fn parse(stdout: &str, names: Option<&[String]>) -> Vec<(String, bool, String)> {
    let names: Vec<String> = match names {
        Some(n) => n.to_vec(),
        None => {
            let mut found = Vec::new();
            let mut rest = stdout.trim_start_matches(['\n', '\r']);
            while rest.starts_with("ascii ") || rest.starts_with("binary ") {
                let cut = rest.char_indices().nth(40).map_or(rest.len(), |(i, _)| i);
                found.push(rest[..cut].trim().to_string());
                rest = rest[cut..]
                    .trim_start_matches("[pass]")
                    .trim_start_matches(['\n', '\r']);
            }
            found
        }
    };
    let mut starts: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    for n in &names {
        let padded = format!("{n:<40}");
        match stdout[from..].find(&padded) {
            Some(i) => {
                starts.push((from + i, from + i + padded.len()));
                from += i + padded.len();
            }
            None => starts.push((stdout.len(), stdout.len())),
        }
    }
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (_, body) = starts[i];
            let end = starts.get(i + 1).map_or(stdout.len(), |s| s.0).max(body);
            let said = stdout[body..end].trim().to_string();
            let said = if body >= stdout.len() {
                "not run".to_string()
            } else {
                said
            };
            (n.clone(), said.starts_with("[pass]"), said)
        })
        .collect()
}

#[test]
fn memcapable_ascii_passes_against_memcached_and_the_router() {
    let direct = Memcached::start().unwrap();
    let behind = Memcached::start().unwrap();
    let router = Router::start(&[behind.addr()], "", "").unwrap();

    let control = memcapable(direct.port(), None);
    control.print("memcached");
    let names: Vec<String> = control.tests.iter().map(|t| t.0.clone()).collect();
    let routed = memcapable(router.server.port(), Some(&names));
    routed.print("squeal-router");

    assert!(
        control.tests.len() >= 20 && control.exit_ok && control.failed().is_empty(),
        "memcapable itself does not pass against memcached (the harness or the tool is at fault):\n{}\n{}",
        control.stdout,
        control.stderr
    );
    assert!(
        routed.exit_ok && routed.failed().is_empty(),
        "memcapable -a failed {} of {} tests against the router (table above): {:?}",
        routed.failed().len(),
        routed.tests.len(),
        routed.failed()
    );
}
