//! Which way up a photo goes. Phones and cameras store the sensor's pixels
//! as they come and write the turn that shows them upright in the EXIF
//! `Orientation` tag; viewers apply it. ffmpeg 5.1 applies it to an `-i`
//! input but not to a `movie=` source, so a task's video showed the same
//! photo upright or on its side depending on its size (see `Staging`). The
//! turn is applied here, the same on every path, with ffmpeg's own
//! autorotation off.

use std::io::{BufReader, Read, Seek};

use super::magic::ImageKind;

/// EXIF's orientation, 1 to 8: how the stored pixels turn to be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orientation(u8);

impl Default for Orientation {
    fn default() -> Self {
        Self::UPRIGHT
    }
}

impl Orientation {
    pub const UPRIGHT: Orientation = Orientation(1);

    /// The orientation that `file`'s EXIF data gives, for the formats that
    /// carry it in a chunk read on its own (JPEG, PNG, WebP: a TIFF would
    /// be read whole into memory). Upright when there is none, or it is
    /// unreadable or out of range: the pixels are still the photo.
    pub fn of(kind: ImageKind, file: impl Read + Seek) -> Self {
        if !matches!(kind, ImageKind::Jpeg | ImageKind::Png | ImageKind::Webp) {
            return Self::UPRIGHT;
        }
        let Ok(exif) = exif::Reader::new().read_from_container(&mut BufReader::new(file)) else {
            return Self::UPRIGHT;
        };
        exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
            .and_then(|o| u8::try_from(o).ok())
            .filter(|o| (1..=8).contains(o))
            .map_or(Self::UPRIGHT, Orientation)
    }

    /// The ffmpeg filters that turn the pixels upright, each followed by a
    /// comma (to go before the rest of a chain); empty when upright.
    pub fn filters(self) -> &'static str {
        match self.0 {
            2 => "hflip,",
            3 => "hflip,vflip,",
            4 => "vflip,",
            // Mirrored along the main diagonal.
            5 => "transpose=cclock_flip,",
            6 => "transpose=clock,",
            // Mirrored along the other diagonal.
            7 => "transpose=clock_flip,",
            8 => "transpose=cclock,",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest JPEG (start and end of image) with `orientation` in
    /// its EXIF data: enough for the EXIF reader.
    fn jpeg_with(orientation: u16) -> Vec<u8> {
        cloudkon_testkit::with_exif_orientation(&[0xFF, 0xD8, 0xFF, 0xD9], orientation)
    }

    #[test]
    fn the_exif_orientation_is_read_and_out_of_range_ones_are_upright() {
        let of = |o| Orientation::of(ImageKind::Jpeg, std::io::Cursor::new(jpeg_with(o)));
        for o in 1..=8u16 {
            assert_eq!(of(o), Orientation(o as u8));
        }
        assert_eq!(of(0), Orientation::UPRIGHT);
        assert_eq!(of(9), Orientation::UPRIGHT);
        // No EXIF at all, and a TIFF (not read).
        let plain = std::io::Cursor::new(vec![0xFF, 0xD8, 0xFF, 0xD9]);
        assert_eq!(
            Orientation::of(ImageKind::Jpeg, plain),
            Orientation::UPRIGHT
        );
        let tiff = std::io::Cursor::new(jpeg_with(6));
        assert_eq!(Orientation::of(ImageKind::Tiff, tiff), Orientation::UPRIGHT);
    }

    #[test]
    fn every_turn_has_its_filters() {
        assert_eq!(Orientation::UPRIGHT.filters(), "");
        assert_eq!(Orientation(6).filters(), "transpose=clock,");
        assert!((2..=8).all(|o| Orientation(o).filters().ends_with(',')));
    }
}
