//! The answer codes of the keyspace's scripts: the `ANSWER` table of `lua/common.lua`,
//! mirrored here. One table for every script, so a code means the same wherever it is given;
//! a test reads the Lua table and compares it with this one.

use redis::{ErrorKind, RedisError, RedisResult};

/// What a script answered (see `lua/common.lua` for each code's meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Nothing,
    Done,
    Issued,
    DeliverAgain,
    Confirmed,
    Created,
    Updated,
    Unchanged,
    CreatedRecovering,
    Verified,
    Taken,
    Refused,
    Replay,
    Deleted,
    NotOpen,
    Closed,
    Held,
    SoldOut,
    Recovering,
    Missing,
    Paused,
    ShardEmpty,
    OtherLayout,
    TooEarly,
    Busy,
    TakenOver,
    LimitBelowRows,
    OtherIncarnation,
    StillOpen,
    Unwritten,
    ShardsChanged,
    BelowIssued,
    KeyReused,
    InFlight,
}

/// Each answer's name in the Lua table and its code.
const TABLE: &[(&str, i64, Answer)] = &[
    ("NOTHING", 0, Answer::Nothing),
    ("DONE", 1, Answer::Done),
    ("ISSUED", 2, Answer::Issued),
    ("DELIVER_AGAIN", 3, Answer::DeliverAgain),
    ("CONFIRMED", 4, Answer::Confirmed),
    ("CREATED", 5, Answer::Created),
    ("UPDATED", 6, Answer::Updated),
    ("UNCHANGED", 7, Answer::Unchanged),
    ("CREATED_RECOVERING", 8, Answer::CreatedRecovering),
    ("VERIFIED", 9, Answer::Verified),
    ("TAKEN", 10, Answer::Taken),
    ("REFUSED", 11, Answer::Refused),
    ("REPLAY", 12, Answer::Replay),
    ("DELETED", -1, Answer::Deleted),
    ("NOT_OPEN", -2, Answer::NotOpen),
    ("CLOSED", -3, Answer::Closed),
    ("HELD", -4, Answer::Held),
    ("SOLD_OUT", -5, Answer::SoldOut),
    ("RECOVERING", -6, Answer::Recovering),
    ("MISSING", -7, Answer::Missing),
    ("PAUSED", -8, Answer::Paused),
    ("SHARD_EMPTY", -9, Answer::ShardEmpty),
    ("OTHER_LAYOUT", -10, Answer::OtherLayout),
    ("TOO_EARLY", -11, Answer::TooEarly),
    ("BUSY", -12, Answer::Busy),
    ("TAKEN_OVER", -13, Answer::TakenOver),
    ("LIMIT_BELOW_ROWS", -14, Answer::LimitBelowRows),
    ("OTHER_INCARNATION", -15, Answer::OtherIncarnation),
    ("STILL_OPEN", -16, Answer::StillOpen),
    ("UNWRITTEN", -17, Answer::Unwritten),
    ("SHARDS_CHANGED", -18, Answer::ShardsChanged),
    ("BELOW_ISSUED", -19, Answer::BelowIssued),
    ("KEY_REUSED", -20, Answer::KeyReused),
    ("IN_FLIGHT", -21, Answer::InFlight),
];

impl Answer {
    /// The answer of `script` whose code is `code`; an error for a code no script gives.
    pub fn of(script: &'static str, code: i64) -> RedisResult<Self> {
        TABLE
            .iter()
            .find(|(_, known, _)| *known == code)
            .map(|(_, _, answer)| *answer)
            .ok_or_else(|| RedisError::from((ErrorKind::TypeError, "unknown script answer", format!("{script}.lua answered {code}"))))
    }

    /// An answer `script` does not give: the contract between it and its caller is broken.
    pub fn unexpected(self, script: &'static str) -> RedisError {
        RedisError::from((ErrorKind::TypeError, "unexpected script answer", format!("{script}.lua answered {self:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ANSWER` table of `lua/common.lua`, as `(name, code)`.
    fn lua_table() -> Vec<(String, i64)> {
        let source = include_str!("lua/common.lua");
        let start = source.find("local ANSWER = {").expect("the ANSWER table");
        let body = &source[start..source[start..].find("\n}").map(|end| start + end).unwrap()];
        body.lines()
            .skip(1)
            .map(|line| {
                let entry = line.split("--").next().unwrap().trim().trim_end_matches(',');
                let (name, code) = entry.split_once('=').unwrap_or_else(|| panic!("not `NAME = code`: {line}"));
                (name.trim().to_owned(), code.trim().parse().unwrap_or_else(|_| panic!("not a code: {line}")))
            })
            .collect()
    }

    #[test]
    fn the_lua_table_and_this_one_are_the_same() {
        let rust: Vec<(String, i64)> = TABLE.iter().map(|(name, code, _)| (name.to_string(), *code)).collect();
        assert_eq!(lua_table(), rust);
    }

    #[test]
    fn every_code_names_one_answer() {
        let mut codes: Vec<i64> = TABLE.iter().map(|(_, code, _)| *code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len(), "a code used twice");
        for (_, code, answer) in TABLE {
            assert_eq!(Answer::of("test", *code).unwrap(), *answer);
        }
        assert!(Answer::of("test", 99).is_err());
    }
}
