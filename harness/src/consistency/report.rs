//! A run's report for people: plain text, JSON, and an SVG chart of staleness over time with the fault
//! windows shaded (people would rather look than read).

use std::fmt::Write as _;

use serde::Serialize;

use super::checker::{Report, Stats, Violation};
use super::history::Recorded;
use super::scenario::FaultKind;
use super::staleness::{Distribution, WriteStaleness};

/// The JSON document: everything but the per-write list (which the chart shows).
#[derive(Serialize)]
struct JsonReport<'a> {
    consistent: bool,
    violations: &'a [Violation],
    shortfalls: &'a [String],
    stats: &'a Stats,
    staleness_all: &'a Distribution,
    staleness_no_fault: &'a Distribution,
    staleness_during_fault: &'a Distribution,
    fault_windows: Vec<(FaultKind, f64, f64)>,
}

pub fn json(report: &Report, recorded: &Recorded) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&JsonReport {
        consistent: report.is_consistent(),
        violations: &report.violations,
        shortfalls: &report.shortfalls,
        stats: &report.stats,
        staleness_all: &report.staleness.all,
        staleness_no_fault: &report.staleness.no_fault,
        staleness_during_fault: &report.staleness.during_fault,
        fault_windows: recorded
            .faults
            .iter()
            .map(|w| (w.kind, w.start.as_secs_f64(), w.end.as_secs_f64()))
            .collect(),
    })
}

pub fn text(report: &Report) -> String {
    let s = &report.stats;
    let mut out = String::new();
    let _ = writeln!(out, "consistency report");
    let _ = writeln!(out, "  duration            {:.1} s", s.duration_s);
    let _ = writeln!(
        out,
        "  operations          {} ({} writes answered, {} reads ({} orders from the cache), {} refused, {} without an answer)",
        s.operations, s.writes, s.reads, s.cache_reads, s.refused, s.unknown
    );
    let _ = writeln!(out, "  orders              {}", s.orders);
    let _ = writeln!(
        out,
        "  writes checked      {} committed versions",
        s.committed_versions
    );
    let faults: Vec<String> = s.faults.iter().map(|(kind, n)| format!("{kind} x{n}")).collect();
    let _ = writeln!(
        out,
        "  faults              {}",
        if faults.is_empty() {
            "none".into()
        } else {
            faults.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "  rebalances          {} partitions moved (counted by the updaters)",
        s.rebalances
    );
    let _ = writeln!(out, "  keys evicted        {}", s.evicted_keys);
    let _ = writeln!(out, "  inconsistencies     {}", report.violations.len());
    for violation in report.violations.iter().take(20) {
        let _ = writeln!(out, "    {violation}");
    }
    if !report.shortfalls.is_empty() {
        let _ = writeln!(out, "  BELOW THE FLOORS (the verdict means nothing):");
        for shortfall in &report.shortfalls {
            let _ = writeln!(out, "    {shortfall}");
        }
    }
    let _ = writeln!(
        out,
        "  staleness (time until the cache stopped holding anything older than a committed version;"
    );
    let _ = writeln!(
        out,
        "  percentiles over the samples: writes whose key held an older entry when they committed):"
    );
    for (name, d) in [
        ("all writes", &report.staleness.all),
        ("no fault", &report.staleness.no_fault),
        ("during a fault", &report.staleness.during_fault),
    ] {
        let _ = writeln!(
            out,
            "    {name:<15} {:>7} writes {:>7} samples  p50 {:>7.1} ms  p99 {:>9.1} ms  p99.9 {:>9.1} ms  max {:>9.1} ms  within 1 s {:>8.4}%  within 5 s {:>8.4}%  never {}",
            d.writes,
            d.samples,
            d.p50_ms,
            d.p99_ms,
            d.p999_ms,
            d.max_ms,
            d.within_1s * 100.0,
            d.within_5s * 100.0,
            d.never
        );
    }
    out
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Staleness axis: log scale from 1 ms to 100 s.
const MIN_MS: f64 = 1.0;
const MAX_MS: f64 = 100_000.0;
/// At most this many dots (evenly thinned): a browser draws them without trouble.
const MAX_DOTS: usize = 20_000;

/// Staleness of each write over the run's time, log scale, fault windows shaded and labelled.
pub fn svg(writes: &[WriteStaleness], recorded: &Recorded) -> String {
    let duration = recorded.duration.as_secs_f64().max(1.0);
    let x = |seconds: f64| LEFT + (seconds / duration) * (WIDTH - LEFT - RIGHT);
    let y = |ms: f64| {
        let ms = ms.clamp(MIN_MS, MAX_MS);
        let fraction = (ms.log10() - MIN_MS.log10()) / (MAX_MS.log10() - MIN_MS.log10());
        HEIGHT - BOTTOM - fraction * (HEIGHT - TOP - BOTTOM)
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">Cache staleness per committed write (log scale, 0 drawn at 1 ms); shaded: a fault until recovery</text>"#
    );
    for window in &recorded.faults {
        let (x0, x1) = (x(window.start.as_secs_f64()), x(window.end.as_secs_f64()));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f4a261" fill-opacity="0.25"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            HEIGHT - TOP - BOTTOM,
            window.kind
        );
        let _ = write!(
            out,
            r##"<text x="{x0:.1}" y="{:.1}" font-size="9" fill="#9c4a1a" transform="rotate(-90 {x0:.1} {:.1})">{}</text>"##,
            TOP + 4.0,
            TOP + 4.0,
            window.kind
        );
    }
    for ms in [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0] {
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(ms) + 4.0,
            y = y(ms)
        );
    }
    let ticks = 10;
    for i in 0..=ticks {
        let seconds = duration * i as f64 / ticks as f64;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{seconds:.0} s</text>"#,
            x(seconds),
            HEIGHT - BOTTOM + 18.0
        );
    }
    let step = writes.len().div_ceil(MAX_DOTS).max(1);
    for write in writes.iter().step_by(step) {
        let (cy, color) = match write.staleness {
            Some(s) => (
                y(s * 1000.0),
                if write.during_fault { "#e76f51" } else { "#2a9d8f" },
            ),
            None => (TOP, "#6a040f"),
        };
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{cy:.1}" r="1.6" fill="{color}" fill-opacity="0.7"/>"#,
            x(write.committed_at)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#2a9d8f">• no fault</text><text x="{:.1}" y="{:.1}" fill="#e76f51">• during a fault</text><text x="{:.1}" y="{:.1}" fill="#6a040f">• still older at the end (top edge)</text>"##,
        HEIGHT - 10.0,
        LEFT + 90.0,
        HEIGHT - 10.0,
        LEFT + 210.0,
        HEIGHT - 10.0
    );
    out.push_str("</svg>\n");
    out
}
