//! `coupon-service event export NAME`: an event's coupons out of SQL, as CSV or JSON Lines.
//!
//! Read a page at a time by slot (keyset pagination: `slot > last` in slot order), so memory
//! stays the same at any size and no query holds the database for the length of the
//! export; each page goes out before the next is read. It reads SQL only: the export of an
//! event whose Redis state is gone (a finished event cleaned up, a lost Redis) is the same.

use std::io::Write;

use clap::{Args, ValueEnum};
use coupon_core::event::{split_occurrence, EventId, EventKey};
use jiff::Timestamp;

use crate::sql::{ExportedCoupon, Store};

/// Rows read per query.
const PAGE: i64 = 1000;

#[derive(Args, Debug)]
pub struct EventExportArgs {
    /// Event name.
    pub name: String,
    #[arg(long, env = "COUPON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The SQL database the consumer writes the event's coupons to.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// The incarnation whose coupons to export (a CouponEvent's UID; the one given to
    /// `event create --new-incarnation`; of a recurring event, every occurrence of it, or one
    /// as `<uid>-o<start>`): needed only when SQL holds coupons of the event's name under more
    /// than one.
    #[arg(long)]
    pub incarnation: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A header line, then `user,slot,occurrence,issued_at` per coupon (RFC 4180 quoting).
    Csv,
    /// One JSON object per line: `{"user", "slot", "occurrence", "issuedAt"}`.
    Jsonl,
}

/// Why an export does not start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportRefusal {
    #[error("SQL holds no coupons of event {0}")]
    NoCoupons(String),
    #[error("SQL holds coupons of event {event} under more than one incarnation: give --incarnation, one of {incarnations}")]
    WhichIncarnation { event: String, incarnations: String },
}

/// One exported line. `occurrence`: the start of the occurrence a coupon belongs to, for an
/// event that recurs; none for an event of one window.
#[derive(serde::Serialize)]
struct Line<'a> {
    user: &'a str,
    slot: i64,
    occurrence: Option<Timestamp>,
    #[serde(rename = "issuedAt")]
    issued_at: Timestamp,
}

pub async fn run(args: EventExportArgs) -> anyhow::Result<()> {
    let id = EventId::new(&args.namespace, &args.name)?;
    let store = Store::connect(&args.database_url).await?;
    let keys = event_keys(&store, &id, args.incarnation.as_deref()).await?;
    let stdout = std::io::stdout().lock();
    let written = export(&store, &keys, args.format, std::io::BufWriter::new(stdout)).await?;
    tracing::info!(event = %id, keys = keys.len(), coupons = written, "exported");
    Ok(())
}

/// The object's part of a key's incarnation, without a recurring event's occurrence.
fn base(key: &EventKey) -> Option<&str> {
    key.incarnation().and_then(|i| split_occurrence(i).0)
}

/// The keys SQL holds the event's coupons under, in order: the one given; or every
/// occurrence of the incarnation given (a recurring event's); or, given none, those of the
/// only incarnation there is.
async fn event_keys(store: &Store, id: &EventId, incarnation: Option<&str>) -> anyhow::Result<Vec<EventKey>> {
    let mut held: Vec<EventKey> =
        store.coupon_keys_of(&id.to_string()).await?.into_iter().filter_map(|(key, _)| key.parse().ok()).collect();
    held.sort_by_key(|key| (base(key).map(str::to_owned), key.occurrence()));
    let keys: Vec<EventKey> = match incarnation {
        Some(incarnation) => {
            held.into_iter().filter(|key| key.incarnation() == Some(incarnation) || base(key) == Some(incarnation)).collect()
        }
        None => {
            let bases: std::collections::BTreeSet<Option<&str>> = held.iter().map(base).collect();
            if bases.len() > 1 {
                let incarnations = bases.iter().map(|b| b.unwrap_or("(none)")).collect::<Vec<_>>().join(", ");
                return Err(ExportRefusal::WhichIncarnation { event: id.to_string(), incarnations }.into());
            }
            held
        }
    };
    if keys.is_empty() {
        let named = match incarnation {
            Some(incarnation) => EventKey::new(id.clone(), Some(incarnation))?.to_string(),
            None => id.to_string(),
        };
        return Err(ExportRefusal::NoCoupons(named).into());
    }
    Ok(keys)
}

/// Writes every coupon of `keys` to `out`, key by key and by slot in each; answers how many.
pub async fn export(store: &Store, keys: &[EventKey], format: ExportFormat, out: impl Write) -> anyhow::Result<u64> {
    let mut sink = Sink::new(format, out)?;
    let mut written = 0;
    for key in keys {
        let occurrence = key.occurrence().and_then(|start| Timestamp::from_second(start).ok());
        let key = key.to_string();
        let mut after = 0;
        loop {
            let page = store.coupon_page(&key, after, PAGE).await?;
            for coupon in &page {
                sink.line(coupon, occurrence)?;
            }
            written += page.len() as u64;
            // Each page leaves before the next is read.
            sink.flush()?;
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = last.slot,
                _ => break,
            }
        }
    }
    Ok(written)
}

/// Where the lines go, in their format.
enum Sink<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
}

impl<W: Write> Sink<W> {
    fn new(format: ExportFormat, out: W) -> anyhow::Result<Self> {
        Ok(match format {
            ExportFormat::Csv => {
                let mut csv = csv::Writer::from_writer(out);
                csv.write_record(["user", "slot", "occurrence", "issued_at"])?;
                Self::Csv(Box::new(csv))
            }
            ExportFormat::Jsonl => Self::Jsonl(out),
        })
    }

    fn line(&mut self, coupon: &ExportedCoupon, occurrence: Option<Timestamp>) -> anyhow::Result<()> {
        let line = Line { user: &coupon.user_id, slot: coupon.slot, occurrence, issued_at: coupon.issued_at };
        match self {
            Self::Csv(csv) => {
                let occurrence = line.occurrence.map(|at| at.to_string()).unwrap_or_default();
                csv.write_record([line.user, &line.slot.to_string(), &occurrence, &line.issued_at.to_string()])?;
            }
            Self::Jsonl(out) => {
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Csv(csv) => csv.flush(),
            Self::Jsonl(out) => out.flush(),
        }
    }
}
