//! Human-readable numbers and table layout shared by every renderer.

use std::time::Duration;

use crate::significance::Interval;

/// `s` right-aligned in `width` characters (never truncated).
pub(crate) fn pad_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = " ".repeat(width.saturating_sub(n));
    out.push_str(s);
    out
}

/// `s` left-aligned in `width` characters (never truncated).
pub(crate) fn pad_right(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_string();
    out.push_str(&" ".repeat(width.saturating_sub(n)));
    out
}

/// One GFM table row. Pipes inside cells are escaped so that a model name cannot break the table.
pub(crate) fn md_row<S: AsRef<str>>(cells: &[S]) -> String {
    let mut out = String::from("|");
    for c in cells {
        out.push(' ');
        out.push_str(&c.as_ref().replace('|', "\\|"));
        out.push_str(" |");
    }
    out.push('\n');
    out
}

/// Column alignment in a text table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// An aligned plain-text table, columns separated by two spaces, no trailing whitespace.
pub(crate) fn text_table(headers: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .zip(align)
            .map(|((c, &w), &a)| match a {
                Align::Left => pad_right(c, w),
                Align::Right => pad_left(c, w),
            })
            .collect();
        let mut s = parts.join("  ").trim_end().to_string();
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A byte count with binary units: `512 B`, `1.50 KiB`, `3.25 MiB`, `1.00 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// An integer with thousands separators: `1,234,567`.
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A fraction as a percentage with two decimals: `0.99123` -> `99.12%`.
pub fn format_percent(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

/// An interval of fractions as percentages: `99.44%-99.70%`.
pub fn format_interval(interval: Interval) -> String {
    format!(
        "{}-{}",
        format_percent(interval.low),
        format_percent(interval.high)
    )
}

/// A duration in the unit that keeps 3-4 significant digits: `812 ns`, `12.3 µs`,
/// `1.234 ms`, `2.500 s`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(940_584), "918.54 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 + 256 * 1024), "3.25 MiB");
        assert_eq!(format_bytes(1 << 30), "1.00 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384.00 PiB");
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(235_146), "235,146");
        assert_eq!(format_count(1_234_567), "1,234,567");
    }

    #[test]
    fn percent_and_duration() {
        assert_eq!(format_percent(0.99123), "99.12%");
        assert_eq!(format_percent(1.0), "100.00%");
        let i = Interval {
            low: 0.99436,
            high: 0.997,
        };
        assert_eq!(format_interval(i), "99.44%-99.70%");
        assert_eq!(format_duration(Duration::from_nanos(812)), "812 ns");
        assert_eq!(format_duration(Duration::from_nanos(12_345)), "12.3 µs");
        assert_eq!(format_duration(Duration::from_micros(1234)), "1.234 ms");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.500 s");
    }

    #[test]
    fn tables_align_and_escape() {
        let t = text_table(
            &["name", "n"],
            &[
                vec!["a".into(), "1".into()],
                vec!["µlong".into(), "100".into()],
            ],
            &[Align::Left, Align::Right],
        );
        assert_eq!(t, "name     n\na        1\nµlong  100\n");
        assert_eq!(md_row(&["a|b", "c"]), "| a\\|b | c |\n");
        assert_eq!(pad_left("ab", 1), "ab");
    }
}
