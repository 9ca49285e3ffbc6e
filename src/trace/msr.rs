//! The MSR Cambridge CSV (SNIA IOTTA): `Timestamp,Hostname,DiskNumber,Type,
//! Offset,Size,ResponseTime`, no header, timestamps in Windows FILETIME
//! ticks of 100 ns.

use std::{io::BufRead, path::Path};

use super::{check_extent, field, parse_u64, DeviceIds, Lines, Op, Request, Result};

/// FILETIME ticks per second.
const TICKS_PER_SEC: f64 = 10_000_000.0;

/// Streams [`Request`]s from an MSR Cambridge trace; timestamps become
/// seconds since the first record, devices are `Hostname/DiskNumber`.
pub struct MsrReader {
    lines: Lines,
    devices: DeviceIds,
    first_ts: Option<u64>,
}

impl MsrReader {
    pub fn new(name: &Path, reader: Box<dyn BufRead + Send>) -> Self {
        Self {
            lines: Lines::new(name.to_path_buf(), reader),
            devices: DeviceIds::default(),
            first_ts: None,
        }
    }

    fn parse(&mut self) -> Result<Option<Request>> {
        if !self.lines.advance()? {
            return Ok(None);
        }
        let lines = &self.lines;
        let mut f = lines.current().split(',');
        let ts = parse_u64(field(&mut f, lines, "Timestamp")?, lines, "Timestamp")?;
        let host = field(&mut f, lines, "Hostname")?;
        let disk = field(&mut f, lines, "DiskNumber")?;
        let op = match field(&mut f, lines, "Type")? {
            t if t.eq_ignore_ascii_case("read") => Op::Read,
            t if t.eq_ignore_ascii_case("write") => Op::Write,
            other => {
                return Err(lines.malformed(format!(
                    "column 'Type': expected Read or Write, got '{other}'"
                )))
            }
        };
        let offset = parse_u64(field(&mut f, lines, "Offset")?, lines, "Offset")?;
        let len = parse_u64(field(&mut f, lines, "Size")?, lines, "Size")?;
        check_extent(offset, len, lines, "Size")?;
        parse_u64(field(&mut f, lines, "ResponseTime")?, lines, "ResponseTime")?;
        if f.next().is_some() {
            return Err(lines.malformed("more than 7 columns (expected Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime)"));
        }
        let dev_name = format!("{host}/{disk}");
        let first = *self.first_ts.get_or_insert(ts);
        // Records are in time order; a slightly earlier one (clock skew
        // between hosts) is clamped to the trace start rather than rejected.
        let ts_s = ts.saturating_sub(first) as f64 / TICKS_PER_SEC;
        Ok(Some(Request {
            ts_s,
            dev: self.devices.id(&dev_name),
            op,
            offset,
            len,
        }))
    }
}

impl Iterator for MsrReader {
    type Item = Result<Request>;
    fn next(&mut self) -> Option<Self::Item> {
        self.parse().transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn read(text: &str) -> Result<Vec<Request>> {
        MsrReader::new(
            Path::new("t.msr.csv"),
            Box::new(Cursor::new(text.to_string())),
        )
        .collect()
    }

    #[test]
    fn filetime_becomes_seconds_since_first_record() {
        let t = read("128166386783630075,hm,0,Write,3164164096,40960,2896\n128166386793630075,hm,1,Read,0,4096,10\n").unwrap();
        assert_eq!(t[0].ts_s, 0.0);
        assert!((t[1].ts_s - 1.0).abs() < 1e-9);
        assert_eq!(
            (t[0].op, t[0].offset, t[0].len, t[0].dev),
            (Op::Write, 3164164096, 40960, 0)
        );
        assert_eq!((t[1].op, t[1].dev), (Op::Read, 1));
    }

    #[test]
    fn malformed_type_and_short_lines_name_line_and_column() {
        let e = read("1,hm,0,Write,0,1,1\n2,hm,0,Trim,0,1,1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("Read or Write") && e.contains("Trim"),
            "{e}"
        );
        let e = read("1,hm,0,Write,0,1\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("ResponseTime"), "{e}");
        let e = read("x,hm,0,Write,0,1,1\n").unwrap_err().to_string();
        assert!(e.contains("Timestamp") && e.contains("'x'"), "{e}");
    }

    #[test]
    fn vendored_msr_excerpt_matches_its_normalized_copy() {
        let msr = crate::trace::read_all(&crate::trace::vendored_trace("msr_hm_0_excerpt.msr.csv"))
            .unwrap();
        let norm =
            crate::trace::read_all(&crate::trace::vendored_trace("msr_hm_0_excerpt.csv")).unwrap();
        assert_eq!(msr.len(), norm.len());
        assert_eq!(msr.len(), 7016);
        for (a, b) in msr.iter().zip(&norm) {
            assert_eq!((a.op, a.offset, a.len), (b.op, b.offset, b.len));
            assert!((a.ts_s - b.ts_s).abs() < 1e-5, "{} vs {}", a.ts_s, b.ts_s);
        }
    }
}
