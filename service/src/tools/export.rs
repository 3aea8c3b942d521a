//! `coupon-service event export NAME`: an event's coupons out of SQL, as CSV or JSON Lines.
//!
//! Read a page at a time by slot (keyset pagination: `slot > last` in slot order), so memory
//! stays the same at any size and no query holds the database for the length of the
//! export; each page goes out before the next is read. It reads SQL only: the export of an
//! event whose Redis state is gone (a finished event cleaned up, a lost Redis) is the same.

use std::io::Write;

use clap::{Args, ValueEnum};
use coupon_core::event::{EventId, EventKey};
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
    /// `event create --new-incarnation`): needed only when SQL holds coupons of the event's
    /// name under more than one.
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
    let key = event_key(&store, &id, args.incarnation.as_deref()).await?;
    let stdout = std::io::stdout().lock();
    let written = export(&store, &key, args.format, std::io::BufWriter::new(stdout)).await?;
    tracing::info!(event = %key, coupons = written, "exported");
    Ok(())
}

/// The key SQL holds the event's coupons under: the one given, or the only one there is.
async fn event_key(store: &Store, id: &EventId, incarnation: Option<&str>) -> anyhow::Result<String> {
    if let Some(incarnation) = incarnation {
        let key = EventKey::new(id.clone(), Some(incarnation))?.to_string();
        if store.count_coupons(&key).await? == 0 {
            return Err(ExportRefusal::NoCoupons(key).into());
        }
        return Ok(key);
    }
    let keys = store.coupon_keys_of(&id.to_string()).await?;
    match keys.as_slice() {
        [] => Err(ExportRefusal::NoCoupons(id.to_string()).into()),
        [(key, _)] => Ok(key.clone()),
        several => {
            let incarnations = several.iter().map(|(key, coupons)| format!("{key} ({coupons} coupons)")).collect::<Vec<_>>().join(", ");
            Err(ExportRefusal::WhichIncarnation { event: id.to_string(), incarnations }.into())
        }
    }
}

/// Writes every coupon of `key` to `out`, by slot; answers how many.
pub async fn export(store: &Store, key: &str, format: ExportFormat, out: impl Write) -> anyhow::Result<u64> {
    let mut sink = Sink::new(format, out)?;
    let mut after = 0;
    let mut written = 0;
    loop {
        let page = store.coupon_page(key, after, PAGE).await?;
        for coupon in &page {
            sink.line(coupon)?;
        }
        written += page.len() as u64;
        // Each page leaves before the next is read.
        sink.flush()?;
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = last.slot,
            _ => break,
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

    fn line(&mut self, coupon: &ExportedCoupon) -> anyhow::Result<()> {
        let line = Line { user: &coupon.user_id, slot: coupon.slot, occurrence: None, issued_at: coupon.issued_at };
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
