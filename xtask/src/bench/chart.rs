//! `target/bench/bench.svg`: throughput per step (bars, with the ratio to the
//! `/health` ceiling) above the latency percentiles per step (log scale).
//!
//! Plotters' SVG backend only: text is written as SVG `<text>` and laid out
//! with plotters' built-in size estimate, so no font library is needed.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::SuiteReport;

const BAR: RGBColor = RGBColor(70, 120, 180);
const CEILING: RGBColor = RGBColor(150, 150, 150);
/// One color per percentile: p50, p90, p99, p99.9, max.
const LADDER: [(&str, RGBColor); 5] = [
    ("p50", RGBColor(40, 140, 70)),
    ("p90", RGBColor(70, 120, 180)),
    ("p99", RGBColor(230, 150, 30)),
    ("p99.9", RGBColor(200, 60, 50)),
    ("max", RGBColor(110, 60, 150)),
];

/// Draws the chart of `report` into `path`.
pub(crate) fn draw(report: &SuiteReport, path: &Path) -> anyhow::Result<()> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(390);
    throughput(report, &top).map_err(|e| fail(&e))?;
    latency(report, &bottom).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn throughput(report: &SuiteReport, area: &Area<'_>) -> DrawResult {
    let steps: Vec<(&str, f64, Option<f64>)> = report
        .steps
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.rate()?, s.ratio_to_health)))
        .collect();
    let top = steps.iter().map(|s| s.1).fold(1.0, f64::max) * 1.18;
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    let label = |v: &SegmentValue<usize>| segment_label(&names, v);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Throughput, storage {}: successful requests per second (and % of /health)",
                report.storage
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(categories(steps.len()), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(steps.len().max(1))
        .x_label_formatter(&label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .y_desc("req/s")
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(steps.iter().enumerate().map(|(i, (name, rate, _))| {
        let color = if name.starts_with("health") {
            CEILING
        } else {
            BAR
        };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *rate),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        bar
    }))?;
    let above = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(steps.iter().enumerate().map(|(i, (_, rate, ratio))| {
        let text = match ratio {
            Some(r) => format!("{rate:.0} ({:.0}%)", r * 100.0),
            None => format!("{rate:.0}"),
        };
        Text::new(text, (SegmentValue::CenterOf(i), *rate), above.clone())
    }))?;
    Ok(())
}

fn latency(report: &SuiteReport, area: &Area<'_>) -> DrawResult {
    let steps: Vec<(&str, [f64; 5])> = report
        .steps
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.percentiles()?.ladder())))
        .collect();
    let values = steps.iter().flat_map(|s| s.1).filter(|v| *v > 0.0);
    let low = values.clone().fold(f64::INFINITY, f64::min);
    let high = values.fold(0.0, f64::max);
    let (low, high) = if low.is_finite() && high > 0.0 {
        (low / 2.0, high * 2.0)
    } else {
        (0.01, 1.0)
    };
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    let label = |v: &SegmentValue<usize>| segment_label(&names, v);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency percentiles, ms (log scale; lag: write acknowledged to visible elsewhere)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(categories(steps.len()), (low..high).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(steps.len().max(1))
        .x_label_formatter(&label)
        .y_desc("ms")
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(WHITE)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (k, (name, color)) in LADDER.iter().enumerate() {
        let points: Vec<(SegmentValue<usize>, f64)> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (SegmentValue::CenterOf(i), s.1[k].max(low)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// One segment per step on the x axis (plotters' integer ranges include their end).
fn categories(steps: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..steps.saturating_sub(1)).into_segmented()
}

fn segment_label(names: &[&str], value: &SegmentValue<usize>) -> String {
    match value {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            names.get(*i).copied().unwrap_or_default().to_owned()
        }
        SegmentValue::Last => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_an_svg_with_every_step() {
        let dir = tempdir();
        let path = dir.join("bench.svg");
        draw(&super::super::report::tests::suite(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for needle in [
            "health-64",
            "write-64",
            "lag",
            "p99.9",
            "40000 (100%)",
            "10000 (25%)",
            "storage fsync",
        ] {
            assert!(svg.contains(needle), "{needle:?} missing from the chart");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_empty_suite_still_draws() {
        let dir = tempdir();
        let path = dir.join("empty.svg");
        let mut report = super::super::report::tests::suite();
        report.steps.clear();
        draw(&report, &path).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-chart-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
