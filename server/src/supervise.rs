//! Supervision of the relay's background tasks, so a panic or an unexpected end never leaves part
//! of the relay silently dead.
//!
//! What each task gets (README, Operations, says the same):
//! - **restarted** — the fan-out writers, the Redis pub/sub reader, the broker sweeper, the JWKS
//!   refresh, SQS ingest and the demo publisher. None holds state a restart loses: what the
//!   writers have to write waits in the hub, the reader's watched sites and delivered positions
//!   live in the broker (a restarted reader reconnects and fills every gap, as after a dropped
//!   connection), and SQS messages not deleted come back. A task that panics or returns while
//!   the relay is not stopping is logged at error level, counted in
//!   `datastream_task_restarts_total{task}`, and started again after a backoff (100 ms doubling
//!   to 30 s, starting over once a run lasted a minute). While it waits, `/readyz` answers 503
//!   and names it, so a task that keeps failing keeps the node out of rotation.
//! - **fail fast** — the HTTP server: without it the node serves nothing, so `Server::run`
//!   returns an error and the binary exits non-zero for the orchestrator to restart it.

use std::{collections::BTreeMap, future::Future, sync::Arc, sync::Mutex, time::Duration};

use datastream_protocol::backoff::Backoff;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::metrics::Metrics;

/// Delays before a failed task is started again.
const RESTART: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(30) };

/// A run at least this long starts the delays over: the task works, it failed once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Whether a supervised task is running, by name; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Name → running. A name is added when its task first starts.
    running: Mutex<BTreeMap<String, bool>>,
}

impl Tasks {
    /// Records whether task `name` runs (the supervisor does, as it starts and restarts it).
    pub fn report(&self, name: &str, running: bool) {
        let mut tasks = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match tasks.get_mut(name) {
            Some(state) => *state = running,
            None => {
                tasks.insert(name.to_owned(), running);
            }
        }
    }

    /// Every supervised task with whether it runs, by name.
    pub fn all(&self) -> BTreeMap<String, bool> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names of the tasks waiting to be restarted.
    pub fn down(&self) -> Vec<String> {
        self.all().into_iter().filter(|(_, running)| !running).map(|(name, _)| name).collect()
    }
}

/// Runs tasks under supervision: restarts them, records their state, counts restarts.
#[derive(Debug, Clone)]
pub struct Supervisor {
    /// Where each task's state is recorded.
    pub tasks: Arc<Tasks>,
    /// Where restarts are counted.
    pub metrics: Arc<Metrics>,
}

impl Supervisor {
    /// Spawns `make(stop)` as task `name` (`kind` labels its restart count; several tasks may
    /// share one) and starts it again whenever it panics or returns before `stop` is cancelled.
    /// The task should return soon after `stop` is cancelled; the returned handle ends when it
    /// has.
    pub fn spawn<F, Fut>(
        &self,
        name: String,
        kind: &'static str,
        stop: CancellationToken,
        mut make: F,
    ) -> JoinHandle<()>
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        // Listed from the start, so `/readyz` shows it even before it first runs.
        this.tasks.report(&name, true);
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                this.tasks.report(&name, true);
                let started = Instant::now();
                let outcome = tokio::spawn(make(stop.clone())).await;
                if stop.is_cancelled() {
                    return;
                }
                this.tasks.report(&name, false);
                this.metrics.task_restart(kind);
                match outcome {
                    Err(e) if e.is_panic() => {
                        let cause = panic_message(e.into_panic());
                        error!(task = %name, %cause, "background task panicked; restarting it");
                    }
                    _ => error!(task = %name, "background task ended unexpectedly; restarting it"),
                }
                if started.elapsed() >= HEALTHY_RUN {
                    attempt = 0;
                }
                let delay = RESTART.delay(attempt, rand::random());
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                info!(task = %name, "restarting background task");
            }
        })
    }
}

/// Runs `task` until `stop` is cancelled, for tasks that loop forever and hold nothing to finish.
pub async fn until_stopped(stop: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = task => {}
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "unknown".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn supervisor() -> Supervisor {
        Supervisor { tasks: Arc::default(), metrics: Arc::new(Metrics::new()) }
    }

    fn restarts(metrics: &Metrics, kind: &str) -> String {
        let series = format!("datastream_task_restarts_total{{task=\"{kind}\"}} ");
        metrics.render().lines().find_map(|l| l.strip_prefix(&series).map(str::to_owned)).unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_counted_and_reported_down_meanwhile() {
        let sup = supervisor();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let handle = sup.spawn("worker-0".into(), "worker", stop.clone(), move |stop| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 2 {
                    panic!("injected failure {run}");
                }
                until_stopped(stop, std::future::pending()).await;
            }
        });
        // The first run panics at once: the task is down until its delay has passed.
        while runs.load(Ordering::SeqCst) == 0 || sup.tasks.down().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(sup.tasks.down(), vec!["worker-0".to_owned()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted after each panic");
        assert!(sup.tasks.down().is_empty(), "running again: {:?}", sup.tasks.all());
        assert_eq!(restarts(&sup.metrics, "worker"), "2");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), handle).await.expect("stops").expect("no panic");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not restarted once stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_unexpectedly_is_restarted_one_that_was_stopped_is_not() {
        let sup = supervisor();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let handle = sup.spawn("sweeper".into(), "sweeper", stop.clone(), move |stop| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    return;
                }
                stop.cancelled().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(restarts(&sup.metrics, "sweeper"), "1");
        stop.cancel();
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(restarts(&sup.metrics, "sweeper"), "1", "a stop is no failure");
    }
}
