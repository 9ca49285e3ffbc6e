//! The normalized CSV: `ts_s,dev,op,offset_bytes,size_bytes` with a header.

use std::{io::BufRead, path::Path};

use super::{check_extent, field, parse_u64, DeviceIds, Error, Lines, Op, Request, Result};

/// The header line every normalized trace starts with.
pub const HEADER: &str = "ts_s,dev,op,offset_bytes,size_bytes";

/// Streams [`Request`]s from a normalized CSV trace.
pub struct NormalizedReader {
    lines: Lines,
    devices: DeviceIds,
}

impl NormalizedReader {
    /// Checks the header; an empty file is an error, not an empty trace.
    pub fn new(name: &Path, reader: Box<dyn BufRead + Send>) -> Result<Self> {
        let mut lines = Lines::new(name.to_path_buf(), reader);
        match lines.advance()? {
            true if lines.current().trim() == HEADER => {}
            true => {
                let h = lines.current().to_string();
                return Err(lines.malformed(format!("expected the header '{HEADER}', got '{h}'")));
            }
            false => {
                return Err(Error::Format {
                    path: name.to_path_buf(),
                    message: format!("empty file (expected the header '{HEADER}')"),
                })
            }
        }
        Ok(Self {
            lines,
            devices: DeviceIds::default(),
        })
    }

    fn parse(&mut self) -> Result<Option<Request>> {
        if !self.lines.advance()? {
            return Ok(None);
        }
        let lines = &self.lines;
        let mut f = lines.current().split(',');
        let ts = field(&mut f, lines, "ts_s")?;
        let dev = field(&mut f, lines, "dev")?;
        let op = field(&mut f, lines, "op")?;
        let offset = field(&mut f, lines, "offset_bytes")?;
        let size = field(&mut f, lines, "size_bytes")?;
        if f.next().is_some() {
            return Err(lines
                .malformed("more than 5 columns (expected ts_s,dev,op,offset_bytes,size_bytes)"));
        }
        let ts_s: f64 = ts
            .parse()
            .ok()
            .filter(|t: &f64| t.is_finite())
            .ok_or_else(|| {
                lines.malformed(format!(
                    "column 'ts_s': expected a number of seconds, got '{ts}'"
                ))
            })?;
        let op = match op {
            "R" | "r" => Op::Read,
            "W" | "w" => Op::Write,
            other => {
                return Err(lines.malformed(format!("column 'op': expected R or W, got '{other}'")))
            }
        };
        let offset = parse_u64(offset, lines, "offset_bytes")?;
        let len = parse_u64(size, lines, "size_bytes")?;
        check_extent(offset, len, lines, "size_bytes")?;
        if dev.is_empty() {
            return Err(lines.malformed("column 'dev': empty device id"));
        }
        Ok(Some(Request {
            ts_s,
            dev: self.devices.id(dev),
            op,
            offset,
            len,
        }))
    }
}

impl Iterator for NormalizedReader {
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
        let r = NormalizedReader::new(Path::new("t.csv"), Box::new(Cursor::new(text.to_string())))?;
        r.collect()
    }

    #[test]
    fn well_formed_lines_parse_with_dense_device_ids() {
        let t = read("ts_s,dev,op,offset_bytes,size_bytes\n0.5,cp,W,4096,512\n\n1,sda,R,0,4096\n2,cp,r,8,8\n").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].dev, t[0].op, t[0].offset, t[0].len),
            (0, Op::Write, 4096, 512)
        );
        assert_eq!((t[1].dev, t[1].op), (1, Op::Read));
        assert_eq!(t[2].dev, 0);
        assert_eq!(t[0].ts_s, 0.5);
    }

    #[test]
    fn bad_op_reports_line_number_and_expectation() {
        let e = read("ts_s,dev,op,offset_bytes,size_bytes\n0,a,R,0,1\n1,a,X,0,1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("expected R or W") && e.contains("'X'"),
            "{e}"
        );
    }

    #[test]
    fn missing_column_and_bad_number_are_reported() {
        let e = read("ts_s,dev,op,offset_bytes,size_bytes\n0,a,R,0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("size_bytes"), "{e}");
        let e = read("ts_s,dev,op,offset_bytes,size_bytes\n0,a,R,-5,1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("offset_bytes") && e.contains("'-5'"), "{e}");
        let e = read("ts_s,dev,op,offset_bytes,size_bytes\nnan,a,R,5,1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ts_s"), "{e}");
        let e = read("ts_s,dev,op,offset_bytes,size_bytes\n0,a,R,5,1,9\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 5 columns"), "{e}");
    }

    #[test]
    fn wrong_header_and_empty_file_are_rejected() {
        let e = read("time,dev\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains(HEADER), "{e}");
        let e = read("").unwrap_err().to_string();
        assert!(e.contains("empty file"), "{e}");
    }
}
