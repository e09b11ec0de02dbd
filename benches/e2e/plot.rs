//! The PNG of the run: throughput of the load phase, latency and throughput of the steady phase.

use super::*;

/// Draws the run: throughput of the load phase, and latency and throughput of the steady phase.
pub(crate) fn plot(
    path: &str,
    load: &[Sample],
    steady: &[Sample],
    reference_rate: f64,
    steady_rate: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT} is not a usable font"))?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);

    // The whole drain on the axis, though the rate per half second is drawn at each interval's
    // middle.
    let x_max = load.last().map_or(1.0, |s| s.at).max(1.0);
    let load = series(load, half_second());
    let y_max = load.iter().map(|p| p.1).fold(reference_rate, f64::max) * 1.1 / 1000.0;
    panel(
        &top,
        "load run: backlog drained, committed readings/s (thousands)".into(),
        (x_max, y_max, "k readings/s"),
        vec![
            Line::measured(
                "sensorhub, per 0.5 s",
                BLUE,
                load.iter().map(|p| (p.0, p.1 / 1000.0)).collect(),
            ),
            Line::level(
                "reference: write path alone",
                BLACK,
                reference_rate / 1000.0,
                x_max,
            ),
            Line::level("target 150k/s", RED, 150.0, x_max),
        ],
    )?;

    let steady = series(steady, half_second());
    let x_max = steady.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max = steady.iter().filter_map(|p| p.3).fold(100.0, f64::max) * 1.1;
    let steady_line = |label, color, pick: fn(&Interval) -> Option<f64>| {
        let points = steady
            .iter()
            .filter_map(|p| pick(p).map(|v| (p.0, v)))
            .collect();
        Line::measured(label, color, points)
    };
    panel(
        &bottom,
        format!(
            "steady producer at {steady_rate} readings/s: latency stream entry → commit and batch transaction time, over the last 0.5 s"
        ),
        (x_max, y_max, "ms"),
        vec![
            steady_line("p50", GREEN, |p| p.2),
            steady_line("p99", MAGENTA, |p| p.3),
            steady_line("batch transaction, mean", BLUE, |p| p.4),
            steady_line("batch transaction, slowest (bucket bound)", CYAN, |p| p.5),
            Line::level("target p99 100 ms", RED, 100.0, x_max),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// One line of a plot panel.
pub(crate) struct Line {
    pub(crate) label: &'static str,
    pub(crate) color: plotters::style::RGBColor,
    pub(crate) width: u32,
    pub(crate) points: Vec<(f64, f64)>,
}

impl Line {
    pub(crate) fn measured(
        label: &'static str,
        color: plotters::style::RGBColor,
        points: Vec<(f64, f64)>,
    ) -> Self {
        Self {
            label,
            color,
            width: 2,
            points,
        }
    }

    /// A horizontal line: a target or the reference.
    pub(crate) fn level(
        label: &'static str,
        color: plotters::style::RGBColor,
        y: f64,
        x_max: f64,
    ) -> Self {
        Self {
            label,
            color,
            width: 1,
            points: vec![(0.0, y), (x_max, y)],
        }
    }
}

/// Draws one panel: axes from 0 to `(x_max, y_max)`, time on x, the lines with a legend.
pub(crate) fn panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    (x_max, y_max, y_desc): (f64, f64, &str),
    lines: Vec<Line>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .draw()?;
    for line in lines {
        let style = line.color.stroke_width(line.width);
        chart
            .draw_series(LineSeries::new(line.points, style))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
