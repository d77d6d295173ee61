//! Property tests for the client-frame decoders: no input, however malformed, makes them panic,
//! and every well-formed frame decodes to what was encoded. Bounded: a fixed number of cases.

use datastream_protocol::{
    legacy::LegacyClientFrame,
    v2::{ClientFrame, LatestWanted, StreamPosition},
};
use proptest::prelude::*;

/// JSON-ish text built from the pieces real frames are made of, so mutations reach deep into the
/// decoder rather than failing at the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just(r#""type""#.to_owned()),
        Just(r#""subscribe""#.to_owned()),
        Just(r#""unsubscribe""#.to_owned()),
        Just(r#""site""#.to_owned()),
        Just(r#""topics""#.to_owned()),
        Just(r#""recover""#.to_owned()),
        Just(r#""epoch""#.to_owned()),
        Just(r#""offset""#.to_owned()),
        Just(r#""rewind""#.to_owned()),
        Just(r#""id""#.to_owned()),
        Just(r#""action""#.to_owned()),
        Just(r#""updatesubscribersite""#.to_owned()),
        Just("null".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("1e999".to_owned()),
        Just(r#""\ud800""#.to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
        any::<String>(),
    ];
    prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn v2_decoder_never_panics(text in jsonish()) {
        let _ = ClientFrame::parse(&text);
    }

    #[test]
    fn v2_decoder_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = ClientFrame::parse(&text);
    }

    #[test]
    fn legacy_decoder_never_panics(text in jsonish()) {
        let _ = LegacyClientFrame::parse(&text);
    }

    #[test]
    fn subscribe_round_trips(
        id in proptest::option::of(any::<u64>()),
        site in "[a-z0-9]{1,10}",
        topics in prop::collection::vec("[a-z_]{1,10}", 0..4),
        recover in proptest::option::of(("[0-9a-f]{16}", any::<u64>())),
        rewind in proptest::option::of(any::<u32>()),
        latest in prop_oneof![
            Just(LatestWanted::No),
            Just(LatestWanted::Unseen),
            prop::collection::vec("[a-z_]{1,10}", 0..3).prop_map(LatestWanted::Topics),
        ],
        delta in proptest::option::of("[a-z]{1,8}"),
    ) {
        let frame = ClientFrame::Subscribe {
            id,
            site,
            topics,
            recover: recover.map(|(epoch, offset)| StreamPosition { epoch, offset }),
            rewind,
            latest,
            delta,
        };
        let text = serde_json::to_string(&frame).expect("encode");
        prop_assert_eq!(ClientFrame::parse(&text).expect("decode"), frame);
    }
}
