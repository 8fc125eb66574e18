//! Reading one input event and writing it back the way orjson would.
//!
//! The Python path decodes a record with `orjson.loads`, updates the document and encodes it
//! with `orjson.dumps`. Here the record's bytes are read once and written out as that round
//! trip writes them: no whitespace, numbers in orjson's form, strings as they were. Whatever this
//! reader is not sure to write the same way is declined (`None`), and the Python path handles
//! the record: escapes in strings, integers of 19 or more digits, `-0`, duplicate keys, a
//! number that overflows, a key the output sets, anything that is not JSON. Declining is
//! always safe: it only costs speed.

/// What routing needs from an accepted event.
pub struct Event<'a> {
    /// The id's UTF-8 bytes, without quotes (no escapes: those are declined).
    pub id: &'a [u8],
    pub logits: Vec<f64>,
    /// Each label as its JSON string, quotes included (no escapes: those are declined).
    pub labels: Option<Vec<&'a [u8]>>,
}

/// What an event must be for this reader to take it. Every value is Python's, handed over by
/// `worker/core/native.py` (`events.InputEvent`, `events.FAST_MAX_BRACKETS`, the output
/// schema's keys): none is written here.
pub struct Rules {
    pub max_bytes: usize,
    pub max_classes: usize,
    pub min_classes: usize,
    /// `InputEvent.id`'s length in characters (code points, not bytes).
    pub max_id_chars: usize,
    /// At most this many brackets: nesting then stays far inside `events.MAX_DEPTH`, and the
    /// recursion here shallow.
    pub max_brackets: usize,
    /// Top-level keys the output sets; an input carrying one is left to the Python path, which
    /// keeps its place in the object.
    pub output_keys: Vec<Vec<u8>>,
}

/// A token the number grammar above has checked: ASCII digits, signs, `.`, `e` and `E` only.
fn ascii(token: &[u8]) -> &str {
    debug_assert!(token.is_ascii());
    // SAFETY: ASCII is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(token) }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            out.extend_from_slice(word);
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes, written as it was; returns it with its quotes.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => return None,
                0..=0x1f => return None,
                _ => {}
            }
        }
        let s = &self.b[start..self.i];
        out.extend_from_slice(s);
        Some(s)
    }

    /// A number token: `Ok(Some(v))` for a float, `Ok(None)` for an integer (written as is).
    fn number(&mut self, out: &mut Vec<u8>) -> Option<Option<f64>> {
        let b = self.b;
        let start = self.i;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - s
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return None,
        }
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return None;
            }
            float = true;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return None;
            }
            float = true;
        }
        self.i = i;
        let token = &b[start..i];
        if !float {
            // orjson reads an integer from i64::MIN to u64::MAX as a Python int, which writes
            // back as the same digits, except `-0` (as 0); past that range, as a float
            // (both declined).
            if token == b"-0" || token.len() > 20 {
                return None;
            }
            let n: i128 = ascii(token).parse().ok()?;
            if n < i64::MIN as i128 || n > u64::MAX as i128 {
                return None;
            }
            out.extend_from_slice(token);
            return Some(None);
        }
        // Rust's parse is correctly rounded, as orjson's is.
        let v: f64 = ascii(token).parse().ok()?;
        if !v.is_finite() {
            return None;
        }
        write_f64(out, v);
        Some(Some(v))
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string(out).map(|_| ()),
            b'{' => self.object(out),
            b'[' => self.array(out),
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            _ => self.number(out).map(|_| ()),
        }
    }

    fn array(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.list(out, |r, out| r.value(out))
    }

    /// `[]` or `[` item (`,` item)* `]`, written as read; `item` reads and writes one element.
    fn list(
        &mut self,
        out: &mut Vec<u8>,
        item: impl FnMut(&mut Self, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        self.delimited(b'[', b']', out, item)
    }

    /// `open` `close`, or `open` item (`,` item)* `close`, written as read.
    fn delimited(
        &mut self,
        open: u8,
        close: u8,
        out: &mut Vec<u8>,
        mut item: impl FnMut(&mut Self, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        out.push(open);
        if self.eat(close).is_some() {
            out.push(close);
            return Some(());
        }
        loop {
            item(self, out)?;
            if self.eat(b',').is_some() {
                out.push(b',');
            } else {
                self.eat(close)?;
                out.push(close);
                return Some(());
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let mut keys: Vec<&[u8]> = Vec::new();
        self.delimited(b'{', b'}', out, |r, out| {
            let key = r.string(out)?;
            if keys.contains(&key) {
                return None; // orjson keeps the last value at the first place: left to Python
            }
            keys.push(key);
            r.eat(b':')?;
            out.push(b':');
            r.value(out)
        })
    }

    fn string_or_null(&mut self, out: &mut Vec<u8>) -> Option<Option<&'a [u8]>> {
        self.ws();
        if self.peek()? == b'n' {
            self.literal(b"null", out)?;
            Some(None)
        } else {
            self.string(out).map(Some)
        }
    }
}

/// Reads `raw` as one event, writing the document without its closing brace into `out`.
/// `None`: not read here (the Python path decides, and names any refusal).
pub fn read_event<'a>(raw: &'a [u8], rules: &Rules, out: &mut Vec<u8>) -> Option<Event<'a>> {
    if raw.len() > rules.max_bytes || std::str::from_utf8(raw).is_err() {
        return None;
    }
    if raw.iter().filter(|&&c| c == b'[' || c == b'{').count() > rules.max_brackets {
        return None;
    }
    let mut r = Reader { b: raw, i: 0 };
    r.eat(b'{')?;
    out.push(b'{');
    let mut keys: Vec<&[u8]> = Vec::with_capacity(8);
    let mut logits: Option<Vec<f64>> = None;
    let mut labels: Option<Vec<&[u8]>> = None;
    let mut id: Option<&[u8]> = None;
    loop {
        if !keys.is_empty() {
            out.push(b',');
        }
        let quoted = r.string(out)?;
        let key = &quoted[1..quoted.len() - 1];
        if keys.contains(&key) || rules.output_keys.iter().any(|k| k == key) {
            return None;
        }
        keys.push(key);
        r.eat(b':')?;
        out.push(b':');
        r.ws();
        match key {
            b"id" => {
                let s = r.string(out)?;
                let chars = s[1..s.len() - 1]
                    .iter()
                    .filter(|&&c| (c & 0xC0) != 0x80)
                    .count();
                if !(1..=rules.max_id_chars).contains(&chars) {
                    return None;
                }
                id = Some(&s[1..s.len() - 1]);
            }
            b"logits" => {
                let mut v = Vec::new();
                r.list(out, |r, out| {
                    r.ws();
                    if r.peek()? == b'n' {
                        r.literal(b"null", out)?;
                        v.push(f64::NEG_INFINITY); // a masked class
                    } else {
                        // Floats only: an integer logit goes through the model's check.
                        v.push(r.number(out)??);
                    }
                    (v.len() <= rules.max_classes).then_some(())
                })?;
                logits = Some(v);
            }
            b"labels" => {
                if r.peek()? == b'n' {
                    r.literal(b"null", out)?;
                } else {
                    let mut v = Vec::new();
                    r.list(out, |r, out| {
                        v.push(r.string(out)?);
                        Some(())
                    })?;
                    labels = Some(v);
                }
            }
            b"model" | b"ts" => {
                r.string_or_null(out)?;
            }
            b"metadata" => {
                if r.peek()? == b'n' {
                    r.literal(b"null", out)?;
                } else if r.peek()? == b'{' {
                    r.object(out)?;
                } else {
                    return None;
                }
            }
            _ => r.value(out)?,
        }
        if r.eat(b',').is_none() {
            r.eat(b'}')?;
            break;
        }
    }
    r.ws();
    if r.i != raw.len() {
        return None;
    }
    let id = id?;
    let logits = logits?;
    if logits.len() < rules.min_classes {
        return None;
    }
    if let Some(l) = &labels {
        if l.len() != logits.len() {
            return None;
        }
    }
    Some(Event { id, logits, labels })
}

/// `v` (finite) as orjson writes it: the shortest digits that read back as `v` (zmij), in
/// positional form for decimal exponents -5 to 15 (`0.00001`, `1000000000000000.0`), else in
/// scientific form with a signed exponent (`1e-7`, `1e+16`). zmij lays digits out that way but
/// for the sign of a positive exponent (`1e16`), added here. `tests/unit/test_native.py`
/// holds this against `orjson.dumps` on random bit patterns and hypothesis floats.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(v).as_bytes();
    // No exponent in this range (its ends are tested): skip the scan, a fifth of the time here.
    if (1e-5..1e15).contains(&v.abs()) {
        out.extend_from_slice(text);
        return;
    }
    // An exponent has at most three digits and a sign: look for its `e` near the end only.
    let from = text.len().saturating_sub(5);
    match text[from..]
        .iter()
        .position(|&c| c == b'e')
        .map(|p| p + from)
    {
        Some(p) if !matches!(text[p + 1], b'-' | b'+') => {
            out.extend_from_slice(&text[..=p]);
            out.push(b'+');
            out.extend_from_slice(&text[p + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
}

pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    let mut u = v.unsigned_abs();
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// Limits for these tests alone; the worker's come from Python.
    fn rules() -> Rules {
        Rules {
            max_bytes: 1 << 20,
            max_classes: 100,
            min_classes: 2,
            max_id_chars: 8,
            max_brackets: 64,
            output_keys: vec![b"margin".to_vec()],
        }
    }

    #[test]
    fn floats_as_orjson_writes_them() {
        // Each pair printed by orjson 3.13 (`orjson.dumps(v)`).
        let cases = [
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.0, "123456.0"),
            (1e-5, "0.00001"),
            (1e-6, "1e-6"),
            // the ends of the range written without looking for an exponent
            (9.999999999999999e-6, "9.999999999999999e-6"),
            (-1e-5, "-0.00001"),
            (-2.5e-6, "-2.5e-6"),
            (999999999999999.8, "999999999999999.8"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1234567890123456.7, "1234567890123456.8"),
            (9.99 * 1e-5, "0.00009990000000000002"),
            (-12.5, "-12.5"),
            (100.0, "100.0"),
        ];
        for (v, want) in cases {
            assert_eq!(f(v), want, "{v:e}");
        }
    }

    #[test]
    fn an_event_is_written_back_without_whitespace() {
        let raw = br#" { "id" : "a", "logits" : [ 1.5 , null , 2e0 ], "n": [1, {"x": true}] } "#;
        let mut out = Vec::new();
        let ev = read_event(raw, &rules(), &mut out).unwrap();
        assert_eq!(ev.logits[2], 2.0);
        assert_eq!(
            out,
            br#"{"id":"a","logits":[1.5,null,2.0],"n":[1,{"x":true}]"#
        );
    }

    #[test]
    fn what_it_declines() {
        for raw in [
            &br#"{"id": "a\n", "logits": [1.0, 2.0]}"#[..],
            br#"{"id": "a", "logits": [1, 2.0]}"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "id": "b"}"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "margin": 1}"#,
            br#"{"id": "a", "logits": [1.0, 1e999]}"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "x": -0}"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "x": 18446744073709551616}"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "x": -9223372036854775809}"#,
            br#"{"id": "", "logits": [1.0, 2.0]}"#,
            br#"{"id": "123456789", "logits": [1.0, 2.0]}"#,
            br#"{"id": "a", "logits": [1.0]}"#,
            br#"{"id": "a", "logits": [1.0, 2.0]} x"#,
            br#"{"id": "a", "logits": [1.0, 2.0], "labels": ["x"]}"#,
        ] {
            assert!(
                read_event(raw, &rules(), &mut Vec::new()).is_none(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
