//! What the process needs around the deployment: logging, signals, limits.

/// Logs to stderr, with line breaks and control characters in logged
/// text escaped (attacker-chosen text cannot forge a line).
pub(crate) fn init_logging(format: vigil_log::Format) {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    vigil_log::init(&filter, format);
}

/// The next SIGTERM or SIGINT, by name.
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only the process's death stops us.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// A write past a file-size limit (`ulimit -f`, systemd's `LimitFSIZE`)
/// raises SIGXFSZ, which kills the process by default. With a handler the
/// write fails with `EFBIG` instead: the audit log fails closed (the REST
/// API answers 503) and recovers once the limit is raised.
pub(crate) fn ignore_file_size_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw())) {
        Ok(mut signals) => {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::warn!("a write passed the file-size limit (SIGXFSZ)");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGXFSZ"),
    }
}

/// Raises the open-file limit to the hard limit: every client is a socket.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return;
    };
    if limit.current == Some(hard) {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = hard, "raised the open-file limit to the hard limit"),
        Err(e) => {
            tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open-file limit")
        }
    }
}
