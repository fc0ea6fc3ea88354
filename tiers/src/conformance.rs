//! The conformance suite every [`BlobStore`] runs (object_store's `integration.rs` idea).
//! It panics with a message naming the broken rule.

use crate::{BlobStore, ObjectId, PutOutcome};
use bytes::Bytes;

/// Runs every contract check against an empty store.
pub async fn run_suite(store: &dyn BlobStore) {
    let payload = Bytes::from(
        (0..100_000u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let id = ObjectId::of_bytes(&payload);

    // missing objects
    assert!(
        store.get(&id).await.unwrap_err().is_not_found(),
        "get of a missing object must be NotFound"
    );
    assert!(
        store.head(&id).await.unwrap_err().is_not_found(),
        "head of a missing object must be NotFound"
    );
    assert!(
        store.list().await.unwrap().is_empty(),
        "a new store must list nothing"
    );

    // put with a wrong id is refused and stores nothing
    let wrong = ObjectId::of_bytes(b"something else");
    assert!(
        store.put(&wrong, payload.clone()).await.is_err(),
        "put must refuse bytes that do not hash to the id"
    );
    assert!(
        store.head(&wrong).await.unwrap_err().is_not_found(),
        "a refused put must leave nothing"
    );

    // put, then idempotent put
    assert_eq!(
        store.put(&id, payload.clone()).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put(&id, payload.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent
    );

    // reads
    assert_eq!(
        store.get(&id).await.unwrap(),
        payload,
        "get must return the exact bytes"
    );
    assert_eq!(store.head(&id).await.unwrap().size, payload.len() as u64);
    assert_eq!(
        store.get_range(&id, 10..20).await.unwrap(),
        payload.slice(10..20)
    );
    assert_eq!(store.get_range(&id, 0..0).await.unwrap().len(), 0);
    assert!(
        store
            .get_range(&id, 0..payload.len() as u64 + 1)
            .await
            .is_err(),
        "a range past the end must be an error"
    );

    // list: each object once
    let other = Bytes::from_static(b"a second object");
    let other_id = ObjectId::of_bytes(&other);
    store.put(&other_id, other).await.unwrap();
    let mut listed = store.list().await.unwrap();
    listed.sort();
    let mut expected = vec![id, other_id];
    expected.sort();
    assert_eq!(listed, expected, "list must return every object once");

    // delete is idempotent
    store.delete(&id).await.unwrap();
    store.delete(&id).await.unwrap();
    assert!(
        store.get(&id).await.unwrap_err().is_not_found(),
        "a deleted object must be gone"
    );
    assert_eq!(store.list().await.unwrap(), vec![other_id]);
}
