//! What one operator may ask of the shared Kafka in total: the partitions of the topics it
//! creates, summed over the events it manages, stay within `MAX_PARTITIONS_TOTAL`. Admission
//! (the chart's ValidatingAdmissionPolicy) caps one event's partitions, but sees one object at
//! a time; the sum is the operator's to keep, before it creates a topic.

use std::collections::HashMap;

use coupon_core::kafka::TopicLookup;
use kube::ResourceExt;

use super::provision::provisioned_before;
use super::Context;
use crate::conditions::Reason;
use crate::crd::{CouponEvent, CouponEventSpec};
use crate::status::Refusal;

/// Partitions the topics of the provisioned events among `events` take, `topic` aside: each
/// topic once, at the most any event on it asked for (a topic shared by several events is
/// one topic).
fn partitions_in_use<'a>(events: impl Iterator<Item = &'a CouponEvent>, topic: &str) -> i64 {
    let mut by_topic: HashMap<&str, i64> = HashMap::new();
    for event in events.filter(|event| event.metadata.deletion_timestamp.is_none() && provisioned_before(event)) {
        if event.spec.topic != topic {
            let partitions = by_topic.entry(event.spec.topic.as_str()).or_default();
            *partitions = (*partitions).max(i64::from(event.spec.partitions));
        }
    }
    by_topic.values().sum()
}

/// A refusal when creating `spec.topic` would take the partitions of the events this operator
/// manages past its cap. A topic that exists already costs nothing more (it is used as it
/// is); one that cannot be looked up is left to `ensure_topic`, which says why.
pub(super) async fn over_the_cap(event: &CouponEvent, spec: &CouponEventSpec, ctx: &Context) -> Option<Refusal> {
    let cap = ctx.max_partitions_total?;
    if !matches!(ctx.backend.admin.lookup(&spec.topic).await, Ok(TopicLookup::Missing)) {
        return None;
    }
    let others = ctx.events.state();
    let in_use = partitions_in_use(others.iter().filter(|other| other.uid() != event.uid()).map(|other| other.as_ref()), &spec.topic);
    let total = in_use + i64::from(spec.partitions);
    (total > cap).then(|| Refusal {
        reason: Reason::PartitionCapExceeded,
        message: format!(
            "topic {} would take the partitions of this operator's topics to {total}, past its cap of {cap} (MAX_PARTITIONS_TOTAL)",
            spec.topic
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, partitions: i32, provisioned: bool) -> CouponEvent {
        let spec: CouponEventSpec = serde_json::from_value(serde_json::json!({
            "limit": 10, "topic": topic, "partitions": partitions,
            "schedule": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T10:30:00Z"},
            "api": {"deployment": "coupon-api", "replicas": 2},
            "consumer": {"deployment": "coupon-consumer", "replicas": 1}
        }))
        .unwrap();
        let mut event = CouponEvent::new("e", spec);
        if provisioned {
            event.status = Some(crate::crd::CouponEventStatus { last_accepted_spec: Some(event.spec.clone()), ..Default::default() });
        }
        event
    }

    #[test]
    fn each_topic_counts_once_and_only_provisioned_events_count() {
        let events = [event("a", 3, true), event("a", 5, true), event("b", 2, true), event("c", 7, false), event("mine", 9, true)];
        assert_eq!(partitions_in_use(events.iter(), "mine"), 5 + 2);
    }
}
