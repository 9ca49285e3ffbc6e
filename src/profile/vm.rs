//! The VM profile: what a libvirt domain XML says about the guest that will
//! use a volume, and the prior heat map it implies for a brand-new volume.

use std::path::{Path, PathBuf};

use roxmltree::{Document, Node};

use super::{Error, Result};
use crate::predict::HeatMap;

/// Our own namespace for `<metadata>` elements in domain XML, e.g.
/// `<tierblk:app xmlns:tierblk="https://tierblk.dev/xmlns/1">postgres</tierblk:app>`.
pub const TIERBLK_XMLNS: &str = "https://tierblk.dev/xmlns/1";
/// libosinfo's namespace for the guest OS id in `<metadata>`.
pub const LIBOSINFO_XMLNS: &str = "http://libosinfo.org/xmlns/libvirt/domain/1.0";

/// A vhost-user disk of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskProfile {
    /// Guest device name (`<target dev=…>`), e.g. `vda`.
    pub target: String,
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
}

/// What the domain XML tells about a guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmProfile {
    pub name: String,
    /// `<os><type>` text, e.g. `hvm`.
    pub os_type: Option<String>,
    pub arch: Option<String>,
    /// libosinfo OS id, e.g. `http://ubuntu.com/ubuntu/22.04`.
    pub os_id: Option<String>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// vhost-user disks only: the ones tierblk can serve.
    pub disks: Vec<DiskProfile>,
    /// Application tag from `<tierblk:app>`, lower-cased.
    pub app: Option<String>,
}

/// Guest OS family, as far as the profile tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsFamily {
    Linux,
    Windows,
    Bsd,
    Unknown,
}

impl VmProfile {
    /// Reads and parses a domain XML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        // One byte past the limit is enough for parse to refuse it.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(f, MAX_XML_BYTES as u64 + 1),
                    &mut text,
                )
            })
            .map_err(|source| Error::ReadXml {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|message| Error::Xml {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses domain XML text; the error says what is missing or wrong.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        // roxmltree recurses once per nesting level: a few ten thousand
        // nested elements overflow a thread's stack (an abort, not an
        // error), so deeper documents are refused before it sees them.
        if nesting_depth(text) > MAX_XML_DEPTH {
            return Err(format!(
                "not well-formed XML: elements nested deeper than {MAX_XML_DEPTH} levels"
            ));
        }
        // roxmltree needs up to ~75 bytes per byte of hostile input
        // (AFL); a domain's XML is a few KiB, so anything this large is
        // refused before it is parsed.
        if text.len() > MAX_XML_BYTES {
            return Err(format!(
                "{} bytes: larger than the {MAX_XML_BYTES} bytes a domain's XML may have",
                text.len()
            ));
        }
        let doc = Document::parse(text).map_err(|e| format!("not well-formed XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" {
            return Err(format!(
                "root element is <{}>, expected <domain>",
                root.tag_name().name()
            ));
        }
        let text_of = |n: Node<'_, '_>| n.text().map(str::trim).unwrap_or("").to_string();

        let name = child(root, "name")
            .map(text_of)
            .filter(|s| !s.is_empty())
            .ok_or("missing <name>")?;
        let vcpus = match child(root, "vcpu") {
            Some(v) => text_of(v)
                .parse()
                .map_err(|_| format!("<vcpu> is '{}', expected a number", text_of(v)))?,
            None => 1,
        };
        let memory_bytes = match child(root, "memory") {
            Some(m) => parse_memory(&text_of(m), m.attribute("unit").unwrap_or("KiB"))?,
            None => 0,
        };
        let (os_type, arch) = match child(root, "os").and_then(|os| child(os, "type")) {
            Some(t) => (Some(text_of(t)), t.attribute("arch").map(str::to_string)),
            None => (None, None),
        };
        let metadata = child(root, "metadata");
        let in_ns = |ns: &'static str, local: &'static str| {
            move |n: &Node<'_, '_>| {
                n.is_element()
                    && n.tag_name().namespace() == Some(ns)
                    && n.tag_name().name() == local
            }
        };
        let os_id = metadata
            .and_then(|m| m.descendants().find(in_ns(LIBOSINFO_XMLNS, "os")))
            .and_then(|n| n.attribute("id").map(str::to_string));
        let app = metadata
            .and_then(|m| m.descendants().find(in_ns(TIERBLK_XMLNS, "app")))
            .map(|n| text_of(n).to_ascii_lowercase())
            .filter(|s| !s.is_empty());

        let mut disks = Vec::new();
        if let Some(devices) = child(root, "devices") {
            for d in devices
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "disk")
            {
                if d.attribute("type") != Some("vhostuser") {
                    continue;
                }
                let target = child(d, "target")
                    .and_then(|t| t.attribute("dev"))
                    .ok_or("vhostuser <disk> without <target dev=…>")?;
                let socket = child(d, "source")
                    .and_then(|s| s.attribute("path"))
                    .ok_or_else(|| format!("vhostuser disk '{target}': <source> has no path= (the vhost-user socket)"))?;
                disks.push(DiskProfile {
                    target: target.to_string(),
                    socket: PathBuf::from(socket),
                });
            }
        }
        Ok(Self {
            name,
            os_type,
            arch,
            os_id,
            vcpus,
            memory_bytes,
            disks,
            app,
        })
    }

    pub fn os_family(&self) -> OsFamily {
        let id = self.os_id.as_deref().unwrap_or("").to_ascii_lowercase();
        if id.contains("microsoft") || id.contains("windows") || id.contains("/win/") {
            OsFamily::Windows
        } else if id.contains("bsd") {
            OsFamily::Bsd
        } else if [
            "linux",
            "ubuntu",
            "debian",
            "fedora",
            "redhat",
            "rhel",
            "centos",
            "suse",
            "alpine",
            "archlinux",
            "rocky",
            "alma",
        ]
        .iter()
        .any(|k| id.contains(k))
        {
            OsFamily::Linux
        } else {
            OsFamily::Unknown
        }
    }

    /// The disk served on `socket`, if this domain has one.
    pub fn disk_for_socket(&self, socket: &Path) -> Option<&DiskProfile> {
        self.disks.iter().find(|d| d.socket == socket)
    }

    /// A prior heat map for a new volume of `n_chunks` chunks, before any
    /// access was observed. Observed history replaces it within a few
    /// epochs, so it only needs to be a sensible starting point:
    /// the start of the disk (partition table, boot loader, file-system
    /// metadata, and on Windows the NTFS MFT zone) is warm; databases keep
    /// a scattered working set, so their whole disk starts lukewarm; archive
    /// and backup guests start cold.
    pub fn prior_heat_map(&self, n_chunks: usize) -> HeatMap {
        let app = self.app.as_deref().unwrap_or("");
        let base = match app {
            "postgres" | "postgresql" | "mysql" | "mariadb" | "mongodb" | "oracle" | "mssql"
            | "redis" => 0.35,
            "backup" | "archive" | "logs" | "object-store" => 0.02,
            _ => 0.1,
        };
        let head_fraction = match self.os_family() {
            OsFamily::Windows => 1.0 / 16.0,
            _ => 1.0 / 64.0,
        };
        let head = ((n_chunks as f64 * head_fraction).ceil() as usize).min(n_chunks);
        let mut scores = vec![base; n_chunks];
        for s in &mut scores[..head] {
            *s = f32::max(*s, 0.5);
        }
        HeatMap::from_scores(scores)
    }
}

/// The heat map a volume starts with: its saved heat map when the same VM
/// disk ran before (warm restart) and the size still matches, else the VM
/// profile's prior, else all cold.
pub fn initial_heat_map(
    profile: Option<&VmProfile>,
    saved: Option<HeatMap>,
    n_chunks: usize,
) -> HeatMap {
    match (saved, profile) {
        (Some(h), _) if h.len() == n_chunks => h,
        (_, Some(p)) => p.prior_heat_map(n_chunks),
        _ => HeatMap::from_scores(vec![0.0; n_chunks]),
    }
}

/// Deepest element nesting accepted in domain XML (libxml2's default
/// limit, so libvirt itself reads nothing deeper; a domain is about 5 deep).
pub const MAX_XML_DEPTH: usize = 256;

/// Largest domain XML accepted, bytes (`virsh dumpxml` of a large VM is
/// tens of KiB).
pub const MAX_XML_BYTES: usize = 1 << 20;

/// The element nesting depth of `text` not counting empty-element tags
/// (`<a/>`), or more for text roxmltree refuses (the fuzz tests check it):
/// start tags count one level down, end tags one up; comments, CDATA,
/// processing instructions and declarations count nothing; quoted
/// attribute values are skipped.
fn nesting_depth(text: &str) -> usize {
    let b = text.as_bytes();
    let find = |from: usize, pat: &[u8]| {
        b.get(from..)
            .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
            .map_or(b.len(), |p| from + p + pat.len())
    };
    let (mut i, mut depth, mut max) = (0, 0usize, 0);
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = find(i + 2, b"?>");
        } else if rest.starts_with(b"<!") || rest.starts_with(b"</") {
            depth = depth.saturating_sub(usize::from(b[i + 1] == b'/'));
            i = find(i + 2, b">");
        } else {
            // A start tag: find its end outside quoted values.
            let mut j = i + 1;
            let mut quote = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, b'\'' | b'"') => quote = Some(b[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if b[j - 1] != b'/' || j == b.len() {
                depth += 1;
                max = max.max(depth);
            }
            i = j + 1;
        }
    }
    max
}

/// The first child element of `n` named `name` in no namespace.
fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

fn parse_memory(value: &str, unit: &str) -> std::result::Result<u64, String> {
    let n: u64 = value
        .parse()
        .map_err(|_| format!("<memory> is '{value}', expected a number"))?;
    let mult: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("<memory unit='{other}'>: unknown unit")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("<memory> {value} {unit} is too large"))
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("libvirt/profile-example.xml");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn domain_xml_past_the_size_limit_is_refused_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.xml");
        let pad = "<!-- x -->".repeat(MAX_XML_BYTES / 10 + 1);
        std::fs::write(&p, format!("<domain><name>a</name>{pad}</domain>")).unwrap();
        let e = VmProfile::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("big.xml") && e.contains("larger than"), "{e}");
    }

    #[test]
    fn example_domain_xml_yields_full_profile() {
        let p = VmProfile::parse(&example()).unwrap();
        assert_eq!(p.name, "pg-primary");
        assert_eq!(p.vcpus, 4);
        assert_eq!(p.memory_bytes, 8 << 30);
        assert_eq!(p.os_type.as_deref(), Some("hvm"));
        assert_eq!(p.arch.as_deref(), Some("x86_64"));
        assert_eq!(p.os_id.as_deref(), Some("http://debian.org/debian/12"));
        assert_eq!(p.os_family(), OsFamily::Linux);
        assert_eq!(p.app.as_deref(), Some("postgres"));
        assert_eq!(p.disks.len(), 2, "only vhostuser disks: {:?}", p.disks);
        assert_eq!(p.disks[0].target, "vda");
        assert_eq!(
            p.disks[0].socket,
            PathBuf::from("/run/tierblk/pg-primary-root.sock")
        );
        assert!(p
            .disk_for_socket(Path::new("/run/tierblk/pg-primary-data.sock"))
            .is_some());
    }

    #[test]
    fn prior_heat_map_warms_disk_head_and_database_working_set() {
        let p = VmProfile::parse(&example()).unwrap();
        let h = p.prior_heat_map(1000);
        assert_eq!(h.len(), 1000);
        assert!(h.score(0) >= 0.5 && h.score(999) > 0.3 && h.score(999) < 0.5);
        let archive = VmProfile {
            app: Some("backup".into()),
            ..p.clone()
        }
        .prior_heat_map(1000);
        assert!(archive.score(999) < 0.05);
    }

    #[test]
    fn saved_heat_map_wins_when_size_matches() {
        let p = VmProfile::parse(&example()).unwrap();
        let saved = HeatMap::from_scores(vec![0.9; 10]);
        assert_eq!(
            initial_heat_map(Some(&p), Some(saved.clone()), 10).score(5),
            0.9
        );
        assert!(initial_heat_map(Some(&p), Some(saved), 11).score(5) < 0.9);
        assert_eq!(initial_heat_map(None, None, 3).score(2), 0.0);
    }

    #[test]
    fn deeply_nested_xml_is_refused_not_a_stack_overflow() {
        // Found by fuzz_vm_deep_nesting_and_entities_are_errors_or_profiles:
        // 200000 nested elements overflowed the stack inside roxmltree.
        let nested = |depth: usize| {
            format!(
                "<domain><name>x</name><metadata>{}{}</metadata></domain>",
                "<a b='>'><!-- <c> --><![CDATA[<d>]]><?e <f>?>".repeat(depth),
                "<g/></a>".repeat(depth)
            )
        };
        let e = VmProfile::parse(&nested(200_000)).unwrap_err();
        assert!(e.contains("nested deeper than 256"), "{e}");
        assert!(VmProfile::parse(&nested(MAX_XML_DEPTH - 2)).is_ok());
        assert!(VmProfile::parse(&nested(MAX_XML_DEPTH - 1))
            .unwrap_err()
            .contains("nested"));
        assert_eq!(nesting_depth(&example()), 4);
        assert_eq!(nesting_depth("<a><b/><c>x</c></a>"), 2);
        assert_eq!(nesting_depth("<a x=\"/>\"><b y='</a>'>"), 2);
        assert_eq!(nesting_depth("<"), 1);
        assert_eq!(nesting_depth("<a/"), 1);
        assert_eq!(nesting_depth(""), 0);
    }

    #[test]
    fn malformed_domain_xml_errors_say_what_is_wrong() {
        assert!(VmProfile::parse("<domain><name>x</name>")
            .unwrap_err()
            .contains("well-formed"));
        assert!(VmProfile::parse("<network/>")
            .unwrap_err()
            .contains("<domain>"));
        assert!(VmProfile::parse("<domain/>")
            .unwrap_err()
            .contains("<name>"));
        let e = VmProfile::parse("<domain><name>x</name><vcpu>many</vcpu></domain>").unwrap_err();
        assert!(e.contains("vcpu") && e.contains("many"), "{e}");
        let e = VmProfile::parse("<domain><name>x</name><devices><disk type='vhostuser'><target dev='vdb'/><source type='unix'/></disk></devices></domain>").unwrap_err();
        assert!(e.contains("vdb") && e.contains("socket"), "{e}");
        let e = VmProfile::from_file(Path::new("/nonexistent/dom.xml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/dom.xml"), "{e}");
    }
}
