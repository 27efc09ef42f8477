//! The pictures: feature-map grids, explanation overlays, confusion heat maps, training
//! curves and digit galleries.

use hdr_metrics::{ClassificationReport, ConfusionMatrix};
use hdr_models::FeatureMap;

use crate::canvas::{Canvas, Color, BLACK, GREY, WHITE};
use crate::error::{Result, VizError};
use crate::font;

/// Perceptually ordered colour map (an approximation of matplotlib's viridis) for `t` in `[0, 1]`.
pub fn viridis(t: f32) -> Color {
    const STOPS: [[f32; 3]; 6] = [
        [68.0, 1.0, 84.0],
        [65.0, 68.0, 135.0],
        [42.0, 120.0, 142.0],
        [34.0, 168.0, 132.0],
        [122.0, 209.0, 81.0],
        [253.0, 231.0, 37.0],
    ];
    ramp(&STOPS, t)
}

/// Black-red-yellow-white colour map (like matplotlib's inferno) for heat overlays.
pub fn inferno(t: f32) -> Color {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [120.0, 28.0, 109.0],
        [237.0, 105.0, 37.0],
        [252.0, 255.0, 164.0],
        [255.0, 255.0, 255.0],
    ];
    ramp(&STOPS, t)
}

/// Grey from black (0) to white (1).
pub fn grey(t: f32) -> Color {
    let v = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
    [v, v, v]
}

fn ramp(stops: &[[f32; 3]], t: f32) -> Color {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (stops.len() - 1) as f32;
    let i = (pos.floor() as usize).min(stops.len() - 2);
    let f = pos - i as f32;
    let c = |k: usize| (stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f).round() as u8;
    [c(0), c(1), c(2)]
}

/// Every channel of one layer's activation for sample `sample`, each scaled to its own range,
/// in a labelled grid (at most `max_channels` channels).
pub fn feature_map_grid(map: &FeatureMap, sample: usize, max_channels: usize) -> Result<Canvas> {
    let (b, c, h, w) = map.activation.dims4()?;
    if sample >= b {
        return Err(VizError::InvalidInput {
            what: "sample",
            reason: format!("{sample} is out of the batch of {b}"),
        });
    }
    let values = map
        .activation
        .get(sample)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let n = c.min(max_channels.max(1));
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let cell = (84 / h.max(w)).clamp(2, 16) as u32;
    let (tile_w, tile_h) = (w as u32 * cell + 8, h as u32 * cell + 16);
    let title = format!(
        "{}  [{c}, {h}, {w}]{}",
        map.name,
        if n < c {
            format!(" first {n}")
        } else {
            String::new()
        }
    );
    let width = (cols as u32 * tile_w + 16).max(font::text_width(&title, 2) + 16);
    let mut canvas = Canvas::new(width, rows as u32 * tile_h + 40, WHITE);
    canvas.text(8, 8, &title, 2, BLACK);
    for ch in 0..n {
        let plane = &values[ch * h * w..(ch + 1) * h * w];
        let (lo, hi) = plane
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let (x, y) = (
            8 + (ch % cols) as i64 * tile_w as i64,
            32 + (ch / cols) as i64 * tile_h as i64,
        );
        canvas.image(x, y, plane, w, cell, |v| viridis((v - lo) / span));
        canvas.text(
            x,
            y + (h as u32 * cell) as i64 + 3,
            &ch.to_string(),
            1,
            GREY,
        );
    }
    Ok(canvas)
}

/// The digit in grey with `heat` (both 28x28 in `[0, 1]`) blended over it, scaled 8x, titled.
pub fn overlay(digit: &[f32], heat: &[f32], title: &str) -> Result<Canvas> {
    if digit.len() != 784 || heat.len() != 784 {
        return Err(VizError::InvalidInput {
            what: "overlay",
            reason: format!(
                "digit and heat map must be 784 values, got {} and {}",
                digit.len(),
                heat.len()
            ),
        });
    }
    let cell = 8u32;
    let mut canvas = Canvas::new(
        (28 * cell * 2 + 24).max(font::text_width(title, 2) + 16),
        28 * cell + 40,
        WHITE,
    );
    canvas.text(8, 8, title, 2, BLACK);
    canvas.image(8, 32, digit, 28, cell, grey);
    let x0 = 16 + 28 * cell as i64;
    for i in 0..784 {
        let (r, c) = (i / 28, i % 28);
        let d = grey(digit[i]);
        let hcol = inferno(heat[i]);
        let a = 0.35 + 0.5 * heat[i].clamp(0.0, 1.0);
        let mix = |k: usize| (d[k] as f32 * (1.0 - a) + hcol[k] as f32 * a).round() as u8;
        canvas.fill_rect(
            x0 + c as i64 * cell as i64,
            32 + r as i64 * cell as i64,
            cell,
            cell,
            [mix(0), mix(1), mix(2)],
        );
    }
    Ok(canvas)
}

/// The confusion matrix as a heat map: rows are true classes, columns predictions, each cell
/// coloured by its share of the row and labelled with its count.
pub fn confusion_heatmap(m: &ConfusionMatrix, title: &str) -> Canvas {
    let k = m.num_classes();
    let cell = 44u32;
    let (left, top) = (56i64, 64i64);
    let mut canvas = Canvas::new(
        left as u32 + k as u32 * cell + 24,
        top as u32 + k as u32 * cell + 40,
        WHITE,
    );
    canvas.text(8, 8, title, 2, BLACK);
    canvas.text_centered(
        left + (k as u32 * cell / 2) as i64,
        34,
        "PREDICTED",
        1,
        BLACK,
    );
    for t in 0..k {
        let row = m.row(t).unwrap_or_default();
        let total: u64 = row.iter().sum();
        canvas.text(
            left - 20,
            top + (t as u32 * cell + cell / 2 - 3) as i64,
            &t.to_string(),
            1,
            BLACK,
        );
        for (p, &n) in row.iter().enumerate() {
            let share = if total > 0 {
                n as f32 / total as f32
            } else {
                0.0
            };
            // Off-diagonal errors are few; a square-root scale keeps them visible.
            let color = if t == p {
                viridis(share)
            } else {
                inferno(share.sqrt())
            };
            let (x, y) = (
                left + (p as u32 * cell) as i64,
                top + (t as u32 * cell) as i64,
            );
            canvas.fill_rect(x, y, cell, cell, color);
            let lum = color[0] as u32 * 3 + color[1] as u32 * 6 + color[2] as u32;
            let ink = if lum > 1200 { BLACK } else { WHITE };
            if n > 0 {
                canvas.text_centered(
                    x + (cell / 2) as i64,
                    y + (cell / 2) as i64 - 3,
                    &n.to_string(),
                    1,
                    ink,
                );
            }
        }
    }
    for p in 0..k {
        canvas.text_centered(
            left + (p as u32 * cell + cell / 2) as i64,
            top - 12,
            &p.to_string(),
            1,
            BLACK,
        );
    }
    canvas.text(8, top - 12, "TRUE", 1, BLACK);
    canvas
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Line colour.
    pub color: Color,
    /// `(x, y)` points, in order.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title and its lines sharing axes.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// Lines.
    pub series: Vec<Series>,
}

/// Blue, for training curves.
pub const BLUE: Color = [31, 119, 180];
/// Orange, for validation curves.
pub const ORANGE: Color = [255, 127, 14];

/// Line charts side by side (e.g. loss and accuracy per epoch), with axes, ticks and legends.
pub fn line_charts(panels: &[Panel]) -> Result<Canvas> {
    if panels.is_empty()
        || panels
            .iter()
            .all(|p| p.series.iter().all(|s| s.points.is_empty()))
    {
        return Err(VizError::InvalidInput {
            what: "panels",
            reason: "nothing to plot".into(),
        });
    }
    let (pw, ph) = (420u32, 300u32);
    let mut canvas = Canvas::new(panels.len() as u32 * (pw + 20) + 20, ph + 40, WHITE);
    for (i, panel) in panels.iter().enumerate() {
        let ox = 20 + i as i64 * (pw + 20) as i64;
        chart(&mut canvas, ox, 10, pw, ph, panel);
    }
    Ok(canvas)
}

fn chart(canvas: &mut Canvas, ox: i64, oy: i64, w: u32, h: u32, panel: &Panel) {
    let pts = || panel.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in pts().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    canvas.text(ox, oy, &panel.title, 2, BLACK);
    let (left, top, right, bottom) = (ox + 60, oy + 28, ox + w as i64 - 10, oy + h as i64 - 24);
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y - y0) / (y1 - y0) * (bottom - top) as f64).round() as i64;
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k as f64 / 4.0;
        let yy = py(y);
        canvas.line(left, yy, right, yy, [230, 230, 230]);
        canvas.text(ox, yy - 3, &format_tick(y, y1 - y0), 1, BLACK);
    }
    let xticks = ((x1 - x0).round() as usize).clamp(1, 8);
    for k in 0..=xticks {
        let x = x0 + (x1 - x0) * k as f64 / xticks as f64;
        canvas.text_centered(px(x), bottom + 6, &format_tick(x, x1 - x0), 1, BLACK);
    }
    canvas.line(left, top, left, bottom, GREY);
    canvas.line(left, bottom, right, bottom, GREY);
    for (si, s) in panel.series.iter().enumerate() {
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let p = (px(x), py(y));
            if let Some(q) = prev {
                canvas.line(q.0, q.1, p.0, p.1, s.color);
                canvas.line(q.0, q.1 + 1, p.0, p.1 + 1, s.color);
            }
            canvas.fill_rect(p.0 - 2, p.1 - 2, 5, 5, s.color);
            prev = Some(p);
        }
        let ly = top + 4 + si as i64 * 12;
        canvas.fill_rect(right - 110, ly, 10, 7, s.color);
        canvas.text(right - 96, ly, &s.name, 1, BLACK);
    }
}

fn format_tick(v: f64, span: f64) -> String {
    if span >= 10.0 {
        format!("{v:.0}")
    } else if span >= 1.0 {
        format!("{v:.1}")
    } else if span >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

/// One estimate with its interval, for [`interval_chart`] (e.g. a model's test accuracy and
/// its 95% interval, from `hdr_metrics::ClassificationReport::accuracy_interval`).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Row label, e.g. the model's name.
    pub label: String,
    /// The measured value.
    pub value: f64,
    /// Lower end of its interval.
    pub low: f64,
    /// Upper end of its interval.
    pub high: f64,
}

/// A forest plot: one row per estimate, a dot at its value and a bar across its interval, on a
/// shared horizontal axis. Rows whose bars overlap much are not told apart by the measurement,
/// which a table of second decimals hides. `reference` draws a dashed vertical line (e.g. a
/// target).
pub fn interval_chart(rows: &[Estimate], title: &str, reference: Option<f64>) -> Result<Canvas> {
    if rows.is_empty() {
        return Err(VizError::InvalidInput {
            what: "rows",
            reason: "nothing to plot".into(),
        });
    }
    if let Some(r) = rows.iter().find(|r| {
        // Finite first, so that the comparisons below see no NaN.
        ![r.value, r.low, r.high].iter().all(|v| v.is_finite())
            || r.low > r.value
            || r.value > r.high
    }) {
        return Err(VizError::InvalidInput {
            what: "rows",
            reason: format!(
                "{}: need finite low <= value <= high, got {} <= {} <= {}",
                r.label, r.low, r.value, r.high
            ),
        });
    }
    let label_w = rows
        .iter()
        .map(|r| font::text_width(&r.label, 1))
        .max()
        .unwrap_or(0)
        .max(40);
    let (row_h, plot_w) = (22u32, 480u32);
    let (left, top) = (16 + label_w as i64 + 12, 40i64);
    let bottom = top + (rows.len() as u32 * row_h) as i64;
    let mut canvas = Canvas::new(left as u32 + plot_w + 40, bottom as u32 + 36, WHITE);
    canvas.text(16, 10, title, 2, BLACK);
    let mut x0 = rows.iter().map(|r| r.low).fold(f64::INFINITY, f64::min);
    let mut x1 = rows
        .iter()
        .map(|r| r.high)
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some(r) = reference.filter(|r| r.is_finite()) {
        x0 = x0.min(r);
        x1 = x1.max(r);
    }
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let (x0, x1) = (x0 - span * 0.05, x1 + span * 0.05);
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * plot_w as f64).round() as i64;
    for k in 0..=5 {
        let x = x0 + (x1 - x0) * k as f64 / 5.0;
        canvas.line(px(x), top, px(x), bottom, [230, 230, 230]);
        canvas.text_centered(px(x), bottom + 8, &format_tick(x, x1 - x0), 1, BLACK);
    }
    canvas.line(left, bottom, left + plot_w as i64, bottom, GREY);
    if let Some(r) = reference.filter(|r| r.is_finite()) {
        let x = px(r);
        canvas.text_centered(x, top - 9, &format_tick(r, x1 - x0), 1, ORANGE);
        for y in (top..bottom).step_by(6) {
            canvas.line(x, y, x, (y + 3).min(bottom), ORANGE);
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + (i as u32 * row_h + row_h / 2) as i64;
        canvas.text(16, y - 3, &r.label, 1, BLACK);
        let (a, b) = (px(r.low), px(r.high));
        canvas.line(a, y, b, y, BLUE);
        canvas.line(a, y + 1, b, y + 1, BLUE);
        canvas.line(a, y - 4, a, y + 5, BLUE);
        canvas.line(b, y - 4, b, y + 5, BLUE);
        canvas.fill_rect(px(r.value) - 3, y - 3, 7, 8, BLACK);
    }
    Ok(canvas)
}

/// [`interval_chart`] of the accuracies of `reports` (in percent) with their intervals at level
/// `confidence` (Wilson's, [`ClassificationReport::accuracy_interval`]), one row per
/// `(label, report)`, titled with the split of the first report.
pub fn accuracy_chart(
    reports: &[(String, &ClassificationReport)],
    confidence: f64,
    reference: Option<f64>,
) -> Result<Canvas> {
    let mut rows = Vec::with_capacity(reports.len());
    for (label, report) in reports {
        let i = report.accuracy_interval(confidence)?;
        rows.push(Estimate {
            label: label.clone(),
            value: 100.0 * report.accuracy,
            low: 100.0 * i.low,
            high: 100.0 * i.high,
        });
    }
    let split = reports.first().map_or("", |(_, r)| r.split.as_str());
    // One decimal at most: 99.5% must not read as 100%.
    let title = format!(
        "{split} accuracy (%), {}% intervals",
        (1000.0 * confidence).round() / 10.0
    );
    interval_chart(&rows, &title, reference)
}

/// A 28x28 digit with a caption, for [`digit_gallery`].
#[derive(Debug, Clone)]
pub struct Captioned {
    /// 784 bytes, 0 = background.
    pub pixels: Vec<u8>,
    /// Caption under the digit, e.g. `T7 P2`.
    pub caption: String,
}

/// Digits in a grid with their captions (e.g. the misclassified test digits, true and predicted
/// labels), `cols` per row.
pub fn digit_gallery(items: &[Captioned], cols: usize, title: &str) -> Result<Canvas> {
    if let Some(bad) = items.iter().find(|d| d.pixels.len() != 784) {
        return Err(VizError::InvalidInput {
            what: "digit",
            reason: format!("a digit has {} pixels, expected 784", bad.pixels.len()),
        });
    }
    let cols = cols.max(1);
    let rows = items.len().div_ceil(cols).max(1);
    let (cell, tile_w, tile_h) = (3u32, 96u32, 104u32);
    let width = (cols as u32 * tile_w + 16).max(font::text_width(title, 2) + 16);
    let mut canvas = Canvas::new(width, rows as u32 * tile_h + 40, WHITE);
    canvas.text(8, 8, title, 2, BLACK);
    for (i, d) in items.iter().enumerate() {
        let (x, y) = (
            8 + (i % cols) as i64 * tile_w as i64,
            32 + (i / cols) as i64 * tile_h as i64,
        );
        let v: Vec<f32> = d.pixels.iter().map(|&p| 1.0 - p as f32 / 255.0).collect();
        canvas.image(x + 6, y, &v, 28, cell, grey);
        canvas.rect(x + 5, y - 1, 28 * cell + 2, 28 * cell + 2, GREY);
        canvas.text(x + 6, y + 28 * cell as i64 + 4, &d.caption, 1, BLACK);
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_maps_have_the_documented_ends() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(f32::NAN), viridis(0.0));
        assert_eq!(grey(0.5), [128, 128, 128]);
        assert_eq!(inferno(2.0), [255, 255, 255]);
    }

    #[test]
    fn confusion_heatmap_colours_the_diagonal_by_recall() {
        let m = ConfusionMatrix::from_counts(2, vec![9, 1, 0, 10]).unwrap();
        let c = confusion_heatmap(&m, "T");
        // Cell (1, 1) is a perfect row: the top of viridis, away from its label in the centre.
        assert_eq!(c.pixel(56 + 44 + 2, 64 + 44 + 2), Some(viridis(1.0)));
    }

    fn est(label: &str, value: f64, low: f64, high: f64) -> Estimate {
        Estimate {
            label: label.into(),
            value,
            low,
            high,
        }
    }

    /// Leftmost and rightmost blue pixel on row `y`.
    fn blue_span(c: &Canvas, y: u32) -> Option<(u32, u32)> {
        let xs: Vec<u32> = (0..c.width())
            .filter(|&x| c.pixel(x, y) == Some(BLUE))
            .collect();
        Some((*xs.first()?, *xs.last()?))
    }

    #[test]
    fn interval_chart_draws_each_interval_to_scale() {
        let rows = [
            est("A", 0.5, 0.0, 1.0),
            est("B", 0.5, 0.25, 0.75),
            est("C", 0.9, 0.8, 1.0),
        ];
        let c = interval_chart(&rows, "T", None).unwrap();
        // Row i's bar is on y = 40 + 22 i + 11 (+1 for the second pixel row, below the dot).
        let span = |i: u32| blue_span(&c, 40 + 22 * i + 12).unwrap();
        let (a0, a1) = span(0);
        let (b0, b1) = span(1);
        let (c0, c1) = span(2);
        // B covers the middle half of A's bar, C the top fifth.
        let w = (a1 - a0) as f64;
        assert!(
            ((b1 - b0) as f64 / w - 0.5).abs() < 0.01,
            "{a0}-{a1} {b0}-{b1}"
        );
        assert!(((b0 - a0) as f64 / w - 0.25).abs() < 0.01);
        assert_eq!(c1, a1);
        assert!(((c1 - c0) as f64 / w - 0.2).abs() < 0.01);
        // The dot of C sits at 0.9 of A's bar.
        let x = a0 + (0.9 * w).round() as u32;
        assert_eq!(c.pixel(x, 40 + 22 * 2 + 11), Some(BLACK));
    }

    #[test]
    fn interval_chart_draws_the_reference_and_rejects_bad_rows() {
        let rows = [est("A", 0.5, 0.4, 0.6)];
        let with = interval_chart(&rows, "T", Some(0.7)).unwrap();
        let orange = |c: &Canvas| {
            (0..c.width())
                .flat_map(|x| (0..c.height()).map(move |y| (x, y)))
                .filter(|&(x, y)| c.pixel(x, y) == Some(ORANGE))
                .count()
        };
        assert!(orange(&with) > 10);
        assert_eq!(orange(&interval_chart(&rows, "T", None).unwrap()), 0);
        for bad in [
            est("low above value", 0.5, 0.6, 0.7),
            est("value above high", 0.5, 0.1, 0.4),
            est("nan", f64::NAN, 0.1, 0.4),
        ] {
            let err = interval_chart(&[bad], "T", None).unwrap_err();
            assert!(matches!(err, VizError::InvalidInput { .. }), "{err}");
        }
        assert!(interval_chart(&[], "T", None).is_err());
    }

    #[test]
    fn accuracy_chart_plots_each_report_with_its_interval() {
        let report = |wrong: u64| {
            let m = ConfusionMatrix::from_counts(2, vec![50 - wrong, wrong, 0, 50]).unwrap();
            ClassificationReport::new("a", "test", &m, &Default::default()).unwrap()
        };
        let (a, b) = (report(5), report(1));
        let c = accuracy_chart(&[("a".into(), &a), ("b".into(), &b)], 0.95, None).unwrap();
        // Each bar spans its Wilson interval on the shared axis: the ratio of the bars' pixel
        // widths is that of the intervals, and the bars end where the intervals do.
        let (ia, ib) = (
            a.accuracy_interval(0.95).unwrap(),
            b.accuracy_interval(0.95).unwrap(),
        );
        let ((a0, a1), (b0, b1)) = (
            blue_span(&c, 40 + 12).unwrap(),
            blue_span(&c, 40 + 22 + 12).unwrap(),
        );
        let ratio = (b1 - b0) as f64 / (a1 - a0) as f64;
        assert!((ratio - ib.width() / ia.width()).abs() < 0.01, "{ratio}");
        let px_per_point = (a1 - a0) as f64 / (100.0 * ia.width());
        let offset = (b0 as f64 - a0 as f64) / px_per_point;
        assert!(
            (offset - 100.0 * (ib.low - ia.low)).abs() < 0.05,
            "{offset}"
        );
        assert!(accuracy_chart(&[("a".into(), &a)], 1.5, None).is_err());
        assert!(accuracy_chart(&[], 0.95, None).is_err());
    }
}
