//! Routing: how a command issued on one server reaches clients held by
//! the others, and how their answers come back.
//!
//! Three kinds of subject:
//!
//! - `vigil.client.<fingerprint>`: a command for one client. The server
//!   holding a session of that client subscribes to it while it does, so
//!   a command follows a client that moved without anyone looking it up.
//! - `vigil.all`: a command for every client, or for a subtree (the
//!   `Vigil-Tree` header). Every server subscribes; each delivers to its
//!   own clients and ignores what it issued itself.
//! - `vigil.ack.<fingerprint>`: what a server is told about the commands
//!   it issued: which sessions a holding server queued one for
//!   ([`Report::Accepted`]), then each session's outcome as it settles
//!   ([`Report::Settled`], batched).
//!
//! The payload of a command is the signed command's JSON exactly as the
//! issuing server relays it; the holding server frames it with its own REF
//! and its clients verify it as they would any other. Nothing here is
//! trusted to command a client (see docs/security.md).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vigil_auth::Fingerprint;

/// The subject every server subscribes to for commands to all clients
/// (or a subtree).
pub const BROADCAST_SUBJECT: &str = "vigil.all";

/// The header naming the issuing server (its fingerprint, hex).
pub const ORIGIN_HEADER: &str = "Vigil-Origin";
/// The header holding the issuing server's REF for the delivery.
pub const REF_HEADER: &str = "Vigil-Ref";
/// The header holding a broadcast's subtree (JSON array of strings).
pub const TREE_HEADER: &str = "Vigil-Tree";

/// The subject of commands for one client.
pub fn client_subject(client: &Fingerprint) -> String {
    format!("vigil.client.{}", client.to_hex())
}

/// The subject a server's reports come to.
pub fn reports_subject(server: &Fingerprint) -> String {
    format!("vigil.ack.{}", server.to_hex())
}

/// Which clients of the receiving server a command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// This client's sessions.
    Client(Fingerprint),
    /// Every client.
    All,
    /// The clients in this subtree.
    Subtree(Vec<String>),
}

/// A command another server issued, for clients this server holds.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The issuing server.
    pub origin: Fingerprint,
    /// Its REF for the delivery (what reports name).
    pub reference: String,
    /// Which clients.
    pub scope: Scope,
    /// The signed command's JSON, one line, as it was relayed.
    pub command: Bytes,
}

/// What became of a command at one session of another server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The client answered (its `cmd:ack` body).
    Acked {
        /// The ack, as the client sent it.
        ack: serde_json::Value,
    },
    /// No session of the client was there.
    NotConnected,
    /// Its queue was full.
    QueueFull,
    /// The session ended before it answered.
    Disconnected,
    /// It left too many commands unanswered.
    Unanswered,
}

/// One session's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    /// The client.
    pub client: Fingerprint,
    /// The session, on the reporting server (0 for none).
    pub session: u64,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a holding server tells the issuing server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The command was received: the sessions it was queued for, and the
    /// outcomes known at once.
    Accepted {
        /// The issuing server's REF.
        reference: String,
        /// The reporting server.
        server: Fingerprint,
        /// The sessions it was queued for.
        queued: Vec<(Fingerprint, u64)>,
        /// Outcomes known at once.
        settled: Vec<Settled>,
    },
    /// Outcomes that settled since.
    Settled {
        /// The issuing server's REF.
        reference: String,
        /// The reporting server.
        server: Fingerprint,
        /// The outcomes.
        settled: Vec<Settled>,
    },
}

impl Report {
    /// The REF it is about.
    pub fn reference(&self) -> &str {
        match self {
            Report::Accepted { reference, .. } | Report::Settled { reference, .. } => reference,
        }
    }
}

/// What this server does with what arrives from the cluster.
pub trait Handler: Send + Sync + 'static {
    /// A session this server holds was displaced: its client has attached
    /// to another server since.
    fn displaced(&self, client: Fingerprint, session: u64);
    /// A command another server issued, for clients held here.
    fn command(&self, incoming: Incoming);
    /// A report on a command this server issued.
    fn report(&self, report: Report);
}

/// Reads a command message: `None` for one without the headers, from
/// this server itself, or with a subtree that is not one.
pub(crate) fn incoming(
    message: &async_nats::Message,
    me: &Fingerprint,
    client: Option<Fingerprint>,
) -> Option<Incoming> {
    let headers = message.headers.as_ref()?;
    let origin: Fingerprint = headers.get(ORIGIN_HEADER)?.as_str().parse().ok()?;
    if origin == *me {
        return None;
    }
    let reference = headers.get(REF_HEADER)?.as_str().to_owned();
    if reference.is_empty() || reference.len() > 64 {
        return None;
    }
    let scope = match (client, headers.get(TREE_HEADER)) {
        (Some(c), _) => Scope::Client(c),
        (None, None) => Scope::All,
        (None, Some(tree)) => Scope::Subtree(serde_json::from_str(tree.as_str()).ok()?),
    };
    Some(Incoming {
        origin,
        reference,
        scope,
        command: message.payload.clone(),
    })
}

/// The headers of a command this server issues.
pub(crate) fn headers(me: &Fingerprint, reference: &str, scope: &Scope) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ORIGIN_HEADER, me.to_hex().as_str());
    headers.insert(REF_HEADER, reference);
    if let Scope::Subtree(path) = scope {
        let tree = serde_json::to_string(path).unwrap_or_else(|_| "[]".into());
        headers.insert(TREE_HEADER, tree.as_str());
    }
    headers
}

/// What this server sends: a command, or a report to the server that
/// issued one.
pub(crate) enum Out {
    Command {
        reference: String,
        scope: Scope,
        command: Bytes,
    },
    Report {
        to: Fingerprint,
        report: Report,
    },
}

/// Most messages the router takes from its queue at once: reports on the
/// same delivery among them go out as one message.
const BATCH: usize = 256;

/// The router task: it publishes what this server sends, and hands what
/// arrives on `vigil.all` and on this server's report subject to the
/// handler. Per-client subscriptions are the link's (they follow the
/// sessions it holds).
pub(crate) async fn route(
    inner: std::sync::Arc<crate::Inner>,
    nats: async_nats::Client,
    mut out: tokio::sync::mpsc::UnboundedReceiver<Out>,
    handler: std::sync::Arc<dyn Handler>,
) {
    use futures_util::StreamExt as _;
    let me = inner.me;
    let (mut broadcasts, mut reports) = match (
        nats.subscribe(BROADCAST_SUBJECT).await,
        nats.subscribe(reports_subject(&me)).await,
    ) {
        (Ok(b), Ok(r)) => (b, r),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe to the cluster's subjects: commands from other servers will not arrive");
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = out.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                publish(&nats, &me, merge(std::mem::take(&mut batch))).await;
            }
            message = broadcasts.next() => match message {
                Some(m) => {
                    if let Some(incoming) = incoming(&m, &me, None) {
                        handler.command(incoming);
                    }
                }
                None => return,
            },
            message = reports.next() => match message {
                Some(m) => match serde_json::from_slice::<Report>(&m.payload) {
                    Ok(report) => handler.report(report),
                    Err(e) => tracing::warn!(error = %e, "a report that is none: ignored"),
                },
                None => return,
            },
        }
    }
}

/// Hands the commands for `client` to the handler until aborted (which
/// unsubscribes): the link runs one while this server holds the client.
pub(crate) async fn follow(
    nats: async_nats::Client,
    handler: std::sync::Arc<dyn Handler>,
    me: Fingerprint,
    client: Fingerprint,
) {
    use futures_util::StreamExt as _;
    let mut sub = match nats.subscribe(client_subject(&client)).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(client = %client, error = %e, "cannot subscribe to a client's subject: commands for it from other servers will not arrive");
            return;
        }
    };
    while let Some(message) = sub.next().await {
        if let Some(incoming) = incoming(&message, &me, Some(client)) {
            handler.command(incoming);
        }
    }
}

/// Merges the reports of one batch that are about the same delivery,
/// from this server, to the same issuer, keeping their order.
fn merge(batch: Vec<Out>) -> Vec<Out> {
    let mut merged: Vec<Out> = Vec::with_capacity(batch.len());
    for item in batch {
        if let Out::Report {
            to,
            report: Report::Settled {
                reference, settled, ..
            },
        } = &item
            && let Some(Out::Report {
                to: last_to,
                report:
                    Report::Settled {
                        reference: last_ref,
                        settled: last,
                        ..
                    },
            }) = merged.last_mut()
            && last_to == to
            && last_ref == reference
        {
            last.extend(settled.iter().cloned());
            continue;
        }
        merged.push(item);
    }
    merged
}

async fn publish(nats: &async_nats::Client, me: &Fingerprint, batch: Vec<Out>) {
    for item in batch {
        let sent = match item {
            Out::Command {
                reference,
                scope,
                command,
            } => {
                let subject = match &scope {
                    Scope::Client(c) => client_subject(c),
                    Scope::All | Scope::Subtree(_) => BROADCAST_SUBJECT.to_owned(),
                };
                nats.publish_with_headers(subject, headers(me, &reference, &scope), command)
                    .await
            }
            Out::Report { to, report } => match serde_json::to_vec(&report) {
                Ok(body) => nats.publish(reports_subject(&to), Bytes::from(body)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode a report");
                    continue;
                }
            },
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot publish to the cluster");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::of_spki(&[n])
    }

    #[test]
    fn a_report_reads_back_as_it_was_written() {
        let report = Report::Accepted {
            reference: "d7".into(),
            server: fp(2),
            queued: vec![(fp(3), 11)],
            settled: vec![
                Settled {
                    client: fp(4),
                    session: 0,
                    outcome: Outcome::NotConnected,
                },
                Settled {
                    client: fp(5),
                    session: 9,
                    outcome: Outcome::Acked {
                        ack: serde_json::json!({"command_id": "c1", "status": "done"}),
                    },
                },
            ],
        };
        let bytes = serde_json::to_vec(&report).expect("encodes");
        let back: Report = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(back, report);
        assert_eq!(back.reference(), "d7");
    }

    #[test]
    fn a_command_message_names_its_origin_ref_and_scope() {
        let me = fp(1);
        let headers = headers(&fp(2), "d9", &Scope::Subtree(vec!["eu".into()]));
        let message = async_nats::Message {
            subject: BROADCAST_SUBJECT.into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        let got = incoming(&message, &me, None).expect("a command");
        assert_eq!(got.origin, fp(2));
        assert_eq!(got.reference, "d9");
        assert_eq!(got.scope, Scope::Subtree(vec!["eu".into()]));
        // What this server issued itself is not for it.
        assert!(incoming(&message, &fp(2), None).is_none());
        let targeted = incoming(&message, &me, Some(fp(5))).expect("a command");
        assert_eq!(targeted.scope, Scope::Client(fp(5)));
    }
}
