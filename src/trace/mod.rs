//! Streaming readers for block I/O traces.
//!
//! Two formats are understood (see `traces/README.md`):
//! the normalized CSV (`ts_s,dev,op,offset_bytes,size_bytes` with a header)
//! and the MSR Cambridge CSV (`Timestamp,Hostname,DiskNumber,Type,Offset,
//! Size,ResponseTime`, no header, FILETIME ticks). Readers never load a whole
//! file: they yield one [`Request`] per line and report malformed lines with
//! their line number and what was expected.

mod chunks;
mod msr;
mod normalized;

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

pub use chunks::{Access, ChunkSpace};
pub use msr::MsrReader;
pub use normalized::NormalizedReader;

/// Longest request a trace line may describe: far past any real block
/// request (the vendored traces top out under 1 MiB), and a bound on the
/// chunks one line makes replay and training touch (a line claiming 2^63
/// bytes would otherwise have them list 2^47 chunks of 64 KiB).
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;

/// Errors while opening or parsing a trace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open trace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace {path}: read error at line {line}: {source}")]
    Io {
        path: PathBuf,
        line: u64,
        source: std::io::Error,
    },
    #[error("trace {path}, line {line}: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("trace {path}: {message}")]
    Format { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Direction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// One block I/O request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds since the first record of the trace (request number for
    /// traces without timestamps).
    pub ts_s: f64,
    /// Dense id of the device (address space) the request targets, in order
    /// of first appearance in the trace.
    pub dev: u32,
    pub op: Op,
    pub offset: u64,
    pub len: u64,
}

impl Request {
    /// Calls `f(chunk_index, bytes_in_chunk)` for every chunk the request
    /// touches; a zero-length request touches none.
    pub fn for_each_chunk(&self, chunk_size: u64, mut f: impl FnMut(u64, u64)) {
        if self.len == 0 {
            return;
        }
        let end = self.offset.saturating_add(self.len);
        let mut pos = self.offset;
        while pos < end {
            let chunk = pos / chunk_size;
            let chunk_end = (chunk + 1).saturating_mul(chunk_size).min(end);
            f(chunk, chunk_end - pos);
            pos = chunk_end;
        }
    }
}

/// Trace file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Normalized,
    Msr,
}

impl Format {
    /// `*.msr.csv` is MSR Cambridge, any other name the normalized CSV.
    pub fn from_path(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".msr.csv") {
            Self::Msr
        } else {
            Self::Normalized
        }
    }
}

/// Maps device names to dense ids in order of first appearance.
#[derive(Debug, Default)]
struct DeviceIds(HashMap<String, u32>);

impl DeviceIds {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.0.get(name) {
            return id;
        }
        let id = self.0.len() as u32;
        self.0.insert(name.to_string(), id);
        id
    }
}

/// Line source shared by both readers: numbers lines and reuses one buffer.
struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    buf: String,
    line: u64,
}

impl Lines {
    fn new(path: PathBuf, reader: Box<dyn BufRead + Send>) -> Self {
        Self {
            path,
            reader,
            buf: String::new(),
            line: 0,
        }
    }

    /// Moves to the next non-empty line; `false` at EOF.
    fn advance(&mut self) -> Result<bool> {
        loop {
            self.buf.clear();
            self.line += 1;
            let n = self
                .reader
                .read_line(&mut self.buf)
                .map_err(|source| Error::Io {
                    path: self.path.clone(),
                    line: self.line,
                    source,
                })?;
            if n == 0 {
                return Ok(false);
            }
            if !self.buf.trim().is_empty() {
                return Ok(true);
            }
        }
    }

    /// The current line without its terminator.
    fn current(&self) -> &str {
        self.buf.trim_end_matches(['\n', '\r'])
    }

    fn malformed(&self, message: impl Into<String>) -> Error {
        Error::Malformed {
            path: self.path.clone(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// A reader of either format, chosen by file name.
pub enum TraceReader {
    Normalized(NormalizedReader),
    Msr(MsrReader),
}

impl TraceReader {
    /// Opens `path` and picks the format from its name (see [`Format::from_path`]).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = Box::new(BufReader::with_capacity(1 << 16, file));
        Self::from_reader(path, Format::from_path(path), reader)
    }

    /// Reads a trace of `format` from any buffered source; `name` is used in
    /// error messages.
    pub fn from_reader(
        name: &Path,
        format: Format,
        reader: Box<dyn BufRead + Send>,
    ) -> Result<Self> {
        Ok(match format {
            Format::Normalized => Self::Normalized(NormalizedReader::new(name, reader)?),
            Format::Msr => Self::Msr(MsrReader::new(name, reader)),
        })
    }
}

impl Iterator for TraceReader {
    type Item = Result<Request>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Normalized(r) => r.next(),
            Self::Msr(r) => r.next(),
        }
    }
}

/// Reads a whole trace into memory (for replay, which needs random access
/// for the offline oracle); callers that can stream should iterate instead.
pub fn read_all(path: &Path) -> Result<Vec<Request>> {
    TraceReader::open(path)?.collect()
}

/// A real trace vendored in the repository's `traces/` folder (see
/// `traces/README.md`). Tests that need one fail with this message when the
/// file is missing rather than passing silently.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn vendored_trace(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join(name);
    assert!(
        path.is_file(),
        "vendored trace {} not found: the repository's traces/ folder should hold \
         cloudphysics_vm.csv, msr_hm_0_excerpt.csv, msr_hm_0_excerpt.msr.csv, \
         hplajw_1week.csv and arc_P3.csv (see traces/README.md)",
        path.display()
    );
    path
}

fn field<'a>(fields: &mut std::str::Split<'a, char>, lines: &Lines, name: &str) -> Result<&'a str> {
    fields
        .next()
        .map(str::trim)
        .ok_or_else(|| lines.malformed(format!("missing column '{name}'")))
}

fn parse_u64(s: &str, lines: &Lines, name: &str) -> Result<u64> {
    s.parse().map_err(|_| {
        lines.malformed(format!(
            "column '{name}': expected an unsigned integer, got '{s}'"
        ))
    })
}

/// Checks a request's byte range: at most [`MAX_REQUEST_BYTES`], and
/// ending within the 2^64-byte address space.
fn check_extent(offset: u64, len: u64, lines: &Lines, size_column: &str) -> Result<()> {
    if len > MAX_REQUEST_BYTES {
        return Err(lines.malformed(format!(
            "column '{size_column}': a request of {len} bytes; at most {MAX_REQUEST_BYTES} (1 GiB)"
        )));
    }
    if offset.checked_add(len).is_none() {
        return Err(lines.malformed(format!(
            "a request of {len} bytes at offset {offset} ends past the largest byte offset (2^64)"
        )));
    }
    Ok(())
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_spanning_chunks_is_split_at_chunk_boundaries() {
        let r = Request {
            ts_s: 0.0,
            dev: 0,
            op: Op::Read,
            offset: 60 * 1024,
            len: 72 * 1024,
        };
        let mut parts = vec![];
        r.for_each_chunk(64 * 1024, |c, b| parts.push((c, b)));
        assert_eq!(parts, vec![(0, 4096), (1, 65536), (2, 4096)]);
        let empty = Request { len: 0, ..r };
        let mut n = 0;
        empty.for_each_chunk(65536, |_, _| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn format_is_chosen_by_file_name() {
        assert_eq!(Format::from_path(Path::new("a/hm_0.msr.csv")), Format::Msr);
        assert_eq!(
            Format::from_path(Path::new("a/hm_0.csv")),
            Format::Normalized
        );
    }

    #[test]
    fn requests_too_long_or_past_the_address_space_are_malformed() {
        // Found by fuzz_trace_edited_real_lines: a size of 2^63 was read as
        // a request, and replay then tried to list its 2^47 chunks.
        let read = |format, text: &str| {
            let r = Box::new(std::io::Cursor::new(text.to_string()));
            TraceReader::from_reader(Path::new("t"), format, r)
                .and_then(|r| r.collect::<Result<Vec<_>>>())
        };
        let h = "ts_s,dev,op,offset_bytes,size_bytes\n";
        let e = read(
            Format::Normalized,
            &format!("{h}0,a,R,0,9223372036854775808\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("size_bytes"), "{e}");
        let e = read(
            Format::Normalized,
            &format!("{h}0,a,R,18446744073709551615,512\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("2^64"), "{e}");
        let e = read(Format::Msr, "1,hm,0,Read,0,1073741825,5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("Size"), "{e}");
        let t = read(Format::Msr, "1,hm,0,Read,0,1073741824,5\n").unwrap();
        assert_eq!(t[0].len, MAX_REQUEST_BYTES);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let e = TraceReader::open(Path::new("/nonexistent/x.csv"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/x.csv"), "{e}");
    }
}
