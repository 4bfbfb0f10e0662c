//! Opening the cluster's KV buckets on a NATS 2.9 server.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

/// Opens the KV bucket `name`, creating it first if it is missing.
///
/// The stream is created as a KV bucket's stream directly, with the same
/// configuration `create_key_value` would give it: that call first reads
/// the account's JetStream limits, whose answer from a 2.9 server (it has
/// no `reserved_memory`) async-nats cannot parse.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    let created = created.err();
    // Another server may have created it meanwhile.
    js.get_key_value(name).await.map_err(|e| match created {
        Some(c) => format!("cannot create the {name} bucket: {c}"),
        None => format!("cannot open the {name} bucket: {e}"),
    })
}
