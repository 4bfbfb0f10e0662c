use super::*;

fn ts(secs: u64) -> Timestamp {
    Timestamp::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800 + secs))
        .expect("ts")
}

fn wall(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800 + secs)
}

struct Case {
    key: SigningKey,
    client: NonceVerifier,
    t0: Duration,
}

impl Case {
    fn new() -> Case {
        let key = SigningKey::from_bytes(&[3; 32]);
        let client = NonceVerifier::new(key.verifying_key()).expect("verifier");
        Case {
            key,
            client,
            t0: Duration::from_secs(1_000),
        }
    }

    fn at(&self, secs: u64) -> Duration {
        self.t0 + Duration::from_secs(secs)
    }

    /// A beat over `others` nonces and `nonce`, which sits at `slot`.
    fn beat(&self, epoch: u64, seq: u64, nonce: Nonce, slot: usize) -> NonceHeartbeat {
        let mut nonces: Vec<Nonce> = (0..7u8).map(|i| [i + 100; 32]).collect();
        nonces.insert(slot, nonce);
        SignedBatch::sign(&self.key, epoch, seq, ts(seq), nonces)
            .expect("batch")
            .for_leaf(slot)
            .expect("leaf")
    }

    fn code(&mut self, beat: &NonceHeartbeat, secs: u64) -> Result<FreshBeat, &'static str> {
        let now = self.at(secs);
        self.client
            .verify(beat, now, wall(secs))
            .map_err(|e| e.code())
    }
}

#[test]
fn signing_bytes_are_the_documented_text() {
    let beat = BatchBeat {
        epoch: 7,
        seq: 42,
        sent_at: Timestamp::parse("2025-01-01T12:00:00.25+01:00").expect("ts"),
        root: [0xab; 32],
    };
    let text = format!(
        "vigil-heartbeat-v2\nepoch=7\nseq=42\nsent_at=2025-01-01T12:00:00.250000+01:00\nroot={}\n",
        "ab".repeat(32)
    );
    assert_eq!(beat.signing_bytes(), text.into_bytes());
}

#[test]
fn a_beat_over_a_recent_nonce_is_fresh_at_every_leaf() {
    for slot in 0..8 {
        let mut c = Case::new();
        c.client.issue([1; 32], c.at(0));
        let fresh = c.code(&c.beat(1, 1, [1; 32], slot), 2).expect("fresh");
        assert_eq!(fresh.nonce_age, Duration::from_secs(2));
        assert_eq!((fresh.epoch, fresh.seq), (1, 1));
    }
}

#[test]
fn each_refusal_has_its_own_code_and_none_moves_the_state() {
    let mut c = Case::new();
    c.client.issue([1; 32], c.at(0));
    let good = c.beat(1, 5, [1; 32], 3);
    assert!(c.code(&good, 1).is_ok());

    // A replay of the same beat, and an older one in the epoch.
    assert_eq!(c.code(&good, 2).err(), Some("sequence_not_increasing"));
    assert_eq!(
        c.code(&c.beat(1, 4, [1; 32], 3), 2).err(),
        Some("sequence_not_increasing")
    );
    // Another client's nonce, or one never sent.
    assert_eq!(
        c.code(&c.beat(1, 6, [2; 32], 0), 2).err(),
        Some("unknown_nonce")
    );
    // A forged beat: the seq changed after signing, a bent path, another key.
    let mut forged = c.beat(1, 6, [1; 32], 3);
    forged.seq = 60;
    assert_eq!(c.code(&forged, 2).err(), Some("invalid_signature"));
    let mut bent = c.beat(1, 6, [1; 32], 3);
    bent.index = 2;
    assert_eq!(c.code(&bent, 2).err(), Some("invalid_signature"));
    let other = SigningKey::from_bytes(&[4; 32]);
    let stranger = SignedBatch::sign(&other, 1, 6, ts(6), vec![[1; 32]])
        .and_then(|b| b.for_leaf(0))
        .expect("beat");
    assert_eq!(c.code(&stranger, 2).err(), Some("invalid_signature"));
    // Garbage in the fields.
    let mut garbled = c.beat(1, 6, [1; 32], 3);
    garbled.path = "!!".into();
    assert_eq!(c.code(&garbled, 2).err(), Some("malformed"));
    let mut garbled = c.beat(1, 6, [1; 32], 3);
    garbled.nonce = STANDARD.encode([1; 31]);
    assert_eq!(c.code(&garbled, 2).err(), Some("malformed"));
    let mut garbled = c.beat(1, 6, [1; 32], 3);
    garbled.index = 1 << 40;
    assert_eq!(c.code(&garbled, 2).err(), Some("malformed"));
    // The nonce aged out: a beat held back, or recorded and replayed.
    assert_eq!(
        c.code(&c.beat(1, 6, [1; 32], 3), 16).err(),
        Some("stale_nonce")
    );
    assert_eq!(c.client.last.map(|l| l.seq), Some(5));

    // A later nonce; then a beat over the earlier one is refused even in
    // a new epoch.
    c.client.issue([9; 32], c.at(5));
    assert!(c.code(&c.beat(1, 7, [9; 32], 0), 6).is_ok());
    assert_eq!(
        c.code(&c.beat(2, 1, [1; 32], 0), 7).err(),
        Some("nonce_not_newer")
    );
    // A server restart: a new epoch over a fresh nonce is fine, whatever
    // its sequence number and clock.
    assert!(c.code(&c.beat(2, 1, [9; 32], 1), 8).is_ok());
    // The same nonce may be covered again by a later beat while it is
    // fresh (the client's next nonce has not reached the server).
    assert!(c.code(&c.beat(2, 2, [9; 32], 1), 12).is_ok());
}

#[test]
fn old_nonces_are_forgotten() {
    let mut c = Case::new();
    for i in 0..(NonceVerifier::MAX_KEPT as u8 + 1) {
        c.client.issue([i; 32], c.at(0));
    }
    assert_eq!(c.client.sent.len(), NonceVerifier::MAX_KEPT);
    assert_eq!(
        c.code(&c.beat(1, 1, [0; 32], 0), 1).err(),
        Some("unknown_nonce")
    );
    // Past twice max_age, nonces go at the next issue.
    c.client.issue([200; 32], c.at(31));
    assert_eq!(c.client.sent.len(), 1);
}

#[test]
fn skew_is_the_servers_clock_minus_the_clients() {
    let mut c = Case::new();
    c.client.issue([1; 32], c.at(0));
    // The server's beat says seq 5 -> sent_at ts(5); the client's wall
    // clock reads 50 s then: 45 s ahead.
    let beat = c.beat(1, 5, [1; 32], 0);
    let now = c.at(1);
    let fresh = c.client.verify(&beat, now, wall(50)).expect("fresh");
    assert_eq!(fresh.skew_ms, -45_000);
}

#[test]
fn a_wire_beat_round_trips_through_json() {
    let c = Case::new();
    let beat = c.beat(1, 1, [1; 32], 2);
    let text = serde_json::to_string(&beat).expect("json");
    let back: NonceHeartbeat = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, beat);
    // A clock heartbeat's fields do not parse as a nonce heartbeat.
    let v1 = r#"{"epoch":1,"seq":2,"sent_at":"2025-01-01T00:00:00+00:00","signature":"AA=="}"#;
    assert!(serde_json::from_str::<NonceHeartbeat>(v1).is_err());
}
