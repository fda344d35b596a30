//! Fault points: named places in the log's I/O path where a test harness can make the
//! operation fail or stall, armed at run time from outside the process (`sluice chaos`).
//!
//! Built on TiKV's fail points (the `fail` crate) and compiled in only with the `fault-points`
//! cargo feature; without it [`inject`] is an empty function the compiler removes. With it, an
//! unarmed point costs one relaxed atomic load.
//!
//! A point is armed with a fail-rs action string whose `return` argument says what happens:
//! `eio` (the operation fails with EIO), `enospc` (with ENOSPC) or `stall:MS` (it waits MS
//! milliseconds on the shard's timer, then runs: a slow device, not a blocked thread). fail-rs
//! adds probability and count: `return(eio)`, `25%return(enospc)`, `3*return(stall:200)`.
//!
//! [`watch_control_file`] arms points from a file (`point=actions` per line, e.g.
//! `storage::fdatasync=return(eio)`) that it re-reads every [`CONTROL_POLL`]; a missing or
//! empty file disarms everything. The harness replaces the file atomically (write, rename).
//!
//! Invariant: a fired point never performs the operation it fails, so the log sees exactly
//! what a real failure of that call would give it.

use std::time::Duration;

/// A place in the I/O path that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A direct write of record data into a segment file (`pwrite` through io_uring).
    DataWrite,
    /// The fdatasync of a segment file that makes appended records durable (a log's own
    /// group-commit round and the shard's shared round).
    Fdatasync,
    /// The fallocate that reserves a segment file's space ahead of its appends.
    Fallocate,
    /// A read of stored records through the log's read path (fetches, the producer-state
    /// rebuild of a partition being opened); recovery's scan does not pass here.
    LogRead,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 4] = [
        FaultPoint::DataWrite,
        FaultPoint::Fdatasync,
        FaultPoint::Fallocate,
        FaultPoint::LogRead,
    ];

    /// The name a control file arms it by.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::DataWrite => "storage::data_write",
            FaultPoint::Fdatasync => "storage::fdatasync",
            FaultPoint::Fallocate => "storage::fallocate",
            FaultPoint::LogRead => "storage::log_read",
        }
    }
}

/// How often [`watch_control_file`] re-reads its file.
pub const CONTROL_POLL: Duration = Duration::from_millis(20);

/// What an armed point does to its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-points"), allow(dead_code))]
enum Effect {
    Fail(i32),
    Stall(Duration),
}

/// Reads a `return(...)` argument; an unknown one fails the operation with EIO (a typo must
/// not leave a run believing it injected nothing).
#[cfg_attr(not(feature = "fault-points"), allow(dead_code))]
fn effect(argument: Option<&str>) -> Effect {
    match argument.map(str::trim) {
        Some("enospc") => Effect::Fail(28),
        Some(other) => match other.strip_prefix("stall:").and_then(|ms| ms.parse().ok()) {
            Some(ms) => Effect::Stall(Duration::from_millis(ms)),
            None => Effect::Fail(5),
        },
        None => Effect::Fail(5),
    }
}

/// Passes through the fault point `point`: an error if it is armed to fail, after a wait if it
/// is armed to stall, at once otherwise.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub async fn inject(_point: FaultPoint) -> std::io::Result<()> {
    Ok(())
}

/// Whether this build has fault points.
pub const COMPILED_IN: bool = cfg!(feature = "fault-points");

#[cfg(feature = "fault-points")]
pub use armed::{arm, inject, watch_control_file};

#[cfg(feature = "fault-points")]
mod armed {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{effect, Effect, FaultPoint, CONTROL_POLL};

    /// Set while any point is armed: unarmed points skip fail-rs's registry lock.
    static ANY_ARMED: AtomicBool = AtomicBool::new(false);

    /// The action's `return` argument if `point` fires now.
    fn fired(point: &str) -> Option<Option<String>> {
        fail::fail_point!(point, Some);
        None
    }

    pub async fn inject(point: FaultPoint) -> std::io::Result<()> {
        inject_named(point.name()).await
    }

    async fn inject_named(point: &str) -> std::io::Result<()> {
        if !ANY_ARMED.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(argument) = fired(point) else {
            return Ok(());
        };
        match effect(argument.as_deref()) {
            Effect::Fail(errno) => {
                let error = std::io::Error::from_raw_os_error(errno);
                tracing::warn!(point, %error, "fault point fired");
                Err(error)
            }
            Effect::Stall(wait) => {
                glommio::timer::sleep(wait).await;
                Ok(())
            }
        }
    }

    /// Parses a control file: `point=actions` per line; blank lines and `#` comments skipped.
    fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut armed = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, actions) = line
                .split_once('=')
                .ok_or_else(|| format!("{line:?} is not point=actions"))?;
            let name = name.trim();
            if !FaultPoint::ALL.iter().any(|p| p.name() == name) {
                return Err(format!("unknown fault point {name:?}"));
            }
            armed.push((name.to_string(), actions.trim().to_string()));
        }
        Ok(armed)
    }

    /// Arms points as a control file's text says (every point it names armed as it says,
    /// every other point disarmed), now, in this process: for tests that run the storage
    /// in-process.
    pub fn arm(text: &str) -> Result<(), String> {
        apply(text)
    }

    /// Applies a control file's text: every point it names armed as it says, every other
    /// point disarmed. Text that does not parse (or an action fail-rs refuses) disarms every
    /// point: a test hook gone wrong must not leave faults firing.
    fn apply(text: &str) -> Result<(), String> {
        let disarm_all = || {
            ANY_ARMED.store(false, Ordering::Relaxed);
            for point in FaultPoint::ALL {
                fail::remove(point.name());
            }
        };
        disarm_all();
        let armed = parse(text)?;
        for (name, actions) in &armed {
            if let Err(e) = fail::cfg(name.clone(), actions) {
                disarm_all();
                return Err(format!("{name}={actions}: {e}"));
            }
        }
        ANY_ARMED.store(!armed.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Arms points from `path` now and whenever its contents change (a thread of its own
    /// polls it). Fails if the file exists and does not parse.
    pub fn watch_control_file(path: &Path) -> Result<(), String> {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let first = read(path);
        apply(&first).map_err(|e| format!("{}: {e}", path.display()))?;
        let path: PathBuf = path.to_path_buf();
        std::thread::Builder::new()
            .name("fault-points".into())
            .spawn(move || {
                let mut last = first;
                loop {
                    std::thread::sleep(CONTROL_POLL);
                    let now = read(&path);
                    if now == last {
                        continue;
                    }
                    match apply(&now) {
                        Ok(()) => tracing::warn!(file = %path.display(), armed = %now.trim(),
                            "fault points changed"),
                        Err(e) => tracing::error!(file = %path.display(), error = %e,
                            "fault points left disarmed"),
                    }
                    last = now;
                }
            })
            .map_err(|e| format!("start the fault-points thread: {e}"))?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn control_files_parse_and_refuse_unknown_points() {
            assert_eq!(
                parse("# a comment\n\nstorage::fdatasync = return(eio)\n").unwrap(),
                vec![("storage::fdatasync".into(), "return(eio)".into())]
            );
            assert!(parse("storage::fsync=return(eio)")
                .unwrap_err()
                .contains("storage::fsync"));
            assert!(parse("storage::fdatasync").is_err());
        }

        /// Arms a point of its own (fail-rs's registry is global to the process, and other
        /// tests of this crate write and fdatasync concurrently).
        #[test]
        fn an_armed_point_fails_its_operation_and_a_disarmed_one_passes() {
            const POINT: &str = "storage::unit_test_point";
            glommio::LocalExecutorBuilder::default()
                .spawn(|| async {
                    inject_named(POINT).await.unwrap();
                    fail::cfg(POINT, "1*return(enospc)").unwrap();
                    ANY_ARMED.store(true, Ordering::Relaxed);
                    let e = inject_named(POINT).await.unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(28));
                    // Only once.
                    inject_named(POINT).await.unwrap();
                    fail::cfg(POINT, "return(stall:30)").unwrap();
                    let started = std::time::Instant::now();
                    inject_named(POINT).await.unwrap();
                    assert!(started.elapsed() >= std::time::Duration::from_millis(30));
                    fail::remove(POINT);
                    inject_named(POINT).await.unwrap();
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_arguments_name_the_effect() {
        assert_eq!(effect(Some("eio")), Effect::Fail(5));
        assert_eq!(effect(Some("enospc")), Effect::Fail(28));
        assert_eq!(
            effect(Some("stall:250")),
            Effect::Stall(Duration::from_millis(250))
        );
        // A typo still fails the operation rather than doing nothing.
        assert_eq!(effect(Some("stall:x")), Effect::Fail(5));
        assert_eq!(effect(None), Effect::Fail(5));
    }
}
