//! One runner for a service started inside the test's own process: its
//! library's `serve`/`run(args, listener, shutdown)` on a listener bound to
//! port 0, stopped gracefully on request. Tests of one service use it; tests
//! of the whole system start the binaries ([`crate::services`]).

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a graceful stop may take before the test fails.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A shutdown future, as the services take it.
pub type Shutdown = BoxFuture<'static, ()>;

pub struct InProcess {
    /// `http://127.0.0.1:PORT` of the service's listener.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Binds `127.0.0.1:0` and spawns `serve(listener, shutdown)`, without
    /// waiting for it to answer.
    pub async fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve(listener, shutdown));
        Self {
            url,
            stop: Some(stop),
            task,
        }
    }

    /// Spawns the service and waits until its `/readyz` answers 200.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let service = Self::spawn(serve).await;
        crate::process::wait_until_ok(&format!("{}/readyz", service.url), Duration::from_secs(30))
            .await;
        service
    }

    /// Whether the service has returned (for a refusal to start).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// What the service returned, once it has (without asking it to stop).
    pub async fn outcome(self) -> anyhow::Result<()> {
        tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .expect("the service returns in time")
            .expect("the service does not panic")
    }

    /// Asks the service to shut down gracefully and checks it ended cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .expect("the service stops in time")
            .expect("the service does not panic")
            .expect("the service ends without an error");
    }
}
