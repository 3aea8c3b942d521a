//! `coupon-service event plan`: the next windows of a recurrence, as the operator and
//! `event create --every` will open them, to check a rule and its time zone before a sale
//! runs on it (daylight saving included: see `coupon_core::event::recurrence`).

use std::io::Write;
use std::time::Duration;

use clap::Args;
use coupon_core::event::recurrence::{format_window, Bound, Recurrence};
use jiff::Timestamp;

/// Most windows one plan prints.
const MAX_PRINTED: u32 = 1000;

#[derive(Args, Debug)]
pub struct EventPlanArgs {
    /// Five-field cron rule in the time zone's local time (`0 10 * * MON-FRI`).
    #[arg(long)]
    pub every: String,
    /// IANA time zone the rule is read in (`Asia/Seoul`); the zone database is bundled.
    #[arg(long)]
    pub time_zone: String,
    /// How long each window is open (`30m`; at most 168h).
    #[arg(long, value_parser = coupon_core::time::parse_duration)]
    pub duration: Duration,
    /// Windows starting at or after this instant (RFC 3339); default now.
    #[arg(long)]
    pub from: Option<Timestamp>,
    /// How many windows to print (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=MAX_PRINTED as i64))]
    pub count: u32,
}

/// Prints one window per line, `START END`, in RFC 3339 with the zone's offset at each.
pub fn run(args: EventPlanArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let from = args.from.unwrap_or_else(Timestamp::now);
    let recurrence = Recurrence::parse(&args.every, &args.time_zone, args.duration, Bound::Forever, from)?;
    // Over the year from --from, the windows printed.
    recurrence.check_apart(Duration::ZERO, from)?;
    for occurrence in recurrence.occurrences().take(args.count as usize) {
        writeln!(out, "{}", format_window(&occurrence, recurrence.zone()))?;
    }
    Ok(())
}
