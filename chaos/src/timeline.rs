//! `timeline.svg`: a chaos run over time (plotters, SVG backend only). Top: records
//! acknowledged per second, in 250 ms buckets; bottom: the slowest and the median
//! acknowledgement of each bucket (send → acknowledged, log scale). Every fault is a shaded band
//! from injection to heal, kills red, the other faults amber, labelled with the node.

use std::collections::HashMap;
use std::path::Path;

use plotters::prelude::*;

use crate::history::Event;

const BUCKET_MS: f64 = 250.0;

/// Draws the timeline of `events` into `path`.
pub fn draw(path: &Path, events: &[Event]) -> Result<(), String> {
    let mut sent_at: HashMap<&str, f64> = HashMap::new();
    let mut acks: Vec<(f64, f64)> = Vec::new();
    let mut faults: Vec<(f64, f64, String, bool)> = Vec::new();
    let mut open: HashMap<usize, (f64, String)> = HashMap::new();
    let mut end_ms: f64 = 1.0;
    for event in events {
        match event {
            Event::Send { t_ms, value, .. } => {
                sent_at.insert(value, *t_ms);
            }
            Event::Acked { t_ms, value, .. } => {
                if let Some(sent) = sent_at.get(value.as_str()) {
                    acks.push((*t_ms, (t_ms - sent).max(0.01)));
                }
                end_ms = end_ms.max(*t_ms);
            }
            Event::Fault {
                t_ms, action, node, ..
            } => {
                end_ms = end_ms.max(*t_ms);
                match crate::schedule::FaultKind::parse(action) {
                    Ok(_) => {
                        open.insert(*node, (*t_ms, format!("{action} n{node}")));
                    }
                    Err(_) => {
                        if let Some((from, label)) = open.remove(node) {
                            let kill = label.starts_with("kill");
                            faults.push((from, *t_ms, label, kill));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (_, (from, label)) in open {
        let kill = label.starts_with("kill");
        faults.push((from, end_ms, label, kill));
    }
    let buckets = (end_ms / BUCKET_MS).ceil() as usize + 1;
    let mut per_bucket: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for &(t, latency) in &acks {
        per_bucket[(t / BUCKET_MS) as usize].push(latency);
    }
    let seconds = |bucket: usize| bucket as f64 * BUCKET_MS / 1e3;
    let rate: Vec<(f64, f64)> = per_bucket
        .iter()
        .enumerate()
        .map(|(i, b)| (seconds(i), b.len() as f64 * 1e3 / BUCKET_MS))
        .collect();
    let mut slowest = Vec::new();
    let mut median = Vec::new();
    for (i, bucket) in per_bucket.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(f64::total_cmp);
        slowest.push((seconds(i), bucket[bucket.len() - 1]));
        median.push((seconds(i), bucket[bucket.len() / 2]));
    }
    let end_s = end_ms / 1e3;
    let peak_rate = rate.iter().map(|r| r.1).fold(1.0, f64::max) * 1.15;
    let peak_latency = slowest.iter().map(|s| s.1).fold(10.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(350);
    let band = |kill: bool| {
        if kill {
            RGBColor(220, 50, 47).mix(0.18)
        } else {
            RGBColor(230, 160, 20).mix(0.18)
        }
    };

    let mut chart = ChartBuilder::on(&top)
        .caption("acknowledged records/s (faults shaded)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end_s, 0f64..peak_rate)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (from, to, label, kill) in &faults {
        let (from, to) = (from / 1e3, to / 1e3);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(from, 0.0), (to, peak_rate)],
                band(*kill).filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (from, peak_rate * 0.97),
                ("sans-serif", 13),
            )))
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series(LineSeries::new(rate, BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "acknowledgement latency, ms (slowest and median per 250 ms)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end_s, (0.1f64..peak_latency).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (from, to, _, kill) in &faults {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(from / 1e3, 0.1), (to / 1e3, peak_latency)],
                band(*kill).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series(LineSeries::new(slowest, RED.stroke_width(1)))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(median, BLACK.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::record_value;

    #[test]
    fn the_timeline_shows_the_faults_and_the_acknowledgements() {
        let mut events = Vec::new();
        for seq in 0..400u64 {
            let t = seq as f64 * 10.0;
            events.push(Event::Send {
                t_ms: t,
                producer: 0,
                value: record_value(0, seq),
            });
            events.push(Event::Acked {
                t_ms: t + 2.0,
                producer: 0,
                value: record_value(0, seq),
                partition: 0,
                offset: seq as i64,
            });
        }
        for (t, action) in [(1000.0, "kill"), (1500.0, "restart"), (2500.0, "pause")] {
            events.push(Event::Fault {
                t_ms: t,
                action: action.into(),
                node: 1,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        draw(&path, &events).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("kill n1"), "the kill is labelled");
        assert!(
            svg.contains("pause n1"),
            "a fault still open at the end is drawn"
        );
        assert!(svg.contains("acknowledged records/s"));
    }
}
