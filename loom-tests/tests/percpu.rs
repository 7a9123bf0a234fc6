//! loom models of `PerCpu` and `PerCpuCounter`: no two threads ever reach
//! the same slot mutably (loom's cell tracking would report the second
//! `&mut`), a slot handed from one thread to another carries its writes,
//! counters lose no increment; and a slot whose claim is `Relaxed` must be
//! rejected.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola_loom_tests::flawed::RelaxedClaimSlot;
use isola_loom_tests::model::{bounded, exhaustive};
use isola_percpu::{PerCpu, PerCpuCounter, PerCpuError, set_current_cpu};
use loom::sync::Arc;
use loom::thread;

/// Each thread plays the CPU given in `cpus` and adds 1 to its slot twice;
/// returns how many of its attempts succeeded. Afterwards every slot holds
/// exactly the successful attempts of the threads that played it.
fn slots(cpus: &'static [usize]) {
    let per_cpu: Arc<PerCpu<u32, 2>> = Arc::new(PerCpu::from_fn(|_| 0));
    let handles: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let per_cpu = Arc::clone(&per_cpu);
            thread::spawn(move || {
                set_current_cpu(cpu);
                let mut done = 0;
                for _ in 0..2 {
                    match per_cpu.with_mut(|v| *v += 1) {
                        Ok(()) => done += 1,
                        // Only threads sharing a CPU index can collide.
                        Err(e) => {
                            assert_eq!(e, PerCpuError::SlotBusy);
                            assert!(cpus.iter().filter(|&&c| c == cpu).count() > 1);
                        }
                    }
                }
                (cpu, done)
            })
        })
        .collect();
    let mut expected = [0_u32; 2];
    for h in handles {
        let (cpu, done) = h.join().unwrap();
        expected[cpu] += done;
    }
    let mut per_cpu = Arc::try_unwrap(per_cpu).ok().unwrap();
    assert_eq!(per_cpu.iter_mut().map(|v| *v).collect::<Vec<_>>(), expected);
}

#[test]
fn distinct_cpus_reach_distinct_slots() {
    exhaustive(|| slots(&[0, 1]));
}

#[test]
fn threads_sharing_a_cpu_index_never_alias() {
    exhaustive(|| slots(&[0, 0]));
}

#[test]
fn three_threads_two_sharing_an_index() {
    // Preemption bound 3.
    bounded(3, || slots(&[0, 0, 1]));
}

#[test]
fn counters_lose_no_increment() {
    exhaustive(|| {
        let counter: Arc<PerCpuCounter<2>> = Arc::new(PerCpuCounter::new());
        let handles: Vec<_> = [0, 1]
            .into_iter()
            .map(|cpu| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    set_current_cpu(cpu);
                    counter.increment().unwrap();
                    counter.add(2).unwrap();
                })
            })
            .collect();
        // A concurrent sum is a snapshot: some subset of the additions.
        let snapshot = counter.sum();
        assert!([0, 1, 2, 3, 4, 5, 6].contains(&snapshot));
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(counter.sum(), 6);
        assert_eq!(counter.get(0), Some(3));
        assert_eq!(counter.get(1), Some(3));
    });
}

#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_slot_claim_is_caught() {
    exhaustive(|| {
        let slot = Arc::new(RelaxedClaimSlot::new(0_u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let slot = Arc::clone(&slot);
                thread::spawn(move || slot.with_mut(|v| *v += 1))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}
