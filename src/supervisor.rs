//! The operator's long-running tasks, supervised: every controller, watch, server and background loop runs
//! as a named task here. None of them is meant to end before shutdown, so one that ends (returns, fails or
//! panics) makes `/readyz` fail at once and the process exit non-zero with the task's name and error,
//! instead of running on half-dead (a webhook that no longer answers, an index that no longer updates).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::error;

/// A task that ended while it should have been running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {name:?} ended unexpectedly: {error}")]
pub struct TaskEnded {
    /// The task's name.
    pub name: &'static str,
    /// Its error, or why ending counts as one.
    pub error: String,
}

/// Runs named tasks and reports the first that ends.
#[derive(Debug)]
pub struct Supervisor {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    ended_tx: mpsc::UnboundedSender<TaskEnded>,
    ended_rx: mpsc::UnboundedReceiver<TaskEnded>,
    failed: Arc<OnceLock<TaskEnded>>,
    failpoint: Option<(String, Duration)>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self { tasks: Vec::new(), ended_tx, ended_rx, failed: Arc::default(), failpoint: None }
    }
}

impl Supervisor {
    /// Test hook: the task named `name` fails `after` this long (None in production), so tests can see what
    /// a task that dies does to the process.
    #[must_use]
    pub fn with_failpoint(mut self, failpoint: Option<(String, Duration)>) -> Self {
        self.failpoint = failpoint;
        self
    }

    /// Spawns `task` under `name`. Its end, with `Ok` or `Err`, is reported unless the supervisor is
    /// already stopping: then nobody listens any more.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (tx, failed) = (self.ended_tx.clone(), Arc::clone(&self.failed));
        let fail_after = self.failpoint.as_ref().filter(|(n, _)| n == name).map(|(_, after)| *after);
        let inner = tokio::spawn(async move {
            match fail_after {
                None => task.await.map_err(|e| e.to_string()),
                Some(after) => tokio::select! {
                    r = task => r.map_err(|e| e.to_string()),
                    () = tokio::time::sleep(after) => Err("failpoint: made to fail".to_owned()),
                },
            }
        });
        let handle = tokio::spawn(async move {
            let error = match inner.await {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => "it panicked".to_owned(),
                Err(e) => e.to_string(),
            };
            let ended = TaskEnded { name, error };
            // The first failure is what readiness and the exit report.
            let _ = failed.set(ended.clone());
            let _ = tx.send(ended);
        });
        self.tasks.push((name, handle));
    }

    /// Spawns a task that returns nothing; any end is unexpected.
    pub fn spawn_infallible<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// A readiness check: the name of the first task that ended, if one did.
    pub fn failed(&self) -> Arc<OnceLock<TaskEnded>> {
        Arc::clone(&self.failed)
    }

    /// Waits for `until` while every task runs: its value, or the first task that ended before it did
    /// (startup steps that wait for a task's work, such as the webhooks serving, must not wait for a dead
    /// task).
    ///
    /// # Errors
    /// The task that ended.
    pub async fn wait_for<T>(&mut self, until: impl Future<Output = T>) -> Result<T, TaskEnded> {
        tokio::select! {
            value = until => Ok(value),
            ended = self.ended_rx.recv() => Err(ended.unwrap_or_else(|| TaskEnded {
                name: "supervisor",
                error: "every task handle is gone".to_owned(),
            })),
        }
    }

    /// Waits until a task ends (the error) or `shutdown` resolves (None).
    pub async fn run_until(&mut self, shutdown: impl Future<Output = ()>) -> Option<TaskEnded> {
        tokio::select! {
            () = shutdown => None,
            ended = self.ended_rx.recv() => {
                let ended = ended?;
                error!(task = ended.name, error = %ended.error, "a supervised task ended; stopping the operator");
                Some(ended)
            }
        }
    }

    /// Waits for the named tasks to finish, in order; tasks that end now are expected to.
    pub async fn join(&mut self, names: &[&'static str]) {
        for name in names {
            while let Some(i) = self.tasks.iter().position(|(n, _)| n == name) {
                let (_, handle) = self.tasks.swap_remove(i);
                let _ = handle.await;
            }
        }
    }

    /// Aborts every task still running.
    pub fn abort_all(&mut self) {
        for (_, handle) in self.tasks.drain(..) {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_reported_with_its_error() {
        let mut s = Supervisor::default();
        s.spawn_infallible("forever", std::future::pending());
        s.spawn("webhook", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<(), _>("bind failed")
        });
        let failed = s.failed();
        assert!(failed.get().is_none());
        let ended = s.run_until(std::future::pending()).await.unwrap();
        assert_eq!(ended, TaskEnded { name: "webhook", error: "bind failed".into() });
        assert_eq!(failed.get().map(|e| e.name), Some("webhook"));
        s.abort_all();
    }

    #[tokio::test]
    async fn a_startup_wait_ends_with_the_task_that_died() {
        let mut s = Supervisor::default();
        assert_eq!(s.wait_for(async { 7 }).await, Ok(7));
        s.spawn("webhooks", async { Err::<(), _>("bind failed") });
        let ended = s.wait_for(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!((ended.name, ended.error.as_str()), ("webhooks", "bind failed"));
        s.abort_all();
    }

    #[tokio::test]
    async fn a_failpoint_fails_the_named_task() {
        let mut s = Supervisor::default().with_failpoint(Some(("index".into(), Duration::from_millis(5))));
        s.spawn_infallible("index", std::future::pending());
        s.spawn_infallible("other", std::future::pending());
        let ended = s.run_until(std::future::pending()).await.unwrap();
        assert_eq!((ended.name, ended.error.as_str()), ("index", "failpoint: made to fail"));
        s.abort_all();
    }

    #[tokio::test]
    async fn returning_and_panicking_count_as_failures_and_shutdown_does_not() {
        let mut s = Supervisor::default();
        s.spawn_infallible("index", async {});
        assert_eq!(s.run_until(std::future::pending()).await.unwrap().error, "it returned");
        let mut s = Supervisor::default();
        #[allow(clippy::panic)]
        s.spawn_infallible("controller", async { panic!("boom") });
        assert_eq!(s.run_until(std::future::pending()).await.unwrap().error, "it panicked");
        let mut s = Supervisor::default();
        s.spawn_infallible("forever", std::future::pending());
        assert_eq!(s.run_until(async {}).await, None);
        s.abort_all();
    }
}
