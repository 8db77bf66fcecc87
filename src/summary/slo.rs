//! The SLO gate's verdicts: each `[[slo]]` of the config against one run's [`Summary`]. Pure:
//! no IO. A metric that is missing, null or not a number fails its SLO (a gate that passes on
//! no data would pass a crawl that never ran).

use serde_json::Value;

use super::Summary;
use crate::config::{Bound, Slo};

/// One SLO judged on one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub name: String,
    pub metric: String,
    /// The metric's value when it is a number, else null.
    pub value: Value,
    /// `"max"` (value ≤ threshold holds) or `"min"` (value ≥ threshold holds), as configured.
    pub op: &'static str,
    pub threshold: f64,
    pub ok: bool,
}

/// Every SLO of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunVerdict {
    pub run_id: String,
    pub ok: bool,
    pub slos: Vec<Verdict>,
}

pub(crate) fn judge(summary: &Summary, slos: &[Slo]) -> RunVerdict {
    let verdicts: Vec<Verdict> = slos
        .iter()
        .map(|slo| {
            let value = summary.get(&slo.metric).filter(|v| v.is_number()).cloned();
            let number = value.as_ref().and_then(Value::as_f64);
            let (op, threshold, ok) = match slo.bound {
                Bound::Max(t) => ("max", t, number.is_some_and(|v| v <= t)),
                Bound::Min(t) => ("min", t, number.is_some_and(|v| v >= t)),
            };
            Verdict {
                name: slo.name.clone(),
                metric: slo.metric.clone(),
                value: value.unwrap_or(Value::Null),
                op,
                threshold,
                ok,
            }
        })
        .collect();
    RunVerdict { run_id: summary.run_id.clone(), ok: verdicts.iter().all(|v| v.ok), slos: verdicts }
}

impl RunVerdict {
    pub(crate) fn to_json(&self) -> Value {
        let slos: Vec<Value> = self
            .slos
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name, "metric": v.metric, "value": v.value,
                    "op": v.op, "threshold": v.threshold, "ok": v.ok,
                })
            })
            .collect();
        serde_json::json!({"run_id": self.run_id, "ok": self.ok, "slos": slos})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Metric;

    fn summary(metrics: &[(&str, Value)]) -> Summary {
        Summary {
            run_id: "r".into(),
            status: "done".into(),
            ended_at: Value::Null,
            commits: 1,
            metrics: metrics
                .iter()
                .map(|(n, v)| Metric {
                    name: n.to_string(),
                    value: v.clone(),
                    definition: "x".into(),
                })
                .collect(),
        }
    }

    fn slo(name: &str, metric: &str, bound: Bound) -> Slo {
        Slo { name: name.into(), metric: metric.into(), bound }
    }

    #[test]
    fn bounds_are_inclusive_and_missing_or_non_numeric_metrics_fail() {
        let s = summary(&[
            ("ratio", Value::from(0.02)),
            ("events", Value::from(100)),
            ("empty", Value::Null),
            ("first_ts", Value::from("2024-03-01T00:00:00Z")),
        ]);
        let slos = [
            slo("at max", "ratio", Bound::Max(0.02)),
            slo("at min", "events", Bound::Min(100.0)),
            slo("over", "events", Bound::Max(99.5)),
            slo("null", "empty", Bound::Max(1.0)),
            slo("text", "first_ts", Bound::Min(0.0)),
            slo("absent", "gone", Bound::Min(0.0)),
        ];
        let verdict = judge(&s, &slos);
        let oks: Vec<(&str, bool, Value)> =
            verdict.slos.iter().map(|v| (v.name.as_str(), v.ok, v.value.clone())).collect();
        assert_eq!(
            oks,
            [
                ("at max", true, Value::from(0.02)),
                ("at min", true, Value::from(100)),
                ("over", false, Value::from(100)),
                ("null", false, Value::Null),
                ("text", false, Value::Null),
                ("absent", false, Value::Null),
            ]
        );
        assert!(!verdict.ok);
        assert!(judge(&s, &slos[..2]).ok);
        assert!(judge(&s, &[]).ok, "no SLO configured: nothing fails");
        assert_eq!(
            verdict.to_json()["slos"][2],
            serde_json::json!({"name": "over", "metric": "events", "value": 100, "op": "max",
                "threshold": 99.5, "ok": false})
        );
    }
}
