//! The byte layout of segment headers, frames and commit markers (see the crate docs):
//! encoding, decoding and checksums, and nothing else.

use crate::limits::{
    frame_bytes, FRAME_HEADER_BYTES, MARKER_BODY_BYTES, SEGMENT_BYTES_ALIGN, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES,
};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"WEIRLOG1";
/// Version of the layout described in the crate docs.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// First bytes of every commit marker's body; recovery searches for them.
pub(crate) const MARKER_MAGIC: [u8; 8] = *b"WEIRCMIT";
/// The frame kind reserved for commit markers; callers use `0..=KIND_MAX`.
pub const MARKER_KIND: u8 = 0xFF;
/// The largest kind a caller may give `Log::append`.
pub const KIND_MAX: u8 = MARKER_KIND - 1;
/// Marker flag: this marker seals its segment; the log continues in the next one.
const MARKER_FLAG_SEAL: u32 = 1;

const HEADER_LEN: usize = SEGMENT_HEADER_BYTES as usize;
const FRAME_HEADER_LEN: usize = FRAME_HEADER_BYTES as usize;
/// Offset of the header CRC; the CRC covers the bytes before it.
const HEADER_CRC_AT: usize = HEADER_LEN - 4;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The first 64 bytes of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The segment's sequence number (also its file name).
    pub seq: u32,
    /// The file's size: every segment is zero-filled to its full size before use.
    pub segment_bytes: u64,
    /// Final committed length of the previous segment; `u64::MAX` for the first segment.
    pub prev_len: u64,
    /// Round number the first commit marker in this segment carries.
    pub round_first: u64,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.round_first.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header; the error says what is wrong with it.
    pub(crate) fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!(
                "segment header is {} bytes, want {HEADER_LEN}",
                b.len()
            ));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("segment header has no WEIRLOG1 magic".into());
        }
        let crc = u32_at(b, HEADER_CRC_AT);
        if crc != crc32fast::hash(&b[..HEADER_CRC_AT]) {
            return Err("segment header CRC mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "segment format version {version}, this build reads {FORMAT_VERSION}"
            ));
        }
        let header = SegmentHeader {
            seq: u32_at(b, 12),
            segment_bytes: u64_at(b, 16),
            prev_len: u64_at(b, 24),
            round_first: u64_at(b, 32),
        };
        if let Some(detail) = segment_bytes_invalid(header.segment_bytes) {
            return Err(format!("segment header: {detail}"));
        }
        if header.round_first == 0 {
            return Err("segment header: round_first is 0".into());
        }
        Ok(header)
    }
}

/// Why `segment_bytes` cannot be a segment size, if it cannot.
pub(crate) fn segment_bytes_invalid(segment_bytes: u64) -> Option<String> {
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
        return Some(format!(
            "segment_bytes {segment_bytes} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}"
        ));
    }
    if segment_bytes % SEGMENT_BYTES_ALIGN != 0 {
        return Some(format!(
            "segment_bytes {segment_bytes} is not a multiple of {SEGMENT_BYTES_ALIGN}"
        ));
    }
    None
}

/// A decoded frame header whose fields are self-consistent; the CRC is not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub body_len: u32,
    pub crc: u32,
    pub kind: u8,
    pub meta_len: u32,
}

impl FrameHeader {
    /// Decodes the 16 bytes at the start of `b`. `None` for an all-zero header (never written),
    /// nonzero reserved bytes or `meta_len > body_len`.
    pub(crate) fn decode(b: &[u8]) -> Option<FrameHeader> {
        let h = &b[..FRAME_HEADER_LEN];
        if h.iter().all(|&x| x == 0) || h[9..12] != [0, 0, 0] {
            return None;
        }
        let header = FrameHeader {
            body_len: u32_at(h, 0),
            crc: u32_at(h, 4),
            kind: h[8],
            meta_len: u32_at(h, 12),
        };
        (header.meta_len <= header.body_len).then_some(header)
    }

    /// Bytes the whole frame takes, padding included.
    pub(crate) fn frame_len(&self) -> u64 {
        frame_bytes(u64::from(self.body_len))
    }
}

/// The frame checksum: binds the header and body to the segment and offset they were written
/// at, so a stale frame copied elsewhere never validates.
pub(crate) fn frame_crc(seq: u32, off: u32, header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&off.to_le_bytes());
    h.update(&header[0..4]);
    h.update(&header[8..FRAME_HEADER_LEN]);
    h.update(body);
    h.finalize()
}

/// Checks a frame whose header is `header` and whose body is `body` (exactly `body_len` bytes).
pub(crate) fn frame_valid(
    seq: u32,
    off: u32,
    header_bytes: &[u8],
    header: &FrameHeader,
    body: &[u8],
) -> bool {
    debug_assert_eq!(body.len(), header.body_len as usize);
    header.crc == frame_crc(seq, off, header_bytes, body)
}

/// Appends one frame at segment offset `off` to `buf` (the header, meta, payload and zero
/// padding) and returns its CRC.
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    seq: u32,
    off: u32,
    kind: u8,
    meta: &[u8],
    payload: &[u8],
) -> u32 {
    let body_len = meta.len() + payload.len();
    let at = buf.len();
    let len = frame_bytes(body_len as u64) as usize;
    buf.reserve(len);
    buf.extend_from_slice(
        &u32::try_from(body_len)
            .expect("body fits in u32")
            .to_le_bytes(),
    );
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(
        &u32::try_from(meta.len())
            .expect("meta fits in u32")
            .to_le_bytes(),
    );
    buf.extend_from_slice(meta);
    buf.extend_from_slice(payload);
    let crc = {
        let (header, body) = buf[at..].split_at(FRAME_HEADER_LEN);
        frame_crc(seq, off, header, body)
    };
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    buf.resize(at + len, 0);
    crc
}

/// The body of a commit marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Strictly increasing by one from marker to marker across the whole log.
    pub round: u64,
    /// Segment offset where this round's part (its first frame) began.
    pub start: u32,
    /// How many frames the part holds before this marker.
    pub frames: u32,
    /// CRC32 over the little-endian CRCs of those frames, in order: binds the marker to exactly
    /// the frames of its own round.
    pub chain: u32,
    /// This marker ends the segment; the log continues in the next one.
    pub seal: bool,
}

impl Marker {
    pub(crate) fn encode(&self) -> [u8; MARKER_BODY_BYTES as usize] {
        let mut b = [0u8; MARKER_BODY_BYTES as usize];
        b[0..8].copy_from_slice(&MARKER_MAGIC);
        b[8..16].copy_from_slice(&self.round.to_le_bytes());
        b[16..20].copy_from_slice(&self.start.to_le_bytes());
        b[20..24].copy_from_slice(&self.frames.to_le_bytes());
        b[24..28].copy_from_slice(&self.chain.to_le_bytes());
        let flags = if self.seal { MARKER_FLAG_SEAL } else { 0 };
        b[28..32].copy_from_slice(&flags.to_le_bytes());
        b
    }

    /// Decodes the body of a CRC-valid marker frame; `None` if it is not shaped like one.
    pub(crate) fn decode(header: &FrameHeader, body: &[u8]) -> Option<Marker> {
        if header.kind != MARKER_KIND
            || header.meta_len != 0
            || u64::from(header.body_len) != MARKER_BODY_BYTES
            || body[0..8] != MARKER_MAGIC
        {
            return None;
        }
        let flags = u32_at(body, 28);
        if flags & !MARKER_FLAG_SEAL != 0 {
            return None;
        }
        Some(Marker {
            round: u64_at(body, 8),
            start: u32_at(body, 16),
            frames: u32_at(body, 20),
            chain: u32_at(body, 24),
            seal: flags & MARKER_FLAG_SEAL != 0,
        })
    }
}

/// Offset of the marker magic inside a marker frame.
pub(crate) const MARKER_MAGIC_AT: usize = FRAME_HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MARKER_FRAME_BYTES;

    #[test]
    fn segment_header_round_trips_and_rejects_any_flipped_bit() {
        let header = SegmentHeader {
            seq: 7,
            segment_bytes: 64 << 10,
            prev_len: 1234,
            round_first: 99,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&b).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn frame_round_trips_and_is_bound_to_its_segment_and_offset() {
        let mut buf = Vec::new();
        let crc = encode_frame(&mut buf, 3, 64, 7, b"meta", b"payload!");
        assert_eq!(buf.len(), 32);
        let header = FrameHeader::decode(&buf).expect("header");
        assert_eq!(
            header,
            FrameHeader {
                body_len: 12,
                crc,
                kind: 7,
                meta_len: 4
            }
        );
        let body = &buf[16..28];
        assert!(frame_valid(3, 64, &buf, &header, body));
        assert!(!frame_valid(4, 64, &buf, &header, body), "another segment");
        assert!(!frame_valid(3, 72, &buf, &header, body), "another offset");
        for bit in 0..28 * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let ok = FrameHeader::decode(&b)
                .is_some_and(|h| h.body_len == 12 && frame_valid(3, 64, &b, &h, &b[16..28]));
            assert!(!ok, "bit {bit}");
        }
    }

    #[test]
    fn marker_round_trips() {
        let marker = Marker {
            round: 5,
            start: 64,
            frames: 3,
            chain: 0xdead_beef,
            seal: true,
        };
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 200, MARKER_KIND, &[], &marker.encode());
        assert_eq!(buf.len() as u64, MARKER_FRAME_BYTES);
        assert_eq!(&buf[MARKER_MAGIC_AT..MARKER_MAGIC_AT + 8], &MARKER_MAGIC);
        let header = FrameHeader::decode(&buf).expect("header");
        assert_eq!(Marker::decode(&header, &buf[16..48]), Some(marker));
    }
}
