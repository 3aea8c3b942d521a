//! What a run found: one [`Measure`] per figure, printed as the markdown table people read and
//! written as `bench/results.json` for tools (each with its baseline from the same run and
//! the ratio, plus the machine it ran on).

use serde::Serialize;

/// One figure against its baseline from the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Measure {
    /// A stable name (`soldout_vs_bare_axum`): what tools and the issues refer to.
    pub measure: String,
    pub value: f64,
    pub unit: &'static str,
    /// What `value` is compared with, in words.
    pub baseline: String,
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`.
    pub ratio: Option<f64>,
    /// The target, as the issues state it (`>= 0.9`, `report`).
    pub target: &'static str,
    /// What the table's first column says.
    #[serde(skip)]
    pub what: String,
    /// Digits after the point in the table.
    #[serde(skip)]
    pub digits: usize,
}

impl Measure {
    /// `value` in `unit`, shown with `digits` after the point, with nothing to compare.
    pub fn figure(measure: &str, what: impl Into<String>, value: f64, unit: &'static str, digits: usize, target: &'static str) -> Self {
        Self {
            measure: measure.to_owned(),
            value,
            unit,
            baseline: String::new(),
            baseline_value: None,
            ratio: None,
            target,
            what: what.into(),
            digits,
        }
    }

    /// Compared with `baseline_value`, which is `baseline` (in words).
    pub fn against(mut self, baseline_value: f64, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self.baseline_value = Some(baseline_value);
        self.ratio = Some(self.value / baseline_value);
        self
    }

    /// Compared with something that is not a number (`limit 100`).
    pub fn beside(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    fn table_row(&self) -> String {
        let digits = self.digits;
        let baseline = match self.baseline_value {
            Some(value) => format!("{value:.digits$} ({})", self.baseline),
            None if self.baseline.is_empty() => "-".to_owned(),
            None => self.baseline.clone(),
        };
        let ratio =
            self.ratio.map_or("-".to_owned(), |ratio| if ratio.abs() < 0.01 { format!("{ratio:.5}") } else { format!("{ratio:.3}") });
        format!("| {} | {:.digits$} | {baseline} | {ratio} | {} |", self.what, self.value, self.target)
    }
}

/// The markdown table of `measures`.
pub fn table(measures: &[Measure]) -> String {
    let mut text = String::from("| measure | ours | baseline (same run) | ratio | target |\n|---|---:|---|---:|---|\n");
    for measure in measures {
        text.push_str(&measure.table_row());
        text.push('\n');
    }
    text
}

/// The machine a run was made on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub model: String,
}

impl Machine {
    pub fn this() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self { cores, model }
    }
}

/// One object of `bench/results.json`: a measure, and where and how big it was run.
#[derive(Debug, Serialize)]
struct Row<'a, S: Serialize> {
    #[serde(flatten)]
    measure: &'a Measure,
    machine: &'a Machine,
    /// The sizes the run used (`quick`, and each part's).
    sizes: &'a S,
}

/// `bench/results.json`: an array with one object per measure.
pub fn json<S: Serialize>(measures: &[Measure], machine: &Machine, sizes: &S) -> serde_json::Result<String> {
    let rows: Vec<Row<'_, S>> = measures.iter().map(|measure| Row { measure, machine, sizes }).collect();
    serde_json::to_string_pretty(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measure_gives_its_ratio_to_the_table_and_the_file() {
        let measure = Measure::figure("soldout_vs_bare_axum", "sold-out throughput (req/s)", 9000.0, "req/s", 0, ">= 0.9")
            .against(10000.0, "bare axum handler");
        assert_eq!(measure.table_row(), "| sold-out throughput (req/s) | 9000 | 10000 (bare axum handler) | 0.900 | >= 0.9 |");
        let object = serde_json::to_value(&measure).unwrap();
        assert_eq!(
            object,
            serde_json::json!({"measure": "soldout_vs_bare_axum", "value": 9000.0, "unit": "req/s", "baseline": "bare axum handler",
                "baseline_value": 10000.0, "ratio": 0.9, "target": ">= 0.9"})
        );
        let machine = Machine { cores: 2, model: "a CPU".into() };
        let file: serde_json::Value =
            serde_json::from_str(&json(std::slice::from_ref(&measure), &machine, &serde_json::json!({"quick": true})).unwrap()).unwrap();
        assert_eq!(file[0]["measure"], "soldout_vs_bare_axum");
        assert_eq!(file[0]["machine"], serde_json::json!({"cores": 2, "model": "a CPU"}));
        assert_eq!(file[0]["sizes"]["quick"], true);
        let alone = Measure::figure("burst_5xx", "burst: 5xx answers", 0.0, "answers", 0, "0");
        assert_eq!(alone.table_row(), "| burst: 5xx answers | 0 | - | - | 0 |");
    }
}
