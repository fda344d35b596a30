//! `sluice bench plot`: SVG charts from result files (plotters, SVG backend only, so no font or
//! image libraries are needed):
//! - `publish-latency.svg`, `end-to-end-latency.svg`: latency against percentile on the
//!   HdrHistogram-style axis (90, 99, 99.9, ... equally spaced), log latency, one line per result;
//! - `throughput.svg`: acknowledged and consumed records per second over the run, one pair of
//!   lines per result (consumed dashed).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Latency, RunResult};

fn label(result: &RunResult, all: &[RunResult]) -> String {
    let same_target = all.iter().filter(|r| r.target == result.target).count();
    let rate = result
        .target_rate
        .map(|r| format!(" @{r:.0}/s"))
        .unwrap_or_default();
    if same_target > 1 || all.iter().any(|r| r.workload.name != result.workload.name) {
        format!(
            "{} {}{rate} {}",
            result.target,
            result.workload.name,
            result.started_at_unix_s % 100_000
        )
    } else {
        format!("{}{rate}", result.target)
    }
}

/// Percentile -> position on the "nines" axis: 90% -> 1, 99% -> 2, 99.9% -> 3 ...
fn nines(percentile: f64) -> f64 {
    -(1.0 - (percentile / 100.0).min(0.999_999_9)).log10()
}

fn latency_chart(
    path: &Path,
    title: &str,
    results: &[RunResult],
    latency: fn(&RunResult) -> &Latency,
) -> Result<(), String> {
    let values = results
        .iter()
        .flat_map(|r| latency(r).curve.iter().map(|&(_, v)| v))
        .filter(|&v| v > 0);
    let (lo, hi) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi == 0 {
        return Err(format!("{title}: no latency samples in the results"));
    }
    let (lo, hi) = (lo as f64 / 1000.0 * 0.8, hi as f64 / 1000.0 * 1.25);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5.6f64, (lo..hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(7)
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            5 => "99.999%".into(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, result) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let curve = &latency(result).curve;
        let points: Vec<(f64, f64)> = curve
            .iter()
            .filter(|&&(p, v)| p < 100.0 && v > 0)
            .map(|&(p, v)| (nines(p), v as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label(result, results))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn throughput_chart(path: &Path, results: &[RunResult]) -> Result<(), String> {
    let t_min = results
        .iter()
        .flat_map(|r| r.series.first().map(|s| s.t))
        .min()
        .unwrap_or(0);
    let t_max = results
        .iter()
        .flat_map(|r| r.series.last().map(|s| s.t))
        .max()
        .unwrap_or(1)
        .max(t_min + 1);
    let peak = results
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.published.max(s.consumed)))
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "throughput over time (records/s; consumed dashed)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(t_min as f64..t_max as f64, 0f64..peak as f64 * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the end of warm-up")
        .y_desc("records/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, result) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let published: Vec<(f64, f64)> = result
            .series
            .iter()
            .map(|s| (s.t as f64, s.published as f64))
            .collect();
        let consumed: Vec<(f64, f64)> = result
            .series
            .iter()
            .map(|s| (s.t as f64, s.consumed as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(published, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label(result, results))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(consumed, 6, 4, color.stroke_width(1)))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes the three charts into `out_dir`, returning their paths.
pub fn plot(results: &[RunResult], out_dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    if results.is_empty() {
        return Err("no result files given".into());
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let publish = out_dir.join("publish-latency.svg");
    let e2e = out_dir.join("end-to-end-latency.svg");
    let throughput = out_dir.join("throughput.svg");
    latency_chart(&publish, "publish latency by percentile", results, |r| {
        &r.publish_latency_us
    })?;
    let with_consumers: Vec<RunResult> = results
        .iter()
        .filter(|r| r.end_to_end_latency_us.count > 0)
        .cloned()
        .collect();
    let mut written = vec![publish];
    if !with_consumers.is_empty() {
        latency_chart(
            &e2e,
            "end-to-end latency by percentile",
            &with_consumers,
            |r| &r.end_to_end_latency_us,
        )?;
        written.push(e2e);
    }
    throughput_chart(&throughput, results)?;
    written.push(throughput);
    Ok(written)
}
