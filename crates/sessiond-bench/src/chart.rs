//! The chart: throughput and p99 per endpoint and store, as a PNG.
//!
//! Drawn into a plain RGB buffer and encoded with the `png` crate. Bars and gridlines are
//! rectangles, and the labels use the small bitmap font below: a charting library would want
//! a TrueType font from the system (or a font-rendering stack) for its text, and a chart
//! without numbers is not worth looking at.

use std::path::Path;

use crate::report::{thousands, Report};
use crate::stores::StoreKind;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [30, 30, 30];
const GRID: Rgb = [220, 220, 220];
const MUTED: Rgb = [110, 110, 110];

fn store_colour(k: StoreKind) -> Rgb {
    match k {
        StoreKind::Sqlite => [31, 119, 180],
        StoreKind::Postgres => [255, 127, 14],
        StoreKind::Redis => [214, 39, 40],
    }
}

const PEER_COLOURS: [Rgb; 3] = [[127, 127, 127], [165, 165, 165], [90, 90, 90]];

/// One bar: a value per panel (`None`: not measured).
#[derive(Clone, Debug)]
struct Bar {
    label: Option<String>,
    colour: Rgb,
    rps: Option<f64>,
    p99: Option<f64>,
}

#[derive(Clone, Debug)]
struct Group {
    name: String,
    bars: Vec<Bar>,
    /// Latency only: the probe's rate is set by the bench, not a result.
    latency_only: bool,
}

fn groups(report: &Report) -> Vec<Group> {
    let per_store =
        |name: &str, f: &dyn Fn(&crate::report::StoreFigures) -> Option<(f64, f64)>| Group {
            name: name.to_owned(),
            latency_only: false,
            bars: StoreKind::ALL
                .iter()
                .map(|k| {
                    let v = report.store(*k).done().and_then(f);
                    Bar {
                        label: None,
                        colour: store_colour(*k),
                        rps: v.map(|x| x.0),
                        p99: v.map(|x| x.1),
                    }
                })
                .collect(),
        };
    let mut g = vec![
        per_store("GET /healthz", &|s| {
            Some((s.healthz.rps(), s.healthz.p99()))
        }),
        per_store("GET /api/session", &|s| {
            Some((s.session.rps(), s.session.p99()))
        }),
        per_store("forward-auth", &|s| {
            s.forward_auth.as_ref().ok().map(|r| (r.rps(), r.p99()))
        }),
        per_store("POST /api/login", &|s| {
            Some((s.login.logins.rps(), s.login.logins.p99()))
        }),
        Group {
            latency_only: true,
            ..per_store("verify, idle", &|s| Some((0.0, s.probe_idle.p99_ms)))
        },
        Group {
            latency_only: true,
            ..per_store("queue flood", &|s| Some((0.0, s.probe_queue_flood.p99_ms)))
        },
        Group {
            latency_only: true,
            ..per_store("503 flood", &|s| Some((0.0, s.probe_flood.p99_ms)))
        },
    ];
    let peers: Vec<Bar> = report
        .peers
        .iter()
        .zip(PEER_COLOURS)
        .map(|(p, colour)| {
            let v = p.outcome.done().map(|f| (f.me.rps(), f.me.p99()));
            let short = if p.name.starts_with("Django") {
                "Django"
            } else if p.versus == StoreKind::Redis {
                "tow/R"
            } else {
                "tow/S"
            };
            Bar {
                label: Some(short.to_owned()),
                colour,
                rps: v.map(|x| x.0),
                p99: v.map(|x| x.1),
            }
        })
        .collect();
    if !peers.is_empty() {
        g.push(Group {
            name: "peers GET /me".into(),
            bars: peers,
            latency_only: false,
        });
    }
    g
}

/// Renders the chart of `report` to `path`.
pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, render(report)?)?;
    Ok(())
}

/// The chart as PNG bytes.
pub fn render(report: &Report) -> anyhow::Result<Vec<u8>> {
    let groups = groups(report);
    let mut c = Canvas::new(1400, 900);
    c.text(
        30,
        16,
        "sessiond benchmark: one run, per endpoint and store",
        3,
        BLACK,
    );
    let sub = format!(
        "{} cores, {}  -  log scales, numbers in BENCHMARKS.md",
        report.machine.cores, report.machine.date
    );
    c.text(30, 46, &sub, 2, MUTED);
    // Legend.
    let mut x = 30;
    for k in StoreKind::ALL {
        c.fill(x, 76, 18, 18, store_colour(k));
        c.text(x + 24, 78, k.label(), 2, BLACK);
        x += 24 + text_width(k.label(), 2) + 30;
    }
    c.fill(x, 76, 18, 18, PEER_COLOURS[0]);
    c.text(x + 24, 78, "peers", 2, BLACK);
    let throughput: Vec<Group> = groups.iter().filter(|g| !g.latency_only).cloned().collect();
    panel(
        &mut c,
        &throughput,
        110,
        380,
        "requests/s (higher is better)",
        |b| b.rps,
        thousands,
    );
    panel(
        &mut c,
        &groups,
        510,
        380,
        "p99 latency, ms (lower is better; the last three: the fixed-rate verify probe)",
        |b| b.p99,
        short_ms,
    );
    c.png()
}

fn short_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One panel: a log-scale bar chart of `value` over the groups, in the band `top..top+height`.
fn panel(
    c: &mut Canvas,
    groups: &[Group],
    top: usize,
    height: usize,
    title: &str,
    value: impl Fn(&Bar) -> Option<f64>,
    label: impl Fn(f64) -> String,
) {
    let (left, right) = (90usize, c.width - 20);
    let plot_top = top + 30;
    let plot_bottom = top + height - 40;
    c.text(left, top + 4, title, 2, BLACK);
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.bars.iter().filter_map(&value))
        .filter(|v| *v > 0.0)
        .collect();
    if values.is_empty() {
        c.text(left, plot_top + 40, "no figures", 2, MUTED);
        return;
    }
    let lo = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = values
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let span = (plot_bottom - plot_top) as f64;
    let y_of = |v: f64| -> usize {
        let f = ((v.max(1e-9).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
        plot_bottom - (f * span).round() as usize
    };
    // Decade gridlines with their labels.
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = y_of(10f64.powf(d));
        c.fill(left, y, right - left, 1, GRID);
        let text = decade_label(d);
        c.text(
            left - 10 - text_width(&text, 2),
            y.saturating_sub(7),
            &text,
            2,
            MUTED,
        );
        d += 1.0;
    }
    c.fill(left, plot_bottom, right - left, 2, BLACK);
    let n_bars: usize = groups.iter().map(|g| g.bars.len()).sum();
    let gap = 24usize;
    let bar_w = ((right - left - gap * (groups.len() + 1)) / n_bars.max(1)).min(70);
    let mut x = left + gap;
    for g in groups {
        let group_w = bar_w * g.bars.len();
        // Large when it fits under its bars, else small.
        let scale = if text_width(&g.name, 2) <= group_w + gap - 8 {
            2
        } else {
            1
        };
        let name_w = text_width(&g.name, scale);
        c.text(
            (x + group_w / 2).saturating_sub(name_w / 2),
            plot_bottom + 22,
            &g.name,
            scale,
            BLACK,
        );
        for b in &g.bars {
            match value(b) {
                Some(v) if v > 0.0 => {
                    let y = y_of(v);
                    c.fill(x + 2, y, bar_w - 4, plot_bottom - y, b.colour);
                    let t = label(v);
                    let tw = text_width(&t, 1);
                    c.text(
                        x + bar_w / 2 - tw.min(bar_w) / 2,
                        y.saturating_sub(10),
                        &t,
                        1,
                        BLACK,
                    );
                }
                _ => {
                    let tw = text_width("n/a", 1);
                    c.text(x + bar_w / 2 - tw / 2, plot_bottom - 10, "n/a", 1, MUTED);
                }
            }
            if let Some(l) = &b.label {
                let tw = text_width(l, 1);
                c.text(
                    x + bar_w / 2 - tw.min(bar_w) / 2,
                    plot_bottom + 6,
                    l,
                    1,
                    MUTED,
                );
            }
            x += bar_w;
        }
        x += gap;
    }
}

fn decade_label(d: f64) -> String {
    let v = 10f64.powf(d);
    if v >= 1e6 {
        format!("{}M", (v / 1e6).round())
    } else if v >= 1e3 {
        format!("{}k", (v / 1e3).round())
    } else if v >= 1.0 {
        format!("{}", v.round())
    } else {
        format!("{v}")
    }
}

/// An RGB image being drawn.
struct Canvas {
    width: usize,
    height: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            px: WHITE.repeat(width * height),
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: Rgb) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                let i = (yy * self.width + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Draws `s` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, colour: Rgb) {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        self.fill(cx + col * scale, y + r * scale, scale, scale, colour);
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(
                &mut out,
                u32::try_from(self.width)?,
                u32::try_from(self.height)?,
            );
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            w.write_image_data(&self.px)?;
        }
        Ok(out)
    }
}

fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * 6 * scale
}

fn glyph(c: char) -> [u8; 9] {
    FONT.iter().find(|(k, _)| *k == c).map_or(
        [
            0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0, 0,
        ],
        |(_, g)| *g,
    )
}

/// A 5×7 bitmap font with two rows of descenders (rows top to bottom; bit 4 is the leftmost
/// pixel).
#[rustfmt::skip]
const FONT: &[(char, [u8; 9])] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000]),
    (';', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000, 0b00000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000, 0b00000]),
    ('<', [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000]),
    ('>', [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000]),
    ('|', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('×', [0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000]),
    ('÷', [0b00000, 0b00100, 0b00000, 0b11111, 0b00000, 0b00100, 0b00000, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000]),
    ('\'', [0b01100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_font_covers_what_the_chart_writes() {
        for c in
            "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz./-,:;()%×÷_".chars()
        {
            assert!(FONT.iter().any(|(k, _)| *k == c), "{c:?}");
        }
        assert_eq!(decade_label(3.0), "1k");
        assert_eq!(decade_label(-1.0), "0.1");
    }
}
