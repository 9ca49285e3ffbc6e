//! Property tests feeding hostile text to [`VmProfile::parse`]: arbitrary
//! strings, XML-shaped noise, and the shipped domain XML files
//! (`libvirt/`) with text and attribute values replaced, lines removed or
//! repeated, elements added and bytes flipped. The parser never panics,
//! never allocates out of proportion to its input, and a profile it
//! returns yields a prior heat map.

// Outside tests (the `fuzzing` feature) only the checks are used, by the
// AFL targets in fuzz/.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::{ops::Range, path::Path, sync::OnceLock};

use proptest::{prelude::*, sample::Index};

use super::*;
use crate::fuzzing::{self, HOSTILE_NUMBERS};

const FILES: [&str; 2] = ["profile-example.xml", "tierblk-vm.xml"];

fn shipped(name: &str) -> &'static str {
    static CACHE: OnceLock<Vec<String>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        FILES
            .iter()
            .map(|n| {
                let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("libvirt")
                    .join(n);
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            })
            .collect()
    });
    let i = FILES
        .iter()
        .position(|n| *n == name)
        .expect("a shipped file");
    &all[i]
}

/// Parses `text` and checks the outcome; the profile, if one was read.
pub fn check(text: &str) -> std::result::Result<Option<VmProfile>, TestCaseError> {
    // The depth bound that keeps roxmltree's recursion in check holds.
    let bound = nesting_depth(text);
    if bound <= MAX_XML_DEPTH {
        if let Ok(doc) = Document::parse(text) {
            let depth = doc
                .descendants()
                .filter(|n| n.is_element())
                .map(|n| n.ancestors().count() - 1)
                .max()
                .unwrap_or(0);
            // (+1: the bound leaves out empty-element tags.)
            prop_assert!(depth <= bound + 1, "depth {depth}, bound {bound}");
        }
    }
    let (r, largest) = fuzzing::largest_allocation(|| VmProfile::parse(text));
    // roxmltree keeps a node or attribute per few bytes of markup: AFL
    // (10 M runs) found up to ~75 bytes per input byte in one vector
    // (entity references and tiny elements), linear in the input, which
    // MAX_XML_BYTES caps.
    prop_assert!(
        largest <= (1 << 20).max(128 * text.len()),
        "parsing {} bytes allocated {largest} at once",
        text.len()
    );
    match r {
        Ok(p) => {
            prop_assert!(!p.name.is_empty());
            let _ = p.os_family();
            for d in &p.disks {
                prop_assert!(p.disk_for_socket(&d.socket).is_some());
            }
            for n in [0, 1, 7, 1000] {
                let h = p.prior_heat_map(n);
                prop_assert_eq!(h.len(), n);
                for c in 0..n {
                    prop_assert!((0.0..=1.0).contains(&h.score(c)));
                }
            }
            Ok(Some(p))
        }
        Err(e) => {
            prop_assert!(!e.trim().is_empty());
            Ok(None)
        }
    }
}

/// Byte ranges of the text contents and attribute values of `xml`.
fn slots(xml: &str) -> Vec<Range<usize>> {
    let b = xml.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'>' => {
                let end = xml[i + 1..].find('<').map_or(b.len(), |e| i + 1 + e);
                if !xml[i + 1..end].trim().is_empty() {
                    out.push(i + 1..end);
                }
                i = end;
            }
            b'=' if i + 1 < b.len() && (b[i + 1] == b'\'' || b[i + 1] == b'"') => {
                let q = b[i + 1] as char;
                if let Some(e) = xml[i + 2..].find(q) {
                    out.push(i + 2..i + 2 + e);
                    i += 2 + e;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HOSTILE_NUMBERS.to_vec()).prop_map(str::to_string),
        prop::sample::select(vec![
            "b",
            "bytes",
            "KB",
            "k",
            "KiB",
            "kib",
            "MB",
            "M",
            "MiB",
            "GB",
            "G",
            "GiB",
            "TB",
            "T",
            "TiB",
            "PiB",
            "EiB",
            "vhostuser",
            "file",
            "block",
            "vda",
            "",
            "postgres",
            "BACKUP",
            "http://microsoft.com/win/10",
            "http://freebsd.org/freebsd/14",
            "&amp;",
            "&#0;",
            "&#x10FFFF;",
            "&unknown;",
            "<",
            "]]>",
            "<![CDATA[x]]>",
            "<!-- c -->",
            "<?pi x?>",
        ])
        .prop_map(str::to_string),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<String>(),
        "[a-zA-Z0-9/._:-]{0,40}",
        (1usize..50_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn element() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "name", "vcpu", "memory", "os", "type", "metadata", "devices", "disk", "target", "source",
        "domain",
    ]);
    prop_oneof![
        (name.clone(), hostile_value()).prop_map(|(n, v)| format!("<{n}>{}</{n}>", escape(&v))),
        (hostile_value(), hostile_value()).prop_map(|(unit, v)| format!(
            "<memory unit='{}'>{}</memory>",
            escape(&unit),
            escape(&v)
        )),
        (hostile_value(), hostile_value()).prop_map(|(a, v)| format!(
            "<tierblk:app xmlns:tierblk='{TIERBLK_XMLNS}'>{}</tierblk:app><libosinfo:os xmlns:libosinfo='{LIBOSINFO_XMLNS}' id='{}'/>",
            escape(&a),
            escape(&v)
        )),
        (hostile_value(), hostile_value(), any::<bool>(), any::<bool>()).prop_map(|(t, s, ht, hs)| {
            let target = if ht { format!("<target dev='{}'/>", escape(&t)) } else { String::new() };
            let source = if hs { format!("<source path='{}'/>", escape(&s)) } else { "<source/>".into() };
            format!("<disk type='vhostuser'>{target}{source}</disk>")
        }),
        (name, 1usize..20_000).prop_map(|(n, d)| format!("{}{}", format!("<{n}>").repeat(d), format!("</{n}>").repeat(d))),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    /// A text content or attribute value becomes an (escaped) value.
    Value(Index, String),
    /// A text content or attribute value becomes raw text.
    Raw(Index, String),
    DeleteLine(Index),
    DuplicateLine(Index),
    /// An element is added after a line.
    Element(Index, String),
    Bytes(Vec<fuzzing::Mutation>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        5 => (any::<Index>(), hostile_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => (any::<Index>(), "[<>/=\"'&;a-z: ]{0,12}").prop_map(|(i, v)| Edit::Raw(i, v)),
        1 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        2 => (any::<Index>(), element()).prop_map(|(i, e)| Edit::Element(i, e)),
        1 => fuzzing::mutations(4).prop_map(Edit::Bytes),
    ]
}

fn apply_edit(xml: &str, e: &Edit) -> String {
    let lines = |xml: &str| xml.lines().map(str::to_string).collect::<Vec<_>>();
    match e {
        Edit::Value(i, v) | Edit::Raw(i, v) => {
            let s = slots(xml);
            if s.is_empty() {
                return xml.to_string();
            }
            let r = s[i.index(s.len())].clone();
            let v = if matches!(e, Edit::Value(..)) {
                escape(v)
            } else {
                v.clone()
            };
            format!("{}{v}{}", &xml[..r.start], &xml[r.end..])
        }
        Edit::DeleteLine(i) => {
            let mut l = lines(xml);
            if !l.is_empty() {
                l.remove(i.index(l.len()));
            }
            l.join("\n")
        }
        Edit::DuplicateLine(i) => {
            let mut l = lines(xml);
            if !l.is_empty() {
                let n = i.index(l.len());
                l.insert(n, l[n].clone());
            }
            l.join("\n")
        }
        Edit::Element(i, el) => {
            let mut l = lines(xml);
            let n = if l.is_empty() {
                0
            } else {
                i.index(l.len() + 1)
            };
            l.insert(n, el.clone());
            l.join("\n")
        }
        Edit::Bytes(m) => String::from_utf8_lossy(&fuzzing::apply(xml.as_bytes(), m)).into_owned(),
    }
}

proptest! {
    #![proptest_config(fuzzing::config(20000))]

    #[test]
    fn fuzz_vm_arbitrary_text(text in prop_oneof![
        any::<String>(),
        "[<>/=\"' a-z:!?\\[\\]-]{0,300}",
        "<domain>(<(name|vcpu|memory|os|type|devices|disk|target|source|metadata)( [a-z]{1,5}='[a-zA-Z0-9/]{0,8}')?/?>[a-zA-Z0-9 ]{0,6}(</[a-z]{1,8}>)?){0,20}</domain>",
    ]) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(fuzzing::config(5000))]

    #[test]
    fn fuzz_vm_edited_domain_xml(
        file in prop::sample::select(FILES.to_vec()),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut xml = shipped(file).to_string();
        for e in &edits {
            xml = apply_edit(&xml, e);
        }
        check(&xml)?;
    }
}

/// Deep nesting (which overflowed the stack inside roxmltree) and entity
/// expansion (billion laughs) are errors.
#[test]
fn fuzz_vm_deep_nesting_and_entities_are_errors() {
    let deep = format!(
        "<domain><name>x</name><metadata>{}{}</metadata></domain>",
        "<a>".repeat(200_000),
        "</a>".repeat(200_000)
    );
    let e = VmProfile::parse(&deep).unwrap_err();
    assert!(e.contains("nested"), "{e}");
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><domain><name>&c;&c;&c;&c;&c;&c;</name></domain>"#;
    let e = VmProfile::parse(laughs).unwrap_err();
    assert!(e.contains("well-formed"), "{e}");
    for f in FILES {
        assert!(!slots(shipped(f)).is_empty());
        assert!(VmProfile::parse(shipped(f)).is_ok(), "{f}");
    }
}
