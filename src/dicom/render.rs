//! Pixel data out of a stored object, for WADO-RS: frames decoded to their native bytes
//! (PS3.18 8.7.3.5.3, `application/octet-stream`), and a frame rendered to JPEG or PNG
//! (PS3.18 8.3.5.1, `rendered` and `thumbnail`) with its window or one the caller gives,
//! scaled to a viewport. Decoding is dicom-pixeldata's (the registry's codecs), image
//! encoding the `image` crate's — never our own codec. Works on one object in memory.

use dicom_pixeldata::PixelDecoder;

/// Most frames an object may claim (NumberOfFrames) for frames and bulk data to be
/// served from it.
const MAX_FRAMES: u32 = 100_000;

/// The image format of a rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
        }
    }
}

/// How to render (PS3.18 8.3.5.1.3): `window` as (center, width) instead of the object's
/// own; `viewport` as the largest (columns, rows), keeping the aspect ratio; JPEG
/// `quality` 1–100.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub window: Option<(f64, f64)>,
    pub viewport: Option<(u32, u32)>,
    pub quality: Option<u8>,
}

fn open(part10: &[u8]) -> Result<dicom_object::DefaultDicomObject, String> {
    if part10.len() < 132 {
        return Err("not a Part-10 object".into());
    }
    dicom_object::OpenFileOptions::new()
        .from_reader(&part10[128..])
        .map_err(|e| format!("cannot parse the stored object: {e}"))
}

/// How many frames the object holds (1 for a single-frame image); an error when it has
/// no pixel data.
pub fn number_of_frames(part10: &[u8]) -> Result<u32, String> {
    frame_count(&open(part10)?)
}

/// NumberOfFrames (0028,0008), 1 when absent; an error when there is no pixel data.
fn frame_count(obj: &dicom_object::DefaultDicomObject) -> Result<u32, String> {
    use dicom_dictionary_std::tags;
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err("the object has no pixel data".into());
    }
    let count = obj
        .element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    // NumberOfFrames comes from the object: more frames than a gigantic multi-frame
    // holds is a lie, not a reason to allocate
    if count > MAX_FRAMES {
        return Err(format!("NumberOfFrames {count} is more than {MAX_FRAMES}"));
    }
    Ok(count)
}

/// The decoded native bytes of each frame in `frames` (1-based, PS3.18 8.3.4.1), in
/// order: little endian, interleaved samples, as dicom-pixeldata decodes them.
pub fn frames(part10: &[u8], frames: &[u32]) -> Result<Vec<Vec<u8>>, String> {
    let obj = open(part10)?;
    let count = frame_count(&obj)?;
    frames
        .iter()
        .map(|&f| {
            if f == 0 || f > count {
                return Err(format!(
                    "frame {f} is not one of the object's {count} frames"
                ));
            }
            let decoded = obj
                .decode_pixel_data_frame(f - 1)
                .map_err(|e| format!("cannot decode frame {f}: {e}"))?;
            Ok(decoded.data().to_vec())
        })
        .collect()
}

/// One frame (1-based) rendered as `format` (see [`RenderOptions`]).
pub fn render(
    part10: &[u8],
    frame: u32,
    format: Format,
    options: &RenderOptions,
) -> Result<Vec<u8>, String> {
    use dicom_pixeldata::{ConvertOptions, VoiLutOption, WindowLevel};
    let obj = open(part10)?;
    let count = frame_count(&obj)?;
    if frame == 0 || frame > count {
        return Err(format!(
            "frame {frame} is not one of the object's {count} frames"
        ));
    }
    let decoded = obj
        .decode_pixel_data_frame(frame - 1)
        .map_err(|e| format!("cannot decode frame {frame}: {e}"))?;
    let mut convert = ConvertOptions::new();
    if let Some((center, width)) = options.window {
        convert = convert.with_voi_lut(VoiLutOption::Custom(WindowLevel { center, width }));
    }
    let mut image = decoded
        .to_dynamic_image_with_options(0, &convert)
        .map_err(|e| format!("cannot render frame {frame}: {e}"))?;
    if let Some((w, h)) = options.viewport {
        if w > 0 && h > 0 && (w < image.width() || h < image.height()) {
            image = image.resize(w, h, image::imageops::FilterType::Triangle);
        }
    }
    // 8 bits per sample for the encoders: grey stays grey, colour becomes RGB
    let image = if image.color().has_color() {
        image::DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        image::DynamicImage::ImageLuma8(image.to_luma8())
    };
    let mut out = std::io::Cursor::new(Vec::new());
    match format {
        Format::Png => image
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?,
        Format::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out,
                options.quality.unwrap_or(90).clamp(1, 100),
            );
            image
                .write_with_encoder(encoder)
                .map_err(|e| e.to_string())?
        }
    }
    Ok(out.into_inner())
}
