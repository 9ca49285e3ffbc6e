//! The virtio-blk request parser on guest memory and a descriptor chain
//! decoded from the fuzzer's bytes, through the checks of
//! `blk::request::fuzz`: no panic; handed directly to the parser, the
//! outcome matches the model of virtio 1.2 5.2.6 and what is accepted is
//! in range; or laid out as a split virtqueue (descriptor table or an
//! indirect table, then overwritten descriptors: loops, bad `next`,
//! nested INDIRECT) and popped by virtio-queue as the worker does.
//!
//! Input layout (little endian; missing bytes read as zero), where an
//! "edge" value is a tag byte then, for tags 4k+3, the raw value:
//! ```text
//! flags u8           bit 0 virtqueue, bit 1 indirect table, bits 2-4 = 0: read-only
//! capacity           edge of CAPACITIES or u64
//! 4 × header         type (edge of KINDS or u32), reserved u32,
//!                    sector (edge of EDGE_SECTORS or u16)
//! segments u8        count % (MAX_DISCARD_SEG + 2), then each:
//!                    sector (edge or u16), sectors (edge or u32), flags u8
//! kind_at u8         bit 0: write a type (edge of KINDS) at SPOTS[bits 1-2]
//! descriptors u8     count % 9, then each: address, length, u8 (bit 0 writable)
//!   address          tag % 4: 0 SPOTS[u8], 1 EDGE_ADDRS[u8], 2 u32 % 1 MiB, 3 u64
//!   length           edge of EDGE_LENS or u16
//! noise u8           count % 4 (virtqueue only), then each: index u8 % 16,
//!                    address, length, flags u8 % 8, next u8 % 20, u8 (bit 0 indirect)
//! ```

use tierblk::blk::request::{
    fuzz::{
        chain_matches_spec, memory, virtqueue_chain, Chain, Guest, Noise, CAPACITIES, EDGE_ADDRS,
        EDGE_LENS, EDGE_SECTORS, KINDS, SPOTS,
    },
    Limits, MAX_DISCARD_SEG,
};
use tierblk_fuzz::{violated, Input};

fn addr(u: &mut Input) -> u64 {
    let tag = u.u8();
    match tag % 4 {
        0 => SPOTS[usize::from(u.u8()) % SPOTS.len()],
        1 => EDGE_ADDRS[usize::from(u.u8()) % EDGE_ADDRS.len()],
        2 => u64::from(u.u32() % 0x10_0000),
        _ => u.u64(),
    }
}

fn len(u: &mut Input) -> u32 {
    u.edge_or(EDGE_LENS, |u| u32::from(u.u16()))
}

fn main() {
    let mem = memory();
    afl::fuzz!(|data: &[u8]| {
        let mut u = Input::new(data);
        let flags = u.u8();
        let limits = Limits {
            capacity: u.edge_or(CAPACITIES, Input::u64),
            read_only: flags & 0x1c == 0,
        };
        let mut g = Guest::default();
        for _ in SPOTS {
            let kind = u.edge_or(KINDS, Input::u32);
            let reserved = u.u32();
            let sector = u.edge_or(EDGE_SECTORS, |u| u64::from(u.u16()));
            g.headers.push((kind, reserved, sector));
        }
        for _ in 0..u.u8() % (MAX_DISCARD_SEG as u8 + 2) {
            let sector = u.edge_or(EDGE_SECTORS, |u| u64::from(u.u16()));
            let sectors = u.edge_or(&[0, 1, 8, 64, 5000], Input::u32);
            g.segments.push((sector, sectors, u32::from(u.u8())));
        }
        let mut c = Chain::default();
        let at = u.u8();
        if at & 1 != 0 {
            let spot = SPOTS[usize::from(at >> 1) % SPOTS.len()];
            c.kind_at = Some((spot, u.edge_or(KINDS, Input::u32)));
        }
        for _ in 0..u.u8() % 9 {
            let d = (addr(&mut u), len(&mut u), u.bool());
            c.descs.push(d);
        }
        let result = if flags & 1 == 0 {
            chain_matches_spec(&mem, &g, &c, limits)
        } else {
            let noise: Vec<Noise> = (0..u.u8() % 4)
                .map(|_| {
                    let i = u16::from(u.u8() % 16);
                    let (a, l) = (addr(&mut u), len(&mut u));
                    let (f, next) = (u16::from(u.u8() % 8), u16::from(u.u8() % 20));
                    (i, a, l, f, next, u.bool())
                })
                .collect();
            virtqueue_chain(&mem, &g, &c, flags & 2 != 0, &noise, limits)
        };
        if let Err(e) = result {
            violated(e);
        }
    });
}
