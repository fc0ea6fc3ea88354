//! Specific Character Set (0008,0005): text values decoded to Unicode, never lossily
//! (PS3.5 §6.1, PS3.3 C.12.1.1.2, PS3.5 Annexes H, I, J).
//!
//! - One term (`ISO_IR 100`, `ISO_IR 144`, `ISO_IR 192`, `GB18030`, …): the whole value in
//!   that set; the default repertoire (no term, `ISO_IR 6`) is ASCII.
//! - Several terms, or `ISO 2022 IR …` terms: ISO 2022 code extensions. The value starts in
//!   the first term's sets; escape sequences designate others into G0 (ASCII, JIS X 0201
//!   romaji, JIS X 0208, JIS X 0212) or G1 (the ISO 8859 parts, JIS X 0201 katakana,
//!   KS X 1001, GB 2312); at every delimiter (value `\`, PN `^` and `=`, CR, LF, TAB, FF)
//!   the designations return to the initial ones (PS3.5 §6.1.2.5.3).
//!
//! The code tables are encoding_rs's (WHATWG), except ISO 8859-1 (mapped byte for
//! byte) and JIS X 0201 (two code points and the half-width katakana block, by rule).
//! A byte a set cannot decode is an error, never a replacement character: callers decide
//! what to do with a value they cannot read.

use encoding_rs::Encoding as Codec;

/// A 94- or 96-character set designated into G0 (7-bit bytes) or G1 (8-bit bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Ascii,
    /// JIS X 0201 romaji (ISO-IR 14): ASCII with ¥ for 0x5C and ‾ for 0x7E.
    Romaji,
    /// JIS X 0208 (ISO-IR 87), two bytes per character.
    Jis0208,
    /// JIS X 0212 (ISO-IR 159), two bytes per character.
    Jis0212,
    /// JIS X 0201 katakana (ISO-IR 13): 0xA1–0xDF.
    Katakana,
    /// ISO 8859-1 (ISO-IR 100).
    Latin1,
    /// Another single-byte set whose upper half encoding_rs decodes.
    Upper(&'static Codec),
    /// KS X 1001 (ISO-IR 149), two bytes per character, as in EUC-KR.
    Ksx1001,
    /// GB 2312 (ISO-IR 58), two bytes per character, as in EUC-CN.
    Gb2312,
}

/// What a defined term of (0008,0005) designates: (G0, G1).
fn term_sets(term: &str) -> Option<(Set, Option<Set>)> {
    use encoding_rs as e;
    let number = term
        .strip_prefix("ISO 2022 IR ")
        .or_else(|| term.strip_prefix("ISO_IR "))
        .map(str::trim);
    Some(match (term, number) {
        ("", _) => (Set::Ascii, None),
        (_, Some("6")) => (Set::Ascii, None),
        (_, Some("13")) => (Set::Romaji, Some(Set::Katakana)),
        (_, Some("87")) => (Set::Jis0208, None),
        (_, Some("159")) => (Set::Jis0212, None),
        (_, Some("100")) => (Set::Ascii, Some(Set::Latin1)),
        (_, Some("101")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_2))),
        (_, Some("109")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_3))),
        (_, Some("110")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_4))),
        (_, Some("144")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_5))),
        (_, Some("127")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_6))),
        (_, Some("126")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_7))),
        (_, Some("138")) => (Set::Ascii, Some(Set::Upper(e::ISO_8859_8))),
        // ISO 8859-9 and TIS 620: their windows supersets agree on every graphic byte
        (_, Some("148")) => (Set::Ascii, Some(Set::Upper(e::WINDOWS_1254))),
        (_, Some("166")) => (Set::Ascii, Some(Set::Upper(e::WINDOWS_874))),
        (_, Some("149")) => (Set::Ascii, Some(Set::Ksx1001)),
        (_, Some("58")) => (Set::Ascii, Some(Set::Gb2312)),
        _ => return None,
    })
}

/// The set an escape sequence designates, and whether into G1 (PS3.3 Table C.12-4).
fn escape(seq: &[u8]) -> Option<(Set, bool)> {
    use encoding_rs as e;
    Some(match seq {
        b"(B" => (Set::Ascii, false),
        b"(J" => (Set::Romaji, false),
        b")I" => (Set::Katakana, true),
        b"$B" => (Set::Jis0208, false),
        b"$(D" => (Set::Jis0212, false),
        b"$)C" => (Set::Ksx1001, true),
        b"$)A" => (Set::Gb2312, true),
        b"-A" => (Set::Latin1, true),
        b"-B" => (Set::Upper(e::ISO_8859_2), true),
        b"-C" => (Set::Upper(e::ISO_8859_3), true),
        b"-D" => (Set::Upper(e::ISO_8859_4), true),
        b"-L" => (Set::Upper(e::ISO_8859_5), true),
        b"-G" => (Set::Upper(e::ISO_8859_6), true),
        b"-F" => (Set::Upper(e::ISO_8859_7), true),
        b"-H" => (Set::Upper(e::ISO_8859_8), true),
        b"-M" => (Set::Upper(e::WINDOWS_1254), true),
        b"-T" => (Set::Upper(e::WINDOWS_874), true),
        _ => return None,
    })
}

/// Decodes a text value written in `charset`, the value of (0008,0005) as stored
/// (terms separated by `\`). Errors name the term or byte that cannot be read.
pub fn decode(bytes: &[u8], charset: &str) -> Result<String, String> {
    let terms: Vec<&str> = charset.split('\\').map(str::trim).collect();
    let first = terms.first().copied().unwrap_or("");
    let extensions = terms.len() > 1 || first.starts_with("ISO 2022");
    match first {
        "ISO_IR 192" if !extensions => std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|e| format!("not UTF-8 (ISO_IR 192): {e}")),
        "GB18030" | "GBK" if !extensions => {
            let codec = if first == "GB18030" {
                encoding_rs::GB18030
            } else {
                encoding_rs::GBK
            };
            codec
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(|s| s.into_owned())
                .ok_or_else(|| format!("bytes that {first} cannot decode"))
        }
        _ => {
            let initial =
                term_sets(first).ok_or_else(|| format!("unknown character set {first:?}"))?;
            if !extensions && bytes.contains(&0x1B) {
                return Err(format!(
                    "an escape sequence in a value whose character set ({first:?}) has no code extensions"
                ));
            }
            for t in &terms[1..] {
                term_sets(t).ok_or_else(|| format!("unknown character set {t:?}"))?;
            }
            decode_2022(bytes, initial)
        }
    }
}

/// The ISO 2022 state machine: runs of bytes under the current (G0, G1), split at escape
/// sequences and at delimiters (where the initial designations return).
fn decode_2022(bytes: &[u8], initial: (Set, Option<Set>)) -> Result<String, String> {
    let (mut g0, mut g1) = initial;
    let mut out = String::with_capacity(bytes.len());
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0x1B {
            out.push_str(&decode_run(&run, g0, g1)?);
            run.clear();
            // ESC, intermediate bytes 0x20–0x2F, one final byte 0x30–0x7E
            let mut end = i + 1;
            while end < bytes.len() && (0x20..=0x2F).contains(&bytes[end]) {
                end += 1;
            }
            if end >= bytes.len() {
                return Err(format!("a truncated escape sequence at byte {i}"));
            }
            let seq = &bytes[i + 1..=end];
            let (set, upper) = escape(seq).ok_or_else(|| {
                format!(
                    "an escape sequence ESC {} that designates no supported set",
                    String::from_utf8_lossy(seq)
                )
            })?;
            if upper {
                g1 = Some(set);
            } else {
                g0 = set;
            }
            i = end + 1;
            continue;
        }
        // a delimiter is always ASCII, and returns to the initial designations (a
        // two-byte set in G0 cannot contain it: its bytes are 0x21–0x7E pairs, and
        // the delimiters below are outside that range or are checked pairwise)
        let in_pair = matches!(g0, Set::Jis0208 | Set::Jis0212) && b < 0x80;
        if !in_pair && matches!(b, b'\\' | b'^' | b'=' | b'\r' | b'\n' | b'\t' | 0x0C) {
            out.push_str(&decode_run(&run, g0, g1)?);
            run.clear();
            out.push(b as char);
            (g0, g1) = initial;
            i += 1;
            continue;
        }
        run.push(b);
        i += 1;
    }
    out.push_str(&decode_run(&run, g0, g1)?);
    Ok(out)
}

/// One run under fixed designations: 7-bit bytes in G0, 8-bit bytes in G1.
fn decode_run(run: &[u8], g0: Set, g1: Option<Set>) -> Result<String, String> {
    let mut out = String::new();
    let mut start = 0;
    while start < run.len() {
        let high = run[start] >= 0x80;
        let end = run[start..]
            .iter()
            .position(|b| (*b >= 0x80) != high)
            .map_or(run.len(), |n| start + n);
        let part = &run[start..end];
        if high {
            let set = g1.ok_or_else(|| {
                format!(
                    "byte {:#04X} outside the character set's repertoire (no G1 set designated)",
                    part[0]
                )
            })?;
            out.push_str(&decode_set(part, set)?);
        } else {
            out.push_str(&decode_set(part, g0)?);
        }
        start = end;
    }
    Ok(out)
}

fn decode_set(part: &[u8], set: Set) -> Result<String, String> {
    let strict = |codec: &'static Codec, bytes: &[u8]| {
        codec
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|s| s.into_owned())
            .ok_or_else(|| format!("bytes that {} cannot decode", codec.name()))
    };
    match set {
        Set::Ascii => Ok(part.iter().map(|&b| b as char).collect()),
        Set::Latin1 => Ok(part.iter().map(|&b| b as char).collect()),
        Set::Romaji => Ok(part
            .iter()
            .map(|&b| match b {
                0x5C => '¥',
                0x7E => '‾',
                _ => b as char,
            })
            .collect()),
        Set::Katakana => part
            .iter()
            .map(|&b| match b {
                0xA1..=0xDF => char::from_u32(0xFF61 + (b - 0xA1) as u32)
                    .ok_or_else(|| "bad katakana".to_string()),
                _ => Err(format!("byte {b:#04X} is not JIS X 0201 katakana")),
            })
            .collect(),
        Set::Upper(codec) => strict(codec, part),
        Set::Jis0208 => {
            let mut wrapped = b"\x1b$B".to_vec();
            wrapped.extend_from_slice(part);
            wrapped.extend_from_slice(b"\x1b(B");
            strict(encoding_rs::ISO_2022_JP, &wrapped)
        }
        Set::Jis0212 => {
            if part.len() % 2 == 1 {
                return Err("an odd number of JIS X 0212 bytes".into());
            }
            let euc: Vec<u8> = part
                .chunks(2)
                .flat_map(|p| [0x8F, p[0] | 0x80, p[1] | 0x80])
                .collect();
            strict(encoding_rs::EUC_JP, &euc)
        }
        Set::Ksx1001 => strict(encoding_rs::EUC_KR, part),
        Set::Gb2312 => strict(encoding_rs::GBK, part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of PS3.5 Annexes H, I and J, byte for byte.
    #[test]
    fn the_standards_examples_decode() {
        // H.3.1: ISO 2022 IR 87 (Japanese, kanji and hiragana in G0)
        let h31 =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            decode(h31, "\\ISO 2022 IR 87").unwrap(),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
        // H.3.2: ISO 2022 IR 13 first (half-width katakana in G1)
        let h32 = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            decode(h32, "ISO 2022 IR 13\\ISO 2022 IR 87").unwrap(),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
        // I.2: ISO 2022 IR 149 (Korean, KS X 1001 in G1)
        let i2 = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            decode(i2, "\\ISO 2022 IR 149").unwrap(),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
        // J.3: GB18030
        let x2 = b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=";
        assert_eq!(decode(x2, "GB18030").unwrap(), "Wang^XiaoDong=王^小东=");
        // single-byte sets
        assert_eq!(
            decode(b"Buc^J\xe9r\xf4me", "ISO_IR 100").unwrap(),
            "Buc^Jérôme"
        );
        assert_eq!(
            decode(b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2", "ISO_IR 126").unwrap(),
            "Διονυσιος"
        );
        assert_eq!(
            decode("王^小東".as_bytes(), "ISO_IR 192").unwrap(),
            "王^小東"
        );
    }

    #[test]
    fn what_cannot_be_read_is_an_error_not_a_replacement() {
        assert!(decode(b"\xff\xfe", "ISO_IR 192").is_err());
        assert!(decode(b"abc", "ISO_IR 999").is_err());
        assert!(
            decode(b"M\xfcller", "").is_err(),
            "the default repertoire is ASCII"
        );
        assert!(decode(b"\x1b$Z", "\\ISO 2022 IR 87").is_err());
    }
}
