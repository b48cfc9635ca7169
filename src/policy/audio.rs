//! An upload's duration read from its container's header, so that speech-to-text can be
//! priced per minute of audio, as OpenAI prices it.
//!
//! Only what is cheap and exact to read is read: a WAV's data size and byte rate, an MP3's
//! Xing/Info or VBRI frame count (or its constant bitrate), an Ogg stream's last granule
//! position, a FLAC STREAMINFO's sample count. All of it lies in the first and the last
//! 64 KiB of a file, so a 25 MiB upload costs two small reads and nothing is decoded.
//!
//! The bytes are the client's to craft. Every read is bounds-checked, every sum checked,
//! every loop bounded by the input's length or a constant, and a header that contradicts
//! itself or the file's length gives `None` rather than a number: the caller then prices
//! by size, which is better than a duration guessed from garbage.

use std::time::Duration;

use memchr::memmem;

/// How many bytes of the start and of the end of a file [`duration`] wants.
pub const HEAD_BYTES: usize = 64 * 1024;
/// How many bytes of the end of a file [`duration`] wants. An Ogg page is at most
/// 65 307 bytes, so the last page of a stream always lies whole in this much.
pub const TAIL_BYTES: usize = 64 * 1024;

/// The audio's duration, when the container says it cheaply; None when the format is not
/// recognised or the header is inconsistent (never a guess from garbage).
///
/// `head` = the first min(total, HEAD_BYTES) bytes, `tail` = the last min(total,
/// TAIL_BYTES) bytes (they overlap for small files), `total` = the file's length.
pub fn duration(head: &[u8], tail: &[u8], total: u64) -> Option<Duration> {
    if wide(head.len()) > total || wide(tail.len()) > total {
        return None;
    }
    match &array::<4>(head, 0)? {
        b"RIFF" | b"RF64" | b"BW64" => wav(head, total),
        b"OggS" => ogg(head, tail),
        b"fLaC" => flac(head),
        _ => {
            // An ID3v2 tag is MP3's, but taggers put it in front of FLAC files too.
            let start = id3v2_end(head)?;
            match array::<4>(head, start) {
                Some(magic) if magic == *b"fLaC" => flac(head.get(start..)?),
                _ => mp3(head, tail, total, start),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// WAV (RIFF/WAVE, and RF64/BW64 for files over 4 GiB)

/// Walks the chunks at the start of a WAV file to its `data` chunk.
///
/// `fmt ` must come before `data` (as RIFF requires, and as every writer does): without
/// it the data's byte rate is unknown. The walk stops at the end of `head`; every step
/// moves at least 8 bytes on, so it takes at most `head.len() / 8` steps.
fn wav(head: &[u8], total: u64) -> Option<Duration> {
    // RF64 and BW64 keep the sizes that do not fit 32 bits in a `ds64` chunk, first.
    let wide_sizes = array::<4>(head, 0)? != *b"RIFF";
    if array::<4>(head, 8)? != *b"WAVE" {
        return None;
    }
    let mut ds64_data_size = None;
    let mut byte_rate = None;
    let mut at: usize = 12;
    while let Some(id) = array::<4>(head, at) {
        let size = u32_le(head, at.checked_add(4)?)?;
        let body = at.checked_add(8)?;
        match &id {
            b"ds64" if wide_sizes => {
                // riff size (u64), then data size (u64), sample count, table length.
                ds64_data_size = Some(u64_le(head, body.checked_add(8)?)?);
            }
            b"fmt " => {
                let end = body.checked_add(usize::try_from(size).ok()?)?;
                byte_rate = Some(wav_byte_rate(head.get(body..end)?)?);
            }
            b"data" => {
                let rate = byte_rate?;
                let available = total.checked_sub(wide(body))?;
                let declared = match size {
                    0xFFFF_FFFF if wide_sizes => ds64_data_size?,
                    size => u64::from(size),
                };
                // 0 and 0xFFFFFFFF are what a writer that cannot seek back leaves (TTS
                // engines streaming a WAV): the data is the rest of the file. A size larger
                // than the file is a truncated upload; the audio is what arrived.
                let bytes = match declared {
                    0 => available,
                    0xFFFF_FFFF if !wide_sizes => available,
                    declared => declared.min(available),
                };
                return ratio(u128::from(bytes), u128::from(rate));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        let size = usize::try_from(size).ok()?;
        at = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// Bytes per second of the audio a `fmt ` chunk describes.
///
/// For PCM-like formats (integer, float, A-law, µ-law, extensible) a second is exactly
/// `sample_rate × block_align` bytes, which is what a decoder plays; a stated byte rate
/// that disagrees makes the header inconsistent, and a stated 0 is filled in. For other
/// (compressed) formats only the stated average byte rate says anything.
fn wav_byte_rate(fmt: &[u8]) -> Option<u64> {
    let format = u16_le(fmt, 0)?;
    let channels = u16_le(fmt, 2)?;
    let sample_rate = u64::from(u32_le(fmt, 4)?);
    let stated = u64::from(u32_le(fmt, 8)?);
    let block_align = u64::from(u16_le(fmt, 12)?);
    if channels == 0 || sample_rate == 0 {
        return None;
    }
    let pcm_like = matches!(format, 0x0001 | 0x0003 | 0x0006 | 0x0007 | 0xFFFE);
    if !pcm_like {
        return (stated != 0).then_some(stated);
    }
    let exact = sample_rate.checked_mul(block_align)?;
    match stated {
        _ if exact == 0 => None,
        0 => Some(exact),
        stated if stated == exact => Some(exact),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// MP3 (MPEG-1, -2 and 2.5 audio, layers I–III)

/// How many ID3v2 tags in a row are skipped; more than one is already unusual.
const MAX_ID3V2_TAGS: usize = 4;
/// The ID3v1 tag, when present, is the file's last 128 bytes, starting with `TAG`.
const ID3V1_LEN: usize = 128;

/// Where the bytes after any leading ID3v2 tags start (0 when there are none).
///
/// The offset may lie past `head` when a tag (cover art, say) is larger than it; then the
/// first frame cannot be seen and the caller's reads fail.
fn id3v2_end(head: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    for _ in 0..MAX_ID3V2_TAGS {
        if array::<3>(head, at) != Some(*b"ID3") {
            break;
        }
        let [major, revision, flags, s0, s1, s2, s3] = array::<7>(head, at.checked_add(3)?)?;
        // The size is "synchsafe": 7 bits a byte, so no byte may have its top bit set.
        if !(2..=4).contains(&major) || revision == 0xFF || (s0 | s1 | s2 | s3) & 0x80 != 0 {
            return None;
        }
        let size = u32::from(s0) << 21 | u32::from(s1) << 14 | u32::from(s2) << 7 | u32::from(s3);
        let footer = if major == 4 && flags & 0x10 != 0 {
            10
        } else {
            0
        };
        at = at
            .checked_add(10 + footer)?
            .checked_add(usize::try_from(size).ok()?)?;
    }
    Some(at)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    Mpeg1,
    Mpeg2,
    Mpeg25,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layer {
    L1,
    L2,
    L3,
}

/// An MPEG audio frame header's four bytes, read.
#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    version: Version,
    layer: Layer,
    /// Bits per second.
    bitrate: u32,
    sample_rate: u32,
    padding: bool,
    /// A 16-bit CRC follows the header.
    crc: bool,
    mono: bool,
}

/// Bitrates in kbit/s for bitrate indices 1–14 (0 is "free format", 15 is invalid).
const BITRATES_V1_L1: [u16; 14] = [
    32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
];
const BITRATES_V1_L2: [u16; 14] = [
    32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
];
const BITRATES_V1_L3: [u16; 14] = [
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
const BITRATES_V2_L1: [u16; 14] = [
    32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
];
const BITRATES_V2_L23: [u16; 14] = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

impl FrameHeader {
    /// Reads a frame header, refusing the reserved and unusable values: a free-format or
    /// invalid bitrate, a reserved version, layer, sample rate or emphasis. What is left
    /// is still only 4 bytes, so a header found counts only once the next one confirms it.
    fn parse(bytes: [u8; 4]) -> Option<Self> {
        let [sync, b1, b2, b3] = bytes;
        if sync != 0xFF || b1 & 0xE0 != 0xE0 || b3 & 0x03 == 0x02 {
            return None;
        }
        let version = match (b1 >> 3) & 0x03 {
            0 => Version::Mpeg25,
            2 => Version::Mpeg2,
            3 => Version::Mpeg1,
            _ => return None,
        };
        let layer = match (b1 >> 1) & 0x03 {
            1 => Layer::L3,
            2 => Layer::L2,
            3 => Layer::L1,
            _ => return None,
        };
        let kbps = bitrate_table(version, layer).get(usize::from(b2 >> 4).checked_sub(1)?)?;
        let sample_rates: [u32; 3] = match version {
            Version::Mpeg1 => [44_100, 48_000, 32_000],
            Version::Mpeg2 => [22_050, 24_000, 16_000],
            Version::Mpeg25 => [11_025, 12_000, 8_000],
        };
        Some(Self {
            version,
            layer,
            bitrate: u32::from(*kbps) * 1000,
            sample_rate: *sample_rates.get(usize::from((b2 >> 2) & 0x03))?,
            padding: b2 & 0x02 != 0,
            crc: b1 & 0x01 == 0,
            mono: b3 >> 6 == 0x03,
        })
    }

    /// The frame's length in bytes, header included.
    fn len(&self) -> usize {
        frame_len(
            self.version,
            self.layer,
            self.bitrate,
            self.sample_rate,
            self.padding,
        )
    }

    /// The shortest frame this stream can have: the lowest bitrate, no padding.
    fn min_len(&self) -> usize {
        let lowest = bitrate_table(self.version, self.layer)
            .first()
            .map_or(0, |&kbps| u32::from(kbps) * 1000);
        frame_len(self.version, self.layer, lowest, self.sample_rate, false)
    }

    fn samples(&self) -> u32 {
        match (self.layer, self.version) {
            (Layer::L1, _) => 384,
            (Layer::L2, _) | (Layer::L3, Version::Mpeg1) => 1152,
            (Layer::L3, _) => 576,
        }
    }

    /// Whether `next` can follow this frame in one stream. The bitrate may change (VBR),
    /// and so, in principle, may the channel mode; version, layer and sample rate may not.
    fn continued_by(&self, next: &Self) -> bool {
        self.version == next.version
            && self.layer == next.layer
            && self.sample_rate == next.sample_rate
    }
}

fn bitrate_table(version: Version, layer: Layer) -> &'static [u16; 14] {
    match (version, layer) {
        (Version::Mpeg1, Layer::L1) => &BITRATES_V1_L1,
        (Version::Mpeg1, Layer::L2) => &BITRATES_V1_L2,
        (Version::Mpeg1, Layer::L3) => &BITRATES_V1_L3,
        (_, Layer::L1) => &BITRATES_V2_L1,
        (_, Layer::L2 | Layer::L3) => &BITRATES_V2_L23,
    }
}

/// A frame's length: its samples' worth of the bitrate, in slots of 4 bytes (layer I) or
/// 1 byte, plus one slot of padding. Inputs come from the tables (bitrate ≤ 448 000,
/// sample rate ≥ 8000), so nothing here can overflow.
fn frame_len(version: Version, layer: Layer, bitrate: u32, sample_rate: u32, pad: bool) -> usize {
    let pad = u32::from(pad);
    let bytes = match (layer, version) {
        (Layer::L1, _) => (12 * bitrate / sample_rate + pad) * 4,
        (Layer::L3, Version::Mpeg2 | Version::Mpeg25) => 72 * bitrate / sample_rate + pad,
        _ => 144 * bitrate / sample_rate + pad,
    };
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// An MP3's duration: from the frame count of a Xing/Info or VBRI header in its first
/// frame, else from its (constant) bitrate and the bytes between the first frame and the
/// end (less an ID3v1 tag).
///
/// Without an ID3v2 tag the file must start with a frame: searching arbitrary bytes for a
/// sync word is how garbage becomes a duration. After a tag, writers leave padding, so
/// the first frame is searched for in the rest of `head`.
fn mp3(head: &[u8], tail: &[u8], total: u64, start: usize) -> Option<Duration> {
    let id3v1 = tail
        .len()
        .checked_sub(ID3V1_LEN)
        .and_then(|at| array::<3>(tail, at))
        == Some(*b"TAG");
    let audio_end = total.checked_sub(if id3v1 { wide(ID3V1_LEN) } else { 0 })?;
    let last = if start == 0 { 1 } else { head.len().max(start) };
    let (at, frame) =
        (start..last).find_map(|at| first_frame(head, at, audio_end).map(|frame| (at, frame)))?;
    let frame_bytes = head.get(at..at.checked_add(frame.len())?)?;
    let audio = audio_end.checked_sub(wide(at))?;

    match declared_frames(&frame, frame_bytes) {
        Some(frames) if frames > 0 => {
            // A count that could not fit in the file, even in the shortest frames, lies.
            let least = u128::from(frames).checked_mul(wide128(frame.min_len()))?;
            if least > u128::from(audio) {
                return None;
            }
            ratio(
                u128::from(frames) * u128::from(frame.samples()),
                u128::from(frame.sample_rate),
            )
        }
        // No count (or a writer's placeholder 0): constant bitrate.
        _ => ratio(u128::from(audio) * 8, u128::from(frame.bitrate)),
    }
}

/// The frame header at `at`, if the next frame's header confirms it, or if the frame ends
/// exactly where the file's audio does (a file of one frame).
fn first_frame(head: &[u8], at: usize, audio_end: u64) -> Option<FrameHeader> {
    if head.get(at) != Some(&0xFF) {
        return None;
    }
    let frame = FrameHeader::parse(array(head, at)?)?;
    let next_at = at.checked_add(frame.len())?;
    if wide(next_at) == audio_end {
        return Some(frame);
    }
    let next = FrameHeader::parse(array(head, next_at)?)?;
    frame.continued_by(&next).then_some(frame)
}

/// The frame count of a Xing/Info (LAME, most encoders) or VBRI (Fraunhofer) header in the
/// first frame, which is silent and carries the count in place of audio.
fn declared_frames(frame: &FrameHeader, bytes: &[u8]) -> Option<u32> {
    // Xing sits after the side information, whose size depends on version and channels;
    // some writers count a CRC before it, some do not, so both places are looked at.
    let side_info = match (frame.version, frame.mono) {
        (Version::Mpeg1, false) => 32,
        (Version::Mpeg1, true) | (_, false) => 17,
        (_, true) => 9,
    };
    let crc_places: &[usize] = if frame.crc { &[0, 2] } else { &[0] };
    for crc in crc_places {
        let xing = 4 + crc + side_info;
        if matches!(array::<4>(bytes, xing).as_ref(), Some(b"Xing" | b"Info")) {
            let flags = u32_be(bytes, xing + 4)?;
            return if flags & 0x01 != 0 {
                u32_be(bytes, xing + 8)
            } else {
                None
            };
        }
    }
    // VBRI is always 32 bytes after the header: tag, version, delay, quality, bytes, frames.
    let vbri = 4 + 32;
    if array::<4>(bytes, vbri) == Some(*b"VBRI") {
        return u32_be(bytes, vbri + 14);
    }
    None
}

// ---------------------------------------------------------------------------------------
// Ogg (Opus, Vorbis)

/// Opus granule positions count 48 kHz samples, whatever the input's rate was.
const OPUS_RATE: u64 = 48_000;
/// How many capture patterns in the tail are tried before giving up. The last page is
/// found at the first try in an ordinary file; the bound keeps a tail full of fake
/// `OggS` from costing a checksum of up to 64 KiB each.
const MAX_TAIL_PAGES: usize = 256;

/// What a stream's identification header says about its granule positions.
enum Codec {
    /// Samples at 48 kHz, less the decoder's pre-skip.
    Opus { pre_skip: u64 },
    /// Samples at the stream's rate.
    Vorbis { sample_rate: u64 },
}

/// An Ogg stream's duration: the first page names the codec and the stream, the last page
/// of that stream in `tail` gives the granule position (samples decoded) at the end.
fn ogg(head: &[u8], tail: &[u8]) -> Option<Duration> {
    let first = OggPage::parse(head)?;
    // The first page begins a stream and holds exactly its identification packet.
    if !first.begins_stream() || first.continued() {
        return None;
    }
    let codec = Codec::identify(first.first_packet()?)?;
    let granule = last_granule(tail, first.serial)?;
    match codec {
        Codec::Opus { pre_skip } => {
            ratio(u128::from(granule.checked_sub(pre_skip)?), OPUS_RATE.into())
        }
        Codec::Vorbis { sample_rate } => ratio(granule.into(), sample_rate.into()),
    }
}

impl Codec {
    fn identify(packet: &[u8]) -> Option<Self> {
        if packet.starts_with(b"OpusHead") {
            // RFC 7845 §5.1: version (major 0), channels, pre-skip, rate, gain, mapping.
            let version = *packet.get(8)?;
            let channels = *packet.get(9)?;
            let pre_skip = u16_le(packet, 10)?;
            packet.get(18)?;
            if version & 0xF0 != 0 || channels == 0 {
                return None;
            }
            return Some(Self::Opus {
                pre_skip: pre_skip.into(),
            });
        }
        if packet.starts_with(b"\x01vorbis") {
            // Vorbis I §4.2.2: version 0, channels, rate, three bitrates, block sizes,
            // and a set framing bit.
            let version = u32_le(packet, 7)?;
            let channels = *packet.get(11)?;
            let sample_rate = u32_le(packet, 12)?;
            let framing = *packet.get(29)?;
            if version != 0 || channels == 0 || sample_rate == 0 || framing & 0x01 == 0 {
                return None;
            }
            return Some(Self::Vorbis {
                sample_rate: sample_rate.into(),
            });
        }
        None
    }
}

/// The granule position of the last page of stream `serial` in `tail` that has one.
///
/// The tail is searched backwards for the capture pattern; a pattern that is not the start
/// of a whole page with a correct checksum (one inside packet data) is passed over, as are
/// other streams' pages and pages where no packet ends (granule −1).
fn last_granule(tail: &[u8], serial: u32) -> Option<u64> {
    let mut end = tail.len();
    for _ in 0..MAX_TAIL_PAGES {
        let at = memmem::rfind(tail.get(..end)?, b"OggS")?;
        // "OggS" cannot overlap itself, so no other match straddles `at`.
        end = at;
        let Some(page) = tail.get(at..).and_then(OggPage::parse) else {
            continue;
        };
        if page.serial != serial || page.granule == u64::MAX {
            continue;
        }
        // Other negative granule positions are not valid.
        return i64::try_from(page.granule).is_ok().then_some(page.granule);
    }
    None
}

/// An Ogg page, checked: version 0, known flags, whole in the buffer, checksum right.
struct OggPage<'a> {
    flags: u8,
    granule: u64,
    serial: u32,
    lacing: &'a [u8],
    body: &'a [u8],
}

impl<'a> OggPage<'a> {
    /// Reads the page at the start of `buf`.
    fn parse(buf: &'a [u8]) -> Option<Self> {
        if array::<4>(buf, 0)? != *b"OggS" || *buf.get(4)? != 0 {
            return None;
        }
        let flags = *buf.get(5)?;
        if flags & !0x07 != 0 {
            return None;
        }
        let segments = usize::from(*buf.get(26)?);
        let header_len = 27 + segments;
        let lacing = buf.get(27..header_len)?;
        // At most 255 × 255, so the sum cannot overflow.
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let page_len = header_len.checked_add(body_len)?;
        let body = buf.get(header_len..page_len)?;
        // The checksum covers the page with its own field taken as zero.
        let crc = ogg_crc(0, buf.get(..22)?);
        let crc = ogg_crc(crc, &[0; 4]);
        let crc = ogg_crc(crc, buf.get(26..page_len)?);
        if crc != u32_le(buf, 22)? {
            return None;
        }
        Some(Self {
            flags,
            granule: u64_le(buf, 6)?,
            serial: u32_le(buf, 14)?,
            lacing,
            body,
        })
    }

    fn continued(&self) -> bool {
        self.flags & 0x01 != 0
    }

    fn begins_stream(&self) -> bool {
        self.flags & 0x02 != 0
    }

    /// The first packet, when it ends on this page (a lacing value under 255 ends it).
    fn first_packet(&self) -> Option<&'a [u8]> {
        let last = self.lacing.iter().position(|&l| l < 255)?;
        let len: usize = self
            .lacing
            .get(..=last)?
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        self.body.get(..len)
    }
}

/// Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value and final XOR 0.
const OGG_CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04C1_1DB7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

fn ogg_crc(crc: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(crc, |crc, &b| {
        let index = usize::from(crc.to_be_bytes()[0] ^ b);
        (crc << 8) ^ OGG_CRC_TABLE[index]
    })
}

// ---------------------------------------------------------------------------------------
// FLAC

/// A FLAC stream's duration from its STREAMINFO block, which must come first.
///
/// A total sample count of 0 means "unknown" (an encoder that could not seek back).
fn flac(bytes: &[u8]) -> Option<Duration> {
    if array::<4>(bytes, 0)? != *b"fLaC" {
        return None;
    }
    let [kind, l0, l1, l2] = array::<4>(bytes, 4)?;
    // Type 0 (STREAMINFO), whatever the last-block bit; its length is always 34.
    if kind & 0x7F != 0 || [l0, l1, l2] != [0, 0, 34] {
        return None;
    }
    let info = bytes.get(8..8 + 34)?;
    let min_block = u16_be(info, 0)?;
    let max_block = u16_be(info, 2)?;
    if min_block < 16 || max_block < min_block {
        return None;
    }
    // 20 bits sample rate, 3 bits channels − 1, 5 bits bits-per-sample − 1, 36 bits samples.
    let packed = u64::from_be_bytes(array(info, 10)?);
    let sample_rate = packed >> 44;
    let samples = packed & 0xF_FFFF_FFFF;
    if sample_rate == 0 || samples == 0 {
        return None;
    }
    ratio(samples.into(), sample_rate.into())
}

// ---------------------------------------------------------------------------------------
// Reading and arithmetic

/// `N` bytes at `at`, or None when they are not all there.
fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_le(buf: &[u8], at: usize) -> Option<u16> {
    array(buf, at).map(u16::from_le_bytes)
}

fn u16_be(buf: &[u8], at: usize) -> Option<u16> {
    array(buf, at).map(u16::from_be_bytes)
}

fn u32_le(buf: &[u8], at: usize) -> Option<u32> {
    array(buf, at).map(u32::from_le_bytes)
}

fn u32_be(buf: &[u8], at: usize) -> Option<u32> {
    array(buf, at).map(u32::from_be_bytes)
}

fn u64_le(buf: &[u8], at: usize) -> Option<u64> {
    array(buf, at).map(u64::from_le_bytes)
}

/// An in-memory length as a file offset; `usize` is at most 64 bits on every target.
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn wide128(n: usize) -> u128 {
    u128::from(wide(n))
}

/// `units / per_second` seconds, to the nanosecond (rounded down); None for a rate of 0
/// or a duration beyond `Duration`'s range.
fn ratio(units: u128, per_second: u128) -> Option<Duration> {
    if per_second == 0 {
        return None;
    }
    let secs = u64::try_from(units / per_second).ok()?;
    let nanos = (units % per_second).checked_mul(1_000_000_000)? / per_second;
    Some(Duration::new(secs, u32::try_from(nanos).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes a whole file the way the caller does: its first and last 64 KiB.
    fn probe(file: &[u8]) -> Option<Duration> {
        duration(head_of(file), tail_of(file), file.len() as u64)
    }

    fn head_of(file: &[u8]) -> &[u8] {
        &file[..file.len().min(HEAD_BYTES)]
    }

    fn tail_of(file: &[u8]) -> &[u8] {
        &file[file.len() - file.len().min(TAIL_BYTES)..]
    }

    fn assert_close(got: Option<Duration>, want_secs: f64) {
        let got = got.expect("a duration").as_secs_f64();
        assert!(
            (got - want_secs).abs() < 0.001,
            "got {got} s, want {want_secs} s"
        );
    }

    /// A fixed-seed xorshift64, so the hostile inputs are the same on every run.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    // --- WAV builders ---

    struct Fmt {
        format: u16,
        channels: u16,
        sample_rate: u32,
        byte_rate: u32,
        block_align: u16,
        bits: u16,
    }

    /// 16-bit PCM: the byte rate and block align a correct writer states.
    fn pcm(channels: u16, sample_rate: u32) -> Fmt {
        Fmt {
            format: 1,
            channels,
            sample_rate,
            byte_rate: sample_rate * u32::from(channels) * 2,
            block_align: channels * 2,
            bits: 16,
        }
    }

    fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn fmt_chunk(fmt: &Fmt) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fmt.format.to_le_bytes());
        body.extend_from_slice(&fmt.channels.to_le_bytes());
        body.extend_from_slice(&fmt.sample_rate.to_le_bytes());
        body.extend_from_slice(&fmt.byte_rate.to_le_bytes());
        body.extend_from_slice(&fmt.block_align.to_le_bytes());
        body.extend_from_slice(&fmt.bits.to_le_bytes());
        chunk(b"fmt ", &body)
    }

    /// A WAV: RIFF header, `fmt `, the `before` chunks, then a `data` chunk stating
    /// `data_size` and holding `data_len` bytes.
    fn wav_file(fmt: &Fmt, before: &[Vec<u8>], data_size: u32, data_len: usize) -> Vec<u8> {
        let mut out = b"RIFF\0\0\0\0WAVE".to_vec();
        out.extend(fmt_chunk(fmt));
        for c in before {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_size.to_le_bytes());
        out.resize(out.len() + data_len, 0x11);
        let riff_size = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&riff_size.to_le_bytes());
        out
    }

    /// 2.5 s of 24 kHz mono 16-bit PCM, as OpenAI's TTS returns `wav`.
    fn wav_2_5s() -> Vec<u8> {
        wav_file(&pcm(1, 24_000), &[], 120_000, 120_000)
    }

    // --- MP3 builders ---

    /// The header of an MPEG-1 layer III frame, no CRC, joint stereo.
    fn mpeg1_l3_header(bitrate_index: u8, padding: bool) -> [u8; 4] {
        // Sample rate index 0 = 44.1 kHz.
        [
            0xFF,
            0xFB,
            bitrate_index << 4 | u8::from(padding) << 1,
            0x40,
        ]
    }

    /// A frame of zeros behind `header`, of the length its header implies.
    fn frame(header: [u8; 4]) -> Vec<u8> {
        let len = FrameHeader::parse(header).expect("a valid header").len();
        let mut out = header.to_vec();
        out.resize(len, 0);
        out
    }

    /// `n` frames of 128 kbit/s at 44.1 kHz, padded as an encoder does: 144 × 128 000 /
    /// 44 100 = 417.96 bytes a frame, so most frames are 418 bytes and some 417.
    fn cbr_128k_frames(n: usize) -> Vec<u8> {
        let remainder = 144 * 128_000 % 44_100;
        let mut carried = 0;
        let mut out = Vec::new();
        for _ in 0..n {
            carried += remainder;
            let padding = carried >= 44_100;
            if padding {
                carried -= 44_100;
            }
            out.extend(frame(mpeg1_l3_header(9, padding)));
        }
        out
    }

    fn id3v2_tag(size: u32) -> Vec<u8> {
        let synchsafe = [
            (size >> 21 & 0x7F) as u8,
            (size >> 14 & 0x7F) as u8,
            (size >> 7 & 0x7F) as u8,
            (size & 0x7F) as u8,
        ];
        let mut out = b"ID3\x03\x00\x00".to_vec();
        out.extend_from_slice(&synchsafe);
        out.resize(10 + size as usize, 0);
        out
    }

    fn id3v1_tag() -> Vec<u8> {
        let mut out = b"TAGSome title".to_vec();
        out.resize(128, 0);
        out
    }

    /// A first frame holding a Xing (or Info) header with a frame count.
    fn xing_frame(tag: &[u8; 4], frames: u32) -> Vec<u8> {
        let mut out = frame(mpeg1_l3_header(9, false));
        out[36..40].copy_from_slice(tag);
        out[40..44].copy_from_slice(&1u32.to_be_bytes());
        out[44..48].copy_from_slice(&frames.to_be_bytes());
        out
    }

    /// `n` frames whose bitrates vary (64, 128, 320 kbit/s), so a CBR estimate is wrong.
    fn vbr_frames(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(frame(mpeg1_l3_header([5, 9, 14][i % 3], false)));
        }
        out
    }

    // --- Ogg builders ---

    fn ogg_page(flags: u8, granule: u64, serial: u32, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
            body.extend_from_slice(p);
        }
        let mut out = b"OggS\0".to_vec();
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(lacing.len() as u8);
        out.extend(lacing);
        out.extend(body);
        let crc = ogg_crc(0, &out);
        out[22..26].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn opus_head(pre_skip: u16) -> Vec<u8> {
        let mut out = b"OpusHead\x01\x01".to_vec();
        out.extend_from_slice(&pre_skip.to_le_bytes());
        out.extend_from_slice(&24_000u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out
    }

    fn vorbis_id(sample_rate: u32) -> Vec<u8> {
        let mut out = b"\x01vorbis".to_vec();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(1);
        out.extend_from_slice(&sample_rate.to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        out.push(0xB8);
        out.push(0x01);
        out
    }

    /// A stream: the identification page, a tags page, then `pages` data pages of about
    /// 4 KiB whose granules climb evenly to `last_granule` on the final (EOS) page.
    fn ogg_stream(serial: u32, id: &[u8], pages: u64, first: u64, last_granule: u64) -> Vec<u8> {
        let mut out = ogg_page(0x02, 0, serial, 0, &[id]);
        out.extend(ogg_page(0, 0, serial, 1, &[b"OpusTags-ish"]));
        let packet = vec![0x5A; 4000];
        for i in 1..=pages {
            let granule = first + (last_granule - first) * i / pages;
            let flags = if i == pages { 0x04 } else { 0 };
            out.extend(ogg_page(flags, granule, serial, 1 + i as u32, &[&packet]));
        }
        out
    }

    fn opus_3s() -> Vec<u8> {
        ogg_stream(0x1234_5678, &opus_head(312), 40, 312, 48_000 * 3 + 312)
    }

    // --- FLAC builder ---

    fn flac_file(sample_rate: u32, samples: u64) -> Vec<u8> {
        let mut out = b"fLaC".to_vec();
        out.extend_from_slice(&[0x80, 0, 0, 34]);
        out.extend_from_slice(&4096u16.to_be_bytes());
        out.extend_from_slice(&4096u16.to_be_bytes());
        out.extend_from_slice(&[0, 0, 14, 0, 0x30, 0]);
        let packed = u64::from(sample_rate) << 44 | 1 << 41 | 15 << 36 | samples;
        out.extend_from_slice(&packed.to_be_bytes());
        out.extend_from_slice(&[0xAB; 16]);
        out.resize(out.len() + 5000, 0x33);
        out
    }

    // --- WAV ---

    #[test]
    fn a_pcm_wav_lasts_its_data_size_over_its_byte_rate() {
        let file = wav_2_5s();
        assert!(file.len() > HEAD_BYTES + TAIL_BYTES / 2);
        assert_eq!(probe(&file), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn a_streamed_wav_lasts_the_rest_of_the_file() {
        let streamed = wav_file(&pcm(1, 24_000), &[], 0xFFFF_FFFF, 120_000);
        assert_eq!(probe(&streamed), Some(Duration::from_millis(2500)));
        let zero = wav_file(&pcm(1, 24_000), &[], 0, 48_000);
        assert_eq!(probe(&zero), Some(Duration::from_secs(1)));
    }

    #[test]
    fn chunks_before_data_are_walked_over_with_their_padding() {
        // Both bodies are of odd length, so both chunks carry a pad byte.
        let list = chunk(b"LIST", b"INFOISFT\x05\0\0\0Lavf\0");
        let odd = chunk(b"junk", b"odd");
        let file = wav_file(&pcm(2, 44_100), &[list, odd], 176_400 * 3, 176_400 * 3);
        assert_eq!(probe(&file), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_wav_data_size_beyond_the_file_counts_what_arrived() {
        let file = wav_file(&pcm(1, 24_000), &[], 480_000, 24_000);
        assert_eq!(probe(&file), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_wav_byte_rate_of_zero_is_computed_for_pcm_and_refused_otherwise() {
        let mut fmt = pcm(1, 24_000);
        fmt.byte_rate = 0;
        let file = wav_file(&fmt, &[], 120_000, 120_000);
        assert_eq!(probe(&file), Some(Duration::from_millis(2500)));

        fmt.block_align = 0;
        assert_eq!(probe(&wav_file(&fmt, &[], 120_000, 120_000)), None);

        let adpcm = Fmt {
            format: 0x0011,
            byte_rate: 0,
            ..pcm(1, 24_000)
        };
        assert_eq!(probe(&wav_file(&adpcm, &[], 120_000, 120_000)), None);
    }

    #[test]
    fn a_pcm_wav_whose_byte_rate_contradicts_its_block_align_is_refused() {
        let mut fmt = pcm(1, 24_000);
        fmt.byte_rate = 1;
        assert_eq!(probe(&wav_file(&fmt, &[], 120_000, 120_000)), None);
        let mut fmt = pcm(1, 0);
        fmt.byte_rate = 48_000;
        assert_eq!(probe(&wav_file(&fmt, &[], 120_000, 120_000)), None);
    }

    #[test]
    fn a_compressed_wav_uses_its_stated_byte_rate() {
        let mp3_in_wav = Fmt {
            format: 0x0055,
            channels: 2,
            sample_rate: 44_100,
            byte_rate: 16_000,
            block_align: 1,
            bits: 0,
        };
        let file = wav_file(&mp3_in_wav, &[], 40_000, 40_000);
        assert_eq!(probe(&file), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn a_wav_with_data_before_fmt_or_past_the_head_is_refused() {
        let mut data_first = b"RIFF\0\0\0\0WAVE".to_vec();
        data_first.extend(chunk(b"data", &[0; 100]));
        data_first.extend(fmt_chunk(&pcm(1, 24_000)));
        assert_eq!(probe(&data_first), None);

        let big = chunk(b"LIST", &vec![0; HEAD_BYTES]);
        assert_eq!(probe(&wav_file(&pcm(1, 24_000), &[big], 0, 1000)), None);
    }

    #[test]
    fn an_rf64_wav_reads_its_data_size_from_ds64() {
        let mut ds64 = Vec::new();
        ds64.extend_from_slice(&0u64.to_le_bytes());
        ds64.extend_from_slice(&96_000u64.to_le_bytes());
        ds64.extend_from_slice(&48_000u64.to_le_bytes());
        ds64.extend_from_slice(&0u32.to_le_bytes());
        let mut file = b"RF64\xFF\xFF\xFF\xFFWAVE".to_vec();
        file.extend(chunk(b"ds64", &ds64));
        file.extend(fmt_chunk(&pcm(1, 24_000)));
        file.extend_from_slice(b"data\xFF\xFF\xFF\xFF");
        file.resize(file.len() + 96_000 + 500, 0);
        assert_eq!(probe(&file), Some(Duration::from_secs(2)));
    }

    // --- MP3 ---

    #[test]
    fn mpeg_frame_lengths_follow_bitrate_and_padding() {
        let len = |h| FrameHeader::parse(h).map(|f| f.len());
        assert_eq!(len(mpeg1_l3_header(9, false)), Some(417));
        assert_eq!(len(mpeg1_l3_header(9, true)), Some(418));
        // MPEG-2 layer III, 64 kbit/s at 24 kHz: 72 × 64 000 / 24 000 = 192.
        assert_eq!(len([0xFF, 0xF3, 0x84, 0xC0]), Some(192));
        // Layer I, 448 kbit/s at 48 kHz: (12 × 448 000 / 48 000) × 4 = 448.
        assert_eq!(len([0xFF, 0xFF, 0xE4, 0x00]), Some(448));
        // Free format, bitrate 15, sample rate 3, reserved version and layer.
        for bad in [
            [0xFF, 0xFB, 0x00, 0],
            [0xFF, 0xFB, 0xF0, 0],
            [0xFF, 0xFB, 0x9C, 0],
        ] {
            assert_eq!(len(bad), None);
        }
        assert_eq!(len([0xFF, 0xEB, 0x90, 0]), None);
        assert_eq!(len([0xFF, 0xF9, 0x90, 0]), None);
    }

    #[test]
    fn a_cbr_mp3_lasts_its_bytes_at_its_bitrate() {
        let frames = 383;
        let file = cbr_128k_frames(frames);
        assert!(file.len() > HEAD_BYTES + TAIL_BYTES);
        let got = probe(&file);
        assert_eq!(got, ratio(file.len() as u128 * 8, 128_000));
        assert_close(got, frames as f64 * 1152.0 / 44_100.0);
    }

    #[test]
    fn id3_tags_are_not_counted_as_audio() {
        let frames = cbr_128k_frames(383);
        let want = probe(&frames);
        assert!(want.is_some());

        let mut v2 = id3v2_tag(1000);
        v2.extend_from_slice(&frames);
        assert_eq!(probe(&v2), want);

        let mut both = v2.clone();
        both.extend(id3v1_tag());
        assert_eq!(probe(&both), want);

        // Padding after the tag is searched through.
        let mut padded = id3v2_tag(1000);
        padded.extend_from_slice(&[0; 700]);
        padded.extend_from_slice(&frames);
        padded.extend(id3v1_tag());
        assert_eq!(probe(&padded), want);
    }

    #[test]
    fn an_mpeg2_cbr_mp3_uses_576_samples_a_frame() {
        // 64 kbit/s at 24 kHz: 192-byte frames of 24 ms.
        let file: Vec<u8> = (0..250)
            .flat_map(|_| frame([0xFF, 0xF3, 0x84, 0xC0]))
            .collect();
        assert_eq!(probe(&file), Some(Duration::from_secs(6)));
    }

    #[test]
    fn an_id3v2_tag_larger_than_the_head_hides_the_first_frame() {
        let mut file = id3v2_tag(HEAD_BYTES as u32);
        file.extend(cbr_128k_frames(400));
        assert_eq!(probe(&file), None);
    }

    #[test]
    fn a_xing_frame_count_gives_a_vbr_mp3_its_duration() {
        let mut file = xing_frame(b"Xing", 300);
        file.extend(vbr_frames(300));
        assert_close(probe(&file), 300.0 * 1152.0 / 44_100.0);
        // Most CBR files carry the same count under the name Info.
        let mut info = id3v2_tag(300);
        info.extend(xing_frame(b"Info", 300));
        info.extend(vbr_frames(300));
        info.extend(id3v1_tag());
        assert_close(probe(&info), 300.0 * 1152.0 / 44_100.0);
    }

    #[test]
    fn a_vbri_frame_count_gives_a_vbr_mp3_its_duration() {
        let mut first = frame(mpeg1_l3_header(9, false));
        first[36..40].copy_from_slice(b"VBRI");
        first[50..54].copy_from_slice(&200u32.to_be_bytes());
        let mut file = first;
        file.extend(vbr_frames(200));
        assert_close(probe(&file), 200.0 * 1152.0 / 44_100.0);
    }

    #[test]
    fn a_xing_frame_count_the_file_cannot_hold_is_refused() {
        let mut file = xing_frame(b"Xing", 1_000_000);
        file.extend(vbr_frames(10));
        assert_eq!(probe(&file), None);
    }

    #[test]
    fn an_mpeg_sync_that_no_next_frame_confirms_is_not_mp3() {
        // A valid header at the start, then garbage.
        let mut rng = Xorshift(0x5EED);
        let mut lone = mpeg1_l3_header(9, false).to_vec();
        lone.extend(rng.bytes(5000));
        assert_eq!(probe(&lone), None);

        // A header inside garbage after an ID3v2 tag.
        let mut tagged = id3v2_tag(100);
        let mut garbage = rng.bytes(5000);
        garbage.retain(|&b| b != 0xFF);
        garbage[1000..1004].copy_from_slice(&mpeg1_l3_header(9, false));
        tagged.extend(garbage);
        assert_eq!(probe(&tagged), None);

        // Frames that do not start the file are not searched for without a tag.
        let mut late = vec![0; 10];
        late.extend(cbr_128k_frames(20));
        assert_eq!(probe(&late), None);
    }

    // --- Ogg ---

    #[test]
    fn the_ogg_checksum_is_crc32_with_zero_init_and_no_final_xor() {
        // CRC-32/POSIX's check value without its final XOR.
        assert_eq!(ogg_crc(0, b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
    }

    #[test]
    fn an_ogg_opus_lasts_its_last_granule_less_pre_skip() {
        let file = opus_3s();
        assert!(file.len() > HEAD_BYTES + TAIL_BYTES);
        assert_eq!(probe(&file), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_ogg_vorbis_lasts_its_last_granule_at_its_sample_rate() {
        let file = ogg_stream(7, &vorbis_id(22_050), 5, 0, 22_050 * 5 / 2);
        assert_eq!(probe(&file), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn another_streams_last_page_is_passed_over() {
        let mut file = opus_3s();
        file.extend(ogg_page(0x04, 48_000 * 60, 0x0BAD, 9, &[b"other"]));
        assert_eq!(probe(&file), Some(Duration::from_secs(3)));

        // A tail with no page of the first stream says nothing.
        let mut other_only = opus_3s();
        other_only.extend(ogg_stream(0x0BAD, &opus_head(0), 20, 0, 48_000 * 60));
        assert_eq!(probe(&other_only), None);
    }

    #[test]
    fn pages_where_no_packet_ends_are_passed_over() {
        let mut file = opus_3s();
        file.extend(ogg_page(0, u64::MAX, 0x1234_5678, 99, &[&[1; 254]]));
        assert_eq!(probe(&file), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_page_with_a_bad_checksum_is_not_a_page() {
        let mut file = opus_3s();
        let mut fake = ogg_page(0x04, 48_000 * 99, 0x1234_5678, 99, &[b"x"]);
        fake[27] ^= 0x01;
        let n = fake.len();
        fake[n - 1] ^= 0x01;
        file.extend(fake);
        assert_eq!(probe(&file), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_opus_granule_below_pre_skip_is_refused() {
        let file = ogg_stream(1, &opus_head(312), 2, 0, 100);
        assert_eq!(probe(&file), None);
    }

    #[test]
    fn other_ogg_codecs_and_broken_identification_are_refused() {
        let flac_in_ogg = ogg_stream(1, b"\x7FFLAC\x01\x00", 2, 0, 44_100);
        assert_eq!(probe(&flac_in_ogg), None);
        let mut vorbis = vorbis_id(22_050);
        vorbis[29] = 0;
        assert_eq!(probe(&ogg_stream(1, &vorbis, 2, 0, 22_050)), None);
        let mut no_bos = opus_3s();
        no_bos[5] = 0;
        let crc = ogg_crc(ogg_crc(ogg_crc(0, &no_bos[..22]), &[0; 4]), &no_bos[26..47]);
        no_bos[22..26].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(probe(&no_bos), None);
    }

    #[test]
    fn a_tail_full_of_fake_capture_patterns_is_given_up_on() {
        let mut file = opus_3s();
        for _ in 0..4000 {
            file.extend_from_slice(b"OggS\0\0");
            file.extend_from_slice(&[0; 20]);
            file.push(255);
        }
        assert_eq!(probe(&file), None);
    }

    // --- FLAC ---

    #[test]
    fn a_flac_lasts_its_streaminfo_samples_at_its_sample_rate() {
        let file = flac_file(44_100, 44_100 * 9 / 2);
        assert_eq!(probe(&file), Some(Duration::from_millis(4500)));
        let mut tagged = id3v2_tag(300);
        tagged.extend_from_slice(&file);
        assert_eq!(probe(&tagged), Some(Duration::from_millis(4500)));
    }

    #[test]
    fn a_flac_of_unknown_length_is_refused() {
        assert_eq!(probe(&flac_file(44_100, 0)), None);
        assert_eq!(probe(&flac_file(0, 1000)), None);
    }

    // --- Anything else ---

    #[test]
    fn other_containers_are_not_recognised() {
        let webm = b"\x1A\x45\xDF\xA3\x9F\x42\x86\x81\x01webm".repeat(100);
        assert_eq!(probe(&webm), None);
        let m4a = b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom\0\0\0\0".repeat(100);
        assert_eq!(probe(&m4a), None);
        assert_eq!(probe(b""), None);
        assert_eq!(duration(b"", b"", 1000), None);
    }

    #[test]
    fn ends_longer_than_the_file_are_refused() {
        let file = wav_2_5s();
        assert_eq!(duration(head_of(&file), tail_of(&file), 100), None);
    }

    // --- Hostile input ---

    /// One valid file of each kind, and how long a prefix must be before it can say
    /// anything.
    fn fixtures() -> Vec<(&'static str, Vec<u8>, usize)> {
        let mut mp3 = id3v2_tag(50);
        mp3.extend(xing_frame(b"Xing", 20));
        mp3.extend(vbr_frames(20));
        mp3.extend(id3v1_tag());
        vec![
            ("wav", wav_2_5s(), 44),
            ("mp3 cbr", cbr_128k_frames(40), 417),
            ("mp3 xing", mp3, 60 + 417),
            ("opus", opus_3s(), 47),
            (
                "vorbis",
                ogg_stream(7, &vorbis_id(22_050), 3, 0, 22_050),
                58,
            ),
            ("flac", flac_file(48_000, 96_000), 42),
        ]
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_read_without_panicking() {
        for (name, file, least) in fixtures() {
            assert!(probe(&file).is_some(), "{name}");
            for n in 0..=file.len().min(2048) {
                let prefix = &file[..n];
                let got = probe(prefix);
                if n < least {
                    assert_eq!(got, None, "{name} cut at {n}");
                }
                // The start cut short while the file is whole (a caller's short read).
                let _ = duration(prefix, tail_of(&file), file.len() as u64);
            }
        }
    }

    #[test]
    fn random_bytes_are_not_audio() {
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        let magics: [&[u8]; 7] = [
            b"",
            b"RIFF",
            b"RF64",
            b"OggS",
            b"fLaC",
            b"ID3\x03",
            b"\xFF\xFB",
        ];
        for case in 0..4000 {
            let mut file = magics[case % magics.len()].to_vec();
            if case % magics.len() == 1 {
                file.extend_from_slice(b"\0\0\0\0WAVE");
            }
            let len = rng.below(3000);
            file.extend(rng.bytes(len));
            assert_eq!(probe(&file), None, "case {case}");
        }
    }

    #[test]
    fn mutated_valid_files_are_read_without_panicking() {
        let mut rng = Xorshift(0xC0FF_EE00_D15E_A5E5);
        for (_, file, _) in fixtures() {
            let file = &file[..file.len().min(6000)];
            for _ in 0..500 {
                let mut mutated = file.to_vec();
                for _ in 0..1 + rng.below(4) {
                    // Mostly in the headers, where the reads are.
                    let at = if rng.below(2) == 0 {
                        rng.below(mutated.len().min(120))
                    } else {
                        rng.below(mutated.len())
                    };
                    mutated[at] = rng.next() as u8;
                }
                let _ = probe(&mutated);
                let cut = rng.below(mutated.len());
                let _ = probe(&mutated[..cut]);
            }
        }
    }

    #[test]
    fn extreme_header_values_do_not_overflow() {
        // Largest data size over the smallest byte rate.
        let mut fmt = pcm(1, 1);
        fmt.byte_rate = 2;
        let mut file = wav_file(&fmt, &[], 0xFFFF_FFFE, 0);
        let head = file.clone();
        assert_eq!(
            duration(&head, &head, u64::MAX),
            Some(Duration::from_secs(0x7FFF_FFFF))
        );
        // An Opus granule at i64::MAX.
        file = ogg_page(0x02, 0, 1, 0, &[&opus_head(0)]);
        file.extend(ogg_page(0x04, i64::MAX as u64, 1, 1, &[b"x"]));
        assert_eq!(
            probe(&file),
            Some(Duration::new(
                i64::MAX as u64 / 48_000,
                (i64::MAX as u64 % 48_000 * 1_000_000_000 / 48_000) as u32
            ))
        );
        file.extend(ogg_page(0x04, i64::MAX as u64 + 1, 1, 2, &[b"x"]));
        assert_eq!(probe(&file), None);
    }
}
