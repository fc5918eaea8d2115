//! The behaviour every [`Backend`] must show, as one test routine that each backend's tests call
//! on a fresh, empty store. It panics on the first difference.

use std::time::Duration;

use crate::{Backend, Error, EventType};

async fn next_event(watch: &mut crate::Watch) -> crate::Event {
    tokio::time::timeout(Duration::from_secs(5), watch.events.recv())
        .await
        .expect("a watch event within 5s")
        .expect("the watch is open")
}

/// Runs the conformance checks against an empty store.
pub async fn run(store: &dyn Backend) {
    assert_eq!(store.revision(), 0, "an empty store is at revision 0");

    // create, get, and the revisions a key carries
    let r1 = store
        .create("/registry/a/1", b"one".to_vec())
        .await
        .expect("create");
    assert_eq!(r1, 1);
    let kv = store
        .get("/registry/a/1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (&*kv.value, kv.create_revision, kv.mod_revision),
        (&b"one"[..], 1, 1)
    );
    assert_eq!(
        store.create("/registry/a/1", b"again".to_vec()).await,
        Err(Error::AlreadyExists)
    );
    assert_eq!(store.get("/registry/a/missing").await.expect("get"), None);

    // compare-and-swap
    let r2 = store
        .update("/registry/a/1", b"uno".to_vec(), r1)
        .await
        .expect("update");
    assert_eq!(r2, 2);
    assert_eq!(
        store.update("/registry/a/1", b"stale".to_vec(), r1).await,
        Err(Error::Conflict { current: 2 })
    );
    assert_eq!(
        store.update("/registry/a/nope", b"x".to_vec(), 1).await,
        Err(Error::NotFound)
    );
    let kv = store
        .get("/registry/a/1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision), (1, 2));

    // range with prefix, limit and continuation
    for i in 2..=5 {
        store
            .create(&format!("/registry/a/{i}"), vec![b'0' + i as u8])
            .await
            .expect("create");
    }
    store
        .create("/registry/b/1", b"other".to_vec())
        .await
        .expect("create");
    let all = store.range("/registry/a/", None, 0).await.expect("range");
    assert_eq!(all.kvs.len(), 5);
    assert!(!all.more);
    assert_eq!(all.revision, store.revision());
    let page = store.range("/registry/a/", None, 2).await.expect("range");
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    assert_eq!(page.remaining, 3);
    let last = page.kvs.last().map(|kv| kv.key.clone()).expect("a key");
    let rest = store
        .range("/registry/a/", Some(&last), 0)
        .await
        .expect("range");
    assert_eq!(rest.kvs.len(), 3);
    assert_eq!(rest.kvs[0].key, "/registry/a/3");

    // watch from now, and from a past revision
    let before = store.revision();
    let mut w = store.watch("/registry/a/", before).await.expect("watch");
    let r = store
        .create("/registry/a/6", b"six".to_vec())
        .await
        .expect("create");
    store
        .create("/registry/b/2", b"not watched".to_vec())
        .await
        .expect("create");
    let (del_rev, last) = store
        .delete("/registry/a/6", Some(r))
        .await
        .expect("delete");
    assert_eq!(&*last.value, b"six");
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.key.as_str(), e.revision()),
        (EventType::Put, "/registry/a/6", r)
    );
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.revision()), (EventType::Delete, del_rev));
    assert_eq!(e.prev.map(|p| p.mod_revision), Some(r));

    let mut replay = store
        .watch("/registry/a/", before)
        .await
        .expect("watch from the past");
    assert_eq!(next_event(&mut replay).await.revision(), r);
    assert_eq!(next_event(&mut replay).await.revision(), del_rev);

    // delete preconditions
    assert_eq!(
        store.delete("/registry/a/2", Some(1)).await.err(),
        Some(Error::Conflict { current: 3 })
    );
    assert_eq!(
        store.delete("/registry/a/6", None).await.err(),
        Some(Error::NotFound)
    );

    // list then watch, without a gap
    let mut lw = store.list_watch("/registry/b/").await.expect("list_watch");
    assert_eq!(lw.kvs.len(), 2);
    assert_eq!(lw.revision, store.revision());
    let r = store
        .create("/registry/b/3", b"three".to_vec())
        .await
        .expect("create");
    assert_eq!(next_event(&mut lw.watch).await.revision(), r);

    // compaction
    let now = store.revision();
    store.compact(now).await.expect("compact");
    assert!(matches!(
        store.watch("/registry/", 1).await.err(),
        Some(Error::Compacted { .. })
    ));
    assert!(store.watch("/registry/", now).await.is_ok());
}
