//! What the link holds for this server: its sessions, and the
//! subscription that follows each held client's subject.

use vigil_auth::Fingerprint;

use super::{Held, Link, Op, Write};
use crate::routing;

impl Link {
    /// What an attach or detach changes in the sessions this server
    /// holds, and what it asks of the bucket (`None` also for a leave,
    /// which the loops handle themselves).
    pub(super) fn hold(&mut self, op: Op) -> Option<Write> {
        match op {
            Op::Attached(session) => {
                let client = session.client;
                self.subscribe(client);
                self.held.insert(
                    client,
                    Held {
                        session,
                        revision: None,
                    },
                );
                Some(Write::Put(client))
            }
            Op::Detached(client, session) => {
                if self.held.get(&client)?.session.session != session {
                    return None;
                }
                let held = self.held.remove(&client)?;
                self.unsubscribe(&client);
                Some(Write::Delete(client, held.revision?))
            }
            Op::Leave(_) => None,
        }
    }

    /// Starts handing the commands for `client` to the handler (once).
    pub(super) fn subscribe(&mut self, client: Fingerprint) {
        if self.subs.contains_key(&client) {
            return;
        }
        let task = tokio::spawn(routing::follow(
            self.nats.clone(),
            self.handler.clone(),
            self.me(),
            client,
        ));
        self.subs.insert(client, task);
    }

    pub(super) fn unsubscribe(&mut self, client: &Fingerprint) {
        if let Some(task) = self.subs.remove(client) {
            task.abort();
        }
    }
}
