//! What permessage-deflate (RFC 7692) would send: each frame's payload deflated and flushed
//! (the trailing `00 00 ff ff` removed), with or without context takeover.

use flate2::{Compress, Compression, FlushCompress};

/// One direction of a permessage-deflate connection.
pub(crate) struct Deflater {
    z: Compress,
    /// Keep the window between messages (context takeover) or start afresh each time.
    takeover: bool,
    out: Vec<u8>,
}

impl Deflater {
    pub(crate) fn new(level: u32, takeover: bool) -> Self {
        Deflater { z: Compress::new(Compression::new(level), false), takeover, out: Vec::with_capacity(64 * 1024) }
    }

    /// The compressed size of one message's payload.
    pub(crate) fn message(&mut self, payload: &[u8]) -> usize {
        if !self.takeover {
            self.z.reset();
        }
        self.out.clear();
        // Deflate grows incompressible data by a few bytes per block at most: one call fits.
        self.out.reserve(payload.len() + 1024);
        let before = self.z.total_in();
        self.z.compress_vec(payload, &mut self.out, FlushCompress::Sync).expect("deflate");
        assert_eq!(self.z.total_in() - before, payload.len() as u64, "the whole message was compressed");
        // RFC 7692 §7.2.1: the sync flush's empty stored block is not sent.
        self.out.len().saturating_sub(4)
    }
}
