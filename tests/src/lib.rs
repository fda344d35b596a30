//! # sluice-tests: black-box tests
//!
//! Tests here start the `sluice` binary as a user would and talk to it from outside: through its
//! command line today, through the Kafka protocol with real clients once the broker exists.
//! This library holds what those tests share.

use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A `sluice serve` process on a free loopback port, stopped (by PID) when dropped.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts `sluice serve --listen 127.0.0.1:<free port>` plus `extra_args`, and waits until
    /// it accepts connections (at most 20 s).
    pub fn start(extra_args: &[&str]) -> Broker {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
            probe.local_addr().unwrap().port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(sluice_binary())
            .args(["serve", "--listen", &addr.to_string()])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice serve");
        let mut broker = Broker { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("sluice serve exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "sluice serve did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
