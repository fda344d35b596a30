//! Helpers shared by the replication integration tests.
#![allow(dead_code)]

use std::future::Future;

use glommio::LocalExecutorBuilder;

/// Runs `f` to completion on a new glommio executor thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("executor thread finished")
}
