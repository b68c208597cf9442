//! Image formats recognised by their first bytes: a URL that answers with an
//! HTML error page or a text body is rejected with a reason, before ffmpeg sees it.
//! Their pixel dimensions, read from their headers: ffmpeg holds every image
//! decoded at once, so a task's images are measured before it starts.
//! Not the `imagesize` crate: its JPEG reader gives up at bytes that are no
//! marker where libjpeg (ffmpeg's decoder) skips them with a warning, so
//! photos ffmpeg shows would be refused as unreadable.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

/// Bytes needed to recognise every format below.
pub const SNIFF_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Gif,
    Webp,
    Bmp,
    Tiff,
}

impl ImageKind {
    /// The file extension ffmpeg expects for this format.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Gif => "gif",
            ImageKind::Webp => "webp",
            ImageKind::Bmp => "bmp",
            ImageKind::Tiff => "tiff",
        }
    }

    /// The format's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "JPEG",
            ImageKind::Png => "PNG",
            ImageKind::Gif => "GIF",
            ImageKind::Webp => "WebP",
            ImageKind::Bmp => "BMP",
            ImageKind::Tiff => "TIFF",
        }
    }

    /// The format `head` (a file's first bytes) starts with, if it is an image.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        match head {
            [0xFF, 0xD8, 0xFF, ..] => Some(ImageKind::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageKind::Png),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageKind::Gif),
            [
                b'R',
                b'I',
                b'F',
                b'F',
                _,
                _,
                _,
                _,
                b'W',
                b'E',
                b'B',
                b'P',
                ..,
            ] => Some(ImageKind::Webp),
            [b'B', b'M', ..] => Some(ImageKind::Bmp),
            [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some(ImageKind::Tiff),
            _ => None,
        }
    }
}

/// The width and height in pixels that the header of `file`, an image of
/// format `kind`, declares; `None` when the header cannot be read (cut short
/// or corrupt), or declares no size.
pub fn dimensions(kind: ImageKind, file: impl Read + Seek) -> io::Result<Option<(u32, u32)>> {
    let mut r = BufReader::new(file);
    let size = match kind {
        ImageKind::Png => {
            let h = read_array::<24>(&mut r)?;
            (&h[12..16] == b"IHDR").then(|| (be32(&h[16..]), be32(&h[20..])))
        }
        // The logical screen, which ffmpeg's decoder allocates whatever the frames.
        ImageKind::Gif => {
            let h = read_array::<10>(&mut r)?;
            Some((le16(&h[6..]).into(), le16(&h[8..]).into()))
        }
        ImageKind::Bmp => {
            let h = read_array::<26>(&mut r)?;
            if le32(&h[14..]) == 12 {
                // OS/2 BITMAPCOREHEADER: 16-bit sizes.
                Some((le16(&h[18..]).into(), le16(&h[20..]).into()))
            } else {
                // A negative height is a top-down bitmap.
                let (w, h) = (le32(&h[18..]) as i32, le32(&h[22..]) as i32);
                Some((w.unsigned_abs(), h.unsigned_abs()))
            }
        }
        // Whole, or a canvas of zeros would pass as 1x1.
        ImageKind::Webp => read_array_opt::<30>(&mut r)?.and_then(|h| webp_size(&h)),
        ImageKind::Jpeg => jpeg_size(&mut r)?,
        ImageKind::Tiff => tiff_size(&mut r)?,
    };
    Ok(size.filter(|&(w, h)| w > 0 && h > 0))
}

/// `N` bytes, or zeros past the end of a short file (a zero size, refused).
fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le24(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}

/// The first chunk says: lossy (`VP8 `), lossless (`VP8L`) or extended
/// (`VP8X`, whose canvas is the size).
fn webp_size(h: &[u8; 30]) -> Option<(u32, u32)> {
    match &h[12..16] {
        b"VP8 " if h[23..26] == [0x9D, 0x01, 0x2A] => Some((
            u32::from(le16(&h[26..]) & 0x3FFF),
            u32::from(le16(&h[28..]) & 0x3FFF),
        )),
        b"VP8L" if h[20] == 0x2F => {
            let bits = le32(&h[21..]);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Some((le24(&h[24..]) + 1, le24(&h[27..]) + 1)),
        _ => None,
    }
}

/// The size in the first start-of-frame segment, walking the segments from
/// the start ([`next_segment`]).
fn jpeg_size(r: &mut BufReader<impl Read + Seek>) -> io::Result<Option<(u32, u32)>> {
    if read_array::<2>(r)? != [0xFF, 0xD8] {
        return Ok(None);
    }
    loop {
        match next_segment(r)? {
            // SOS or EOI before any frame header: no size to be had.
            None | Some(Segment::ScanStart | Segment::End) => return Ok(None),
            // SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC), which share the range.
            Some(Segment::Other { code, .. })
                if matches!(code, 0xC0..=0xCF) && !matches!(code, 0xC4 | 0xC8 | 0xCC) =>
            {
                let Some(sof) = read_array_opt::<5>(r)? else {
                    return Ok(None);
                };
                return Ok(Some((be16(&sof[3..]).into(), be16(&sof[1..]).into())));
            }
            Some(Segment::Other { len, .. }) => r.seek_relative(i64::from(len) - 2)?,
        }
    }
}

/// Whether a JPEG holds its end-of-image marker after its first scan starts,
/// i.e. was not cut short. ffmpeg only warns of a missing end ("EOI missing,
/// emulating") and grey fills the rest: the video would be made and said to
/// have succeeded. Reads two bytes when the file ends with the marker (most
/// do), else the file from its first scan on: bytes may follow the end
/// (phones append data, a motion photo a whole MP4), and the EXIF thumbnail
/// before the scan holds an end marker of its own. Within a scan's data a
/// 0xFF is always followed by 0x00 or a restart code, so 0xFF 0xD9 there is
/// the end.
pub fn jpeg_is_whole(file: impl Read + Seek) -> io::Result<bool> {
    let mut r = BufReader::new(file);
    if r.seek(SeekFrom::End(0))? >= 4 {
        r.seek(SeekFrom::End(-2))?;
        if read_array::<2>(&mut r)? == [0xFF, 0xD9] {
            return Ok(true);
        }
    }
    r.seek(SeekFrom::Start(0))?;
    if read_array::<2>(&mut r)? != [0xFF, 0xD8] {
        return Ok(false);
    }
    loop {
        match next_segment(&mut r)? {
            None | Some(Segment::End) => return Ok(false),
            Some(Segment::ScanStart) => break,
            Some(Segment::Other { len, .. }) => r.seek_relative(i64::from(len) - 2)?,
        }
    }
    let mut after_ff = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        for &b in buf {
            if after_ff && b == 0xD9 {
                return Ok(true);
            }
            after_ff = b == 0xFF;
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// A JPEG segment's marker, read up to by [`next_segment`].
enum Segment {
    /// SOS: the entropy-coded data follows its header.
    ScanStart,
    /// EOI.
    End,
    /// Any other segment with a length, read past its length bytes: `len`
    /// counts those two.
    Other { code: u8, len: u16 },
}

/// The next segment: bytes that are not a marker where one is due are skipped
/// to the next one, as decoders do (libjpeg warns of "extraneous bytes").
/// `None` at the end of the file or at a length below 2.
fn next_segment(r: &mut impl Read) -> io::Result<Option<Segment>> {
    loop {
        // Up to a marker: 0xFF, any fill 0xFFs, then its code.
        let Some(mut code) = next_byte(r)? else {
            return Ok(None);
        };
        if code != 0xFF {
            continue;
        }
        while code == 0xFF {
            let Some(next) = next_byte(r)? else {
                return Ok(None);
            };
            code = next;
        }
        match code {
            // A stuffed zero, or markers without a length (TEM, RSTn).
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Ok(Some(Segment::End)),
            0xDA => return Ok(Some(Segment::ScanStart)),
            _ => {}
        }
        let Some(len) = read_array_opt::<2>(r)? else {
            return Ok(None);
        };
        let len = be16(&len);
        return Ok((len >= 2).then_some(Segment::Other { code, len }));
    }
}

fn next_byte(r: &mut impl Read) -> io::Result<Option<u8>> {
    Ok(read_array_opt::<1>(r)?.map(|[b]| b))
}

/// `N` bytes, or `None` at the end of the file.
fn read_array_opt<const N: usize>(r: &mut impl Read) -> io::Result<Option<[u8; N]>> {
    let mut buf = [0u8; N];
    match r.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// ImageWidth (256) and ImageLength (257) of the first image file directory.
fn tiff_size(r: &mut BufReader<impl Read + Seek>) -> io::Result<Option<(u32, u32)>> {
    let h = read_array::<8>(r)?;
    let little = &h[..2] == b"II";
    let u16_at = |b: &[u8]| if little { le16(b) } else { be16(b) };
    let u32_at = |b: &[u8]| if little { le32(b) } else { be32(b) };
    r.seek(SeekFrom::Start(u32_at(&h[4..]).into()))?;
    let Some(count) = read_array_opt::<2>(r)? else {
        return Ok(None);
    };
    let (mut width, mut height) = (None, None);
    for _ in 0..u16_at(&count) {
        let Some(entry) = read_array_opt::<12>(r)? else {
            return Ok(None);
        };
        let value = match u16_at(&entry[2..]) {
            3 => u32::from(u16_at(&entry[8..])),
            4 => u32_at(&entry[8..]),
            _ => continue,
        };
        match u16_at(&entry[..2]) {
            256 => width = Some(value),
            257 => height = Some(value),
            _ => {}
        }
    }
    Ok(width.zip(height))
}

/// What a non-image is, for the reason: never its bytes, which may be a
/// private page's or file's content (a reason travels to whoever submitted
/// the task).
pub fn describe_head(head: &[u8]) -> String {
    if head.is_empty() {
        "an empty body".to_string()
    } else {
        "no known image format in its first bytes".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn recognises_common_formats() {
        let cases: [(&[u8], Option<ImageKind>); 9] = [
            (b"\xFF\xD8\xFF\xE0\0\x10JFIF", Some(ImageKind::Jpeg)),
            (b"\x89PNG\r\n\x1a\n\0\0\0\x0d", Some(ImageKind::Png)),
            (b"GIF89a\x01\0", Some(ImageKind::Gif)),
            (b"RIFF\x24\0\0\0WEBPVP8 ", Some(ImageKind::Webp)),
            (b"BM\x36\0\0\0", Some(ImageKind::Bmp)),
            (b"II*\0\x08\0", Some(ImageKind::Tiff)),
            (b"<!DOCTYPE html><html>", None),
            (b"RIFF\x24\0\0\0WAVEfmt ", None),
            (b"", None),
        ];
        for (head, kind) in cases {
            assert_eq!(ImageKind::sniff(head), kind, "{head:?}");
        }
    }

    /// `WxH` images made by ffmpeg in `format`s: (file name, extra arguments).
    fn made(dir: &std::path::Path, name: &str, size: &str, args: &[&str]) -> std::fs::File {
        let path = dir.join(name);
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc=size={size}:rate=1"))
            .args(["-frames:v", "1"])
            .args(args)
            .arg(&path)
            .status()
            .expect("ffmpeg must be installed for these tests");
        assert!(status.success(), "ffmpeg could not make {name}");
        std::fs::File::open(path).unwrap()
    }

    #[test]
    fn dimensions_come_from_every_formats_header() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[&str], ImageKind); 8] = [
            ("a.jpg", &[], ImageKind::Jpeg),
            ("a.png", &[], ImageKind::Png),
            ("a.gif", &[], ImageKind::Gif),
            ("a.bmp", &[], ImageKind::Bmp),
            ("a.tiff", &[], ImageKind::Tiff),
            ("lossy.webp", &["-c:v", "libwebp"], ImageKind::Webp),
            (
                "lossless.webp",
                &["-c:v", "libwebp", "-lossless", "1"],
                ImageKind::Webp,
            ),
            // Animation makes an extended (VP8X) WebP: the last -frames:v counts.
            (
                "animated.webp",
                &["-frames:v", "2", "-c:v", "libwebp_anim"],
                ImageKind::Webp,
            ),
        ];
        let mut webp_chunks = Vec::new();
        for (name, args, kind) in cases {
            let mut file = made(dir.path(), name, "322x170", args);
            let mut head = [0u8; 16];
            file.read_exact(&mut head).unwrap();
            assert_eq!(ImageKind::sniff(&head), Some(kind), "{name}");
            if kind == ImageKind::Webp {
                webp_chunks.push(String::from_utf8_lossy(&head[12..]).into_owned());
            }
            file.rewind().unwrap();
            assert_eq!(dimensions(kind, file).unwrap(), Some((322, 170)), "{name}");
        }
        // Each of WebP's three headers was read.
        assert_eq!(webp_chunks, ["VP8 ", "VP8L", "VP8X"]);
    }

    #[test]
    fn a_jpegs_size_is_found_past_large_segments_and_stray_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpeg = Vec::new();
        made(dir.path(), "a.jpg", "640x480", &[])
            .read_to_end(&mut jpeg)
            .unwrap();
        // An EXIF-sized APP1 segment, and bytes that are no marker, before the rest.
        let mut big = jpeg[..2].to_vec();
        big.extend([0xFF, 0xE1, 0xFF, 0xF0]);
        big.resize(big.len() + 0xFFF0 - 2, 0xFF);
        big.extend([0x12, 0x34]);
        big.extend(&jpeg[2..]);
        let size = |bytes: &[u8]| dimensions(ImageKind::Jpeg, io::Cursor::new(bytes)).unwrap();
        assert_eq!(size(&big), Some((640, 480)));
        // Cut before its frame header, or not a JPEG after all: unknown.
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        assert_eq!(size(&jpeg[..sof + 4]), None);
        assert_eq!(size(b"\xFF\xD8\xFF\xE0garbage"), None);
        assert_eq!(size(b"\xFF\xD8\xFF\xDA\x00\x08"), None);
    }

    #[test]
    fn a_jpeg_cut_short_is_told_from_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpeg = Vec::new();
        made(dir.path(), "a.jpg", "640x480", &[])
            .read_to_end(&mut jpeg)
            .unwrap();
        let mut fine = Vec::new();
        made(dir.path(), "fine.jpg", "640x480", &["-q:v", "1"])
            .read_to_end(&mut fine)
            .unwrap();
        let whole = |bytes: &[u8]| jpeg_is_whole(io::Cursor::new(bytes)).unwrap();
        assert!(whole(&jpeg));
        // A thumbnail's own end marker, in an APP1 segment before the scan.
        let mut thumb = jpeg[..2].to_vec();
        thumb.extend([0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD8, 0xFF, 0xD9]);
        thumb.extend(&jpeg[2..]);
        assert!(whole(&thumb));
        let mut trailing = jpeg.clone();
        trailing.extend(b"\x00\x00ftypmp42 a motion photo's video");
        assert!(whole(&trailing), "bytes after the end");
        for cut in [jpeg.len() / 2, jpeg.len() - 1] {
            assert!(!whole(&jpeg[..cut]), "cut at {cut} of {}", jpeg.len());
            assert!(!whole(&thumb[..cut + 8]), "with a thumbnail, cut at {cut}");
        }
        assert!(whole(&fine));
        assert!(!whole(&fine[..fine.len() * 2 / 3]));
        assert!(!whole(b"\xFF\xD8"));
        assert!(!whole(b""));
    }

    #[test]
    fn headers_cut_short_have_no_size() {
        for kind in [
            ImageKind::Png,
            ImageKind::Gif,
            ImageKind::Bmp,
            ImageKind::Webp,
            ImageKind::Tiff,
        ] {
            let head = io::Cursor::new(&b"\x89PNG\r\n\x1a\n\0\0"[..]);
            assert_eq!(dimensions(kind, head).unwrap(), None, "{kind:?}");
        }
    }

    #[test]
    fn non_images_are_described_without_their_content() {
        let page = b"<html>\n<body>secret: AKIA1234</body></html>\n";
        let what = describe_head(page);
        assert_eq!(what, "no known image format in its first bytes");
        assert!(!what.contains("secret") && !what.contains("html"));
        assert_eq!(describe_head(b""), "an empty body");
    }
}
