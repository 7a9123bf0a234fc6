use super::*;
use crate::arch::{ArchEvent, RecordingArch, check_break_before_make};

const BASE: u64 = 0x4000_0000;

fn setup(pages: u64) -> (PhysMem, PagePool, Stage2) {
    let mem = PhysMem::leak_host(PhysAddr::new(BASE), pages);
    let mut pool = PagePool::new();
    // Root: the first two pages (8 KiB aligned) for the default shape.
    for i in 2..pages {
        assert!(pool.add(
            &mem,
            PhysAddr::new(BASE.wrapping_add(i.wrapping_mul(PAGE_SIZE)))
        ));
    }
    (
        mem,
        pool,
        Stage2::new(PhysAddr::new(BASE), S2Config::DEFAULT, Vmid(5)),
    )
}

fn events(r: &RecordingArch) -> Vec<ArchEvent> {
    let mut v = Vec::new();
    r.for_each(|e| v.push(e));
    assert!(!r.overflowed());
    v
}

#[test]
fn config_validation() {
    assert_eq!(S2Config::DEFAULT.root_pages(), 2);
    assert_eq!(S2Config::new(40, 0).map(|c| c.root_pages()), Some(1));
    assert_eq!(S2Config::new(43, 1).map(|c| c.root_pages()), Some(16));
    assert_eq!(S2Config::new(44, 1), None, "needs 32 concatenated tables");
    assert_eq!(S2Config::new(39, 1), None, "below the 40-bit floor");
    assert_eq!(S2Config::new(48, 0).map(|c| c.root_pages()), Some(1));
    assert_eq!(S2Config::new(40, 3), None);
    let c = S2Config::DEFAULT;
    assert_eq!((c.vtcr_t0sz(), c.vtcr_sl0()), (24, 1));
    let c = S2Config::new(48, 0).unwrap();
    assert_eq!(
        (c.vtcr_t0sz(), c.vtcr_sl0()),
        (16, 2),
        "SL0 2: start at level 0"
    );
}

#[test]
fn no_configuration_starts_at_level_2() {
    // A level-2 root would be concatenated tables of more than 512 entries;
    // `Stage2::unmap_page_below` indexes a level-2 table by 9 bits.
    for bits in 0..=u8::MAX {
        assert_eq!(S2Config::new(bits, 2), None, "{bits} bits from level 2");
    }
}

#[test]
fn map_translate_unmap_page() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_0000_3000);
    let pa = PhysAddr::new(BASE + 15 * PAGE_SIZE);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        ipa,
        pa,
        3,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    assert_eq!(s2.table_pages(&mem), 2, "an L2 and an L3 table");
    let t = s2.translate(&mem, Ipa::new(0x8_0000_3abc)).unwrap();
    assert_eq!(
        (t.pa, t.level, t.desc.perms()),
        (PhysAddr::new(pa.raw() + 0xabc), 3, Perms::RW)
    );
    assert_eq!(
        s2.map(
            &mem,
            &arch,
            &mut pool,
            ipa,
            pa,
            3,
            Perms::RW,
            MemType::Normal,
            0
        ),
        Err(S2Error::AlreadyMapped)
    );
    let mut leaves = Vec::new();
    s2.for_each_leaf(&mem, &mut |i, d, l| leaves.push((i, d.addr(), l)));
    assert_eq!(leaves, [(ipa, pa, 3)]);
    arch.clear();
    let old = s2.unmap_page(&mem, &arch, &mut pool, ipa).unwrap();
    assert_eq!(old.addr(), pa);
    assert_eq!(s2.translate(&mem, ipa), None);
    let ev = events(&arch);
    assert!(matches!(ev[0], ArchEvent::PteWrite { new: 0, .. }));
    assert_eq!(
        &ev[1..],
        [
            ArchEvent::DsbIsh,
            ArchEvent::TlbiIpa { vmid: Vmid(5), ipa },
            ArchEvent::DsbIsh
        ]
    );
    assert_eq!(
        s2.unmap_page(&mem, &arch, &mut pool, ipa),
        Err(S2Error::NotMapped)
    );
    assert_eq!(
        s2.map(
            &mem,
            &arch,
            &mut pool,
            Ipa::new(1 << 40),
            pa,
            3,
            Perms::RW,
            MemType::Normal,
            0
        ),
        Err(S2Error::OutOfRange)
    );
}

#[test]
fn tables_come_from_pool_and_all_return() {
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let free0 = pool.free();
    let pa = PhysAddr::new(BASE);
    for i in 0..3u64 {
        // Three different 1 GiB regions: an L2 + L3 table each.
        let r = s2.map(
            &mem,
            &arch,
            &mut pool,
            Ipa::new(i << 30),
            pa,
            3,
            Perms::RW,
            MemType::Normal,
            0,
        );
        assert_eq!(r, Ok(()));
    }
    assert_eq!(pool.free(), 0);
    assert_eq!(
        s2.map(
            &mem,
            &arch,
            &mut pool,
            Ipa::new(3 << 30),
            pa,
            3,
            Perms::RW,
            MemType::Normal,
            0
        ),
        Err(S2Error::NoMemory)
    );
    // A failed map allocates nothing.
    let (mem2, mut pool2, s2b) = setup(3);
    let r = s2b.map(
        &mem2,
        &arch,
        &mut pool2,
        Ipa::new(0),
        pa,
        3,
        Perms::RW,
        MemType::Normal,
        0,
    );
    assert_eq!(
        (r, pool2.free(), s2b.table_pages(&mem2)),
        (Err(S2Error::NoMemory), 1, 0)
    );
    s2.free_tables(&mem, &mut pool);
    assert_eq!(pool.free(), free0 + 2, "every table and both root pages");
}

#[test]
fn splitting_a_block_is_break_before_make() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let block = Ipa::new(0x8000_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        block,
        PhysAddr::new(0x8000_0000),
        2,
        Perms::RWX,
        MemType::Normal,
        0,
    )
    .unwrap();
    arch.clear();
    let victim = Ipa::new(0x8000_5000);
    s2.unmap_page(&mem, &arch, &mut pool, victim).unwrap();
    let ev = events(&arch);
    check_break_before_make(ev.iter().copied()).unwrap();
    assert!(
        ev.contains(&ArchEvent::TlbiVmid(Vmid(5))),
        "block replaced: whole-VMID TLBI"
    );
    assert!(ev.contains(&ArchEvent::TlbiIpa {
        vmid: Vmid(5),
        ipa: victim
    }));
    assert_eq!(s2.translate(&mem, victim), None);
    for p in [0x8000_0000u64, 0x8000_4000, 0x8000_6000, 0x801f_f000] {
        let t = s2.translate(&mem, Ipa::new(p)).unwrap();
        assert_eq!((t.pa.raw(), t.level, t.desc.perms()), (p, 3, Perms::RWX));
    }
    let mut n = 0;
    s2.for_each_leaf(&mem, &mut |_, _, _| n += 1);
    assert_eq!(n, 511);
}

#[test]
fn host_identity_map_shrinks_below_split_blocks() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let f = Ipa::new(0x8000_7000);
    s2.map_identity_shrinking(&mem, &arch, &mut pool, f, 2, Perms::RWX, MemType::Normal)
        .unwrap();
    assert_eq!(s2.translate(&mem, f).map(|t| t.level), Some(2));
    s2.unmap_page(&mem, &arch, &mut pool, Ipa::new(0x8000_0000))
        .unwrap();
    s2.unmap_leaf(&mem, &arch, f).unwrap();
    assert_eq!(s2.translate(&mem, f), None);
    // The L2 entry is now a table: mapping the 2 MiB block must shrink to the page.
    s2.map_identity_shrinking(&mem, &arch, &mut pool, f, 2, Perms::RWX, MemType::Normal)
        .unwrap();
    let t = s2.translate(&mem, f).unwrap();
    assert_eq!((t.pa.raw(), t.level), (f.raw(), 3));
    assert_eq!(s2.translate(&mem, Ipa::new(0x8000_0000)), None);
}

#[test]
fn vttbr_carries_vmid_and_root() {
    let s2 = Stage2::new(PhysAddr::new(0x4000_2000), S2Config::DEFAULT, Vmid(0x2a));
    assert_eq!(s2.vttbr(), (0x2a << 48) | 0x4000_2000);
}

#[test]
fn unmap_run_drops_a_whole_block_with_one_entry_and_one_tlbi() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let block = Ipa::new(0x8_0020_0000);
    let pa = PhysAddr::new(0x8_0020_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        block,
        pa,
        2,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    arch.clear();
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, block, 512), Ok(512));
    let ev = events(&arch);
    check_break_before_make(ev.iter().copied()).unwrap();
    let writes = ev
        .iter()
        .filter(|e| matches!(e, ArchEvent::PteWrite { .. }))
        .count();
    assert_eq!(writes, 1, "one block entry, no split: {ev:?}");
    assert!(ev.contains(&ArchEvent::TlbiVmid(Vmid(5))));
    assert!(s2.translate(&mem, block).is_none());
    assert!(s2.translate(&mem, Ipa::new(0x8_003f_f000)).is_none());
}

#[test]
fn unmap_run_splits_a_partly_covered_block_and_batches_the_pages() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let block = Ipa::new(0x8_0020_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        block,
        PhysAddr::new(0x8_0020_0000),
        2,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    arch.clear();
    let first = Ipa::new(0x8_0020_3000);
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, first, 4), Ok(4));
    let ev = events(&arch);
    check_break_before_make(ev.iter().copied()).unwrap();
    for i in 0..6u64 {
        let at = Ipa::new(0x8_0020_2000 + i * PAGE_SIZE);
        let mapped = s2.translate(&mem, at).is_some();
        assert_eq!(mapped, !(1..=4).contains(&i), "page {i}");
    }
    // After the split: four invalidations, then exactly one DSB, TLBI, DSB.
    let last_inval = ev
        .iter()
        .rposition(|e| matches!(e, ArchEvent::PteWrite { new: 0, .. }))
        .unwrap();
    assert_eq!(
        ev[last_inval + 1..],
        [
            ArchEvent::DsbIsh,
            ArchEvent::TlbiVmid(Vmid(5)),
            ArchEvent::DsbIsh
        ]
    );
    // One page alone is invalidated by IPA.
    arch.clear();
    let one = Ipa::new(0x8_0020_9000);
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, one, 1), Ok(1));
    let ev = events(&arch);
    assert!(ev.contains(&ArchEvent::TlbiIpa {
        vmid: Vmid(5),
        ipa: one
    }));
    // Nothing mapped: nothing written, no barrier.
    arch.clear();
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, one, 1), Ok(0));
    assert!(events(&arch).is_empty());
}

#[test]
fn leaves_exist_only_at_levels_1_to_3() {
    // A start-level-0 shape: level 0 is a table level, never a leaf's, even
    // though the walk starts there.
    let (mem, mut pool, _) = setup(8);
    let cfg = S2Config::new(48, 0).unwrap();
    let s2 = Stage2::new(PhysAddr::new(BASE), cfg, Vmid(6));
    let arch = RecordingArch::new();
    let free = pool.available();
    for level in [0u8, 4] {
        assert_eq!(
            s2.prepare_leaf(&mem, &arch, &mut pool, Ipa::new(0), level),
            Err(S2Error::OutOfRange),
            "level {level}"
        );
    }
    assert_eq!(pool.available(), free);
    assert!(events(&arch).is_empty());
    // The levels that can hold a leaf can.
    for level in 1..=3u8 {
        assert!(
            s2.prepare_leaf(&mem, &arch, &mut pool, Ipa::new(0), level)
                .is_ok()
        );
    }
}

#[test]
fn a_run_check_takes_one_to_max_run_pages() {
    let (mem, _, s2) = setup(4);
    let ipa = Ipa::new(0x8_0000_0000);
    assert_eq!(
        s2.check_run_unmapped(&mem, ipa, 0),
        Err(S2Error::OutOfRange)
    );
    assert_eq!(
        s2.check_run_unmapped(&mem, ipa, MAX_RUN_PAGES.wrapping_add(1)),
        Err(S2Error::OutOfRange)
    );
    // Nothing is mapped: an L2 and an L3 table to build (the root's entry
    // is empty), for one page as for the longest run in one L3 table.
    assert_eq!(s2.check_run_unmapped(&mem, ipa, 1), Ok(2));
    assert_eq!(s2.check_run_unmapped(&mem, ipa, MAX_RUN_PAGES), Ok(2));
}

#[test]
fn a_run_across_a_2mib_boundary_builds_one_l2_and_two_l3_tables() {
    let (mem, _, s2) = setup(4);
    // Two pages, one each side of a 2 MiB boundary, in an empty 1 GiB
    // region: the level-2 table they share is counted once.
    let ipa = Ipa::new(0x8_001f_f000);
    assert_eq!(s2.check_run_unmapped(&mem, ipa, 2), Ok(3));
    assert_eq!(s2.check_run_unmapped(&mem, ipa, MAX_RUN_PAGES), Ok(3));
}

#[test]
fn a_1gib_block_may_be_mapped_at_the_start_level() {
    let (mem, mut pool, s2) = setup(8);
    assert_eq!(s2.config().start_level(), 1);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_4000_0000);
    let pa = PhysAddr::new(0x1_4000_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        ipa,
        pa,
        1,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    let t = s2.translate(&mem, Ipa::new(0x8_4123_4000)).unwrap();
    assert_eq!(t.pa, PhysAddr::new(0x1_4123_4000));
    assert_eq!(
        s2.map(
            &mem,
            &arch,
            &mut pool,
            ipa,
            pa,
            0,
            Perms::RW,
            MemType::Normal,
            0
        ),
        Err(S2Error::OutOfRange),
        "no leaf above the start level"
    );
}

#[test]
fn unmap_page_takes_only_a_page_aligned_ipa_in_range() {
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_0000_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        ipa,
        PhysAddr::new(0x1_0000_0000),
        3,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    let inside = Ipa::new(0x8_0000_0008);
    assert_eq!(
        s2.unmap_page(&mem, &arch, &mut pool, inside).err(),
        Some(S2Error::OutOfRange)
    );
    assert!(s2.translate(&mem, ipa).is_some(), "still mapped");
    let beyond = Ipa::new(S2Config::DEFAULT.ipa_limit());
    assert_eq!(
        s2.unmap_page(&mem, &arch, &mut pool, beyond).err(),
        Some(S2Error::OutOfRange)
    );
}

#[test]
fn unmap_run_from_a_blocks_start_keeps_the_rest_of_the_block() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let block = Ipa::new(0x8_0020_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        block,
        PhysAddr::new(0x8_0020_0000),
        2,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, block, 4), Ok(4));
    for i in 0..6u64 {
        let at = Ipa::new(0x8_0020_0000 + i * PAGE_SIZE);
        assert_eq!(s2.translate(&mem, at).is_some(), i >= 4, "page {i}");
    }
}

#[test]
fn a_run_check_reads_every_entry_of_an_existing_l3_table() {
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_0000_0000);
    let second = Ipa::new(0x8_0000_1000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        second,
        PhysAddr::new(0x1_0000_0000),
        3,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    // The L3 table exists: a free first page needs no table, and a run
    // whose second page is mapped is refused, although its first is free.
    assert_eq!(s2.check_run_unmapped(&mem, ipa, 1), Ok(0));
    assert_eq!(
        s2.check_run_unmapped(&mem, ipa, 2),
        Err(S2Error::AlreadyMapped)
    );
    assert_eq!(
        s2.check_run_unmapped(&mem, second, 1),
        Err(S2Error::AlreadyMapped)
    );
}

#[test]
fn the_last_page_of_the_address_space_maps_and_unmaps() {
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let limit = S2Config::DEFAULT.ipa_limit();
    let last = Ipa::new(limit.wrapping_sub(PAGE_SIZE));
    // A run ending exactly at the limit is inside; one page more is not.
    assert_eq!(s2.check_run_unmapped(&mem, last, 1), Ok(2));
    assert_eq!(
        s2.check_run_unmapped(&mem, last, 2),
        Err(S2Error::OutOfRange)
    );
    let pa = PhysAddr::new(0x1_0000_0000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        last,
        pa,
        3,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    assert_eq!(s2.translate(&mem, last).map(|t| t.pa), Some(pa));
    assert_eq!(s2.unmap_run(&mem, &arch, &mut pool, last, 1), Ok(1));
    assert_eq!(s2.translate(&mem, last), None);
    // One page further is outside.
    assert_eq!(
        s2.unmap_run(&mem, &arch, &mut pool, last, 2),
        Err(S2Error::OutOfRange)
    );
}

#[test]
fn a_table_in_the_way_of_a_block_is_already_mapped() {
    // A page mapped at 2 MiB + 20 KiB builds the level-3 table of its
    // 2 MiB window; a 2 MiB block over that window would overwrite the
    // table (and lose the page's mapping), so preparing it is refused,
    // though the level-3 table's other entries are empty (among them the
    // one a walk gone a level too deep would pick: index 1, the block's
    // level-2 index).
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let page = Ipa::new(0x8_0020_5000);
    s2.map(
        &mem,
        &arch,
        &mut pool,
        page,
        PhysAddr::new(BASE),
        3,
        Perms::RW,
        MemType::Normal,
        0,
    )
    .unwrap();
    let free = pool.free();
    let block = Ipa::new(0x8_0020_0000);
    assert_eq!(
        s2.prepare_leaf(&mem, &arch, &mut pool, block, 2),
        Err(S2Error::AlreadyMapped)
    );
    assert_eq!(pool.free(), free);
    assert_eq!(s2.translate(&mem, page).map(|t| t.level), Some(3));
}

#[test]
fn building_tables_takes_only_levels_up_to_3() {
    // There is no level 4: a request for its table builds nothing (a
    // level-3 entry is never a table).
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_0020_0000);
    let free = pool.free();
    assert_eq!(
        s2.build_tables(&mem, &arch, &mut pool, ipa, 4),
        Err(S2Error::OutOfRange)
    );
    assert_eq!(pool.free(), free);
    assert!(!s2.has_tables(&mem, ipa, 2));
    assert_eq!(s2.build_tables(&mem, &arch, &mut pool, ipa, 3), Ok(()));
    assert!(s2.has_tables(&mem, ipa, 3));
    assert_eq!(pool.free(), free - 2, "one level-2 and one level-3 table");
}

#[test]
fn a_block_maps_only_an_aligned_physical_address() {
    // A 2 MiB block's output address must be 2 MiB aligned: the low bits
    // of a misaligned one would be dropped from the descriptor and the
    // block would map memory below the page asked for.
    let (mem, mut pool, s2) = setup(8);
    let arch = RecordingArch::new();
    let ipa = Ipa::new(0x8_0020_0000);
    let free = pool.free();
    assert_eq!(
        s2.map(
            &mem,
            &arch,
            &mut pool,
            ipa,
            PhysAddr::new(0x1_0000_1000),
            2,
            Perms::RW,
            MemType::Normal,
            0
        ),
        Err(S2Error::OutOfRange)
    );
    assert_eq!(pool.free(), free);
    assert_eq!(s2.translate(&mem, ipa), None);
}

#[test]
fn a_page_hint_gives_the_entry_the_walk_gives() {
    // The same one-page preparations on two identical Stage-2s, one with
    // the walk from the root, one with a hint: within a window, into the
    // next window (its tables built), back, onto a mapped page, and with
    // arguments the walk refuses.
    let (mem_a, mut pool_a, a) = setup(16);
    let (mem_b, mut pool_b, b) = setup(16);
    let arch = RecordingArch::new();
    let mut hint = PageHint::NONE;
    let pages = [
        0x8_0000_0000u64,
        0x8_0000_1000,
        0x8_0000_5000,
        0x8_0020_0000,
        0x8_0020_1000,
        0x8_0000_2000,
        0x8_0000_1000,
        0x8_0000_2800,
        0x100_0000_0000,
    ];
    for (i, &ipa) in pages.iter().enumerate() {
        let ipa = Ipa::new(ipa);
        let walked = a.prepare_leaf(&mem_a, &arch, &mut pool_a, ipa, 3);
        let hinted = b.prepare_page(&mem_b, &arch, &mut pool_b, ipa, &mut hint);
        assert_eq!(walked, hinted, "page {i} at {:#x}", ipa.raw());
        if let Ok(entry) = walked {
            let leaf = Desc::leaf(PhysAddr::new(BASE), 3, Perms::RW, MemType::Normal, 0);
            a.install_leaf(&mem_a, &arch, entry, leaf);
            b.install_leaf(&mem_b, &arch, entry, leaf);
        }
    }
    assert_eq!(pool_a.free(), pool_b.free());
    assert_eq!(a.table_pages(&mem_a), b.table_pages(&mem_b));
}

#[test]
fn a_page_hint_is_followed_only_while_its_level_2_entry_is_a_table() {
    // Two Stage-2s in one memory: roots at pages 0 and 2, the pool after.
    let mem = PhysMem::leak_host(PhysAddr::new(BASE), 20);
    let mut pool = PagePool::new();
    for i in 4..20u64 {
        assert!(pool.add(&mem, PhysAddr::new(BASE + i * PAGE_SIZE)));
    }
    let s2 = Stage2::new(PhysAddr::new(BASE), S2Config::DEFAULT, Vmid(5));
    let other = Stage2::new(
        PhysAddr::new(BASE + 2 * PAGE_SIZE),
        S2Config::DEFAULT,
        Vmid(6),
    );
    let arch = RecordingArch::new();
    let mut hint = PageHint::NONE;
    let first = Ipa::new(0x8_0000_0000);
    let entry = s2
        .prepare_page(&mem, &arch, &mut pool, first, &mut hint)
        .unwrap();
    let table = PhysAddr::new(entry.raw() & !0xfff);
    assert_eq!(Stage2::read(&mem, hint.l2_entry), Desc::table(table));

    // With the hint, the root is not read: a root entry cut under it does
    // not stop the next page of the window.
    let root_entry = s2.entry(s2.root(), first, 1).unwrap();
    let saved = Stage2::read(&mem, root_entry);
    assert!(mem.write_u64(root_entry, 0));
    let next = Ipa::new(0x8_0000_1000);
    assert_eq!(
        s2.prepare_page(&mem, &arch, &mut pool, next, &mut hint),
        Ok(table.wrapping_add_bytes(8))
    );
    assert!(mem.write_u64(root_entry, saved.0));

    // The level-2 entry is no table any more: the hint is not followed, the
    // walk builds a new level-3 table there.
    assert!(mem.write_u64(hint.l2_entry, 0));
    let got = s2
        .prepare_page(&mem, &arch, &mut pool, next, &mut hint)
        .unwrap();
    let rebuilt = PhysAddr::new(got.raw() & !0xfff);
    assert_ne!(rebuilt, table);
    assert_eq!(Stage2::read(&mem, hint.l2_entry), Desc::table(rebuilt));

    // A hint taken from another Stage-2 in the same memory is not used
    // for this one, though its level-2 entry still points at its table.
    let mut foreign = hint;
    let got = other
        .prepare_page(&mem, &arch, &mut pool, next, &mut foreign)
        .unwrap();
    assert_ne!(PhysAddr::new(got.raw() & !0xfff), rebuilt);
    assert_eq!(
        got,
        other.prepare_leaf(&mem, &arch, &mut pool, next, 3).unwrap()
    );
    assert_eq!(foreign.root, other.root());
}

#[test]
fn a_page_is_unmapped_below_its_level_2_table_or_left_to_the_walk() {
    let (mem, mut pool, s2) = setup(16);
    let arch = RecordingArch::new();
    let map = |ipa: u64, level: u8, pool: &mut PagePool| {
        s2.map(
            &mem,
            &arch,
            pool,
            Ipa::new(ipa),
            PhysAddr::new(ipa),
            level,
            Perms::RW,
            MemType::Normal,
            0,
        )
        .unwrap();
    };
    map(0x8_0000_3000, 3, &mut pool);
    map(0x8_0020_0000, 2, &mut pool);
    let l2 = s2.table_at(&mem, Ipa::new(0x8_0000_3000), 2).unwrap();
    assert_eq!(
        s2.table_at(&mem, Ipa::new(0x8_0020_0000), 2),
        Some(l2),
        "one GiB, one table"
    );
    assert_eq!(
        s2.table_at(&mem, Ipa::new(0x8_4000_0000), 2),
        None,
        "no table built there"
    );
    let l3 = s2.table_at(&mem, Ipa::new(0x8_0000_3000), 3).unwrap();
    assert_eq!(
        s2.translate(&mem, Ipa::new(0x8_0000_3000)).map(|t| t.level),
        Some(3)
    );
    assert_ne!(l3, l2);
    assert_eq!(
        s2.table_at(&mem, Ipa::new(0x8_0000_3000), 4),
        None,
        "no level 4"
    );
    assert_eq!(
        s2.table_at(&mem, Ipa::new(0x100_0000_3000), 2),
        None,
        "out of range"
    );
    arch.clear();

    // A mapped page under a level-3 table: removed, with its TLBI by IPA.
    let page = Ipa::new(0x8_0000_3000);
    assert_eq!(s2.unmap_page_below(&mem, &arch, l2, page), Some(true));
    assert!(s2.translate(&mem, page).is_none());
    let ev = events(&arch);
    check_break_before_make(ev.iter().copied()).unwrap();
    assert!(
        ev.contains(&ArchEvent::TlbiIpa {
            vmid: Vmid(5),
            ipa: page
        }),
        "{ev:?}"
    );
    arch.clear();

    // Its neighbour, never mapped, in the same table: nothing to do.
    assert_eq!(
        s2.unmap_page_below(&mem, &arch, l2, Ipa::new(0x8_0000_4000)),
        Some(false)
    );
    // Under a block, or where the level-2 entry is empty: left to the walk,
    // with nothing changed.
    assert_eq!(
        s2.unmap_page_below(&mem, &arch, l2, Ipa::new(0x8_0020_5000)),
        None
    );
    assert_eq!(
        s2.unmap_page_below(&mem, &arch, l2, Ipa::new(0x8_0060_0000)),
        None
    );
    assert_eq!(
        s2.unmap_page_below(&mem, &arch, l2, Ipa::new(0x8_0000_4800)),
        None
    );
    assert_eq!(
        s2.unmap_page_below(&mem, &arch, l2, Ipa::new(0x100_0000_0000)),
        None
    );
    assert!(events(&arch).is_empty());
    assert_eq!(
        s2.translate(&mem, Ipa::new(0x8_0020_5000)).map(|t| t.level),
        Some(2)
    );
}
