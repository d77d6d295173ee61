//! Prints a stream's `data` texts, one per line:
//! `cargo run -p datastream-statusgen --example dump -- <device|weather> <site> <seed> <count> [restamp]`.

use datastream_statusgen::{Kind, StatusStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let kind = if arg(0, "device") == "weather" { Kind::Weather } else { Kind::Device };
    let seed = arg(2, "1").parse().unwrap_or(1);
    let count = arg(3, "10").parse().unwrap_or(10);
    let stream = StatusStream::new(kind, &arg(1, "mrc"), seed).restamp_all(arg(4, "0") == "1");
    for data in stream.take(count) {
        println!("{data}");
    }
}
