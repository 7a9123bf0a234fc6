//! loom models of `PerCpu` and `PerCpuCounter`: no two threads ever reach
//! the same slot mutably (loom's cell tracking would report the second
//! `&mut`), a slot handed from one thread to another carries its writes,
//! counters lose no increment; and the real `PerCpu` with the claim or the
//! release of a slot weakened to `Relaxed` must be rejected.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola_loom_tests::model::{exhaustive, twin};
use isola_percpu::{PerCpu, PerCpuCounter, PerCpuError, set_current_cpu};
use isola_sync::atomic::{Ordering, Site};
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
    // No preemption bound: about 32 000 executions, a few seconds.
    exhaustive(|| slots(&[0, 0, 1]));
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

// Broken twins: the real `PerCpu` with one ordering of the slot claim
// weakened. Exclusion still holds (the swap is atomic), but one claimant's
// writes need not happen-before the next one's when two threads share an
// index.

/// The claiming swap `Relaxed`.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_slot_claim_is_caught() {
    twin(Site::PerCpuClaim, Ordering::Relaxed, || slots(&[0, 0]));
}

/// The freeing store `Relaxed`.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_slot_free_is_caught() {
    twin(Site::PerCpuFree, Ordering::Relaxed, || slots(&[0, 0]));
}
