//! # sluice-tests: black-box tests
//!
//! Tests here start the `sluice` binary as a user would and talk to it from outside: through its
//! command line today, through the Kafka protocol with real clients once the broker exists.
//! This library holds what those tests share: starting and stopping brokers, and [`wire`],
//! raw Kafka requests for wire-level tests, and [`proxy`], a TCP proxy that cuts connections.

pub mod cluster;
pub mod pki;
pub mod proxy;
pub mod wire;

/// Ports for the brokers tests start: below the kernel's ephemeral range, never handed out
/// twice.
pub use sluice_bench_harness::ports;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the `sluice` binary, built first (once per test process) with the same profile as
/// the tests, so `cargo test -p sluice-tests` works on its own.
pub fn sluice_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = !cfg!(debug_assertions);
            let mut build = Command::new(cargo);
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "--bin", "sluice"]);
            // The variables cargo sets for this test process (CARGO_MANIFEST_DIR,
            // CARGO_PKG_NAME, ...) would reach build scripts that watch them (ring's does):
            // this build would then redo ring, rustls and the broker (~30 s), and the next
            // build from a shell would redo them again.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let set_for_this_test = name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_MANIFEST_")
                    || name.starts_with("CARGO_BIN_")
                    || matches!(
                        name.as_ref(),
                        "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
                    );
                if set_for_this_test {
                    build.env_remove(name.as_ref());
                }
            }
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building the sluice binary failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| workspace.join("target"), PathBuf::from);
            target
                .join(if release { "release" } else { "debug" })
                .join("sluice")
        })
        .clone()
}

/// The directory of topic `name` in a data directory (`topics/<name>-<id>`), as the catalog
/// lays it out.
pub fn topic_dir(data_dir: &std::path::Path, name: &str) -> PathBuf {
    let prefix = format!("{name}-");
    std::fs::read_dir(data_dir.join("topics"))
        .expect("the data directory's topics")
        .map(|e| e.expect("a directory entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
        })
        .unwrap_or_else(|| panic!("no directory for topic {name}"))
}

/// A `sluice serve` process on a free loopback port with its own data directory, stopped (by
/// PID) when dropped.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `sluice serve --listen 127.0.0.1:<free port>` plus `extra_args` on a new data
    /// directory, and waits until it accepts connections (at most 20 s).
    pub fn start(extra_args: &[&str]) -> Broker {
        Broker::start_on(tempfile::tempdir().expect("a data directory"), extra_args)
    }

    /// Like [`Broker::start`], on an existing data directory (a restart).
    pub fn start_on(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Broker {
        Broker::start_wrapped(data_dir, &[], extra_args)
    }

    /// Like [`Broker::start_on`], with the broker run through `wrapper` (a program and its
    /// arguments that exec the rest, e.g. `prlimit --nofile=...  --`): the child's pid is then
    /// still the broker's.
    ///
    /// Ready means the broker's own log says it listens on its address: a connection alone
    /// could reach another test's broker that took the same free port in the meantime. If
    /// that happened (this broker refuses the address), it starts again on another port.
    pub fn start_wrapped(
        data_dir: tempfile::TempDir,
        wrapper: &[&str],
        extra_args: &[&str],
    ) -> Broker {
        let log_path = data_dir.path().join("sluice.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = ports::free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // The log goes to a file (a pipe nobody reads could fill and block the broker); a
            // restart appends to the same file.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("log file");
            let log_start = log.metadata().map_or(0, |m| m.len() as usize);
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(sluice_binary());
                    c
                }
                None => Command::new(sluice_binary()),
            };
            // The admin listener on a free port of its own, unless the test names one.
            let admin: &[&str] = if extra_args.contains(&"--admin-listen") {
                &[]
            } else {
                &["--admin-listen", "127.0.0.1:0"]
            };
            // `--listeners X` in the test's arguments adds listeners after the PLAINTEXT one
            // on this address (`--listen` and `--listeners` do not go together).
            let mut args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
            let listen = match args.iter().position(|a| a == "--listeners") {
                Some(at) => {
                    args[at + 1] = format!("PLAINTEXT://{addr},{}", args[at + 1]);
                    vec![]
                }
                None => vec!["--listen".to_string(), addr.to_string()],
            };
            let mut child = command
                .arg("serve")
                .args(&listen)
                .arg("--data-dir")
                .arg(data_dir.path())
                .args(admin)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sluice serve");
            let since_start = || {
                std::fs::read(&log_path)
                    .map(|bytes| {
                        String::from_utf8_lossy(&bytes[log_start.min(bytes.len())..]).into_owned()
                    })
                    .unwrap_or_default()
            };
            let listening = format!("listening addr={addr} ");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = since_start();
                    if attempt < 5 && log.contains("address already in use") {
                        break; // another broker took the port first: try another
                    }
                    panic!("sluice serve exited early: {status}\n{log}");
                }
                if since_start().contains(&listening) && TcpStream::connect(addr).is_ok() {
                    return Broker {
                        child,
                        addr,
                        data_dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "sluice serve did not start listening on {addr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The address the admin HTTP listener (`/metrics`, `/v1/...`) bound, from the broker's
    /// log (its latest start's).
    pub fn admin_addr(&self) -> SocketAddr {
        let log =
            std::fs::read_to_string(self.data_dir.path().join("sluice.log")).unwrap_or_default();
        admin_addr_in(&log).expect("the broker's log names its admin address")
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port`, for client configs.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the broker with SIGKILL (no chance to flush anything) and hands back its data
    /// directory, for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("a placeholder directory");
        std::mem::replace(&mut self.data_dir, dir)
    }

    /// Stops the broker with SIGTERM (a clean shutdown) and hands back its data directory.
    pub fn stop(self) -> tempfile::TempDir {
        let mut this = self;
        this.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while this.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "sluice serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = tempfile::tempdir().expect("a placeholder directory");
        std::mem::replace(&mut this.data_dir, dir)
    }

    /// Sends `signal` (e.g. "TERM", "STOP") to the broker, without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` (e.g. "TERM", "INT") and waits up to `within` for the process to exit;
    /// returns its exit code and what it wrote to standard error.
    pub fn stop_with(mut self, signal: &str, within: Duration) -> (Option<i32>, String) {
        self.signal(signal);
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "sluice serve did not stop within {within:?} of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, self.log())
    }

    /// What the broker has written to its standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("sluice.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test shows what the broker said: the only trace of a clean-clone CI run.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- last {} lines of the broker's log ({}) ---\n{}",
                tail.len(),
                self.addr,
                tail.join("\n")
            );
        }
    }
}

/// The address of the last "admin listening addr=..." line in a broker's log.
pub fn admin_addr_in(log: &str) -> Option<SocketAddr> {
    let line = log.lines().rev().find(|l| l.contains("admin listening"))?;
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Fails unless Prometheus' own linter (`promtool check metrics`, Debian's `prometheus`
/// package) accepts `exposition`.
pub fn assert_promtool_accepts(exposition: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let linted = promtool.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
}

/// Runs the system's kcat (Debian's, linking librdkafka 2.0.2 with OpenSSL) with `args`, `stdin`
/// fed to it, and returns what it did.
pub fn kcat(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("kcat")
        // cargo test points LD_LIBRARY_PATH at the build tree, where the rdkafka crate's own
        // (newer, TLS-less) librdkafka would stand in for the system's; kcat must run as
        // packaged.
        .env_remove("LD_LIBRARY_PATH")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat must be installed (scripts/test installs it: apt-get install kcat)");
    let mut input = child.stdin.take().expect("kcat's stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to kcat");
    }
    drop(input);
    child.wait_with_output().expect("kcat ran")
}

/// Runs `python3 -c script args...` (the test venv's python first on PATH): whether it
/// succeeded, and its stdout then stderr. `LD_LIBRARY_PATH` is dropped: cargo test points it at
/// the build tree's librdkafka, and confluent-kafka must load the one its wheel ships.
pub fn python(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .env_remove("LD_LIBRARY_PATH")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits (at most 10 s) until the broker's log holds `needle` `count` times.
pub fn wait_for_log(broker: &Broker, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the broker's log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
