//! `heal.lua` and the restore: `restore_begin.lua`, `restore_chunk.lua`, `restore_finish.lua`.

use std::time::Duration;

use coupon_core::redis::keyspace::{self, GateDecision, HealVerdict, OverdueEntry, RestoreStep};

use crate::{connect, event, open, LONG};

/// `heal.lua`: a written row marks its entry, no row frees the slot, another row holding the
/// slot drops the entry and keeps the slot; an entry delivered again since the cut-off is left
/// alone.
#[tokio::test]
async fn healing_settles_each_verdict_and_spares_a_new_delivery() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(10)).await;
    let mut entries = Vec::new();
    for user in ["written", "free", "taken", "delivered-again"] {
        let GateDecision::Issued { slot, .. } = keyspace::apply(&mut conn, &layout, user, Duration::from_millis(1), None).await.unwrap().0
        else {
            panic!()
        };
        entries.push(OverdueEntry { user: user.into(), slot });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = keyspace::server_time_ms(&mut conn).await.unwrap();
    // Delivered again after the cut-off: its deadline moved past it.
    let again = keyspace::apply(&mut conn, &layout, "delivered-again", LONG, None).await.unwrap().0;
    assert!(matches!(again, GateDecision::Issued { again: true, .. }), "{again:?}");
    let verdicts: Vec<_> =
        entries.iter().cloned().zip([HealVerdict::Written, HealVerdict::Free, HealVerdict::SlotTaken, HealVerdict::Free]).collect();
    let healed = keyspace::heal(&mut conn, &layout, 0, cutoff, &verdicts).await.unwrap();
    assert_eq!((healed.healed, healed.written), (2, 1));
    let stock = keyspace::stock(&mut conn, &layout, 0).await.unwrap().unwrap();
    // 10 slots, 4 handed out, one freed (the "taken" slot stays taken).
    assert_eq!(stock.available, 7);
    assert_eq!(keyspace::heal(&mut conn, &layout, 0, cutoff, &verdicts).await.unwrap().healed, 0, "settled once");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// The restore's steps and each of their answers: not recovering, too early, another restore
/// under way, begun; a chunk of another restore, a chunk; a finish under a limit below the
/// rows, of another restore, done.
#[tokio::test]
async fn the_restore_gives_each_of_its_answers() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let far = i64::MAX / 4;
    assert_eq!(keyspace::restore_begin(&mut conn, &layout, 0, "t1", "me", far, 1).await.unwrap(), RestoreStep::NotRecovering);
    keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
    assert_eq!(keyspace::restore_begin(&mut conn, &layout, 0, "t1", "me", 0, 1).await.unwrap(), RestoreStep::TooEarly);
    assert_eq!(keyspace::restore_begin(&mut conn, &layout, 0, "t1", "me", far, 1).await.unwrap(), RestoreStep::Done);
    assert_eq!(
        keyspace::restore_begin(&mut conn, &layout, 0, "t2", "another", far, 1).await.unwrap(),
        RestoreStep::Busy,
        "a restore with a fresh heartbeat is not taken over"
    );
    let rows = [("a".to_owned(), 1, 1), ("b".to_owned(), 3, 1)];
    let rows: Vec<&(String, i64, i64)> = rows.iter().collect();
    assert_eq!(keyspace::restore_chunk(&mut conn, &layout, 0, "t2", 1, &rows, &[2]).await.unwrap(), RestoreStep::Interrupted);
    assert_eq!(keyspace::restore_chunk(&mut conn, &layout, 0, "t1", 1, &rows, &[2]).await.unwrap(), RestoreStep::Done);
    assert_eq!(keyspace::restore_finish(&mut conn, &layout, 0, "t1", 3, 9).await.unwrap(), RestoreStep::LimitBelowRows);
    assert_eq!(keyspace::restore_finish(&mut conn, &layout, 0, "t2", 3, 3).await.unwrap(), RestoreStep::Interrupted);
    assert_eq!(keyspace::restore_finish(&mut conn, &layout, 0, "t1", 3, 3).await.unwrap(), RestoreStep::Done);
    let counters = keyspace::counters(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!((counters.issued, counters.persisted, counters.recovering), (2, 2, false), "{counters:?}");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}
