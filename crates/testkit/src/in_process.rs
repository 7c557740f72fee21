//! Nodes on threads of this process, through `kvnode::server::run`.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::thread::JoinHandle;

use kvnode::config::Config;
use tokio::sync::oneshot;

/// A node served on a thread of its own, with its own actix system.
#[derive(Debug)]
pub(crate) struct InProcess {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl InProcess {
    /// Loads the node's configuration from its variables (as the binary
    /// would from its environment) and serves it on `listener`.
    pub(crate) fn start(
        id: &str,
        env: &[(String, String)],
        listener: TcpListener,
    ) -> io::Result<Self> {
        let env: HashMap<String, String> = env.iter().cloned().collect();
        let config = Config::load_from(None, env).map_err(io::Error::other)?;
        let (shutdown, signal) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{id} in process"))
            .spawn(move || {
                actix_rt::System::new().block_on(kvnode::server::run(config, listener, async {
                    // A dropped sender stops the node too.
                    let _ = signal.await;
                }))
            })?;
        Ok(Self {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Completes the node's shutdown future: it stops as on SIGTERM.
    pub(crate) fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// What `kvnode::server::run` returned, once it has.
    pub(crate) fn try_exit(&mut self) -> Option<io::Result<()>> {
        if !self.thread.as_ref()?.is_finished() {
            return None;
        }
        let thread = self.thread.take()?;
        Some(match thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the node's thread panicked")),
        })
    }
}
