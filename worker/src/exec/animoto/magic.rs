//! Image formats recognised by their first bytes: a URL that answers with an
//! HTML error page or a text body is rejected with a reason, before ffmpeg sees it.

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

    #[test]
    fn non_images_are_described_without_their_content() {
        let page = b"<html>\n<body>secret: AKIA1234</body></html>\n";
        let what = describe_head(page);
        assert_eq!(what, "no known image format in its first bytes");
        assert!(!what.contains("secret") && !what.contains("html"));
        assert_eq!(describe_head(b""), "an empty body");
    }
}
