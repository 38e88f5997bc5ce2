//! The SVG figure of a run: the latency CDFs (send → receive and send → OK, log scale) and
//! the histogram of added delays with the configured exponential density drawn over it.
//!
//! Uses plotters' SVG backend only (text is emitted as SVG `<text>`, so no font files are
//! needed). Pure presentation: the data comes from the runner.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// Most points drawn per CDF curve (larger sets are thinned evenly).
const MAX_CDF_POINTS: usize = 2000;

/// Histogram bins.
const BINS: usize = 60;

/// What the figure shows.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    /// Title line (mode and configuration).
    pub title: String,
    /// Send → receive latencies, ms.
    pub latency_ms: Vec<f64>,
    /// Send → OK latencies, ms.
    pub ok_latency_ms: Vec<f64>,
    /// Added delays, ms.
    pub added_delay_ms: Vec<f64>,
    /// Mean of the configured exponential (ms); no curve when `None`.
    pub model_mean_ms: Option<f64>,
}

fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let step = n.div_ceil(MAX_CDF_POINTS).max(1);
    let mut pts: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == n)
        .map(|(i, &x)| (x.max(1e-3), (i + 1) as f64 / n as f64))
        .collect();
    pts.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    pts
}

fn to_anyhow<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Writes the figure to `path` as SVG (1200 × 480).
///
/// # Errors
/// If the file cannot be written or the data cannot be drawn.
pub fn write_svg(path: &Path, data: &PlotData) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(to_anyhow)?;
    let root = root
        .titled(&data.title, ("sans-serif", 18))
        .map_err(to_anyhow)?;
    let (left, right) = root.split_horizontally(600);
    draw_cdf(&left, data)?;
    draw_histogram(&right, data)?;
    root.present().map_err(to_anyhow)?;
    Ok(())
}

fn draw_cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    data: &PlotData,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let lat = cdf_points(&data.latency_ms);
    let ok = cdf_points(&data.ok_latency_ms);
    let lo = lat
        .iter()
        .chain(ok.iter())
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min);
    let hi = lat
        .iter()
        .chain(ok.iter())
        .map(|p| p.0)
        .fold(0.0f64, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo * 0.8, hi * 1.25)
    } else {
        (0.01, 10.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption("Latency CDF", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(to_anyhow)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of messages")
        .draw()
        .map_err(to_anyhow)?;
    chart
        .draw_series(LineSeries::new(lat, BLUE.stroke_width(2)))
        .map_err(to_anyhow)?
        .label("send → receive")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(ok, RED.stroke_width(2)))
        .map_err(to_anyhow)?
        .label("send → OK")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(to_anyhow)?;
    Ok(())
}

fn draw_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    data: &PlotData,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut v: Vec<f64> = data
        .added_delay_ms
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    // Range: up to the 99.5th percentile of the data, or five means of the model.
    let q995 = v
        .get(((v.len() as f64 * 0.995) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(1.0);
    let top = data
        .model_mean_ms
        .map_or(q995, |m| q995.max(5.0 * m))
        .max(1e-3);
    let width = top / BINS as f64;
    let mut counts = vec![0u64; BINS];
    // Values beyond the range are not drawn (they still count in the density's total).
    for x in &v {
        if let Some(c) = counts.get_mut((x.max(0.0) / width) as usize) {
            *c += 1;
        }
    }
    let density: Vec<f64> = counts.iter().map(|&c| c as f64 / (n * width)).collect();
    let model = |x: f64| data.model_mean_ms.map(|m| (-x / m).exp() / m);
    let ymax = density
        .iter()
        .copied()
        .chain(model(0.0))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Added delay (receive − send − baseline)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..top, 0.0..ymax)
        .map_err(to_anyhow)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("density (1/ms)")
        .draw()
        .map_err(to_anyhow)?;
    chart
        .draw_series(density.iter().enumerate().map(|(i, &d)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, d)], BLUE.mix(0.35).filled())
        }))
        .map_err(to_anyhow)?
        .label("observed")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLUE.mix(0.35).filled()));
    if data.model_mean_ms.is_some() {
        let curve: Vec<(f64, f64)> = (0..=200)
            .map(|i| {
                let x = top * i as f64 / 200.0;
                (x, model(x).unwrap_or(0.0))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(curve, RED.stroke_width(2)))
            .map_err(to_anyhow)?
            .label("configured Exp(mean) density")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(to_anyhow)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let data = PlotData {
            title: "test".into(),
            latency_ms: (1..500).map(|i| i as f64 * 0.7).collect(),
            ok_latency_ms: (1..500).map(|i| i as f64 * 0.01).collect(),
            added_delay_ms: (1..500).map(|i| (i % 97) as f64).collect(),
            model_mean_ms: Some(30.0),
        };
        write_svg(&path, &data).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Latency CDF"));
        assert!(svg.contains("configured Exp(mean) density"));
        // Empty data still produces a figure.
        write_svg(&path, &PlotData::default()).unwrap();
    }
}
