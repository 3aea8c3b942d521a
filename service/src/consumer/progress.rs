//! How far the consumer has got on each partition, and the records it holds back.
//!
//! A record of an event whose configuration is missing from Redis (Redis lost it and the
//! operator is writing it back, or the event is not provisioned yet) cannot be judged: it is
//! held, and only it. The records around it, of other events or of the same partition, are
//! written; the partition's committed offset stops at the first record held there, so a
//! crash or a rebalance reads the held records again rather than losing them.

use std::collections::{BTreeMap, HashSet};

use super::batch::RawRecord;

/// A topic partition.
pub type Partition = (String, i32);

/// Per partition: what was taken off the topic, and what of it is held.
#[derive(Default)]
pub struct Progress {
    /// One past the highest offset taken off each partition (written, failed or held).
    read: BTreeMap<Partition, i64>,
    /// Held records, by partition and offset.
    held: BTreeMap<Partition, BTreeMap<i64, RawRecord>>,
}

impl Progress {
    /// Notes that the records of `batch` were taken off their partitions.
    pub fn read(&mut self, batch: &[RawRecord]) {
        for record in batch {
            let p = &record.position;
            let next = self.read.entry((p.topic.clone(), p.partition)).or_insert(p.offset + 1);
            *next = (*next).max(p.offset + 1);
        }
    }

    /// Holds records until their event can be judged.
    pub fn hold(&mut self, records: Vec<RawRecord>) {
        for record in records {
            let partition = (record.position.topic.clone(), record.position.partition);
            self.held.entry(partition).or_default().insert(record.position.offset, record);
        }
    }

    /// Takes every held record out, in offset order per partition, for another try.
    pub fn take_held(&mut self) -> Vec<RawRecord> {
        std::mem::take(&mut self.held).into_values().flat_map(BTreeMap::into_values).collect()
    }

    pub fn held_count(&self) -> usize {
        self.held.values().map(BTreeMap::len).sum()
    }

    /// The offset to commit on each partition of `batch`: one past what was read there, but
    /// never past a held record.
    pub fn commit_targets(&self, batch: &[RawRecord]) -> BTreeMap<Partition, i64> {
        let mut targets = BTreeMap::new();
        for record in batch {
            let partition = (record.position.topic.clone(), record.position.partition);
            if targets.contains_key(&partition) {
                continue;
            }
            let read = self.read.get(&partition).copied().unwrap_or(record.position.offset + 1);
            let first_held = self.held.get(&partition).and_then(|held| held.keys().next().copied());
            targets.insert(partition, first_held.map_or(read, |held| held.min(read)));
        }
        targets
    }

    /// Forgets the partitions the consumer no longer owns (after a rebalance): their records
    /// are read again, from the committed offset, by whoever owns them now.
    pub fn keep_only(&mut self, assigned: &HashSet<Partition>) {
        self.read.retain(|partition, _| assigned.contains(partition));
        self.held.retain(|partition, _| assigned.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Position;

    fn raw(partition: i32, offset: i64) -> RawRecord {
        RawRecord { position: Position { topic: "t".into(), partition, offset }, payload: vec![] }
    }

    fn target(progress: &Progress, batch: &[RawRecord], partition: i32) -> Option<i64> {
        progress.commit_targets(batch).get(&("t".to_owned(), partition)).copied()
    }

    #[test]
    fn a_held_record_stops_its_partition_only_and_is_passed_once_written() {
        let mut progress = Progress::default();
        let batch = [raw(0, 5), raw(0, 6), raw(0, 7), raw(1, 3)];
        progress.read(&batch);
        progress.hold(vec![raw(0, 6)]);
        assert_eq!(target(&progress, &batch, 0), Some(6), "not past the held record");
        assert_eq!(target(&progress, &batch, 1), Some(4), "the other partition moves on");

        let later = [raw(0, 8)];
        progress.read(&later);
        assert_eq!(target(&progress, &later, 0), Some(6), "still held");

        let retried = progress.take_held();
        assert_eq!(retried.iter().map(|r| r.position.offset).collect::<Vec<_>>(), vec![6]);
        assert_eq!(progress.held_count(), 0);
        assert_eq!(target(&progress, &retried, 0), Some(9), "written at last: past everything read");
    }

    #[test]
    fn a_lost_partition_is_forgotten() {
        let mut progress = Progress::default();
        let batch = [raw(0, 5), raw(1, 3)];
        progress.read(&batch);
        progress.hold(vec![raw(0, 5), raw(1, 3)]);
        progress.keep_only(&HashSet::from([("t".to_owned(), 1)]));
        assert_eq!(progress.held_count(), 1);
        // Read again from the committed offset after coming back: nothing remembered.
        let again = [raw(0, 5)];
        progress.read(&again);
        assert_eq!(target(&progress, &again, 0), Some(6));
    }
}
