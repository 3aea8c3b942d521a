//! What each script takes: its KEYS and its fixed ARGV, by name, in order. The Lua side
//! declares the same names at its top (`local K = named(KEYS, {...})`,
//! `local A = named(ARGV, {...})`) and reads them by name; a test compares every script's
//! declarations with these. A caller builds a script's KEYS from a shard's keys by name
//! (`Contract::invocation`), so their order is written here only.

use redis::{Script, ScriptInvocation};

use super::layout::EventKeys;
use super::script;

/// One script's KEYS and fixed ARGV (a variable tail, such as user ids, follows them; each
/// script's header says what it is).
pub(super) struct Contract {
    pub script: &'static str,
    pub keys: &'static [&'static str],
    /// The fixed ARGV the script names, in order; callers push them in this order (the
    /// contract test compares them with the script's declaration).
    #[cfg_attr(not(test), allow(dead_code))]
    pub args: &'static [&'static str],
}

/// Every key a script may name: a shard's keys (`EventKeys::all` order).
const SHARD_KEYS: &[&str] = &[
    "config",
    "count",
    "users",
    "free",
    "unwritten",
    "persisted",
    "healed",
    "held",
    "grants",
    "grant_deadlines",
    "accepted",
    "refused",
    "holder_changes",
];

pub(super) const ACK: Contract = Contract { script: "ack", keys: &["users"], args: &[] };
pub(super) const APPLY: Contract = Contract {
    script: "apply",
    keys: &["config", "count", "users", "free", "unwritten", "held", "accepted", "refused", "holder_changes", "call"],
    args: &["lease_ms", "shard", "shards", "n"],
};
pub(super) const CLOSE_GRANT: Contract = Contract { script: "close_grant", keys: &["accepted", "refused", "config"], args: &["grant"] };
pub(super) const DELETE: Contract = Contract { script: "delete", keys: SHARD_KEYS, args: &["tombstone_ttl_s"] };
pub(super) const FENCE: Contract = Contract { script: "fence", keys: &["config"], args: &["force"] };
pub(super) const GRANT: Contract = Contract {
    script: "grant",
    keys: &["config", "count", "free", "grants", "grant_deadlines", "holder_changes", "held"],
    args: &["grant", "target", "wanted", "lease_ms", "shard", "shards"],
};
pub(super) const HEAL: Contract = Contract {
    script: "heal",
    keys: &["users", "free", "unwritten", "persisted", "healed", "config", "held", "holder_changes"],
    args: &["cutoff_ms"],
};
pub(super) const HOLDER_CHANGES: Contract =
    Contract { script: "holder_changes", keys: &["config", "users", "holder_changes", "held"], args: &["since", "max"] };
pub(super) const IDEMPOTENCY_CLAIM: Contract = Contract {
    script: "idempotency_claim",
    keys: &["config", "idempotency_keys"],
    args: &["key", "fingerprint", "in_flight_ms", "grace_ms", "max"],
};
pub(super) const IDEMPOTENCY_FINISH: Contract =
    Contract { script: "idempotency_finish", keys: &["idempotency_keys"], args: &["key", "fingerprint", "claimed_ms", "status", "body"] };
pub(super) const ISSUED: Contract = Contract { script: "issued", keys: &["config", "users"], args: &["incarnation", "shard", "shards"] };
pub(super) const PROVISION: Contract = Contract {
    script: "provision",
    keys: &["config", "count", "holder_changes", "held"],
    args: &["limit", "per_user", "start_ms", "end_ms", "topic", "recover_if_missing", "paused", "incarnation", "shard", "shards", "epoch"],
};
pub(super) const RELEASE: Contract = Contract {
    script: "release",
    keys: &["users", "free", "unwritten", "config", "held", "holder_changes"],
    args: &["user", "slot", "deadline_ms"],
};
pub(super) const RESTORE_BEGIN: Contract = Contract {
    script: "restore_begin",
    keys: &[
        "config",
        "count",
        "users",
        "free",
        "unwritten",
        "persisted",
        "held",
        "grants",
        "grant_deadlines",
        "accepted",
        "refused",
        "holder_changes",
    ],
    args: &["not_after_ms", "token", "owner", "epoch"],
};
pub(super) const RESTORE_CHUNK: Contract =
    Contract { script: "restore_chunk", keys: &["config", "users", "free", "persisted", "held"], args: &["token", "chunk", "n"] };
pub(super) const RESTORE_FINISH: Contract =
    Contract { script: "restore_finish", keys: &["config", "count", "holder_changes", "held"], args: &["token", "count", "highest"] };
pub(super) const RETIRE: Contract =
    Contract { script: "retire", keys: SHARD_KEYS, args: &["incarnation", "tombstone_ttl_s", "check_only"] };
pub(super) const SETTLE_GRANT: Contract = Contract {
    script: "settle_grant",
    keys: &["grants", "grant_deadlines", "free", "config", "holder_changes", "held"],
    args: &["grant", "verdict"],
};
pub(super) const WRITTEN: Contract =
    Contract { script: "written", keys: &["users", "unwritten", "persisted", "config"], args: &["incarnation"] };

impl Contract {
    /// The script (`lua/common.lua` and its own file).
    fn script(&self) -> &'static Script {
        match self.script {
            "ack" => script!("ack"),
            "apply" => script!("apply"),
            "close_grant" => script!("close_grant"),
            "delete" => script!("delete"),
            "fence" => script!("fence"),
            "grant" => script!("grant"),
            "heal" => script!("heal"),
            "holder_changes" => script!("holder_changes"),
            "idempotency_claim" => script!("idempotency_claim"),
            "idempotency_finish" => script!("idempotency_finish"),
            "issued" => script!("issued"),
            "provision" => script!("provision"),
            "release" => script!("release"),
            "restore_begin" => script!("restore_begin"),
            "restore_chunk" => script!("restore_chunk"),
            "restore_finish" => script!("restore_finish"),
            "retire" => script!("retire"),
            "settle_grant" => script!("settle_grant"),
            "written" => script!("written"),
            other => panic!("no script {other}"),
        }
    }

    /// An invocation of the script with its KEYS in place: each named key of `keys`, and
    /// `extra` for keys that are not a shard's (the gate call's answers, a user's
    /// idempotency keys).
    pub(super) fn invocation(&self, keys: &EventKeys, extra: &[(&str, &str)]) -> ScriptInvocation<'static> {
        let mut invocation = self.script().prepare_invoke();
        for name in self.keys {
            match extra.iter().find(|(extra, _)| extra == name) {
                Some((_, key)) => invocation.key(*key),
                None => invocation.key(keys.named(name)),
            };
        }
        invocation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&Contract] = &[
        &ACK,
        &APPLY,
        &CLOSE_GRANT,
        &DELETE,
        &FENCE,
        &GRANT,
        &HEAL,
        &HOLDER_CHANGES,
        &IDEMPOTENCY_CLAIM,
        &IDEMPOTENCY_FINISH,
        &ISSUED,
        &PROVISION,
        &RELEASE,
        &RESTORE_BEGIN,
        &RESTORE_CHUNK,
        &RESTORE_FINISH,
        &RETIRE,
        &SETTLE_GRANT,
        &WRITTEN,
    ];

    /// The names a script declares for `what` (`KEYS` or `ARGV`) with `named`.
    fn declared(source: &str, what: &str) -> Vec<String> {
        let marker = format!("named({what}, {{");
        let Some(start) = source.find(&marker) else { return Vec::new() };
        let body = &source[start + marker.len()..];
        let body = &body[..body.find('}').expect("a closed list")];
        body.split(',').map(|name| name.trim().trim_matches('\'').to_owned()).filter(|name| !name.is_empty()).collect()
    }

    #[test]
    fn every_script_declares_the_keys_and_arguments_its_callers_send() {
        let sources = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/redis/keyspace/lua")).unwrap();
        let mut scripts: Vec<String> = sources
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "common.lua")
            .map(|name| name.trim_end_matches(".lua").to_owned())
            .collect();
        scripts.sort();
        let mut contracts: Vec<&str> = ALL.iter().map(|c| c.script).collect();
        contracts.sort();
        assert_eq!(scripts, contracts, "a contract per script");
        let keys = EventKeys::of(&crate::event::EventId::new("a", "b").unwrap());
        for contract in ALL {
            let path = format!("{}/src/redis/keyspace/lua/{}.lua", env!("CARGO_MANIFEST_DIR"), contract.script);
            let source = std::fs::read_to_string(path).unwrap();
            assert_eq!(declared(&source, "KEYS"), contract.keys, "{}.lua KEYS", contract.script);
            assert_eq!(declared(&source, "ARGV"), contract.args, "{}.lua ARGV", contract.script);
            for name in contract.keys.iter().filter(|name| !["call", "idempotency_keys"].contains(*name)) {
                keys.named(name);
            }
            contract.script();
            // Read by name only: no positional KEYS left, and ARGV by position only past
            // the named ones (a variable tail).
            assert!(!source.contains("KEYS["), "{}.lua reads KEYS by position", contract.script);
            for position in 1..=contract.args.len() {
                assert!(!source.contains(&format!("ARGV[{position}]")), "{}.lua reads ARGV[{position}] by position", contract.script);
            }
        }
    }
}
