//! Property tests feeding hostile text to [`Config::parse`]: arbitrary
//! strings, TOML-shaped noise, and edits of a valid config that uses every
//! key. The config never panics the parser; an error names the key whose
//! value is wrong (or, for broken TOML, the line); a config that parses
//! also validates, serializes (`check-config` prints it) and reads back
//! equal.

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use proptest::{prelude::*, sample::Index};

use super::*;
use crate::fuzzing::{self, HOSTILE_NUMBERS};

/// A valid config that sets every key, one per line.
const FULL: &str = r#"
[daemon]
state_dir = "/tmp/tierblk-fuzz/state"
epoch_secs = 10.0
migration_mibps = 64.0
migration_yield = true
socket_mode = "0660"
socket_group = "kvm"

[[tier]]
tier_id = 0
name = "nvme"
capacity = "1GiB"
cost_per_gb = 0.2
path = "/tmp/tierblk-fuzz/t0"
direct_io = false

[tier.performance_metrics]
read_latency_us = 80.0
write_latency_us = 20.0
iops = 500000
bandwidth_mibps = 3000.0

[tier.emulate]
read_latency_us = 0
write_latency_us = 0
bandwidth_mibps = 0

[tier.fault]
reads = false
writes = false
syncs = false
kind = "eio"
every = 1

[[tier]]
tier_id = 1
name = "hdd"
capacity = 4294967296
cost_per_gb = 0.02
path = "/tmp/tierblk-fuzz/t1"

[tier.performance_metrics]
read_latency_us = 8000.0
write_latency_us = 8000.0
bandwidth_mibps = 150.0

[[volume]]
name = "vm1-disk0"
size = "2GiB"
chunk_size = "1MiB"
socket = "/tmp/tierblk-fuzz/vm1.sock"
read_only = false
tiering_enabled = true
tiering_policy = "cost-optimized"
prediction_model = "ewma"
pinned_tier = 1
num_queues = 2
queue_size = 256
poll_us = 50
serial = "vm1-disk0"
domain_xml = "/tmp/tierblk-fuzz/vm1.xml"
"#;

/// A valid config that leaves every optional key to its default.
const MINIMAL: &str = r#"
[[tier]]
tier_id = 0
name = "hdd"
capacity = "1GiB"
cost_per_gb = 0.02
path = "/tmp/tierblk-fuzz/t0"
performance_metrics = { read_latency_us = 8000, write_latency_us = 8000, bandwidth_mibps = 150 }

[[volume]]
name = "vm1"
size = "1GiB"
socket = "/tmp/tierblk-fuzz/vm1.sock"
"#;

/// The key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('[')).then_some(k)
}

/// What a config that parses must also satisfy.
fn check_ok(cfg: &Config) -> std::result::Result<(), TestCaseError> {
    prop_assert!(cfg.validate().is_ok());
    // `tierblk check-config` prints the config it loaded and expects that to
    // work; the printed config must read back as the same config.
    let text = toml::to_string_pretty(cfg);
    prop_assert!(text.is_ok(), "a valid config does not serialize: {text:?}");
    let text = text.unwrap_or_default();
    let again = Config::parse(&text);
    prop_assert!(
        again.as_ref().is_ok_and(|c| c == cfg),
        "printed config does not read back: {again:?}\n{text}"
    );
    // The metadata store keeps volumes as JSON.
    for v in &cfg.volumes {
        prop_assert!(serde_json::to_string(v).is_ok());
    }
    Ok(())
}

/// What every error must satisfy: a message, and for broken TOML the place.
fn check_err(e: &Error) -> std::result::Result<String, TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty());
    if let Error::Parse { .. } = e {
        prop_assert!(msg.contains("line "), "TOML error without a line: {msg}");
    }
    Ok(msg)
}

/// Well-formed TOML values of every type, chosen to be out of range for
/// most keys.
fn toml_value() -> impl Strategy<Value = String> {
    let quoted = |s: String| toml::Value::String(s).to_string();
    let units = prop::sample::select(vec![
        "", "b", "B", "k", "K", "KiB", "kib", "KB", "M", "MiB", "MB", "G", "GiB", " GiB", "GB",
        "T", "TiB", "TB", "PiB", "EiB", "XB", "iB", "GiBs", "ГиБ", ".5GiB",
    ]);
    prop_oneof![
        prop::sample::select(vec![
            "-1",
            "0",
            "1",
            "-0",
            "7",
            "16",
            "65536",
            "2147483648",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "0x7fffffffffffffff",
            "0o777",
            "0b1",
            "1.5",
            "-1.5",
            "0.0",
            "-0.0",
            "1e308",
            "1e-320",
            "nan",
            "-nan",
            "inf",
            "-inf",
            "true",
            "false",
            "[]",
            "[1, 2]",
            "[\"a\"]",
            "{}",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "\"\"",
            "\" \"",
            "\"-1\"",
            "\"99999999999TiB\"",
            "\"8388608TiB\"",
            "\"16777215TiB\"",
            "\"1.5GiB\"",
            "\"1 GiB\"",
            "\"64KiB\"",
            "\"0660\"",
            "\"0666\"",
            "\"0o600\"",
            "\"rw\"",
            "\"eio\"",
            "\"short\"",
            "\"default\"",
            "\"gru\"",
            "\"\"\"a\nb\"\"\"",
            "'''\n'''",
            "\"\\u0000\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| toml::Value::Float(v).to_string()),
        (
            prop::sample::select(HOSTILE_NUMBERS.to_vec()),
            units.clone()
        )
            .prop_map(move |(n, u)| quoted(format!("{n}{u}"))),
        (any::<u64>(), units).prop_map(move |(n, u)| quoted(format!("{n}{u}"))),
        "[a-zA-Z0-9._-]{1,80}".prop_map(quoted),
        (1usize..20_000).prop_map(move |n| quoted("x".repeat(n))),
        (1usize..300).prop_map(move |n| quoted(format!("/tmp/{}", "d/".repeat(n)))),
        any::<String>().prop_map(quoted),
    ]
}

/// Text that is rarely a valid value.
fn raw_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\[\\]{}=\",'.a-z0-9 #\\\\+-]{0,24}",
        prop::sample::select(HOSTILE_NUMBERS.to_vec()).prop_map(str::to_string),
    ]
}

/// One edit of a config's lines.
#[derive(Debug, Clone)]
enum Edit {
    /// A key's value becomes a well-formed TOML value.
    Value(Index, String),
    /// A key's value becomes raw text.
    Raw(Index, String),
    /// A line disappears.
    Delete(Index),
    /// A line appears twice (a duplicated key or section).
    Duplicate(Index),
    /// A key gets a suffix (an unknown key).
    Rename(Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<Index>(), toml_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        2 => (any::<Index>(), raw_text()).prop_map(|(i, v)| Edit::Raw(i, v)),
        1 => any::<Index>().prop_map(Edit::Delete),
        1 => any::<Index>().prop_map(Edit::Duplicate),
        1 => (any::<Index>(), "[a-z_]{1,4}").prop_map(|(i, s)| Edit::Rename(i, s)),
    ]
}

/// Applies `e` to `lines`; returns the key of the edited line, if any.
fn apply_edit(lines: &mut Vec<String>, e: &Edit) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    let pick = |i: &Index| i.index(lines.len());
    match e {
        Edit::Value(i, v) | Edit::Raw(i, v) => {
            // Values replace values: pick the nth key line.
            let keys: Vec<usize> = (0..lines.len())
                .filter(|&n| key_of(&lines[n]).is_some())
                .collect();
            let n = *keys.get(i.index(keys.len().max(1)))?;
            let key = key_of(&lines[n])?.to_string();
            lines[n] = format!("{key} = {v}");
            Some(key)
        }
        Edit::Delete(i) => {
            let line = lines.remove(pick(i));
            key_of(&line).map(str::to_string)
        }
        Edit::Duplicate(i) => {
            let n = pick(i);
            let line = lines[n].clone();
            lines.insert(n, line.clone());
            key_of(&line).map(str::to_string)
        }
        Edit::Rename(i, suffix) => {
            let n = pick(i);
            let key = key_of(&lines[n])?.to_string();
            let rest = lines[n]
                .split_once('=')
                .map(|x| x.1)
                .unwrap_or("")
                .to_string();
            lines[n] = format!("{key}{suffix} ={rest}");
            Some(key)
        }
    }
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// Parses `text` and checks the outcome (the property every config target
/// asserts); returns the error message of a config that did not parse.
pub fn parse_checked(text: &str) -> std::result::Result<Option<String>, TestCaseError> {
    match Config::parse(text) {
        Ok(cfg) => {
            check_ok(&cfg)?;
            Ok(None)
        }
        Err(e) => check_err(&e).map(Some),
    }
}

proptest! {
    #![proptest_config(fuzzing::config(20000))]

    #[test]
    fn fuzz_config_arbitrary_text(text in prop_oneof![
        any::<String>(),
        "[\\[\\]{}=\",'.a-z0-9 \n#_-]{0,200}",
        "(\\[\\[?(daemon|tier|volume)(\\.[a-z_]{1,20})?\\]\\]?\n|[a-z_]{1,20} = [0-9a-z\"._\\-\\[\\]{}]{0,20}\n){0,12}",
    ]) {
        parse_checked(&text)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(16000))]

    #[test]
    fn fuzz_config_one_edit_names_the_key(full in any::<bool>(), e in edit()) {
        let mut lines = lines_of(if full { FULL } else { MINIMAL });
        let key = apply_edit(&mut lines, &e);
        let text = lines.join("\n");
        let result = parse_checked(&text)?;
        let Some(key) = key else { return Ok(()) };
        let Some(msg) = result else {
            prop_assert!(!matches!(e, Edit::Rename(..)), "unknown key {key}… accepted");
            return Ok(());
        };
        match e {
            Edit::Raw(..) => prop_assert!(
                msg.contains(&key) || msg.contains("line "),
                "error for a bad value of `{key}` names neither it nor a line: {msg}\n{text}"
            ),
            _ => prop_assert!(
                msg.contains(&key),
                "error for `{key}` does not name it: {msg}\n{text}"
            ),
        }
    }
}

proptest! {
    #![proptest_config(fuzzing::config(12000))]

    #[test]
    fn fuzz_config_many_edits(
        full in any::<bool>(),
        edits in prop::collection::vec(edit(), 1..8),
        bytes in prop::option::of(fuzzing::mutations(4)),
    ) {
        let mut lines = lines_of(if full { FULL } else { MINIMAL });
        for e in &edits {
            apply_edit(&mut lines, e);
        }
        let mut text = lines.join("\n");
        if let Some(m) = bytes {
            text = String::from_utf8_lossy(&fuzzing::apply(text.as_bytes(), &m)).into_owned();
        }
        parse_checked(&text)?;
    }
}

/// Whatever it is given, a size parses to a value TOML can print back, or
/// to an error that quotes the input.
pub fn byte_size_checked(text: &str) -> std::result::Result<(), TestCaseError> {
    match text.parse::<ByteSize>() {
        Ok(b) => {
            prop_assert!(b.0 <= i64::MAX as u64, "{text:?} -> {b:?}");
            prop_assert_eq!(b.to_string().parse::<ByteSize>().ok(), Some(b));
        }
        Err(e) => prop_assert!(e.contains(text), "{e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzzing::config(20000))]

    #[test]
    fn fuzz_config_byte_sizes(n in any::<u64>(), text in prop_oneof![
        any::<String>(),
        "[0-9]{0,25} ?[a-zA-Z]{0,4}",
        (prop::sample::select(HOSTILE_NUMBERS.to_vec()), "[a-zA-Z ]{0,4}")
            .prop_map(|(n, u)| format!("{n}{u}")),
    ]) {
        byte_size_checked(&text)?;
        // Every size a TOML integer can hold prints and reads back; larger
        // ones are refused.
        let b = ByteSize(n);
        let printable = n <= i64::MAX as u64;
        prop_assert_eq!(b.to_string().parse::<ByteSize>().ok(), printable.then_some(b));
    }
}
