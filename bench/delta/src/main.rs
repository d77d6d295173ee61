//! `deltabench`: delta encodings of status publications, measured on the streams of
//! `datastream-statusgen` — the relay's side of the delta delivery decision.
//!
//! For each stream (device status, weather status, and device status with every leaf restamped on
//! every publication), each publication is encoded against the one before it, and the benchmark
//! reports per publication: the bytes a viewer receives (the whole v2 frame), the relay's CPU time
//! to compute the encoding (once per publication; release build, best of several rounds per
//! publication), and whether applying it gives back the published text byte for byte. Candidates:
//!
//! - Fossil delta (Centrifugo's), from the `fossil-delta` crate, sent as a JSON string;
//! - JSON merge patch (RFC 7386) computed on parsed values ([`merge`]);
//! - VCDIFF (Ably's), from the `xdelta3` program when it is installed ([`vcdiff`]), base64;
//! - permessage-deflate (RFC 7692) on the full frames, without and with context takeover
//!   ([`deflate`]), and on the Fossil frames: what compression alone, or with deltas, would save.
//!
//! `--out DIR` also writes each stream with its encodings as JSON, for the browser half
//! (`bench/delta/apply.mjs`), which measures applying them in Chromium.
//!
//!   deltabench [--count 500] [--rounds 5] [--seed 1] [--site mrc] [--out DIR] [--vcdiff on|off]

mod deflate;
mod merge;
mod vcdiff;

use std::{hint::black_box, path::PathBuf, time::Instant};

use anyhow::Context as _;
use base64::Engine as _;
use datastream_statusgen::{Kind, StatusStream};
use serde_json::{Value, json};

/// A v2 epoch as the relay writes it.
const EPOCH: &str = "9f3c0b7e2a1d4c55";

/// Delta encodings measured on statusgen's streams: sizes, relay CPU, correctness.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Publications per stream after the first.
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// Timing rounds (the best is kept).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The streams' seed.
    #[arg(long, default_value_t = 1)]
    seed: u32,
    /// The site the streams are published for.
    #[arg(long, default_value = "mrc")]
    site: String,
    /// Directory for the deltas the browser half applies.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Whether to run `xdelta3` (slow: one process per delta).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    vcdiff: String,
}

/// The v2 `pub` frame up to (not including) its payload field.
fn head(site: &str, offset: u64) -> String {
    format!(r#"{{"type":"pub","site":"{site}","topic":"sitestatus","epoch":"{EPOCH}","offset":{offset}"#)
}

/// The frame a full publication travels in today.
fn full_frame(site: &str, offset: u64, data: &str) -> String {
    format!(r#"{},"data":{data}}}"#, head(site, offset))
}

/// The proposed delta frame: the slot's key, the base publication's offset, and the encoding.
fn delta_frame(site: &str, offset: u64, key: &str, base: u64, field: &str, payload: &str) -> String {
    format!(r#"{},"key":"{key}","base":{base},"{field}":{payload}}}"#, head(site, offset))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The best of `rounds` timings of each item, in microseconds.
fn time_each(n: usize, rounds: usize, mut f: impl FnMut(usize)) -> Vec<f64> {
    let mut best = vec![f64::MAX; n];
    for _ in 0..rounds {
        for (i, b) in best.iter_mut().enumerate() {
            let t = Instant::now();
            f(i);
            *b = b.min(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    best
}

fn mean<T: Copy + Into<f64>>(v: &[T]) -> f64 {
    v.iter().map(|&x| x.into()).sum::<f64>() / v.len().max(1) as f64
}

fn p95<T: Copy + Into<f64>>(v: &[T]) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|&x| x.into()).collect();
    s.sort_by(f64::total_cmp);
    s.get((s.len() * 95).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0.0)
}

fn sizes_u32(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&x| u32::try_from(x).unwrap_or(u32::MAX)).collect()
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    name: &'static str,
    bytes: Vec<usize>,
    /// Relay CPU per publication (µs), when measured.
    cpu: Option<Vec<f64>>,
    /// How the receiver gets the published text back.
    exact: &'static str,
    /// Publications this encoding could not carry (sent in full instead).
    fallbacks: usize,
}

fn print_table(title: &str, full_mean: f64, rows: &[Row]) {
    println!("\n### {title}\n");
    println!(
        "| encoding | mean bytes | p95 bytes | full / mean | relay CPU mean µs | p95 µs | applying gives | sent in full |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|");
    for r in rows {
        let b = sizes_u32(&r.bytes);
        let (cm, cp) = match &r.cpu {
            Some(c) => (format!("{:.1}", mean(c)), format!("{:.1}", p95(c))),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.1}× | {cm} | {cp} | {} | {} |",
            r.name,
            mean(&b),
            p95(&b),
            full_mean / mean(&b),
            r.exact,
            r.fallbacks
        );
    }
}

struct Measured {
    rows: Vec<Row>,
    export: Value,
    summary: Value,
}

fn measure(args: &Args, title: &str, kind: Kind, restamp: bool, dir: &std::path::Path) -> anyhow::Result<Measured> {
    let key = kind.status_type();
    let site = args.site.as_str();
    let mut stream = StatusStream::new(kind, site, args.seed).restamp_all(restamp);
    let texts: Vec<String> = (0..=args.count).map(|_| stream.next_data()).collect();
    let n = args.count;
    // Publication i (1..=n) at offset 1000 + 3i: other topics' publications fall in between.
    let offset = |i: usize| 1000 + 3 * i as u64;
    let full: Vec<String> = (1..=n).map(|i| full_frame(site, offset(i), &texts[i])).collect();
    let full_bytes: Vec<usize> = full.iter().map(String::len).collect();
    let mut rows = vec![Row {
        name: "full publication (today)",
        bytes: full_bytes.clone(),
        cpu: None,
        exact: "the text",
        fallbacks: 0,
    }];

    // Fossil.
    let fossil: Vec<String> = (1..=n)
        .map(|i| {
            // The crate's `delta(target, source)`: the delta that turns `source` into `target`.
            let d = fossil_delta::delta(&texts[i], &texts[i - 1]);
            let back = fossil_delta::apply(&texts[i - 1], &d).map_err(|e| anyhow::anyhow!("fossil apply: {e:?}"))?;
            anyhow::ensure!(back == texts[i].as_bytes(), "fossil: publication {i} not reproduced");
            String::from_utf8(d).context("an ASCII text's Fossil delta is ASCII")
        })
        .collect::<anyhow::Result<_>>()?;
    let fossil_frames: Vec<String> = (1..=n)
        .map(|i| delta_frame(site, offset(i), key, offset(i - 1), "delta", &json_string(&fossil[i - 1])))
        .collect();
    let fossil_cpu = time_each(n, args.rounds, |i| {
        black_box(fossil_delta::delta(black_box(&texts[i + 1]), black_box(&texts[i])));
    });
    let fossil_apply = time_each(n, args.rounds, |i| {
        black_box(fossil_delta::apply(black_box(&texts[i]), black_box(&fossil[i])).ok());
    });
    rows.push(Row {
        name: "Fossil delta",
        bytes: fossil_frames.iter().map(String::len).collect(),
        cpu: Some(fossil_cpu.clone()),
        exact: "the text (checksum verified)",
        fallbacks: 0,
    });

    // JSON merge patch: the relay keeps the slot's previous publication parsed; per publication
    // it parses the new one, diffs and writes the patch.
    let values: Vec<Value> = texts.iter().map(|t| serde_json::from_str(t)).collect::<Result<_, _>>()?;
    let mut merge_fallbacks = 0;
    let patches: Vec<String> = (1..=n)
        .map(|i| {
            let p = merge::diff(&values[i - 1], &values[i]).unwrap_or_else(|| json!({}));
            if merge::apply(&values[i - 1], &p) == values[i] {
                p.to_string()
            } else {
                merge_fallbacks += 1;
                String::new()
            }
        })
        .collect();
    let merge_bytes: Vec<usize> = (1..=n)
        .map(|i| match patches[i - 1].as_str() {
            "" => full_bytes[i - 1],
            p => delta_frame(site, offset(i), key, offset(i - 1), "patch", p).len(),
        })
        .collect();
    let merge_cpu = time_each(n, args.rounds, |i| {
        let cur: Value = serde_json::from_str(black_box(&texts[i + 1])).expect("valid JSON");
        black_box(merge::diff(&values[i], &cur).map(|p| p.to_string()));
    });
    rows.push(Row {
        name: "JSON merge patch",
        bytes: merge_bytes,
        cpu: Some(merge_cpu.clone()),
        exact: "equal values, not the text",
        fallbacks: merge_fallbacks,
    });

    // VCDIFF through xdelta3, when installed.
    let vc_dir = dir.join(format!("vcdiff-{key}-{restamp}"));
    std::fs::create_dir_all(&vc_dir)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let vcdiff: Option<Vec<String>> = if args.vcdiff == "on" {
        (1..=n).map(|i| vcdiff::delta(&vc_dir, &texts[i - 1], &texts[i]).map(|d| b64.encode(d))).collect()
    } else {
        None
    };
    if let Some(v) = &vcdiff {
        rows.push(Row {
            name: "VCDIFF (xdelta3 -9), base64",
            bytes: (1..=n)
                .map(|i| delta_frame(site, offset(i), key, offset(i - 1), "vcdiff", &json_string(&v[i - 1])).len())
                .collect(),
            cpu: None,
            exact: "the text",
            fallbacks: 0,
        });
    }

    // permessage-deflate: the relay compresses per connection, so this CPU is per delivery.
    for (name, level, takeover) in [
        ("permessage-deflate, no context takeover (per delivery)", 6, false),
        ("permessage-deflate, context takeover (per delivery)", 6, true),
    ] {
        let mut z = deflate::Deflater::new(level, takeover);
        let bytes: Vec<usize> = full.iter().map(|f| z.message(f.as_bytes())).collect();
        // Each round replays the stream through a fresh compressor (the window depends on what
        // went before).
        let mut best = vec![f64::MAX; n];
        for _ in 0..args.rounds {
            let mut z = deflate::Deflater::new(level, takeover);
            let round = time_each(n, 1, |i| {
                black_box(z.message(full[i].as_bytes()));
            });
            best.iter_mut().zip(round).for_each(|(b, r)| *b = b.min(r));
        }
        let cpu = best;
        rows.push(Row { name, bytes, cpu: Some(cpu), exact: "the text", fallbacks: 0 });
    }
    for (name, takeover) in [
        ("Fossil delta + permessage-deflate, no context takeover (could be compressed once, shared)", false),
        ("Fossil delta + permessage-deflate, context takeover", true),
    ] {
        let mut z = deflate::Deflater::new(6, takeover);
        let bytes: Vec<usize> = fossil_frames.iter().map(|f| z.message(f.as_bytes())).collect();
        rows.push(Row { name, bytes, cpu: None, exact: "the text", fallbacks: 0 });
    }

    print_table(title, mean(&sizes_u32(&full_bytes)), &rows);
    let ratios: Vec<f64> = (0..n).map(|i| fossil_frames[i].len() as f64 / full_bytes[i] as f64).collect();
    let changed = {
        let mut g = StatusStream::new(kind, site, args.seed).restamp_all(restamp);
        g.next_data();
        (0..n)
            .map(|_| {
                g.next_data();
                g.changed()
            })
            .collect::<Vec<_>>()
    };
    println!(
        "\n{} leaves; leaves changed per publication: mean {:.1}, p95 {:.0}, max {}. Fossil frame / full frame: mean {:.1} %, p95 {:.1} %, max {:.1} % ({} of {} over 25 %, {} over 50 %). Relay applying a Fossil delta (reference for a wasm applier): mean {:.1} µs.",
        stream.leaves(),
        mean(&sizes_u32(&changed)),
        p95(&sizes_u32(&changed)),
        changed.iter().max().copied().unwrap_or(0),
        100.0 * mean(&ratios),
        100.0 * p95(&ratios),
        100.0 * ratios.iter().copied().fold(0.0, f64::max),
        ratios.iter().filter(|&&r| r > 0.25).count(),
        n,
        ratios.iter().filter(|&&r| r > 0.5).count(),
        mean(&fossil_apply),
    );
    let summary = json!({
        "stream": title,
        "leaves": stream.leaves(),
        "rows": rows.iter().map(|r| json!({
            "encoding": r.name,
            "mean_bytes": mean(&sizes_u32(&r.bytes)),
            "p95_bytes": p95(&sizes_u32(&r.bytes)),
            "cpu_mean_us": r.cpu.as_ref().map(|c| mean(c)),
            "cpu_p95_us": r.cpu.as_ref().map(|c| p95(c)),
            "fallbacks": r.fallbacks,
        })).collect::<Vec<_>>(),
    });
    let export = json!({
        "stream": title,
        "texts": texts,
        "fossil": fossil,
        "patches": patches,
        "vcdiff": vcdiff,
        "full_frames_mean": mean(&sizes_u32(&full_bytes)),
    });
    Ok(Measured { rows, export, summary })
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let tmp = std::env::temp_dir().join(format!("deltabench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    println!(
        "{} publications per stream after the first, site {}, seed {}; bytes are whole v2 frames; CPU best of {} rounds per publication.",
        args.count, args.site, args.seed, args.rounds
    );
    let mut summaries = Vec::new();
    for (file, title, kind, restamp) in [
        ("device", "device status", Kind::Device, false),
        ("weather", "weather status", Kind::Weather, false),
        ("device-restamped", "device status, every leaf restamped on every publication", Kind::Device, true),
    ] {
        let m = measure(&args, title, kind, restamp, &tmp)?;
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join(format!("{file}.json")), m.export.to_string())?;
        }
        drop(m.rows);
        summaries.push(m.summary);
    }
    if let Some(out) = &args.out {
        std::fs::write(out.join("summary.json"), Value::Array(summaries).to_string())?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
