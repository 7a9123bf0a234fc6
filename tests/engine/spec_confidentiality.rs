//! Confidentiality (noninterference): two runs of the engine that start in
//! states differing only in one VM's private page contents and registers,
//! and in which that VM computes on different values, look the same to the
//! host and to every other VM through any sequence of operations — same
//! statuses, results and exits, same host-readable contents, same other
//! VMs' pages and registers — up to what the secret VM itself declassifies:
//! pages it shares with the host, and values it writes to MMIO, to pages it
//! borrows, or passes in a hypercall (the harness gives those the same,
//! public, value in both runs, so any remaining difference is a leak). The
//! host observes through its CPUs and through DMA by its device alike.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test engine spec_confidentiality`.

use crate::spec_common;

use isola::spec::props::low_equivalent;
use isola::spec::{Cpu, Event, Handle, Outcome, Owner, PageState, RunState, State};
use isola_abi::{HostCall, PAGE_SIZE};
use proptest::prelude::*;
use spec_common::{Bug, Op, Planted, System, engine, event, ops, warm_up};

/// What run B's secret computes instead of `v`.
fn secret_value(v: u64, salt: u64) -> u64 {
    (v ^ salt).rotate_left(17) | 1
}

/// Whether `ipa` is a page only `secret` can see.
fn private(s: &State, secret: Handle, ipa: u64) -> bool {
    let m = s
        .vms
        .get(&secret)
        .and_then(|vm| vm.map.get(&(ipa & !(PAGE_SIZE - 1))));
    m.and_then(|m| s.page(m.pa))
        .is_some_and(|p| p.owner == Owner::Vm(secret) && p.state == PageState::Owned)
}

/// Makes the two runs differ in `secret`'s private state: its private
/// pages get different contents, its vCPUs different registers x7..=x30.
fn diverge(a: &mut dyn System, b: &mut dyn System, secret: Handle, salt: u64) {
    let s = b.observe();
    for (&pa, p) in &s.pages {
        if p.owner == Owner::Vm(secret) && p.state == PageState::Owned {
            for w in 0..4 {
                b.poke(pa + 8 * w, secret_value(pa + w, salt));
            }
        }
    }
    for (&i, v) in &s.vms[&secret].vcpus {
        if v.run != RunState::Ready {
            continue; // powered off: nothing of its registers is in use
        }
        let run = Event::HostHvc {
            cpu: 0,
            regs: [HostCall::VcpuRun as u64, secret, i, 0, 0, 0, 0],
        };
        let systems: [(&mut dyn System, u64); 2] = [(&mut *a, 0), (&mut *b, salt)];
        for (sys, k) in systems {
            assert_eq!(sys.step(&run), Outcome::Entered);
            for reg in 7..31u8 {
                let value = if k == 0 {
                    u64::from(reg)
                } else {
                    secret_value(u64::from(reg), k)
                };
                sys.step(&Event::GuestSetReg { cpu: 0, reg, value });
            }
            sys.step(&Event::GuestWfi { cpu: 0 });
        }
    }
}

/// Runs `ops` on both systems; the first observable difference is the counterexample.
fn noninterferent(
    a: &mut dyn System,
    b: &mut dyn System,
    ops: &[Op],
    salt: u64,
) -> Result<(), String> {
    let c = engine::config();
    warm_up(a, &c);
    warm_up(b, &c);
    // Any of the warm-up VMs may hold the secret; the others observe.
    let vms: Vec<Handle> = a.observe().vms.keys().copied().collect();
    let secret = vms[(salt % vms.len() as u64) as usize];
    diverge(a, b, secret, salt);
    low_equivalent(&a.observe(), &b.observe(), secret).map_err(|m| format!("at start: {m}"))?;
    for (n, op) in ops.iter().enumerate() {
        let s = a.observe();
        let e = event(op, &s, &c);
        let cpu = e.cpu();
        let by_secret = matches!(s.cpus[cpu], Cpu::Guest { vm, .. } if vm == secret)
            && !e.is_host()
            && !e.is_dma();
        let mut eb = e.clone();
        match e {
            // The secret computes on different values in run B.
            Event::GuestSetReg { reg, value, .. } if by_secret => {
                eb = Event::GuestSetReg {
                    cpu,
                    reg,
                    value: secret_value(value, salt),
                };
            }
            // An SGI it sends is public: the value written names it.
            Event::GuestSysReg { access, .. }
                if by_secret
                    && (access.op0, access.crn, access.crm, access.op2) == (3, 12, 11, 5) =>
            {
                let public = Event::GuestSetReg {
                    cpu,
                    reg: access.rt,
                    value: op.raw[2],
                };
                a.step(&public);
                b.step(&public);
            }
            // A store anywhere but its private RAM declassifies the value:
            // the secret stores the same public value in both runs.
            Event::GuestWrite { ipa, reg, .. } if by_secret && !private(&s, secret, ipa) => {
                let public = Event::GuestSetReg {
                    cpu,
                    reg,
                    value: op.raw[2],
                };
                a.step(&public);
                b.step(&public);
            }
            _ => {}
        }
        let (oa, ob) = (a.step(&e), b.step(&eb));
        // Contents of a page the secret shares with the host are declassified.
        let shared_by_secret = |pa: u64| {
            s.page(pa & !(PAGE_SIZE - 1)).is_some_and(|p| {
                p.owner == Owner::Vm(secret) && p.state == PageState::Shared { with: Owner::Host }
            })
        };
        let declassified = match e {
            Event::HostRead { pa, .. } => {
                shared_by_secret(pa)
                    && matches!((oa, ob), (Outcome::HostLoaded(_), Outcome::HostLoaded(_)))
            }
            Event::DmaRead { pa } => {
                shared_by_secret(pa)
                    && matches!((oa, ob), (Outcome::DmaLoaded(_), Outcome::DmaLoaded(_)))
            }
            _ => false,
        };
        let own_view = by_secret && matches!(oa, Outcome::GuestReturn(_) | Outcome::GuestDone);
        if oa != ob && !declassified && !own_view {
            return Err(format!("step {n}: {e:?}: run A {oa:?}, run B {ob:?}"));
        }
        low_equivalent(&a.observe(), &b.observe(), secret)
            .map_err(|m| format!("step {n}: {e:?}: {m}"))?;
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    spec_common::cases(12)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn a_vms_secrets_do_not_reach_anyone_else(ops in ops(150..400), salt in any::<u64>()) {
        let r = noninterferent(&mut engine::Engine::boot(), &mut engine::Engine::boot(), &ops, salt);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

fn catches(bug: Bug) -> String {
    let mut runner = spec_common::planted_runner(12);
    let found = runner.run(&(ops(150..400), any::<u64>()), |(ops, salt)| {
        let mut a = Planted::new(engine::Engine::boot(), bug);
        let mut b = Planted::new(engine::Engine::boot(), bug);
        let r = noninterferent(&mut a, &mut b, &ops, salt);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    });
    let msg = format!("{found:?}");
    assert!(found.is_err(), "planted {bug:?} went unnoticed");
    msg
}

/// A planted bug breaks it: an exit that carries a guest register.
#[test]
fn confidentiality_catches_a_register_leaked_into_an_exit() {
    let msg = catches(Bug::LeakRegisterIntoExit);
    assert!(msg.contains("Exit"), "unexpected counterexample: {msg}");
}

/// A planted bug breaks it: a relinquished or reclaimed page not scrubbed.
#[test]
fn confidentiality_catches_a_skipped_scrub() {
    let msg = catches(Bug::SkipScrub);
    assert!(
        msg.contains("differs") || msg.contains("HostLoaded"),
        "unexpected counterexample: {msg}"
    );
}

/// A planted bug breaks it: after `Donate` the host's device can still read
/// the page by DMA (the IOMMU's TLB kept the translation), so the secret
/// VM's private page reaches the host.
#[test]
fn confidentiality_catches_dma_through_a_stale_iommu_translation() {
    let msg = catches(Bug::LeaveDonatedPageInDmaView);
    assert!(
        msg.contains("DmaRead") || msg.contains("differs"),
        "unexpected counterexample: {msg}"
    );
}
