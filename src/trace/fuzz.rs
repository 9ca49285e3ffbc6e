//! Property tests feeding hostile input to both trace readers: arbitrary
//! bytes, and real lines of the vendored traces with fields replaced,
//! removed, duplicated or cut. A reader never panics and always ends;
//! every line it is given yields one item; an untouched real line reads
//! as it did before the edits, an edited one reads or fails naming its own
//! line number; no request reaches past 2^64 bytes or claims more than
//! [`MAX_REQUEST_BYTES`].

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::{io::Cursor, path::Path, sync::OnceLock};

use proptest::{prelude::*, sample::Index};

use super::*;
use crate::fuzzing::{self, HOSTILE_NUMBERS};

/// The lines of a vendored trace (read once per test binary).
fn trace_lines(name: &str) -> &'static [String] {
    static CACHE: OnceLock<Vec<(String, Vec<String>)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [
            "cloudphysics_vm.csv",
            "msr_hm_0_excerpt.csv",
            "msr_hm_0_excerpt.msr.csv",
            "hplajw_1week.csv",
            "arc_P3.csv",
        ]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(vendored_trace(n))
                .unwrap_or_else(|e| panic!("reading trace {n}: {e}"));
            (n.to_string(), text.lines().map(str::to_string).collect())
        })
        .collect()
    });
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, l)| l.as_slice())
        .unwrap_or_else(|| panic!("no vendored trace {name}"))
}

/// Reads `bytes` as a trace of `format`; `None` when the reader refused the
/// header. Fails the case if the reader yields more items than the input
/// has lines (it would never end).
pub fn read(
    format: Format,
    bytes: &[u8],
) -> std::result::Result<Option<Vec<Result<Request>>>, TestCaseError> {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let reader = Box::new(Cursor::new(bytes.to_vec()));
    let r = match TraceReader::from_reader(Path::new("fuzz.csv"), format, reader) {
        Ok(r) => r,
        Err(e) => {
            check_error(&e, lines)?;
            return Ok(None);
        }
    };
    let out: Vec<_> = r.take(lines + 1).collect();
    prop_assert!(out.len() <= lines, "{} items from {lines} lines", out.len());
    for item in &out {
        match item {
            Ok(req) => check_request(format, req)?,
            Err(e) => check_error(e, lines)?,
        }
    }
    // What replay and training do with the requests must stay bounded
    // (a 1 GiB chunk keeps this cheap: one request touches at most 2).
    let reqs: Vec<Request> = out
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    let space = ChunkSpace::build(&reqs, 1 << 30);
    let accesses = space.accesses(&reqs);
    prop_assert!(accesses.len() <= 2 * reqs.len());
    Ok(Some(out))
}

fn check_request(format: Format, r: &Request) -> std::result::Result<(), TestCaseError> {
    prop_assert!(r.ts_s.is_finite(), "{r:?}");
    if format == Format::Msr {
        prop_assert!(r.ts_s >= 0.0, "{r:?}");
    }
    prop_assert!(
        r.offset.checked_add(r.len).is_some(),
        "request past 2^64: {r:?}"
    );
    prop_assert!(r.len <= MAX_REQUEST_BYTES, "request too long: {r:?}");
    Ok(())
}

fn check_error(e: &Error, lines: usize) -> std::result::Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(msg.contains("fuzz.csv"), "{msg}");
    match e {
        Error::Malformed { line, message, .. } => {
            prop_assert!(
                *line >= 1 && *line as usize <= lines,
                "line {line} of {lines}"
            );
            prop_assert!(!message.is_empty());
        }
        Error::Io { line, .. } => prop_assert!(*line as usize <= lines + 1),
        Error::Format { .. } => {}
        Error::Open { .. } => prop_assert!(false, "open error from a reader: {msg}"),
    }
    Ok(())
}

/// A field value a trace line should not hold.
fn hostile_field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HOSTILE_NUMBERS.to_vec()).prop_map(str::to_string),
        prop::sample::select(vec![
            "R", "W", "r", "w", "Read", "Write", "READ", "write", "RW", "Trim", "D", "hm", "0",
            "4096", "\r", "\t", "\"R\"", " R ", "R\r",
        ])
        .prop_map(str::to_string),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        "[^\n]{0,12}",
        "[0-9,.eE+-]{0,12}",
    ]
}

/// One edit of a trace line.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, Index, String),
    RemoveField(Index, Index),
    DuplicateField(Index, Index),
    Cut(Index, Index),
    Bytes(Index, Vec<fuzzing::Mutation>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        5 => (any::<Index>(), any::<Index>(), hostile_field())
            .prop_map(|(l, f, v)| Edit::Replace(l, f, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(l, f)| Edit::RemoveField(l, f)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(l, f)| Edit::DuplicateField(l, f)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(l, c)| Edit::Cut(l, c)),
        2 => (any::<Index>(), fuzzing::mutations(3)).prop_map(|(l, m)| Edit::Bytes(l, m)),
    ]
}

/// Applies `e` to one of `lines`; returns which. The edit never adds a
/// line break, so line numbers stay put.
fn apply_edit(lines: &mut [String], e: &Edit) -> usize {
    let pick = |i: &Index| i.index(lines.len());
    let edit_fields = |line: &mut String, f: &dyn Fn(&mut Vec<String>)| {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        f(&mut fields);
        *line = fields.join(",");
    };
    match e {
        Edit::Replace(l, i, v) => {
            let n = pick(l);
            let v = v.replace('\n', "");
            edit_fields(&mut lines[n], &|f| {
                let at = i.index(f.len());
                f[at] = v.clone();
            });
            n
        }
        Edit::RemoveField(l, i) => {
            let n = pick(l);
            edit_fields(&mut lines[n], &|f| {
                f.remove(i.index(f.len()));
            });
            n
        }
        Edit::DuplicateField(l, i) => {
            let n = pick(l);
            edit_fields(&mut lines[n], &|f| {
                let at = i.index(f.len());
                let v = f[at].clone();
                f.insert(at, v);
            });
            n
        }
        Edit::Cut(l, c) => {
            let n = pick(l);
            let line = &mut lines[n];
            let mut at = c.index(line.len() + 1);
            while !line.is_char_boundary(at) {
                at -= 1;
            }
            line.truncate(at);
            n
        }
        Edit::Bytes(l, m) => {
            let n = pick(l);
            let b = fuzzing::apply(lines[n].as_bytes(), m);
            lines[n] = String::from_utf8_lossy(&b).replace('\n', "");
            n
        }
    }
}

/// A window of `len` real lines of `name`, after its header line if it has
/// one.
fn window(name: &str, start: &Index, len: usize) -> (Vec<String>, Vec<String>) {
    let all = trace_lines(name);
    let (header, body) = if name.ends_with(".msr.csv") {
        (vec![], all)
    } else {
        (vec![all[0].clone()], &all[1..])
    };
    let from = start.index(body.len().saturating_sub(len).max(1));
    let lines = body[from..(from + len).min(body.len())].to_vec();
    (header, lines)
}

fn fuzz_real_lines(
    name: &str,
    start: Index,
    edits: Vec<Edit>,
    touch_header: bool,
) -> std::result::Result<(), TestCaseError> {
    let format = Format::from_path(Path::new(name));
    let (header, original) = window(name, &start, 40);
    let mut all: Vec<String> = header.iter().chain(&original).cloned().collect();
    let first = if touch_header { 0 } else { header.len() };
    let mut edited = vec![false; all.len()];
    for e in &edits {
        let n = first + apply_edit(&mut all[first..], e);
        edited[n] = true;
    }
    let text = all.iter().map(|l| format!("{l}\n")).collect::<String>();
    let Some(out) = read(format, text.as_bytes())? else {
        prop_assert!(touch_header && edited[0], "the real header was refused");
        return Ok(());
    };
    // The reader yields one item per non-blank line after the header.
    let body: Vec<usize> = (header.len()..all.len())
        .filter(|&n| !all[n].trim().is_empty())
        .collect();
    prop_assert_eq!(out.len(), body.len());
    for (item, &n) in out.iter().zip(&body) {
        let line_no = n as u64 + 1;
        match item {
            Ok(r) if !edited[n] => {
                // Untouched real lines read as before (device ids and MSR
                // times depend on earlier lines, so only these compare).
                let one = header.iter().chain([&all[n]]).map(|l| format!("{l}\n"));
                let alone = read(format, one.collect::<String>().as_bytes())?;
                let alone = alone
                    .and_then(|v| v.into_iter().next())
                    .and_then(|r| r.ok());
                prop_assert_eq!(
                    alone.map(|a| (a.op, a.offset, a.len)),
                    Some((r.op, r.offset, r.len))
                );
            }
            Ok(_) => {}
            Err(e) => {
                prop_assert!(edited[n], "untouched real line {line_no} refused: {e}");
                prop_assert!(
                    matches!(e, Error::Malformed { line, .. } if *line == line_no),
                    "error for line {line_no} names another: {e}"
                );
            }
        }
    }
    Ok(())
}

const TRACES: [&str; 5] = [
    "cloudphysics_vm.csv",
    "msr_hm_0_excerpt.csv",
    "msr_hm_0_excerpt.msr.csv",
    "hplajw_1week.csv",
    "arc_P3.csv",
];

proptest! {
    #![proptest_config(fuzzing::config(20000))]

    #[test]
    fn fuzz_trace_arbitrary_bytes(
        msr in any::<bool>(),
        with_header in any::<bool>(),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            "[0-9a-zA-Z,.\n\r -]{0,400}".prop_map(String::into_bytes),
            prop::collection::vec(
                prop::collection::vec(hostile_field(), 0..9).prop_map(|f| f.join(",")),
                0..12,
            ).prop_map(|l| l.join("\n").into_bytes()),
        ],
    ) {
        let format = if msr { Format::Msr } else { Format::Normalized };
        let mut text = Vec::new();
        if with_header {
            text.extend_from_slice(normalized::HEADER.as_bytes());
            text.push(b'\n');
        }
        text.extend_from_slice(&body);
        read(format, &text)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(10000))]

    #[test]
    fn fuzz_trace_edited_real_lines(
        trace in prop::sample::select(TRACES.to_vec()),
        start in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..6),
        touch_header in prop::bool::weighted(0.05),
    ) {
        fuzz_real_lines(trace, start, edits, touch_header)?;
    }
}
