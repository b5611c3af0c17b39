use std::collections::{HashMap, HashSet};

use super::*;

/// Where the fake allocator's table pages start (well away from the hpas mapped below).
const TABLE_BASE: u64 = 0x7000_0000;

/// Table pages in a HashMap, at most `limit` of them, optionally handed out dirty.
struct Fake {
    tables: HashMap<u64, Box<[u64; 512]>>,
    next: u64,
    limit: usize,
    dirty: bool,
}

impl Fake {
    fn new() -> Self {
        Self::with_limit(usize::MAX)
    }

    fn with_limit(limit: usize) -> Self {
        Self {
            tables: HashMap::new(),
            next: TABLE_BASE,
            limit,
            dirty: false,
        }
    }

    fn allocated(&self) -> usize {
        self.tables.len()
    }

    fn owns(&self, phys: u64) -> bool {
        self.tables.contains_key(&phys)
    }
}

impl TableMemory for Fake {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.tables.len() >= self.limit {
            return None;
        }
        let phys = self.next;
        self.next += SIZE_4K;
        let fill = if self.dirty { 0xdead_beef_dead_beef } else { 0 };
        self.tables.insert(phys, Box::new([fill; 512]));
        Some(phys)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        self.tables.get_mut(&phys).expect("not a table page")
    }

    fn table_ref(&self, phys: u64) -> &[u64; 512] {
        self.tables.get(&phys).expect("not a table page")
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const NO_LARGE: EptCaps = EptCaps {
    large_2m: false,
    large_1g: false,
    accessed_dirty: false,
};
const CAPS_2M: EptCaps = EptCaps {
    large_2m: true,
    large_1g: false,
    accessed_dirty: false,
};
const CAPS_ALL: EptCaps = EptCaps {
    large_2m: true,
    large_1g: true,
    accessed_dirty: true,
};

fn mapping(gpa: u64, hpa: u64, len: u64) -> Mapping {
    Mapping {
        gpa,
        hpa,
        len,
        access: Access::RWX,
    }
}

/// New tables with `maps` mapped.
fn build(mem: &mut Fake, maps: &[Mapping], caps: &EptCaps) -> Ept {
    let ept = Ept::new(mem).unwrap();
    for m in maps {
        ept.map(mem, m, caps).unwrap();
    }
    ept
}

fn tables(ept: &Ept, mem: &Fake) -> Vec<u64> {
    let mut all = Vec::new();
    ept.for_each_table(mem, &mut |t| all.push(t));
    all
}

fn verify(ept: &Ept, mem: &Fake, expected: &[Mapping]) -> Result<(), EptError> {
    ept.verify(mem, expected, &|p| mem.owns(p))
}

/// The host-physical address of the table entry translating `gpa` at `level`.
fn entry_slot(ept: &Ept, mem: &Fake, gpa: u64, level: u8) -> (u64, usize) {
    let mut table = ept.pml4;
    for at in (level + 1..=4).rev() {
        table = mem.table_ref(table)[index(gpa, at)] & ADDRESS_MASK;
    }
    (table, index(gpa, level))
}

fn poke(ept: &Ept, mem: &mut Fake, gpa: u64, level: u8, change: impl FnOnce(u64) -> u64) {
    let (table, i) = entry_slot(ept, mem, gpa, level);
    let entry = &mut mem.table(table)[i];
    *entry = change(*entry);
}

fn corrupt_reason(result: Result<(), EptError>) -> (u64, u8, &'static str) {
    match result {
        Err(EptError::Corrupt { gpa, level, reason }) => (gpa, level, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn new_tables_are_empty() {
    let mut mem = Fake::new();
    let ept = Ept::new(&mut mem).unwrap();
    assert_eq!(ept.pml4, TABLE_BASE);
    assert_eq!(tables(&ept, &mem), [TABLE_BASE]);
    assert_eq!(ept.translate(&mem, 0), None);
    verify(&ept, &mem, &[]).unwrap();
}

#[test]
fn sixteen_mib_uses_2m_pages() {
    let mut mem = Fake::new();
    let m = mapping(0, 0x4000_0000, 16 * MIB);
    let ept = build(&mut mem, &[m], &CAPS_2M);
    // PML4, one PDPT, one PD with eight 2 MiB leaves.
    assert_eq!(mem.allocated(), 3);
    assert_eq!(tables(&ept, &mem).len(), 3);
    for page in 0..8 {
        let gpa = page * 2 * MIB;
        assert_eq!(
            ept.translate(&mem, gpa),
            Some((0x4000_0000 + gpa, Access::RWX, SIZE_2M))
        );
    }
    assert_eq!(
        ept.translate(&mem, 0x12_3456),
        Some((0x4012_3456, Access::RWX, SIZE_2M))
    );
    let (pd, _) = entry_slot(&ept, &mem, 0, 2);
    let leaf = mem.table_ref(pd)[1];
    // hpa | RWX | WB << 3 | ignore PAT | page size.
    assert_eq!(leaf, 0x4020_0000 | 0b111 | (6 << 3) | (1 << 6) | (1 << 7));
    // 1 GiB pages do not help a 16 MiB range.
    let mut mem = Fake::new();
    build(&mut mem, &[m], &CAPS_ALL);
    assert_eq!(mem.allocated(), 3);
}

#[test]
fn one_gib_range_uses_one_1g_leaf() {
    let m = mapping(GIB, 3 * GIB, GIB);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &CAPS_ALL);
    // PML4 and one PDPT holding the leaf.
    assert_eq!(mem.allocated(), 2);
    assert_eq!(
        ept.translate(&mem, GIB + 0x1234_5678),
        Some((3 * GIB + 0x1234_5678, Access::RWX, SIZE_1G))
    );
    let (pdpt, i) = entry_slot(&ept, &mem, GIB, 3);
    assert_eq!(i, 1);
    assert_eq!(
        mem.table_ref(pdpt)[i],
        (3 * GIB) | 0b111 | (6 << 3) | (1 << 6) | (1 << 7)
    );
    verify(&ept, &mem, &[m]).unwrap();

    // Without 1 GiB pages: a PD of 512 2 MiB leaves.
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &CAPS_2M);
    assert_eq!(mem.allocated(), 3);
    assert_eq!(ept.translate(&mem, GIB).unwrap().2, SIZE_2M);
    // An hpa only 2 MiB aligned cannot use a 1 GiB page either.
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[mapping(GIB, 3 * GIB + 2 * MIB, GIB)], &CAPS_ALL);
    assert_eq!(mem.allocated(), 3);
    assert_eq!(ept.translate(&mem, GIB).unwrap().2, SIZE_2M);
}

#[test]
fn unaligned_edges_fall_back_to_4k() {
    // One 4 KiB page before the 2 MiB boundary, one 2 MiB page, two 4 KiB pages after.
    let gpa = 2 * MIB - SIZE_4K;
    let m = mapping(gpa, 0x4000_0000 + gpa, SIZE_4K + 2 * MIB + 2 * SIZE_4K);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &CAPS_ALL);
    // PML4, PDPT, PD, and one page table at each end.
    assert_eq!(mem.allocated(), 5);
    let size = |g| ept.translate(&mem, g).map(|t| t.2);
    assert_eq!(size(gpa - 1), None);
    assert_eq!(size(gpa), Some(SIZE_4K));
    assert_eq!(size(2 * MIB), Some(SIZE_2M));
    assert_eq!(size(4 * MIB - 1), Some(SIZE_2M));
    assert_eq!(size(4 * MIB), Some(SIZE_4K));
    assert_eq!(size(4 * MIB + SIZE_4K), Some(SIZE_4K));
    assert_eq!(size(4 * MIB + 2 * SIZE_4K), None);
    assert_eq!(
        ept.translate(&mem, 4 * MIB + SIZE_4K + 8),
        Some((0x4040_1008, Access::RWX, SIZE_4K))
    );
    verify(&ept, &mem, &[m]).unwrap();

    // gpa and hpa aligned differently: 4 KiB pages throughout.
    let m = mapping(0, 0x4000_1000, 4 * MIB);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &CAPS_ALL);
    assert_eq!(mem.allocated(), 5);
    assert_eq!(
        ept.translate(&mem, 3 * MIB).unwrap(),
        (0x4030_1000, Access::RWX, SIZE_4K)
    );
    verify(&ept, &mem, &[m]).unwrap();
}

#[test]
fn no_large_page_caps_means_4k_pages() {
    let m = mapping(0, 0x4000_0000, 4 * MIB);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &NO_LARGE);
    assert_eq!(mem.allocated(), 3 + 2);
    assert_eq!(ept.translate(&mem, 2 * MIB).unwrap().2, SIZE_4K);
    verify(&ept, &mem, &[m]).unwrap();
}

#[test]
fn translate_inside_outside_and_at_edges() {
    let m = mapping(0x10_0000, 0x4010_0000, 0x30_0000);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[m], &CAPS_2M);
    let hpa = |g| ept.translate(&mem, g).map(|t| t.0);
    assert_eq!(hpa(0x10_0000), Some(0x4010_0000));
    assert_eq!(hpa(0x10_0001), Some(0x4010_0001));
    assert_eq!(hpa(0x2f_ffff), Some(0x402f_ffff));
    assert_eq!(hpa(0x3f_ffff), Some(0x403f_ffff));
    // Just before, just past the end, far away, and beyond 48 bits.
    assert_eq!(hpa(0x0f_ffff), None);
    assert_eq!(hpa(0x40_0000), None);
    assert_eq!(hpa(0x40_1000), None);
    assert_eq!(hpa(0), None);
    assert_eq!(hpa(0x8000_0000), None);
    assert_eq!(hpa(GPA_LIMIT - 1), None);
    assert_eq!(hpa(GPA_LIMIT), None);
    assert_eq!(hpa(GPA_LIMIT + 0x10_0000), None);
    assert_eq!(hpa(u64::MAX), None);
    // Page sizes: 4 KiB up to 2 MiB, then one 2 MiB page.
    assert_eq!(ept.translate(&mem, 0x1f_f000).unwrap().2, SIZE_4K);
    assert_eq!(ept.translate(&mem, 0x20_0000).unwrap().2, SIZE_2M);
}

#[test]
fn translate_with_a_bad_root_is_none() {
    let mem = Fake::new();
    assert_eq!(Ept { pml4: 0x1234 }.translate(&mem, 0), None);
    assert_eq!(Ept { pml4: HPA_LIMIT }.translate(&mem, 0), None);
}

#[test]
fn multiple_mappings() {
    let maps = [
        Mapping {
            access: Access::RWX,
            ..mapping(0, 0x4000_0000, 0xa_0000)
        },
        Mapping {
            access: Access::RX,
            ..mapping(0xf_0000, 0x5000_0000, 0x1_0000)
        },
        Mapping {
            access: Access::RW,
            ..mapping(0x10_0000, 0x4010_0000, 126 * MIB)
        },
        Mapping {
            access: Access::R,
            ..mapping(0xfee0_0000, 0x6000_0000, SIZE_4K)
        },
        Mapping {
            access: Access::RWX,
            ..mapping(4 * GIB, 8 * GIB, 2 * GIB)
        },
        Mapping {
            access: Access::RWX,
            ..mapping(0x8000_0000_0000, 0x1_0000_0000, 4 * MIB)
        },
    ];
    let mut mem = Fake::new();
    let ept = build(&mut mem, &maps, &CAPS_ALL);
    for m in &maps {
        for gpa in [m.gpa, m.gpa + m.len / 2, m.gpa + m.len - 1] {
            let (hpa, access, _) = ept.translate(&mem, gpa).unwrap();
            assert_eq!((hpa, access), (m.hpa + (gpa - m.gpa), m.access));
        }
        if !maps.iter().any(|n| n.gpa == m.gpa + m.len) {
            assert_eq!(ept.translate(&mem, m.gpa + m.len), None);
        }
    }
    assert_eq!(ept.translate(&mem, 0xa_0000), None);
    assert_eq!(ept.translate(&mem, 4 * GIB).unwrap().2, SIZE_1G);
    verify(&ept, &mem, &maps).unwrap();
    // Every allocated page is reachable exactly once.
    let all = tables(&ept, &mem);
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len());
    assert_eq!(all.len(), mem.allocated());
    assert_eq!(all[0], ept.pml4);
    assert!(all.len() <= Ept::tables_needed(&maps, &CAPS_ALL));
}

#[test]
fn overlap_is_rejected_and_changes_nothing() {
    let first = mapping(4 * MIB, 0x4000_0000, 4 * MIB);
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[first], &CAPS_2M);
    let pages = mem.allocated();
    for (gpa, len, at) in [
        (4 * MIB, 4 * MIB, 4 * MIB),                     // the same range
        (2 * MIB, 4 * MIB, 4 * MIB),                     // overlapping the start
        (7 * MIB, 4 * MIB, 7 * MIB),                     // overlapping the end
        (5 * MIB, SIZE_4K, 5 * MIB),                     // inside
        (0, 16 * MIB, 4 * MIB),                          // around it
        (8 * MIB - SIZE_4K, SIZE_4K, 8 * MIB - SIZE_4K), // its last page
    ] {
        let m = mapping(gpa, 0x5000_0000, len);
        assert_eq!(
            ept.map(&mut mem, &m, &CAPS_2M),
            Err(EptError::Overlap { gpa: at })
        );
    }
    assert_eq!(mem.allocated(), pages);
    verify(&ept, &mem, &[first]).unwrap();
    // Right next to it on both sides is fine.
    ept.map(&mut mem, &mapping(0, 0x5000_0000, 4 * MIB), &CAPS_2M)
        .unwrap();
    ept.map(&mut mem, &mapping(8 * MIB, 0x6000_0000, SIZE_4K), &CAPS_2M)
        .unwrap();
}

#[test]
fn invalid_mappings_are_rejected() {
    let mut mem = Fake::new();
    let ept = Ept::new(&mut mem).unwrap();
    let map = |mem: &mut Fake, m: Mapping| ept.map(mem, &m, &CAPS_ALL);
    for m in [
        mapping(0x800, 0, SIZE_4K),
        mapping(0, 0x800, SIZE_4K),
        mapping(0, 0, 0x800),
        mapping(0, 0, 0),
    ] {
        assert_eq!(
            map(&mut mem, m),
            Err(EptError::Misaligned {
                gpa: m.gpa,
                hpa: m.hpa,
                len: m.len
            })
        );
    }
    for m in [
        mapping(GPA_LIMIT - SIZE_4K, 0, 2 * SIZE_4K),
        mapping(GPA_LIMIT, 0, SIZE_4K),
        mapping(0, HPA_LIMIT - SIZE_4K, 2 * SIZE_4K),
        mapping(u64::MAX - 0xfff, 0, SIZE_4K),
        mapping(SIZE_4K, 0, u64::MAX - 0xfff),
    ] {
        assert_eq!(
            map(&mut mem, m),
            Err(EptError::AddressTooHigh {
                gpa: m.gpa,
                hpa: m.hpa,
                len: m.len
            })
        );
    }
    for access in [
        Access::default(),
        Access::new(false, true, false),
        Access::new(false, false, true),
        Access::new(false, true, true),
    ] {
        let m = Mapping {
            access,
            ..mapping(0, 0, SIZE_4K)
        };
        assert_eq!(
            map(&mut mem, m),
            Err(EptError::InvalidAccess { gpa: 0, access })
        );
    }
    // The very top of the guest-physical space is fine.
    map(&mut mem, mapping(GPA_LIMIT - SIZE_4K, 0, SIZE_4K)).unwrap();
    assert_eq!(
        ept.translate(&mem, GPA_LIMIT - 1),
        Some((0xfff, Access::RWX, SIZE_4K))
    );
    // A bad root is refused before anything is touched.
    let bad = Ept { pml4: 0x1001 };
    assert_eq!(
        bad.map(&mut mem, &mapping(0, 0, SIZE_4K), &CAPS_ALL),
        Err(EptError::BadTablePage { phys: 0x1001 })
    );
}

#[test]
fn out_of_tables_is_reported_and_undone() {
    assert_eq!(
        Ept::new(&mut Fake::with_limit(0)),
        Err(EptError::OutOfTables)
    );

    // Room for the PML4, a PDPT and a PD, but not for the page tables the edges need.
    let mut mem = Fake::with_limit(3);
    let ept = Ept::new(&mut mem).unwrap();
    let first = mapping(0, 0x4000_0000, 4 * MIB);
    ept.map(&mut mem, &first, &CAPS_2M).unwrap();
    let m = mapping(
        8 * MIB - SIZE_4K,
        0x5000_0000 - SIZE_4K,
        4 * MIB + 2 * SIZE_4K,
    );
    assert_eq!(ept.map(&mut mem, &m, &CAPS_2M), Err(EptError::OutOfTables));
    // Nothing of it stays mapped: not even the 2 MiB pages placed before the failure.
    assert_eq!(ept.translate(&mem, 8 * MIB), None);
    verify(&ept, &mem, &[first]).unwrap();
    assert_eq!(tables(&ept, &mem).len(), mem.allocated());

    // 4 KiB pages only: the first page table fills, the second cannot be had.
    let mut mem = Fake::with_limit(4);
    let ept = Ept::new(&mut mem).unwrap();
    let m = mapping(0, 0x4000_0000, 4 * MIB);
    assert_eq!(ept.map(&mut mem, &m, &NO_LARGE), Err(EptError::OutOfTables));
    assert_eq!(ept.translate(&mem, 0), None);
    verify(&ept, &mem, &[]).unwrap();
    assert_eq!(tables(&ept, &mem).len(), 4);
}

#[test]
fn map_after_a_failed_map_reuses_its_empty_tables() {
    // The 4 KiB page at the start needs a page table the allocator cannot give, which
    // leaves an empty PDPT and PD linked.
    let mut mem = Fake::with_limit(3);
    let ept = Ept::new(&mut mem).unwrap();
    let m = mapping(GIB - SIZE_4K, 0x4000_0000 - SIZE_4K, GIB + SIZE_4K);
    assert_eq!(ept.map(&mut mem, &m, &CAPS_ALL), Err(EptError::OutOfTables));
    verify(&ept, &mem, &[]).unwrap();
    // The empty PD takes 2 MiB pages where a 1 GiB page would have gone.
    mem.limit = usize::MAX;
    let m = mapping(0, GIB, GIB);
    ept.map(&mut mem, &m, &CAPS_ALL).unwrap();
    assert_eq!(
        ept.translate(&mem, 0x1234).unwrap(),
        (GIB + 0x1234, Access::RWX, SIZE_2M)
    );
    verify(&ept, &mem, &[m]).unwrap();
    assert_eq!(mem.allocated(), 3);
}

#[test]
fn dirty_pages_from_the_allocator_are_zeroed() {
    let mut mem = Fake::new();
    mem.dirty = true;
    let m = mapping(0, 0x4000_0000, SIZE_4K);
    let ept = build(&mut mem, &[m], &NO_LARGE);
    assert_eq!(ept.translate(&mem, SIZE_4K), None);
    assert_eq!(ept.translate(&mem, 0x8000_0000), None);
    verify(&ept, &mem, &[m]).unwrap();
}

#[test]
fn bad_pages_from_the_allocator_are_refused() {
    struct Odd(Fake);
    impl TableMemory for Odd {
        fn alloc_table(&mut self) -> Option<u64> {
            Some(0x1800)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; 512] {
            self.0.table(phys)
        }
        fn table_ref(&self, phys: u64) -> &[u64; 512] {
            self.0.table_ref(phys)
        }
    }
    assert_eq!(
        Ept::new(&mut Odd(Fake::new())),
        Err(EptError::BadTablePage { phys: 0x1800 })
    );
}

#[test]
fn eptp_bit_layout() {
    let ept = Ept { pml4: 0x1234_5000 };
    // Bits 2:0 = 6 (WB), bits 5:3 = 3 (4-level walk), bit 6 = A/D, bits 11:7 clear.
    assert_eq!(ept.eptp(&CAPS_2M), 0x1234_5000 | 6 | (3 << 3));
    assert_eq!(ept.eptp(&CAPS_2M), 0x1234_501e);
    assert_eq!(ept.eptp(&CAPS_ALL), 0x1234_505e);
    assert_eq!(ept.eptp(&CAPS_ALL) & 0xf80, 0);
    let high = Ept {
        pml4: 0x0000_ffff_ffff_f000,
    };
    assert_eq!(high.eptp(&NO_LARGE), 0x0000_ffff_ffff_f01e);
}

#[test]
fn caps_from_the_capability_msr() {
    assert_eq!(EptCaps::from_ept_vpid_cap(0), NO_LARGE);
    assert_eq!(EptCaps::from_ept_vpid_cap(1 << 16), CAPS_2M);
    let all = (1 << 6) | (1 << 14) | (1 << 16) | (1 << 17) | (1 << 20) | (1 << 21) | (1 << 32);
    assert_eq!(EptCaps::from_ept_vpid_cap(all), CAPS_ALL);
}

/// Tables with 1 GiB, 2 MiB and 4 KiB leaves, for the verify tests.
fn sample() -> (Fake, Ept, Vec<Mapping>) {
    let maps = vec![
        mapping(0, 0x4000_0000, 4 * MIB + 2 * SIZE_4K),
        Mapping {
            access: Access::RX,
            ..mapping(0xfff0_0000, 0x5000_0000, MIB)
        },
        mapping(2 * GIB, 4 * GIB, GIB),
    ];
    let mut mem = Fake::new();
    let ept = build(&mut mem, &maps, &CAPS_ALL);
    verify(&ept, &mem, &maps).unwrap();
    (mem, ept, maps)
}

#[test]
fn verify_accepts_what_map_built_in_any_order() {
    let (mem, ept, mut maps) = sample();
    maps.reverse();
    verify(&ept, &mem, &maps).unwrap();
}

#[test]
fn verify_accepts_accessed_and_dirty_flags() {
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 0, 4, |e| e | ACCESSED);
    poke(&ept, &mut mem, 0, 3, |e| e | ACCESSED);
    poke(&ept, &mut mem, 0, 2, |e| e | ACCESSED | DIRTY);
    poke(&ept, &mut mem, 4 * MIB, 1, |e| e | ACCESSED | DIRTY);
    poke(&ept, &mut mem, 2 * GIB, 3, |e| e | ACCESSED | DIRTY);
    verify(&ept, &mem, &maps).unwrap();
    // Dirty is a leaf flag only: in a table entry it is an ignored bit Lazarus never sets.
    poke(&ept, &mut mem, 0, 4, |e| e | DIRTY);
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (0, 4, "bit set that the hypervisor never sets")
    );
}

#[test]
fn verify_accepts_a_leaf_spanning_contiguous_mappings() {
    let mut mem = Fake::new();
    let ept = build(&mut mem, &[mapping(0, 0x4000_0000, 2 * MIB)], &CAPS_2M);
    let halves = [mapping(MIB, 0x4010_0000, MIB), mapping(0, 0x4000_0000, MIB)];
    verify(&ept, &mem, &halves).unwrap();
    // Contiguous in gpa but not in hpa: the second half is wrong.
    let apart = [mapping(0, 0x4000_0000, MIB), mapping(MIB, 0x5000_0000, MIB)];
    assert_eq!(
        verify(&ept, &mem, &apart),
        Err(EptError::Unexpected {
            gpa: MIB,
            expected: Some((0x5000_0000, Access::RWX)),
            found: Some((0x4010_0000, Access::RWX)),
        })
    );
}

#[test]
fn verify_rejects_an_extra_mapping() {
    let (mut mem, ept, maps) = sample();
    ept.map(
        &mut mem,
        &mapping(64 * MIB, 0x6000_0000, SIZE_4K),
        &CAPS_ALL,
    )
    .unwrap();
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 64 * MIB,
            expected: None,
            found: Some((0x6000_0000, Access::RWX)),
        })
    );
    // Also when the extra part only extends an expected mapping.
    let mut shorter = maps.clone();
    shorter[0].len -= SIZE_4K;
    let (mem, ept, _) = sample();
    assert_eq!(
        verify(&ept, &mem, &shorter),
        Err(EptError::Unexpected {
            gpa: 4 * MIB + SIZE_4K,
            expected: None,
            found: Some((0x4040_1000, Access::RWX)),
        })
    );
}

#[test]
fn verify_rejects_a_missing_mapping() {
    let (mem, ept, mut maps) = sample();
    maps.push(mapping(5 * GIB, 0x7_0000_0000, 2 * MIB));
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 5 * GIB,
            expected: Some((0x7_0000_0000, Access::RWX)),
            found: None,
        })
    );
    // One page missing in the middle of a mapping.
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 0xfff4_0000, 1, |_| 0);
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 0xfff4_0000,
            expected: Some((0x5004_0000, Access::RX)),
            found: None,
        })
    );
}

#[test]
fn verify_rejects_a_wrong_permission() {
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 2 * MIB, 2, |e| e & !WRITE);
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 2 * MIB,
            expected: Some((0x4020_0000, Access::RWX)),
            found: Some((0x4020_0000, Access::RX)),
        })
    );
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 0xfff0_0000, 1, |e| e | WRITE);
    assert!(matches!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 0xfff0_0000,
            ..
        })
    ));
    // Non-leaf entries must allow everything.
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 0, 3, |e| e & !EXECUTE);
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (0, 3, "table entry without read, write and execute")
    );
}

#[test]
fn verify_rejects_a_wrong_hpa() {
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 4 * MIB + SIZE_4K, 1, |e| e + SIZE_4K);
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected {
            gpa: 4 * MIB + SIZE_4K,
            expected: Some((0x4040_1000, Access::RWX)),
            found: Some((0x4040_2000, Access::RWX)),
        })
    );
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 2 * GIB, 3, |e| e + SIZE_1G);
    assert!(matches!(
        verify(&ept, &mem, &maps),
        Err(EptError::Unexpected { gpa, .. }) if gpa == 2 * GIB
    ));
}

#[test]
fn verify_rejects_a_memory_type_other_than_write_back() {
    for (gpa, level) in [(0, 2), (4 * MIB, 1), (2 * GIB, 3)] {
        for memory_type in [0u64, 1, 4, 5, 7] {
            let (mut mem, ept, maps) = sample();
            poke(&ept, &mut mem, gpa, level, |e| {
                e & !MEMORY_TYPE_MASK | memory_type << 3
            });
            assert_eq!(
                corrupt_reason(verify(&ept, &mem, &maps)),
                (gpa, level, "memory type is not write-back")
            );
        }
    }
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 0, 2, |e| e & !IGNORE_PAT);
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (0, 2, "ignore-PAT bit clear")
    );
}

#[test]
fn verify_rejects_reserved_bits() {
    let cases: &[(u64, u8, u64)] = &[
        (0, 4, 1 << 3),  // PML4E bits 7:3 (Table 29-1)
        (0, 4, 1 << 7),  // PML4E page-size bit is reserved too
        (0, 3, 1 << 4),  // PDPTE -> PD bits 6:3 (Table 29-3)
        (0, 2, 1 << 12), // 2 MiB PDE bits 20:12 (Table 29-4)
        (0, 2, 1 << 20),
        (2 * GIB, 3, 1 << 12), // 1 GiB PDPTE bits 29:12 (Table 29-2)
        (2 * GIB, 3, 1 << 29),
        (4 * MIB, 1, 1 << 51), // bits 51:N
        (4 * MIB, 1, 1 << 48),
        (0, 4, 1 << 50),
    ];
    for &(gpa, level, bit) in cases {
        let (mut mem, ept, maps) = sample();
        poke(&ept, &mut mem, gpa, level, |e| e | bit);
        assert_eq!(
            corrupt_reason(verify(&ept, &mem, &maps)),
            (gpa, level, "reserved bit set"),
            "bit {bit:#x} at level {level}"
        );
    }
}

#[test]
fn verify_rejects_bits_the_hypervisor_never_sets() {
    let cases: &[(u64, u8, u64)] = &[
        (0, 4, 1 << 10), // user-mode execute
        (0, 3, 1 << 11),
        (4 * MIB, 1, 1 << 7),  // ignored in a PTE (Table 29-6)
        (4 * MIB, 1, 1 << 63), // suppress #VE
        (2 * GIB, 3, 1 << 52),
    ];
    for &(gpa, level, bit) in cases {
        let (mut mem, ept, maps) = sample();
        poke(&ept, &mut mem, gpa, level, |e| e | bit);
        assert_eq!(
            corrupt_reason(verify(&ept, &mem, &maps)),
            (gpa, level, "bit set that the hypervisor never sets"),
            "bit {bit:#x} at level {level}"
        );
    }
    // A not-present entry must be all zero.
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 8 * GIB, 3, |_| 0x4000_0000);
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (8 * GIB, 3, "not-present entry with other bits set")
    );
}

#[test]
fn verify_rejects_a_table_not_owned() {
    let (mem, ept, maps) = sample();
    let (pt, _) = entry_slot(&ept, &mem, 4 * MIB, 1);
    assert_eq!(
        corrupt_reason(ept.verify(&mem, &maps, &|p| p != pt && mem.owns(p))),
        (4 * MIB, 2, "table page not owned by this EPT")
    );
    assert_eq!(
        corrupt_reason(ept.verify(&mem, &maps, &|p| p != ept.pml4)),
        (0, 4, "root table not owned by this EPT")
    );
    // Pointing a PDE at a page outside the EPT's pages: refused without reading it.
    let (mut mem, ept, maps) = sample();
    poke(&ept, &mut mem, 4 * MIB, 2, |e| {
        e & !ADDRESS_MASK | 0x4000_0000
    });
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (4 * MIB, 2, "table page not owned by this EPT")
    );
    let bad = Ept { pml4: 0x1234 };
    assert_eq!(
        corrupt_reason(bad.verify(&mem, &[], &|_| true)),
        (0, 4, "root table address misaligned or too high")
    );
}

#[test]
fn verify_rejects_a_table_loop() {
    let (mut mem, ept, maps) = sample();
    let root = ept.pml4;
    poke(&ept, &mut mem, 4 * MIB, 2, |e| e & !ADDRESS_MASK | root);
    assert_eq!(
        corrupt_reason(verify(&ept, &mem, &maps)),
        (4 * MIB, 2, "table refers back to a table above it")
    );
}

#[test]
fn verify_rejects_invalid_expectations() {
    let (mem, ept, mut maps) = sample();
    maps.push(mapping(MIB, 0x9000_0000, SIZE_4K));
    assert_eq!(
        verify(&ept, &mem, &maps),
        Err(EptError::Overlap { gpa: MIB })
    );
    let bad = mapping(0x10_0000_0000, 0, 0x10);
    assert!(matches!(
        verify(&ept, &mem, &[bad]),
        Err(EptError::Misaligned { .. })
    ));
}

#[test]
fn errors_display_on_one_line() {
    let errors = [
        EptError::OutOfTables,
        EptError::Misaligned {
            gpa: 1,
            hpa: 2,
            len: 3,
        },
        EptError::Overlap { gpa: 0x1000 },
        EptError::AddressTooHigh {
            gpa: GPA_LIMIT,
            hpa: 0,
            len: SIZE_4K,
        },
        EptError::InvalidAccess {
            gpa: 0,
            access: Access::new(false, true, false),
        },
        EptError::BadTablePage { phys: 0x1800 },
        EptError::Corrupt {
            gpa: 0x20_0000,
            level: 2,
            reason: "reserved bit set",
        },
        EptError::Unexpected {
            gpa: 0x1000,
            expected: Some((0x4000_1000, Access::RX)),
            found: None,
        },
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text}");
    }
    assert_eq!(
        errors[6].to_string(),
        "EPT corrupt at gpa 0x200000, PD entry: reserved bit set"
    );
    assert_eq!(
        errors[7].to_string(),
        "EPT maps gpa 0x1000 to nothing where hpa 0x40001000 r-x was expected"
    );
    assert_eq!(Access::RW.to_string(), "rw-");
}

/// xorshift64*: deterministic pseudo-random numbers for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// A random size made of 1 GiB, 2 MiB and 4 KiB parts, biased to interesting edges.
fn random_len(rng: &mut Rng, big: bool) -> u64 {
    let gigs = if big && rng.chance(4) {
        rng.below(3)
    } else {
        0
    };
    let megs = if rng.chance(2) { rng.below(12) } else { 0 };
    let pages = if rng.chance(2) { rng.below(600) } else { 0 };
    (gigs * GIB + megs * 2 * MIB + pages * SIZE_4K).max(SIZE_4K)
}

/// Random non-overlapping mappings with random alignments, in random order.
fn random_mappings(rng: &mut Rng, caps: &EptCaps) -> Vec<Mapping> {
    let count = 1 + rng.below(5);
    let mut gpa = rng.below(4) * 512 * GIB + rng.below(2048) * SIZE_4K;
    let mut maps = Vec::new();
    for _ in 0..count {
        gpa += match rng.below(3) {
            0 => rng.below(16) * SIZE_4K,
            1 => rng.below(8) * 2 * MIB,
            _ => rng.below(4) * GIB,
        };
        // An hpa congruent to the gpa modulo 1 GiB, 2 MiB or only 4 KiB.
        let hpa_base = (1 + rng.below(64)) * GIB;
        let hpa = match rng.below(3) {
            0 => hpa_base + gpa % GIB,
            1 => hpa_base + gpa % (2 * MIB) + rng.below(512) * 2 * MIB,
            _ => hpa_base + rng.below(1 << 18) * SIZE_4K,
        };
        // Large ranges of 4 KiB pages make slow tests: keep them for large-page caps.
        let len = random_len(rng, caps.large_2m);
        let access = [Access::RWX, Access::RW, Access::RX, Access::R][rng.below(4) as usize];
        maps.push(Mapping {
            gpa,
            hpa,
            len,
            access,
        });
        gpa += len;
    }
    // Shuffle.
    for i in (1..maps.len()).rev() {
        maps.swap(i, rng.below(i as u64 + 1) as usize);
    }
    maps
}

#[test]
fn tables_needed_bounds_what_map_uses() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for round in 0..300 {
        let caps = EptCaps {
            large_2m: rng.chance(4) || round % 2 == 0,
            large_1g: rng.chance(2),
            accessed_dirty: rng.chance(2),
        };
        let maps = random_mappings(&mut rng, &caps);
        let mut mem = Fake::new();
        let ept = build(&mut mem, &maps, &caps);
        let needed = Ept::tables_needed(&maps, &caps);
        assert!(
            mem.allocated() <= needed,
            "round {round}: used {} > needed {needed} for {maps:x?} {caps:?}",
            mem.allocated()
        );
        assert_eq!(tables(&ept, &mem).len(), mem.allocated());
        verify(&ept, &mem, &maps).unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Spot checks of the translation at the edges of every mapping.
        for m in &maps {
            let (hpa, access, _) = ept.translate(&mem, m.gpa + m.len - 1).unwrap();
            assert_eq!((hpa, access), (m.hpa + m.len - 1, m.access));
            let (hpa, _, _) = ept.translate(&mem, m.gpa).unwrap();
            assert_eq!(hpa, m.hpa);
            if !maps.iter().any(|n| n.gpa == m.gpa + m.len) {
                assert_eq!(ept.translate(&mem, m.gpa + m.len), None);
            }
        }
    }
}

#[test]
fn tables_needed_is_exact_for_simple_cases() {
    assert_eq!(Ept::tables_needed(&[], &CAPS_ALL), 1);
    assert_eq!(
        Ept::tables_needed(&[mapping(0, 0x4000_0000, 16 * MIB)], &CAPS_2M),
        3
    );
    assert_eq!(
        Ept::tables_needed(&[mapping(GIB, 3 * GIB, GIB)], &CAPS_ALL),
        2
    );
    assert_eq!(
        Ept::tables_needed(&[mapping(0, 0x4000_0000, 4 * MIB)], &NO_LARGE),
        5
    );
    let edges = mapping(
        2 * MIB - SIZE_4K,
        0x401f_f000,
        SIZE_4K + 2 * MIB + 2 * SIZE_4K,
    );
    assert_eq!(Ept::tables_needed(&[edges], &CAPS_ALL), 5);
    // Nonsense does not panic.
    let huge = mapping(u64::MAX - 0xfff, 0, u64::MAX);
    assert!(Ept::tables_needed(&[huge, huge], &NO_LARGE) >= 1);
}
