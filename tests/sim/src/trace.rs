//! Chrome / Perfetto trace-event JSON ("JSON Array Format"): one track per
//! vCPU (`tid`), guest runs as B/E spans, everything else as instants.
//! Timestamps are microseconds of simulated time.

use alloc::{string::String, vec, vec::Vec};
use core::fmt::Write as _;

/// The events of one run, kept as JSON text.
#[derive(Debug)]
pub struct Trace {
    out: String,
    open: Vec<bool>,
}

/// JSON string escaping for the few characters our labels can hold.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

impl Trace {
    /// A trace with one named track per vCPU.
    pub fn new(vcpus: usize) -> Self {
        let mut out = String::from("[\n");
        for i in 0..vcpus {
            let _ = writeln!(
                out,
                "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{i},\"args\":{{\"name\":\"vCPU {i}\"}}}},"
            );
        }
        Self {
            out,
            open: vec![false; vcpus],
        }
    }

    fn ts(t: u64) -> f64 {
        t as f64 / 1000.0
    }

    /// Starts a span on vCPU `i`'s track.
    pub fn begin(&mut self, i: usize, t: u64, name: &str) {
        if let Some(open) = self.open.get_mut(i) {
            if *open {
                return;
            }
            *open = true;
        }
        let _ = writeln!(
            self.out,
            "{{\"name\":\"{}\",\"ph\":\"B\",\"ts\":{:.3},\"pid\":1,\"tid\":{i}}},",
            escape(name),
            Self::ts(t)
        );
    }

    /// Ends the open span on vCPU `i`'s track, if any.
    pub fn end(&mut self, i: usize, t: u64, name: &str) {
        match self.open.get_mut(i) {
            Some(open) if *open => *open = false,
            _ => return,
        }
        let _ = writeln!(
            self.out,
            "{{\"name\":\"{}\",\"ph\":\"E\",\"ts\":{:.3},\"pid\":1,\"tid\":{i}}},",
            escape(name),
            Self::ts(t)
        );
    }

    /// An instant event with one `detail` argument.
    pub fn instant(&mut self, i: usize, t: u64, name: &str, detail: &str) {
        let _ = writeln!(
            self.out,
            "{{\"name\":\"{}\",\"ph\":\"i\",\"s\":\"t\",\"ts\":{:.3},\"pid\":1,\"tid\":{i},\"args\":{{\"detail\":\"{}\"}}}},",
            escape(name),
            Self::ts(t),
            escape(detail)
        );
    }

    /// The finished JSON document (open spans closed at `t`).
    pub fn finish(mut self, t: u64) -> String {
        for i in 0..self.open.len() {
            self.end(i, t, "guest");
        }
        let _ = writeln!(
            self.out,
            "{{\"name\":\"end\",\"ph\":\"i\",\"s\":\"g\",\"ts\":{:.3},\"pid\":1,\"tid\":0}}\n]",
            Self::ts(t)
        );
        self.out
    }
}
