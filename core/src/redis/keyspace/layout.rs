//! Where an event's state lives: one hash tag per shard.
//!
//! An event of one shard is the hash tag `{<namespace>/<name>}`, as it always was. An event of
//! K shards has K tags: shard 0 is that same tag (the home shard: its configuration tells the
//! number of shards), shard i > 0 is `{<namespace>/<name>#<i>.<n>}`, with `n` the first number
//! that puts the tag's cluster slot within a few slots of `i` K-ths of the slot range past the
//! home shard's. Redis Cluster gives each master a contiguous range of slots (evenly split by
//! `redis-cli --cluster create`), so shards a K-th of the range apart land on different
//! masters when the cluster has more than K masters, and almost always (unless a shard's slot
//! falls within a few slots of a range's edge: about 1 event name in 300 for K = 3, 1 in 40
//! for K = 16) when it has exactly K.
//! The layout is a pure function of the event's name and K: every process computes the same
//! one without asking Redis.
//!
//! A user belongs to one shard, their home shard (`crc16(user id) mod K`): every decision about
//! them is taken there, so one coupon per user needs no cross-shard transaction. See
//! `docs/architecture.md`, "Sharded events".

use crate::event::EventId;
use crate::redis::key_slot;

/// The cluster's slot count.
const SLOTS: u32 = 16384;
/// How far from its target a shard's slot may fall.
const PLACEMENT_TOLERANCE: u32 = 8;
/// Candidates tried per shard before the closest one is taken (a slot within the tolerance
/// is found after about 1,000 on average: computed once per event and process).
const PLACEMENT_CANDIDATES: u32 = 50_000;

/// The keys of one shard of an event, all under the shard's hash tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EventKeys {
    pub config: String,
    pub count: String,
    pub users: String,
    pub free: String,
    pub unwritten: String,
    pub persisted: String,
    pub healed: String,
    /// Entries held by users on this shard (issued and not given back).
    pub held: String,
    /// Grants this shard gave to others and that are not settled yet: id → `target slots...`.
    pub grants: String,
    pub grant_deadlines: String,
    /// Grants this shard took, and grants it refused for good.
    pub accepted: String,
    pub refused: String,
    /// Users whose entries changed after the event could sell out, by `holders_version`
    /// (`holders_changed` in `lua/common.lua`).
    pub holder_changes: String,
}

impl EventKeys {
    fn with_tag(tag: &str) -> Self {
        let prefix = format!("coupon:{{{tag}}}");
        Self {
            config: format!("{prefix}:config"),
            count: format!("{prefix}:count"),
            users: format!("{prefix}:users"),
            free: format!("{prefix}:free"),
            unwritten: format!("{prefix}:unwritten"),
            persisted: format!("{prefix}:persisted"),
            healed: format!("{prefix}:healed"),
            held: format!("{prefix}:held"),
            grants: format!("{prefix}:grants"),
            grant_deadlines: format!("{prefix}:grant_deadlines"),
            accepted: format!("{prefix}:accepted"),
            refused: format!("{prefix}:refused"),
            holder_changes: format!("{prefix}:holder_changes"),
        }
    }

    /// Where a gate call's answers are kept for a resend (`apply_many`); gone after the lease.
    pub fn gate_call(&self, id: &str) -> String {
        format!("{}:call:{id}", self.config.trim_end_matches(":config"))
    }

    /// Where `user`'s `Idempotency-Key`s of the event are kept (`idempotency`), on this
    /// shard: the user's home. The hash tag is the first `{...}` of a key, so braces in the
    /// user id do not move it.
    pub fn idempotency_keys(&self, user: &str) -> String {
        format!("{}:idempotency:{user}", self.config.trim_end_matches(":config"))
    }

    /// The home shard's keys (shard 0, and the only shard of an unsharded event).
    pub fn of(event: &EventId) -> Self {
        Self::with_tag(&event.to_string())
    }

    /// The key a script names `name` (`contract.rs`); a name no shard key has is a bug in a
    /// contract, which its test catches.
    pub fn named(&self, name: &str) -> &str {
        match name {
            "config" => &self.config,
            "count" => &self.count,
            "users" => &self.users,
            "free" => &self.free,
            "unwritten" => &self.unwritten,
            "persisted" => &self.persisted,
            "healed" => &self.healed,
            "held" => &self.held,
            "grants" => &self.grants,
            "grant_deadlines" => &self.grant_deadlines,
            "accepted" => &self.accepted,
            "refused" => &self.refused,
            "holder_changes" => &self.holder_changes,
            other => panic!("no shard key is named {other}"),
        }
    }

    pub fn all(&self) -> [&str; 13] {
        [
            &self.config,
            &self.count,
            &self.users,
            &self.free,
            &self.unwritten,
            &self.persisted,
            &self.healed,
            &self.held,
            &self.grants,
            &self.grant_deadlines,
            &self.accepted,
            &self.refused,
            &self.holder_changes,
        ]
    }
}

/// An event's shards: their keys, and which one decides a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLayout {
    event: EventId,
    shards: Vec<EventKeys>,
}

impl EventLayout {
    /// The layout of `event` with `shards` shards (at least 1).
    pub fn new(event: &EventId, shards: u16) -> Self {
        let count = shards.max(1);
        let home = event.to_string();
        let shards = (0..count).map(|index| EventKeys::with_tag(&shard_tag(&home, index, count))).collect();
        Self { event: event.clone(), shards }
    }

    /// An unsharded event: its one shard is the home tag.
    pub fn single(event: &EventId) -> Self {
        Self::new(event, 1)
    }

    pub fn event(&self) -> &EventId {
        &self.event
    }

    pub fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// The shard that decides `user` (0 for an unsharded event).
    pub fn home_shard(&self, user: &str) -> u16 {
        home_shard(user, self.shard_count())
    }

    /// The hash tag of a shard (for diagnostics and tests).
    pub fn shard_tag(&self, shard: u16) -> String {
        shard_tag(&self.event.to_string(), shard, self.shard_count())
    }

    /// The cluster slot of a shard's keys.
    pub fn shard_slot(&self, shard: u16) -> u16 {
        key_slot(&self.keys(shard).config)
    }

    pub(super) fn keys(&self, shard: u16) -> &EventKeys {
        &self.shards[usize::from(shard)]
    }

    pub(super) fn home(&self) -> &EventKeys {
        &self.shards[0]
    }

    pub(super) fn user_keys(&self, user: &str) -> (u16, &EventKeys) {
        let shard = self.home_shard(user);
        (shard, self.keys(shard))
    }

    pub fn shards(&self) -> std::ops::Range<u16> {
        0..self.shard_count()
    }
}

/// The shard of `user` among `shards`: CRC16 (XMODEM, as Redis Cluster's slots) of the user id.
pub fn home_shard(user: &str, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    crc16::State::<crc16::XMODEM>::calculate(user.as_bytes()) % shards
}

/// The hash tag of shard `index` of `shards` of the event whose home tag is `home`.
fn shard_tag(home: &str, index: u16, shards: u16) -> String {
    if index == 0 || shards <= 1 {
        return home.to_owned();
    }
    let home_slot = u32::from(key_slot(&format!("{{{home}}}")));
    let target = (home_slot + u32::from(index) * SLOTS / u32::from(shards)) % SLOTS;
    let mut best = (u32::MAX, 0);
    for n in 0..PLACEMENT_CANDIDATES {
        let slot = u32::from(key_slot(&format!("{{{home}#{index}.{n}}}")));
        let distance = slot.abs_diff(target).min(SLOTS - slot.abs_diff(target));
        if distance < best.0 {
            best = (distance, n);
        }
        if distance <= PLACEMENT_TOLERANCE {
            break;
        }
    }
    format!("{home}#{index}.{}", best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let id = EventId::new("shop", "black-friday").unwrap();
        let keys = EventKeys::of(&id);
        for key in keys.all() {
            assert!(key.starts_with("coupon:{shop/black-friday}:"), "{key}");
        }
        assert_eq!(keys.count, "coupon:{shop/black-friday}:count");
    }

    fn event() -> EventId {
        EventId::new("shop", "black-friday").unwrap()
    }

    #[test]
    fn one_shard_is_the_layout_of_old() {
        let layout = EventLayout::single(&event());
        assert_eq!(layout.home().config, "coupon:{shop/black-friday}:config");
        assert_eq!(layout.home().count, "coupon:{shop/black-friday}:count");
        assert_eq!(layout.home_shard("anyone"), 0);
    }

    #[test]
    fn every_key_of_a_shard_shares_its_tag() {
        let layout = EventLayout::new(&event(), 3);
        for shard in layout.shards() {
            let slots: Vec<u16> = layout.keys(shard).all().iter().map(|key| key_slot(key)).collect();
            assert!(slots.iter().all(|&slot| slot == slots[0]), "{slots:?}");
        }
        assert_eq!(layout.home().config, "coupon:{shop/black-friday}:config", "shard 0 is the home tag");
    }

    /// With the slot range split evenly over M masters (as `redis-cli --cluster create`
    /// does), K < M shards always land on K different masters, and K = M shards on all M for
    /// all but a few event names in a hundred (more shards, more pairs that may share).
    #[test]
    fn shards_land_on_different_masters_of_an_even_cluster() {
        const NAMES: u32 = 100;
        for masters in [2u32, 3, 4, 6, 16] {
            let master_of = |slot: u16| (u32::from(slot) * masters / SLOTS) as usize;
            for shards in [2, 3, 5, masters as u16].into_iter().filter(|&k| u32::from(k) <= masters) {
                let mut shared = 0;
                for n in 0..NAMES {
                    let event = EventId::new("shop", &format!("sale-{n}")).unwrap();
                    let layout = EventLayout::new(&event, shards);
                    let mut used: Vec<usize> = layout.shards().map(|s| master_of(layout.shard_slot(s))).collect();
                    used.sort_unstable();
                    used.dedup();
                    if used.len() < usize::from(shards) {
                        assert_eq!(u32::from(shards), masters, "{event} with {shards} shards on {masters} masters");
                        shared += 1;
                    }
                }
                assert!(shared * 100 <= 4 * NAMES, "{shared} of {NAMES} names share a master: {shards} shards on {masters} masters");
            }
        }
    }

    #[test]
    fn users_spread_over_the_shards() {
        let mut counts = [0u32; 3];
        for n in 0..30_000 {
            counts[usize::from(home_shard(&format!("user-{n}"), 3))] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..=11_000).contains(&c)), "{counts:?}");
        assert_eq!(home_shard("user-1", 1), 0);
    }
}
