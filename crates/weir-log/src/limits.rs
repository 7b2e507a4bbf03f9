//! Named sizes and limits of the log, kept together, units last.

/// Size of each segment file unless the config says otherwise.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment the log accepts (tests use a few KiB to force many rolls).
pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
/// Largest segment: a `Loc` carries the offset in a `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Segment sizes are a multiple of this, so every segment is whole pages and sectors.
pub const SEGMENT_BYTES_ALIGN: u64 = 4 << 10;
/// Bytes of the segment header; frames start at this offset.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: u64 = 16;
/// Every frame starts at a multiple of this; frames are padded with zeros up to it.
pub const FRAME_ALIGN_BYTES: u64 = 8;
/// Bytes of a whole commit-marker frame (header and its 32-byte body).
pub const MARKER_FRAME_BYTES: u64 = FRAME_HEADER_BYTES + MARKER_BODY_BYTES;
/// Bytes of a commit marker's body.
pub const MARKER_BODY_BYTES: u64 = 32;
/// Size of the sequential reads `replay` and recovery make of sealed segments.
pub const REPLAY_BUFFER_BYTES: usize = 8 << 20;
/// Size of each write that zero-fills a new segment file.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;
/// Sealed segments waiting for their summary on the background thread; a segment sealed
/// while this many wait goes without one (the next open walks it and writes it).
pub const SUMMARY_QUEUE_MAX: usize = 16;
/// A sealed segment gets a summary when at least this percent of its bytes are payloads
/// (`LogConfig::summary_payload_percent_min`). Tasks of 1 KiB make segments ~85% payload
/// (summaries cut a restart's read by ~15×); tasks of a few dozen bytes make them ~15–20%,
/// where a summary is a third of the segment and saves little.
pub const SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT: u8 = 50;

/// The most `meta.len() + payload.len()` one frame may carry in a segment of `segment_bytes`.
///
/// A frame must fit in an empty segment together with its round's commit marker and room for
/// one more marker after that (the seal written when the log rolls; see `Log::append`).
pub const fn frame_bytes_max(segment_bytes: u64) -> u64 {
    let room = segment_bytes - SEGMENT_HEADER_BYTES - 2 * MARKER_FRAME_BYTES;
    room / FRAME_ALIGN_BYTES * FRAME_ALIGN_BYTES - FRAME_HEADER_BYTES
}

/// Bytes a frame with a body of `body_bytes` takes in a segment, padding included.
pub const fn frame_bytes(body_bytes: u64) -> u64 {
    (FRAME_HEADER_BYTES + body_bytes).div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_frame_leaves_room_for_two_markers_in_an_empty_segment() {
        for segment_bytes in [SEGMENT_BYTES_MIN, 64 << 10, SEGMENT_BYTES_DEFAULT] {
            let max = frame_bytes_max(segment_bytes);
            let used = SEGMENT_HEADER_BYTES + frame_bytes(max) + 2 * MARKER_FRAME_BYTES;
            assert!(used <= segment_bytes);
            let over = SEGMENT_HEADER_BYTES + frame_bytes(max + 1) + 2 * MARKER_FRAME_BYTES;
            assert!(over > segment_bytes);
        }
    }
}
