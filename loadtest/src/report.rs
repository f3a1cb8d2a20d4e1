//! Our figures, and goose's reports made whole: offline charts and a section of our own.
//!
//! goose writes its reports (`--report-file`, as `.html`, `.md` or `.json`) when the attack ends;
//! this module then rewrites each one:
//!
//! * **HTML**: goose's page loads its chart library, Apache ECharts 5.2.2, from a CDN, so its charts
//!   are blank without internet access. The `<script src=…>` is replaced by the library itself, shipped
//!   in `loadtest/assets/echarts/` (Apache-2.0; licences beside it). Our section (staleness,
//!   read sources, memory, with two charts of the same library) goes before `</body>`.
//! * **Markdown**: our section is appended.
//! * **JSON**: our figures are added under the key `orders_loadtest`.
//!
//! Requests themselves are goose's figures (per RPC, from `record_custom_request`); everything here is
//! what goose cannot see: the probe, the cache sources, the memory.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::memory::MemoryReport;
use crate::seed::Preparation;
use crate::staleness::StalenessReport;
use crate::stats::Summary;
use crate::workload::SourceCounts;

/// The ECharts build goose's HTML report asks for, shipped in the repository.
const ECHARTS: &str = include_str!("../assets/echarts/echarts.min.js");
/// The tag goose 0.19 writes into its HTML report.
const ECHARTS_FROM_CDN: &str =
    r#"<script src="https://cdn.jsdelivr.net/npm/echarts@5.2.2/dist/echarts.min.js"></script>"#;
/// The key our figures go under in the JSON report.
pub const JSON_KEY: &str = "orders_loadtest";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "--report-file {0:?}: name a file ending in .html, .htm, .md or .json (this load test adds its \
         figures to each report, so goose's run folder, .pdf and .gz are not supported)"
    )]
    UnsupportedPath(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "goose's HTML report no longer loads ECharts from the address this load test replaces; \
         update ECHARTS_FROM_CDN in loadtest/src/report.rs"
    )]
    ChartTag,
    #[error("the HTML report still loads {0} from the internet")]
    StillOnline(String),
    #[error("{path} is not a JSON object: {reason}")]
    Json { path: String, reason: String },
}

/// Everything the run measured besides goose's request metrics.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub target: String,
    pub service_in_process: bool,
    pub weights: String,
    pub users: Option<usize>,
    pub preparation: Preparation,
    pub reads: SourceCounts,
    pub staleness: Option<StalenessReport>,
    pub memory: Option<MemoryReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Json,
}

/// The format of a `--report-file` path, or why it cannot be post-processed.
pub fn format_of(path: &str) -> Result<Format, ReportError> {
    let extension = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => Ok(Format::Html),
        Some("md") => Ok(Format::Markdown),
        Some("json") => Ok(Format::Json),
        _ => Err(ReportError::UnsupportedPath(path.escape_default().to_string())),
    }
}

/// Rewrites each report goose wrote.
pub fn complete_reports(paths: &[String], figures: &RunFigures) -> Result<(), ReportError> {
    for path in paths {
        let written = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let completed = match format_of(path)? {
            Format::Html => add_html_section(&inline_chart_library(&written)?, figures),
            Format::Markdown => format!("{written}\n{}", markdown(figures)),
            Format::Json => add_json(&written, figures).map_err(|reason| ReportError::Json {
                path: path.clone(),
                reason,
            })?,
        };
        std::fs::write(path, completed).map_err(|source| ReportError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// goose's HTML with the chart library inline instead of from the CDN.
pub fn inline_chart_library(html: &str) -> Result<String, ReportError> {
    if !html.contains(ECHARTS_FROM_CDN) {
        return Err(ReportError::ChartTag);
    }
    // Inside a <script> element only "</script" would end it early; the build has none, but a
    // future one must not break the page.
    let inline = format!("<script>{}</script>", ECHARTS.replace("</script", "<\\/script"));
    let offline = html.replacen(ECHARTS_FROM_CDN, &inline, 1);
    for online in ["<script src=\"http", "<link rel=\"stylesheet\" href=\"http"] {
        if offline.contains(online) {
            return Err(ReportError::StillOnline(online.to_owned()));
        }
    }
    Ok(offline)
}

fn add_html_section(html: &str, figures: &RunFigures) -> String {
    let section = html_section(figures);
    match html.rfind("</body>") {
        Some(end) => format!("{}{section}{}", &html[..end], &html[end..]),
        None => format!("{html}{section}"),
    }
}

fn add_json(json: &str, figures: &RunFigures) -> Result<String, String> {
    let mut report: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let object = report.as_object_mut().ok_or("not an object")?;
    object.insert(
        JSON_KEY.to_owned(),
        serde_json::to_value(figures).map_err(|e| e.to_string())?,
    );
    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())
}

/// Our section as Markdown (also what the console shows at the end of a run).
pub fn markdown(figures: &RunFigures) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Orders service: setup, cache, staleness, memory\n");
    for (what, value) in setup_rows(figures) {
        let _ = writeln!(md, "- {what}: {value}");
    }
    let _ = writeln!(md, "\n### Where reads were answered from\n");
    let _ = writeln!(
        md,
        "| reads | from the cache | from the database |\n|---|---|---|"
    );
    for (what, cache, database) in source_rows(&figures.reads) {
        let _ = writeln!(md, "| {what} | {cache} | {database} |");
    }
    if let Some(probe) = &figures.staleness {
        let _ = writeln!(
            md,
            "\n### Staleness: UpdateOrderStatus returned → GetOrder answers it from the cache\n"
        );
        for (what, value) in probe_rows(probe) {
            let _ = writeln!(md, "- {what}: {value}");
        }
        let _ = writeln!(
            md,
            "\n| | n | mean | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|---|"
        );
        for (what, summary) in [
            ("staleness (ms)", &probe.staleness),
            ("UpdateOrderStatus (ms)", &probe.update_latency),
        ] {
            let _ = writeln!(md, "| {what} | {} |", summary_cells(summary.as_ref()).join(" | "));
        }
    }
    if let Some(memory) = &figures.memory {
        let _ = writeln!(md, "\n### Resident memory\n");
        for (what, value) in memory_rows(memory) {
            let _ = writeln!(md, "- {what}: {value}");
        }
    }
    md
}

fn html_section(figures: &RunFigures) -> String {
    let mut html = String::from(
        "\n<div class=\"container\" id=\"orders-loadtest\">\n<h2>Orders service: setup, cache, staleness, memory</h2>\n",
    );
    html.push_str(&html_list(&setup_rows(figures)));
    html.push_str("<h3>Where reads were answered from</h3>\n<table><thead><tr><th>reads</th><th>from the cache</th><th>from the database</th></tr></thead><tbody>\n");
    for (what, cache, database) in source_rows(&figures.reads) {
        let _ = writeln!(
            html,
            "<tr><td>{what}</td><td>{cache}</td><td>{database}</td></tr>"
        );
    }
    html.push_str("</tbody></table>\n");
    if let Some(probe) = &figures.staleness {
        html.push_str(
            "<h3>Staleness: UpdateOrderStatus returned &rarr; GetOrder answers it from the cache</h3>\n",
        );
        html.push_str(&html_list(&probe_rows(probe)));
        html.push_str("<table><thead><tr><th></th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr></thead><tbody>\n");
        for (what, summary) in [
            ("staleness (ms)", &probe.staleness),
            ("UpdateOrderStatus (ms)", &probe.update_latency),
        ] {
            let cells: String = summary_cells(summary.as_ref())
                .iter()
                .map(|cell| format!("<td>{cell}</td>"))
                .collect();
            let _ = writeln!(html, "<tr><td>{what}</td>{cells}</tr>");
        }
        html.push_str("</tbody></table>\n");
        let series: Vec<[f64; 4]> = probe
            .per_second
            .iter()
            .map(|[second, _, p50, p99, max]| [*second, *p50, *p99, *max])
            .collect();
        html.push_str(
            "<p>Each point: the updates made in that second of the run that converged (those that never did \
             are counted above, not drawn).</p>\n",
        );
        html.push_str(&line_chart(
            "orders-staleness-chart",
            "staleness (ms)",
            &["p50", "p99", "max"],
            &serde_json::to_string(&series).unwrap_or_else(|_| "[]".into()),
        ));
    }
    if let Some(memory) = &figures.memory {
        html.push_str("<h3>Resident memory</h3>\n");
        html.push_str(&html_list(&memory_rows(memory)));
        let series: Vec<[f64; 2]> = memory.samples.iter().map(|(t, mib)| [*t, *mib]).collect();
        html.push_str(&line_chart(
            "orders-memory-chart",
            "resident memory (MiB)",
            &["RSS"],
            &serde_json::to_string(&series).unwrap_or_else(|_| "[]".into()),
        ));
    }
    html.push_str("</div>\n");
    html
}

/// A line chart of `rows` (`[x, y1, y2, …]`, x in seconds) drawn by the inlined ECharts.
fn line_chart(id: &str, y_name: &str, names: &[&str], rows_json: &str) -> String {
    let series: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            format!(
                "{{name: '{name}', type: 'line', showSymbol: false, data: rows.map(function (r) {{ return [r[0], r[{}]]; }})}}",
                index + 1
            )
        })
        .collect();
    format!(
        r#"<div id="{id}" style="width: 1000px; height: 400px; background: white;"></div>
<script type="text/javascript">
(function () {{
    var rows = {rows_json};
    var chart = echarts.init(document.getElementById('{id}'));
    chart.setOption({{
        tooltip: {{ trigger: 'axis' }},
        legend: {{ data: {legend} }},
        xAxis: {{ type: 'value', name: 'seconds', nameLocation: 'center', nameGap: 30 }},
        yAxis: {{ type: 'value', name: '{y_name}', nameLocation: 'center', nameRotate: 90, nameGap: 45 }},
        series: [{series}]
    }});
}})();
</script>
"#,
        legend = serde_json::to_string(names).unwrap_or_else(|_| "[]".into()),
        series = series.join(", "),
    )
}

fn html_list(rows: &[(&'static str, String)]) -> String {
    let items: String = rows
        .iter()
        .map(|(what, value)| format!("<li>{what}: {}</li>\n", escape_html(value)))
        .collect();
    format!("<ul>\n{items}</ul>\n")
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn setup_rows(figures: &RunFigures) -> Vec<(&'static str, String)> {
    let preparation = &figures.preparation;
    let mut rows = vec![
        ("target", figures.target.clone()),
        (
            "service",
            if figures.service_in_process {
                "started by the load test, in its process, on the local stack (load generator and service share the cores)".into()
            } else {
                "already running".into()
            },
        ),
        ("scenario weights", figures.weights.clone()),
        (
            "users",
            figures
                .users
                .map_or_else(|| "goose's test plan".into(), |u| u.to_string()),
        ),
        (
            "data set",
            format!(
                "{} orders, created in {:.1} s",
                preparation.orders, preparation.seed_seconds
            ),
        ),
        (
            "cache at start",
            format!(
                "{:?} ({:.1} s)",
                preparation.cache_mode, preparation.cache_seconds
            ),
        ),
    ];
    rows.push((
        "updates reached the cache within 250 ms",
        preparation.live_after_seconds.map_or_else(
            || "not before the load started (the figures include the start-up)".into(),
            |s| format!("after {s:.1} s of waiting, before the load started"),
        ),
    ));
    if let Some(cached) = preparation.cached_at_start {
        rows.push((
            "orders of the data set cached at start",
            format!("{cached} of {}", preparation.orders),
        ));
    }
    rows
}

fn source_rows(reads: &SourceCounts) -> [(&'static str, String, String); 2] {
    let cell = |part: u64, other: u64| {
        let total = part + other;
        if total == 0 {
            "0".to_string()
        } else {
            format!("{part} ({:.1}%)", 100.0 * part as f64 / total as f64)
        }
    };
    [
        (
            "GetOrder (warm)",
            cell(reads.warm_cache, reads.warm_database),
            cell(reads.warm_database, reads.warm_cache),
        ),
        (
            "GetOrder (cold)",
            cell(reads.cold_cache, reads.cold_database),
            cell(reads.cold_database, reads.cold_cache),
        ),
    ]
}

fn probe_rows(probe: &StalenessReport) -> Vec<(&'static str, String)> {
    vec![
        (
            "updates",
            format!(
                "{} in {:.0} s: {:.1}/s (target {}/s); {} failed; {} ticks skipped",
                probe.updates,
                probe.seconds,
                probe.achieved_rate,
                probe.target_rate,
                probe.update_errors,
                probe.skipped_ticks
            ),
        ),
        (
            "converged",
            format!(
                "{} ({:.3}% within 50 ms, {:.3}% within 1 s); never within {:.0} ms: {}",
                probe.converged,
                100.0 * probe.within_50ms,
                100.0 * probe.within_1s,
                probe.give_up_after_ms,
                probe.never
            ),
        ),
        (
            "reads",
            format!(
                "{} ({} ms apart, or a tenth of the wait so far, until each update converged), {} answered from the database",
                probe.reads, probe.poll_every_ms, probe.database_answers
            ),
        ),
        (
            "orders created to replace finished ones",
            probe.orders_created.to_string(),
        ),
    ]
}

fn memory_rows(memory: &MemoryReport) -> Vec<(&'static str, String)> {
    let mib =
        |value: Option<f64>| value.map_or_else(|| "n/a (run too short)".into(), |v| format!("{v:.1} MiB"));
    vec![
        ("process", memory.process.clone()),
        (
            "RSS",
            format!(
                "first {:.1} MiB, max {:.1} MiB, last {:.1} MiB ({} samples)",
                memory.first_mib,
                memory.max_mib,
                memory.last_mib,
                memory.samples.len()
            ),
        ),
        (
            "trend after the warm-up",
            format!(
                "{} over the samples after {:.0} s",
                memory
                    .slope_mib_per_minute
                    .map_or_else(|| "n/a".into(), |s| format!("{s:+.2} MiB/min")),
                memory.warm_up_seconds
            ),
        ),
        (
            "mean of the first minute after the warm-up",
            mib(memory.first_minute_mib),
        ),
        ("mean of the last minute", mib(memory.last_minute_mib)),
    ]
}

fn summary_cells(summary: Option<&Summary>) -> Vec<String> {
    match summary {
        None => vec![
            "0".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ],
        Some(s) => [s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms]
            .iter()
            .map(|ms| format!("{ms:.2}"))
            .fold(vec![s.count.to_string()], |mut cells, cell| {
                cells.push(cell);
                cells
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::CacheMode;

    fn figures() -> RunFigures {
        RunFigures {
            target: "http://127.0.0.1:1 <x>".into(),
            service_in_process: true,
            weights: "mix=1".into(),
            users: Some(4),
            preparation: Preparation {
                orders: 10,
                seed_seconds: 0.5,
                cache_mode: CacheMode::Warm,
                cache_seconds: 0.1,
                cached_at_start: Some(10),
                live_after_seconds: Some(1.0),
            },
            reads: SourceCounts {
                warm_cache: 9,
                warm_database: 1,
                ..SourceCounts::default()
            },
            staleness: Some(StalenessReport {
                per_second: vec![[0.0, 2.0, 1.0, 2.0, 3.0]],
                ..StalenessReport::default()
            }),
            memory: Some(MemoryReport {
                samples: vec![(1.0, 50.0), (2.0, 51.0)],
                ..MemoryReport::default()
            }),
        }
    }

    #[test]
    fn report_paths_name_a_format_we_can_complete() {
        assert_eq!(format_of("out/r.HTML").ok(), Some(Format::Html));
        assert_eq!(format_of("r.htm").ok(), Some(Format::Html));
        assert_eq!(format_of("r.md").ok(), Some(Format::Markdown));
        assert_eq!(format_of("r.json").ok(), Some(Format::Json));
        for refused in ["r.pdf", "r.json.gz", "report", goose::config::RUN_FOLDER] {
            assert!(format_of(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_html_report_loads_nothing_from_the_internet() {
        let goose_html = format!("<html><head>{ECHARTS_FROM_CDN}</head><body><p>goose</p></body></html>");
        let offline = inline_chart_library(&goose_html).map(|html| add_html_section(&html, &figures()));
        let Ok(offline) = offline else {
            panic!("not completed: {offline:?}")
        };
        assert!(!offline.contains("cdn.jsdelivr.net/npm/echarts@5.2.2/dist/echarts.min.js\"></script>"));
        assert!(!offline.contains("<script src="));
        assert!(
            offline.contains("Apache Software Foundation"),
            "the library is inline"
        );
        let ours = offline.find("id=\"orders-loadtest\"");
        let body_end = offline.rfind("</body>");
        assert!(
            ours.is_some() && ours < body_end,
            "our section is inside the body"
        );
        assert!(
            offline.contains("http://127.0.0.1:1 &lt;x&gt;"),
            "text is escaped"
        );
        assert!(offline.contains("orders-staleness-chart") && offline.contains("orders-memory-chart"));

        assert!(matches!(
            inline_chart_library("<html></html>"),
            Err(ReportError::ChartTag)
        ));
    }

    #[test]
    fn json_and_markdown_reports_get_our_figures() {
        let json = add_json(r#"{"requests": []}"#, &figures());
        let value: Option<serde_json::Value> = json.ok().and_then(|j| serde_json::from_str(&j).ok());
        assert!(value.as_ref().is_some_and(|v| v["requests"].is_array()));
        assert_eq!(
            value
                .as_ref()
                .map(|v| v[JSON_KEY]["preparation"]["cache_mode"].clone()),
            Some(serde_json::json!("warm"))
        );
        assert!(add_json("[1]", &figures()).is_err());

        let md = markdown(&figures());
        assert!(md.contains("| GetOrder (warm) | 9 (90.0%) | 1 (10.0%) |"));
        assert!(md.contains("| staleness (ms) | 0 |"));
    }
}
