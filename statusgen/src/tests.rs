use super::*;

#[test]
fn numbers_print_as_python_prints_rounded_floats() {
    let f = |u, d| {
        let mut s = String::new();
        push_fixed(&mut s, u, d);
        s
    };
    assert_eq!(f(1_068_432, 5), "10.68432");
    assert_eq!(f(-120, 1), "-12.0");
    assert_eq!(f(1000, 1), "100.0");
    assert_eq!(f(125_000, 4), "12.5");
    assert_eq!(f(-5, 3), "-0.005");
    assert_eq!(f(0, 2), "0.0");
    assert_eq!(parse_fixed("-119.681", 4), -1_196_810);
    assert_eq!(parse_fixed("0.0042", 4), 42);
}

#[test]
fn strings_are_escaped_as_python_does() {
    let mut s = String::new();
    push_str(&mut s, "a\"b\\c\u{e9}\n");
    assert_eq!(s, r#""a\"b\\c\u00e9\n""#);
}

#[test]
fn publications_are_valid_json_of_the_status_shape() {
    let mut s = StatusStream::device("mrc", 7);
    for _ in 0..50 {
        let data = s.next_data();
        let v: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
        assert_eq!(v["statusType"], "device");
        assert_eq!(v["site"], "mrc");
        let leaf = &v["status"]["mount"]["mount1"]["right_ascension"];
        assert!(leaf["val"].is_f64() && leaf["timestamp"].is_i64());
        let p = StatusStream::publication("mrc", &data);
        let p: serde_json::Value = serde_json::from_str(&p).expect("valid JSON");
        assert_eq!(p["topic"], TOPIC);
        assert_eq!(p["data"], v);
    }
}

#[test]
fn the_device_status_is_large_and_changes_a_few_dozen_leaves() {
    let mut s = StatusStream::device("mrc", 1);
    let first = s.next_data();
    assert!(s.leaves() > 250, "{} leaves", s.leaves());
    assert!((15_000..40_000).contains(&first.len()), "{} bytes", first.len());
    let mut changed = Vec::new();
    for _ in 0..500 {
        s.next_data();
        changed.push(s.changed());
    }
    changed.sort_unstable();
    let median = changed[changed.len() / 2];
    assert!((5..60).contains(&median), "median {median} leaves changed");
}

#[test]
fn only_changed_leaves_get_a_new_timestamp_unless_restamped() {
    let count = |data: &str, ts: i64| data.matches(&format!("\"timestamp\": {ts}}}")).count();
    let mut s = StatusStream::weather("mrc", 3);
    s.next_data();
    let second = s.next_data();
    let v: serde_json::Value = serde_json::from_str(&second).expect("valid JSON");
    let now =
        v["status"]["observing_conditions"]["observing_conditions1"]["wind_m_s"]["timestamp"].as_i64().expect("ts");
    assert_eq!(count(&second, now), s.changed());
    let mut r = StatusStream::weather("mrc", 3).restamp_all(true);
    r.next_data();
    let second = r.next_data();
    assert_eq!(count(&second, now), r.leaves());
}

#[test]
fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
    let a: Vec<String> = StatusStream::device("mrc", 5).take(20).collect();
    let b: Vec<String> = StatusStream::device("mrc", 5).take(20).collect();
    let c: Vec<String> = StatusStream::device("mrc", 6).take(20).collect();
    assert_eq!(a, b);
    assert_ne!(a[5], c[5]);
}

/// `digests.txt` (shared with the JavaScript twin's test): `<kind> <site> <seed> <restamp>
/// <count> <fnv1a32 hex> <total bytes>` per line.
#[test]
fn streams_match_the_recorded_digests() {
    let file = include_str!("../digests.txt");
    let mut checked = 0;
    for line in file.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let kind = if f[0] == "device" { Kind::Device } else { Kind::Weather };
        let seed: u32 = f[2].parse().expect("seed");
        let n: usize = f[4].parse().expect("count");
        let texts: Vec<String> = StatusStream::new(kind, f[1], seed).restamp_all(f[3] == "1").take(n).collect();
        let total: usize = texts.iter().map(String::len).sum();
        assert_eq!(
            format!("{:08x} {total}", digest(texts.iter().map(String::as_str))),
            format!("{} {}", f[5], f[6]),
            "{line}"
        );
        checked += 1;
    }
    assert!(checked >= 3);
}
