//! Turns the JSON lines of a sweep (ours, apalis-redis and the BullMQ script, whose keys
//! differ) into the markdown tables of bench/RESULTS.md: medians and the ratios.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::measure::median;

const OURS: &str = "groundcrew";
const BULLMQ: &str = "bullmq";
const APALIS: [&str; 2] = ["apalis-redis default", "apalis-redis fast"];

/// One result line, whichever program printed it.
struct Run {
    system: String,
    phase: String,
    /// The drain's concurrency, or the enqueue's mode.
    variant: String,
    line: Value,
}

fn parse(line: &str) -> Option<Run> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (system, phase) = if v.get("peer").is_some() {
        (text("peer")?, text("phase")?)
    } else {
        let system = match text("config") {
            Some(config) => format!("{} {config}", text("system")?),
            None => text("system")?,
        };
        let mode = text("mode")?;
        let phase = if mode.starts_with("enqueue") {
            "enqueue".into()
        } else {
            mode
        };
        (system, phase)
    };
    let variant = match phase.as_str() {
        "enqueue" => text("mode")?.trim_start_matches("enqueue-").to_owned(),
        "latency" => text("path").unwrap_or_default(),
        _ => v.get("concurrency").or(v.get("conc"))?.to_string(),
    };
    Some(Run {
        system,
        phase,
        variant,
        line: v,
    })
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Values of `key` grouped by (system, variant), in the order the runs happened.
fn grouped<'a>(runs: &'a [Run], phase: &str, key: &str) -> BTreeMap<(&'a str, &'a str), Vec<f64>> {
    let mut out: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.phase == phase) {
        if let Some(x) = num(&r.line, key) {
            out.entry((r.system.as_str(), r.variant.as_str()))
                .or_default()
                .push(x);
        }
    }
    out
}

fn fmt_rate(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        let n = x.round() as u64;
        let (hi, lo) = (n / 1000, n % 1000);
        if hi > 0 {
            format!("{hi},{lo:03}")
        } else {
            lo.to_string()
        }
    }
}

pub fn markdown(input: &str) -> String {
    let runs: Vec<Run> = input.lines().filter_map(parse).collect();
    let mut out = String::new();

    let drains = grouped(&runs, "drain", "rate");
    let mut concurrencies: Vec<&str> = drains.keys().map(|(_, c)| *c).collect();
    concurrencies.sort_by_key(|c| c.parse::<u64>().unwrap_or(0));
    concurrencies.dedup();
    if !concurrencies.is_empty() {
        out.push_str("Drain, jobs/s (median of the runs; n = runs)\n\n");
        out.push_str("| concurrency | groundcrew | apalis-redis default | apalis-redis fast | BullMQ | ours / BullMQ | ours / fastest apalis |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        for c in &concurrencies {
            let med = |s: &str| drains.get(&(s, *c)).map(|v| median(v)).unwrap_or(f64::NAN);
            let cell = |s: &str| {
                let n = drains.get(&(s, *c)).map_or(0, Vec::len);
                format!("{} (n={n})", fmt_rate(med(s)))
            };
            let ours = med(OURS);
            let fastest_apalis = APALIS.iter().map(|s| med(s)).fold(f64::NAN, f64::max);
            out.push_str(&format!(
                "| {c} | {} | {} | {} | {} | {:.2}× | {:.2}× |\n",
                cell(OURS),
                cell(APALIS[0]),
                cell(APALIS[1]),
                cell(BULLMQ),
                ours / med(BULLMQ),
                ours / fastest_apalis,
            ));
        }
        out.push_str("\nEvery drain run, jobs/s, in the order run\n\n| system | concurrency | runs |\n|---|---:|---|\n");
        for ((system, c), rates) in &drains {
            let list: Vec<String> = rates.iter().map(|r| fmt_rate(*r)).collect();
            out.push_str(&format!("| {system} | {c} | {} |\n", list.join(", ")));
        }
    }

    let enqueues = grouped(&runs, "enqueue", "rate");
    if !enqueues.is_empty() {
        out.push_str(
            "\nEnqueue, jobs/s (median)\n\n| system | mode | median | runs |\n|---|---|---:|---|\n",
        );
        for ((system, mode), rates) in &enqueues {
            let list: Vec<String> = rates.iter().map(|r| fmt_rate(*r)).collect();
            out.push_str(&format!(
                "| {system} | {mode} | {} | {} |\n",
                fmt_rate(median(rates)),
                list.join(", ")
            ));
        }
    }

    let latency: Vec<_> = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
        .iter()
        .map(|k| grouped(&runs, "latency", k))
        .collect();
    if !latency[0].is_empty() {
        out.push_str("\nEnqueue→start latency, ms (median over runs of each percentile)\n\n| system | path | p50 | p90 | p99 | max | runs |\n|---|---|---:|---:|---:|---:|---:|\n");
        for (key, p50) in &latency[0] {
            let m = |i: usize| {
                latency[i]
                    .get(key)
                    .map(|v| format!("{:.2}", median(v)))
                    .unwrap_or_else(|| "–".into())
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                key.0,
                if key.1.is_empty() { "add" } else { key.1 },
                m(0),
                m(1),
                m(2),
                m(3),
                p50.len()
            ));
        }
    }
    out
}
