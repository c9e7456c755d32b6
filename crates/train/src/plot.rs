//! A loss curve as a small standalone SVG.

use std::fmt::Write;

/// An SVG line plot of `(step, loss)` points.
pub fn loss_svg(points: &[(u64, f32)], title: &str) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" text-anchor="middle">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    if points.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let (x0, x1) = (
        points[0].0 as f64,
        // invariant: points is not empty (returned above).
        points.last().unwrap().0.max(points[0].0 + 1) as f64,
    );
    let finite: Vec<f64> = points
        .iter()
        .map(|p| p.1 as f64)
        .filter(|v| v.is_finite())
        .collect();
    let lo = finite.iter().cloned().fold(f64::MAX, f64::min);
    let hi = finite
        .iter()
        .cloned()
        .fold(f64::MIN, f64::max)
        .max(lo + 1e-6);
    let px = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let py = |y: f64| h - pad - (y - lo) / (hi - lo) * (h - 2.0 * pad);
    let _ = write!(
        s,
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - pad,
        h - pad
    );
    let _ = write!(
        s,
        r#"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad
    );
    for (v, y) in [(hi, pad), (lo, h - pad)] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.3}</text>"#,
            pad - 4.0,
            y + 4.0
        );
    }
    for (v, x) in [(x0, pad), (x1, w - pad)] {
        let _ = write!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{v}</text>"#,
            h - pad + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        w / 2.0,
        h - 8.0
    );
    let pts: Vec<String> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|p| format!("{:.1},{:.1}", px(p.0 as f64), py(p.1 as f64)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/></svg>"#,
        pts.join(" ")
    );
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
