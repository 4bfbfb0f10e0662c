//! The server's background tasks: revocation, module broadcasts,
//! refusal summaries and heartbeats.

use std::sync::Arc;

use serde_json::Value;
use vigil_proto::ServerMessage;

use super::session;
use super::{ServerHandle, Shared};

pub(super) async fn revocation_sweeper(shared: Arc<Shared>) {
    let mut rx = shared.config.trust.subscribe();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        rx.borrow_and_update();
        shared.sweep_revoked();
    }
}

/// Tells every client about each module load, reload and unload.
pub(super) async fn module_broadcaster(
    shared: Arc<Shared>,
    registry: vigil_modules::ModuleRegistry,
) {
    use tokio::sync::broadcast::error::RecvError;
    use vigil_modules::RegistryEvent;
    let mut events = registry.subscribe();
    let handle = ServerHandle {
        shared: shared.clone(),
    };
    let mut seq: u64 = 0;
    loop {
        let event = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        if let Ok(e) = &event {
            let counter = match e {
                RegistryEvent::Loaded(_) => &shared.stats.module_loaded,
                RegistryEvent::Reloaded { .. } => &shared.stats.module_reloaded,
                RegistryEvent::Unloaded { .. } => &shared.stats.module_unloaded,
                _ => &shared.stats.module_rejected,
            };
            counter.inc();
            let (kind, details) = match e {
                RegistryEvent::Loaded(m) => (
                    "module.loaded",
                    with_manifest(
                        serde_json::json!({"module": m.name, "sum": m.sum, "size": m.size}),
                        m,
                    ),
                ),
                RegistryEvent::Reloaded {
                    module,
                    previous_sum,
                } => (
                    "module.reloaded",
                    with_manifest(
                        serde_json::json!({"module": module.name, "sum": module.sum, "previous_sum": previous_sum, "size": module.size}),
                        module,
                    ),
                ),
                RegistryEvent::Unloaded { name, sum } => (
                    "module.unloaded",
                    serde_json::json!({"module": name, "sum": sum}),
                ),
                RegistryEvent::Rejected {
                    name,
                    code,
                    reason,
                    kept,
                } => {
                    // The registry logged it at warn level, with its code;
                    // here it is recorded, with the code.
                    tracing::debug!(module = %name, code, "module rejection recorded");
                    (
                        "module.rejected",
                        serde_json::json!({"module": name, "code": code, "reason": reason, "kept": kept}),
                    )
                }
                _ => ("module.event", serde_json::json!({})),
            };
            shared.audit_later(kind, details);
        }
        let msg = match event {
            Ok(RegistryEvent::Loaded(m)) => ServerMessage::ModLoad(session::module_info(&m)),
            Ok(RegistryEvent::Reloaded { module, .. }) => {
                ServerMessage::ModReload(session::module_info(&module))
            }
            Ok(RegistryEvent::Unloaded { name, .. }) => {
                shared.forget_verify_body(&name);
                ServerMessage::ModUnload { module: name }
            }
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => {
                // Some changes were missed: tell clients about every module
                // as reloaded, so each re-verifies what is there now.
                tracing::warn!(
                    missed = n,
                    "module events missed; re-announcing every module"
                );
                seq += 1;
                for m in registry.list() {
                    // Not a command: never refused.
                    let _ = handle.broadcast(
                        &ServerMessage::ModReload(session::module_info(&m)),
                        &format!("m{seq}"),
                    );
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        seq += 1;
        // Not a command: never refused.
        let sent = handle.broadcast(&msg, &format!("m{seq}")).unwrap_or(0);
        tracing::debug!(clients = sent, frame = %msg.to_frame("-"), "module change broadcast");
    }
}

/// An audit record's details, with the manifest's key id and version when
/// the module was loaded with one.
fn with_manifest(mut details: Value, m: &vigil_modules::ModuleSummary) -> Value {
    if let (Some(manifest), Value::Object(map)) = (&m.manifest, &mut details) {
        map.insert("version".into(), manifest.manifest().version.into());
        map.insert("key_id".into(), manifest.key_id().into());
    }
    details
}

/// Writes a `refusals.summary` record every window (see `refusals.rs`).
pub(super) async fn refusal_summaries(shared: Arc<Shared>) {
    let every = shared.config.refusal_summary_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticker.tick() => shared.flush_refusals().await,
        }
    }
}
