//! VCDIFF (RFC 3284) deltas, as Ably sends them, from the `xdelta3` program (no secondary
//! compression, no application header, no checksum: what `@ably/vcdiff-decoder` reads).

use std::{path::Path, process::Command};

/// The VCDIFF delta from `base` to `target`, or `None` when `xdelta3` is not installed.
pub(crate) fn delta(dir: &Path, base: &str, target: &str) -> Option<Vec<u8>> {
    let (b, t, d) = (dir.join("base"), dir.join("target"), dir.join("delta"));
    std::fs::write(&b, base).ok()?;
    std::fs::write(&t, target).ok()?;
    let ok = Command::new("xdelta3")
        .args(["-e", "-f", "-9", "-S", "none", "-A", "-n", "-s"])
        .arg(&b)
        .arg(&t)
        .arg(&d)
        .status()
        .ok()?
        .success();
    if ok { std::fs::read(&d).ok() } else { None }
}
