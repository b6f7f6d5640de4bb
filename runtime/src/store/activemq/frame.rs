//! STOMP 1.2 frames on the wire, as a `tokio-util` codec.
//!
//! A frame is a command line, header lines `name:value`, an empty line, the
//! body and a NUL octet; lines end in LF or CR LF. Between frames a lone
//! end of line is a heart-beat. Header names and values are escaped (`\r`,
//! `\n`, `\c` for `:`, `\\`), except in `CONNECT` and `CONNECTED` frames; an
//! undefined escape is an error. When a header repeats, the first one
//! counts. A body is `content-length` octets (it may hold NULs), or, without
//! that header, everything up to the first NUL. The decoder refuses a
//! header section or a body over its limits instead of buffering them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    /// In the order they came; the first of a name counts.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// With header `name: value` added.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// With `body`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of header `name` (its first occurrence).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether its headers are written and read as they are (no escapes).
    fn raw_headers(&self) -> bool {
        raw_headers(&self.command)
    }
}

fn raw_headers(command: &str) -> bool {
    command == "CONNECT" || command == "CONNECTED"
}

/// What the decoder reads: a frame, or a heart-beat between frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    HeartBeat,
}

/// Why bytes on the wire are not a frame; the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("STOMP frame {what} larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("malformed STOMP frame: {0}")]
    Malformed(String),
}

fn malformed(why: impl Into<String>) -> FrameError {
    FrameError::Malformed(why.into())
}

/// The STOMP frame codec, with its limits.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Bytes of the command and header lines.
    pub max_headers: usize,
    pub max_body: usize,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec {
            max_headers: 64 << 10,
            max_body: 16 << 20,
        }
    }
}

/// `\r`, `\n`, `\c`, `\\` back to what they stand for.
fn unescape(text: &str) -> Result<String, FrameError> {
    // Most values escape nothing: copy them whole.
    if memchr::memchr(b'\\', text.as_bytes()).is_none() {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                return Err(malformed(format!("undefined escape \\{other} in a header")));
            }
            None => return Err(malformed("a header ends in a lone backslash")),
        }
    }
    Ok(out)
}

fn escape_into(text: &str, out: &mut BytesMut) {
    for c in text.chars() {
        match c {
            '\r' => out.put_slice(b"\\r"),
            '\n' => out.put_slice(b"\\n"),
            ':' => out.put_slice(b"\\c"),
            '\\' => out.put_slice(b"\\\\"),
            c => {
                let mut utf8 = [0; 4];
                out.put_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// The line starting at `from`, without its end of line, and where the next starts.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let at = from + memchr::memchr(b'\n', &buf[from..])?;
    let line = &buf[from..at];
    Some((line.strip_suffix(b"\r").unwrap_or(line), at + 1))
}

fn text(bytes: &[u8], what: &str) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

impl Decoder for Codec {
    type Item = Item;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        match buf.first() {
            None => return Ok(None),
            Some(b'\n') => {
                buf.advance(1);
                return Ok(Some(Item::HeartBeat));
            }
            Some(b'\r') if buf.len() < 2 => return Ok(None),
            Some(b'\r') if buf[1] == b'\n' => {
                buf.advance(2);
                return Ok(Some(Item::HeartBeat));
            }
            Some(_) => {}
        }
        // The command and header lines, up to the empty line.
        let mut lines = Vec::new();
        let mut at = 0;
        let body_start = loop {
            let Some((content, next)) = line(buf, at) else {
                if buf.len() > self.max_headers {
                    return Err(FrameError::TooLarge {
                        what: "headers",
                        limit: self.max_headers,
                    });
                }
                return Ok(None);
            };
            if next > self.max_headers {
                return Err(FrameError::TooLarge {
                    what: "headers",
                    limit: self.max_headers,
                });
            }
            if content.is_empty() {
                break next;
            }
            lines.push((at, at + content.len()));
            at = next;
        };
        let Some(&(start, end)) = lines.first() else {
            return Err(malformed("no command"));
        };
        let command = text(&buf[start..end], "the command")?;
        let raw = raw_headers(&command);
        let mut headers = Vec::with_capacity(lines.len() - 1);
        for &(start, end) in &lines[1..] {
            let header = text(&buf[start..end], "a header")?;
            let Some((name, value)) = header.split_once(':') else {
                return Err(malformed(format!("header {header:?} has no ':'")));
            };
            headers.push(if raw {
                (name.to_owned(), value.to_owned())
            } else {
                (unescape(name)?, unescape(value)?)
            });
        }
        let declared = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| malformed(format!("content-length {v:?} is not a number")))
            })
            .transpose()?;
        let body_end = match declared {
            Some(length) => {
                if length > self.max_body {
                    return Err(FrameError::TooLarge {
                        what: "body",
                        limit: self.max_body,
                    });
                }
                let end = body_start + length;
                match buf.get(end) {
                    None => {
                        buf.reserve(end + 1 - buf.len());
                        return Ok(None);
                    }
                    Some(0) => end,
                    Some(_) => return Err(malformed("no NUL after content-length octets")),
                }
            }
            None => match memchr::memchr(0, &buf[body_start..]) {
                Some(n) if n > self.max_body => {
                    return Err(FrameError::TooLarge {
                        what: "body",
                        limit: self.max_body,
                    });
                }
                Some(n) => body_start + n,
                None if buf.len() - body_start > self.max_body => {
                    return Err(FrameError::TooLarge {
                        what: "body",
                        limit: self.max_body,
                    });
                }
                None => return Ok(None),
            },
        };
        let mut frame = buf.split_to(body_end + 1);
        frame.truncate(body_end);
        let body = frame.split_off(body_start).freeze();
        Ok(Some(Item::Frame(Frame {
            command,
            headers,
            body,
        })))
    }
}

impl Encoder<Frame> for Codec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        let raw = frame.raw_headers();
        if frame.command.is_empty() || frame.command.contains(['\r', '\n']) {
            return Err(malformed(format!("command {:?}", frame.command)));
        }
        out.reserve(frame.command.len() + frame.body.len() + 64);
        out.put_slice(frame.command.as_bytes());
        out.put_u8(b'\n');
        for (name, value) in &frame.headers {
            if raw {
                if name.contains([':', '\r', '\n']) || value.contains(['\r', '\n']) {
                    return Err(malformed(format!(
                        "header {name:?} of a {} frame cannot be escaped",
                        frame.command
                    )));
                }
                out.put_slice(name.as_bytes());
                out.put_u8(b':');
                out.put_slice(value.as_bytes());
            } else {
                escape_into(name, out);
                out.put_u8(b':');
                escape_into(value, out);
            }
            out.put_u8(b'\n');
        }
        // A body always travels with its length: it may hold NULs.
        if !frame.body.is_empty() && frame.get("content-length").is_none() {
            out.put_slice(format!("content-length:{}\n", frame.body.len()).as_bytes());
        }
        out.put_u8(b'\n');
        out.put_slice(&frame.body);
        out.put_u8(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> BytesMut {
        let mut out = BytesMut::new();
        Codec::default()
            .encode(frame, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    /// Everything `bytes` decodes to, fed in pieces of `sizes` (cycled).
    fn decode_in_pieces(codec: &mut Codec, bytes: &[u8], sizes: &[usize]) -> Vec<Item> {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = sizes[i % sizes.len()].max(1).min(bytes.len() - at);
            i += 1;
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            while let Some(item) = codec.decode(&mut buf).unwrap_or_else(|e| panic!("{e}")) {
                items.push(item);
            }
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        items
    }

    fn message() -> Frame {
        Frame::new("MESSAGE")
            .header("destination", "/queue/a:b")
            .header("wharf-header", "line one\nline two\r\\end")
            .body(Bytes::from_static(b"{\"a\":1}\0with a NUL"))
    }

    #[test]
    fn a_frame_goes_through_with_escaped_headers_and_a_body_holding_nuls() {
        let bytes = encode(message());
        assert!(
            bytes.starts_with(b"MESSAGE\ndestination:/queue/a\\cb\nwharf-header:line one\\nline two\\r\\\\end\ncontent-length:18\n\n"),
            "{bytes:?}"
        );
        let items = decode_in_pieces(&mut Codec::default(), &bytes, &[bytes.len()]);
        let expected = message().header("content-length", "18");
        assert_eq!(items, vec![Item::Frame(expected)]);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same_with_heart_beats_between() {
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&encode(message()));
        stream.extend_from_slice(b"\n\r\n");
        stream.extend_from_slice(b"RECEIPT\r\nreceipt-id:7\r\n\r\n\0");
        stream.extend_from_slice(&encode(Frame::new("MESSAGE").body(&b"x"[..])));
        let whole = decode_in_pieces(&mut Codec::default(), &stream, &[stream.len()]);
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(whole[1], Item::HeartBeat);
        assert_eq!(whole[2], Item::HeartBeat);
        let Item::Frame(receipt) = &whole[3] else {
            panic!("{whole:?}")
        };
        assert_eq!(receipt.get("receipt-id"), Some("7"));
        // Every way of cutting the stream (pseudo-random piece sizes) gives
        // the same items.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let sizes: Vec<usize> = (0..8)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 17) as usize + 1
                })
                .collect();
            assert_eq!(
                decode_in_pieces(&mut Codec::default(), &stream, &sizes),
                whole
            );
        }
    }

    #[test]
    fn the_first_of_a_repeated_header_counts_and_connected_is_not_unescaped() {
        let mut buf =
            BytesMut::from(&b"CONNECTED\nversion:1.2\nserver:ActiveMQ\\5\nversion:1.0\n\n\0"[..]);
        let Some(Item::Frame(frame)) = Codec::default().decode(&mut buf).unwrap_or(None) else {
            panic!("no frame")
        };
        assert_eq!(frame.get("version"), Some("1.2"));
        assert_eq!(frame.get("server"), Some("ActiveMQ\\5"));
    }

    #[test]
    fn malformed_and_oversize_frames_are_refused_not_buffered() {
        let refused = |bytes: &[u8], codec: &mut Codec| {
            let mut buf = BytesMut::from(bytes);
            match codec.decode(&mut buf) {
                Err(e) => e.to_string(),
                Ok(item) => panic!("accepted {item:?}"),
            }
        };
        let mut codec = Codec {
            max_headers: 64,
            max_body: 8,
        };
        assert!(refused(b"SEND\nbad\\tescape:1\n\n\0", &mut codec).contains("undefined escape"));
        assert!(refused(b"SEND\nno colon\n\n\0", &mut codec).contains("no ':'"));
        assert!(refused(b"SEND\ncontent-length:x\n\n\0", &mut codec).contains("not a number"));
        assert!(refused(b"SEND\ncontent-length:2\n\nabc\0", &mut codec).contains("no NUL"));
        // Over the limits, declared or not, and before the frame is whole.
        assert!(refused(b"SEND\ncontent-length:9\n\n", &mut codec).contains("body larger than 8"));
        assert!(refused(b"SEND\n\n123456789", &mut codec).contains("body larger than 8"));
        let long = format!("SEND\nh:{}", "v".repeat(80));
        assert!(refused(long.as_bytes(), &mut codec).contains("headers larger than 64"));
        // An encoder cannot put a line break into a CONNECT header.
        let mut out = BytesMut::new();
        let connect = Frame::new("CONNECT").header("login", "a\nb");
        assert!(Codec::default().encode(connect, &mut out).is_err());
    }

    #[test]
    fn random_bytes_never_panic_and_always_end_in_a_frame_an_error_or_a_wait() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"SEND\nMESSAGE:\\cnr\r\0content-length:3 x";
        for _ in 0..2000 {
            let mut codec = Codec {
                max_headers: 256,
                max_body: 64,
            };
            let mut buf = BytesMut::new();
            for _ in 0..(seed % 120) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.put_u8(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            // Decode until it waits or fails; each step consumes or stops.
            for _ in 0..200 {
                let before = buf.len();
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => assert!(buf.len() < before, "an item consumed nothing"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
