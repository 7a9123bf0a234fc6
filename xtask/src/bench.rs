//! `cargo xtask bench`: isola's performance figures, in one command.
//!
//! 1. **Instruction counts on QEMU.** Builds the EL2 image with the
//!    `bench-pmu` feature (the only image in which the host may count at
//!    EL2) and the host payload, boots them with `-icount shift=0 -smp 1`
//!    and `isola.test=bench`, and reads the host's `bench ...` lines
//!    (payloads/host/src/bench.rs): per operation, the median, min and max
//!    EL2 instructions and the total instructions, counted by the PMU.
//!    Under `-icount shift=0` every guest instruction is one nanosecond of
//!    virtual time, and QEMU's PMU instruction event is the icount itself,
//!    so the figures are exact and repeat from boot to boot.
//! 2. **Scaling on the host.** `cargo bench -p isola-perf --bench scaling`
//!    (criterion), whose `scaling <variant> <threads> <ns> <speed-up>` lines
//!    give the speed-up over one thread of the sharded engine and of the
//!    same work under one global lock.
//! 3. **Figures.** `docs/figures/icount.svg`, `docs/figures/icount.md` (the
//!    table) and `docs/figures/scaling.svg`.
//!
//! `--icount` or `--scaling` runs one half; `--smoke` boots the QEMU half
//! and checks that the null hypercall was measured, writing no figure (a
//! quick check that the benchmark path still works). `--profile OP` traces
//! the boot with QEMU's `-d in_asm,exec` and shows where one of OP's traps
//! spent its EL2 instructions, function by function.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isola_perf::svg::{self, Bar, Series};

/// How long the benchmark boot may take before QEMU is killed.
const DEADLINE: Duration = Duration::from_secs(600);

/// One measured operation, as the host payload printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Operation name.
    pub name: String,
    /// EL2 instructions: median, min, max (per operation).
    pub el2: [u64; 3],
    /// Total instructions (every EL, the host's measuring code removed):
    /// median, min, max.
    pub total: [u64; 3],
    /// Samples taken.
    pub samples: u64,
    /// Operations per sample.
    pub per: u64,
}

/// What the benchmark boot reported.
#[derive(Debug, Default)]
pub struct Report {
    /// Measured operations, in the order measured.
    pub rows: Vec<Row>,
    /// Operations that could not be measured, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Other `bench` lines (the PMU check).
    pub notes: Vec<String>,
}

/// The goal or anchor each operation is judged against (docs/perf.md;
/// issue 17's goals).
fn reference(name: &str) -> Option<(f64, &'static str)> {
    Some(match name {
        "null-hypercall" => (40.0, "goal <= 40 EL2 (pKVM: 81 total)"),
        "version" => (45.0, "goal <= 45 EL2 (pKVM cheapest call: 100 total)"),
        "vcpu-run-hypercall-exit" | "vcpu-switch-2vms" => (500.0, "goal <= 500"),
        "mmio-exit" => (500.0, "goal <= 500"),
        "donate-map-1" => (400.0, "goal <= 400"),
        "donate-map-batch512" => (150.0, "goal <= 150/page"),
        _ => return None,
    })
}

/// Speed-ups per variant: `(variant, [(threads, speed-up)])`.
type Scaling = Vec<(String, Vec<(f64, f64)>)>;

/// Parses `host: bench <name> el2 a b c total d e f samples n per p` and
/// `host: bench <name> skipped: <why>` lines out of the console.
pub fn parse(console: &str) -> Report {
    let mut r = Report::default();
    for line in console.lines() {
        let Some(rest) = line.trim_end_matches('\r').strip_prefix("host: bench ") else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
        let shape = [(1, "el2"), (5, "total"), (9, "samples"), (11, "per")];
        if w.len() == 13
            && shape.iter().all(|&(i, k)| w.get(i) == Some(&k))
            && let (Some(a), Some(b), Some(c), Some(d), Some(e), Some(f), Some(n), Some(p)) = (
                num(2),
                num(3),
                num(4),
                num(6),
                num(7),
                num(8),
                num(10),
                num(12),
            )
        {
            r.rows.push(Row {
                name: w.first().map_or_else(String::new, |s| (*s).to_string()),
                el2: [a, b, c],
                total: [d, e, f],
                samples: n,
                per: p,
            });
            continue;
        }
        if let Some((name, why)) = rest.split_once(" skipped: ") {
            r.skipped.push((name.to_string(), why.to_string()));
        } else {
            r.notes.push(rest.to_string());
        }
    }
    r
}

/// The table printed and written to `docs/figures/icount.md`.
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "| operation | EL2 instr. median | min | max | total instr. median | samples x ops | goal / anchor |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for row in &r.rows {
        let goal = reference(&row.name).map_or("", |g| g.1);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} x {} | {} |\n",
            row.name, row.el2[0], row.el2[1], row.el2[2], row.total[0], row.samples, row.per, goal
        ));
    }
    for (name, why) in &r.skipped {
        s.push_str(&format!("| {name} | not measured: {why} | | | | | |\n"));
    }
    s
}

/// Entry point: `cargo xtask bench [--icount | --scaling | --smoke | --fwb]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let (icount, scaling, smoke) = match args.first().map(String::as_str) {
        None => (true, true, false),
        Some("--icount") => (true, false, false),
        Some("--scaling") => (false, true, false),
        Some("--smoke") => (true, false, true),
        Some("--fwb") => return fwb(),
        Some("--profile") => {
            let op = args
                .get(1)
                .ok_or("bench --profile takes an operation name (see the table)")?;
            return profile(op);
        }
        Some(a) => {
            return Err(format!(
                "bench: unknown argument {a:?} (--icount, --scaling, --smoke, --fwb, --profile OP)"
            ));
        }
    };
    let figures = crate::cmd::root().join("docs").join("figures");
    if icount {
        let console = boot_bench()?;
        let r = parse(&console);
        for n in &r.notes {
            println!("note: {n}");
        }
        let mut t = table(&r);
        // The loop-method figures (the anchors' own method, from the host
        // and from inside a guest) under the table.
        let loops: Vec<&String> = r
            .notes
            .iter()
            .filter(|n| n.starts_with("anchor method") || n.starts_with("guest-timed"))
            .collect();
        if !loops.is_empty() {
            t.push('\n');
            for n in loops {
                t.push_str(&format!("- {n}\n"));
            }
        }
        println!("\n{t}");
        let null = r.rows.iter().find(|row| row.name == "null-hypercall");
        if null.is_none_or(|row| row.el2[0] == 0) {
            return Err("the null hypercall was not measured (see the console above)".into());
        }
        if !smoke {
            std::fs::create_dir_all(&figures).map_err(|e| format!("{}: {e}", figures.display()))?;
            write(&figures.join("icount.md"), &t)?;
            write(&figures.join("icount.svg"), &icount_svg(&r))?;
        }
    }
    if scaling {
        // Wall-clock scaling means little on a loaded machine: record the
        // load around the run, print it and put it on the figure.
        let before = load_average();
        let points = run_scaling()?;
        let load = format!("load average {before} before, {} after", load_average());
        println!("{load}");
        std::fs::create_dir_all(&figures).map_err(|e| format!("{}: {e}", figures.display()))?;
        write(&figures.join("scaling.svg"), &scaling_svg(&points, &load))?;
    }
    Ok(())
}

/// The 1-minute load average (`/proc/loadavg`), or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Builds the benchmark images; their paths (engine, host payload).
fn build_images() -> Result<(PathBuf, PathBuf), String> {
    // Its own target directory: the `bench-pmu` engine must never be mistaken
    // for the test image, and building it must not invalidate that one.
    let target = crate::cmd::root().join("target").join("aarch64-bench");
    let (el2, payloads) =
        crate::build::build_for_targets(&target, &["bench-pmu"], &["isola-host-payload"])?;
    Ok((el2.join("isola"), payloads.join("isola-host")))
}

/// Boots the benchmark and returns its console; fails on a timeout or a
/// boot that does not end with the engine's clean power-off.
fn boot_bench() -> Result<String, String> {
    let (engine, host) = build_images()?;
    boot("", &engine, &host, &[], None)
}

/// `cargo xtask bench --fwb`: the same benchmark on QEMU virt without its
/// SMMU (`iommu=none`). The engine then withholds PCIe from the host (no
/// IOMMU to hold its DMA), no other agent walks the host's Stage-2, and it
/// runs with `HCR_EL2.FWB` on (QEMU's `-cpu max` has FEAT_S2FWB; its SMMU
/// model does not honour `S2FWB`, docs/devices.md): what donation costs
/// without the per-page clean. Prints the table, writes nothing.
fn fwb() -> Result<(), String> {
    let (engine, host) = build_images()?;
    let console = boot(",iommu=none", &engine, &host, &[], None)?;
    if !console
        .lines()
        .any(|l| l.contains("caches: HCR_EL2.FWB on for guests, on for the host"))
    {
        return Err("the engine did not turn HCR_EL2.FWB on without the SMMU".into());
    }
    let r = parse(&console);
    println!("\n{}", table(&r));
    Ok(())
}

/// Boots the benchmark images with `extra` QEMU arguments. With `stop`, QEMU
/// is killed as soon as a console line starts with it (a traced run need not
/// finish); otherwise the run must end with the engine's clean power-off.
fn boot(
    machine: &str,
    engine: &Path,
    host: &Path,
    extra: &[String],
    stop: Option<&str>,
) -> Result<String, String> {
    let mut cmd = crate::machine::virt(machine, 1, "2G");
    cmd.args(["-icount", "shift=0"])
        .arg("-kernel")
        .arg(engine)
        .arg("-device")
        .arg(format!("loader,file={}", host.display()))
        .args(["-append", "isola.test=bench"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("booting: {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start qemu-system-aarch64: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().ok_or("no QEMU stdout")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().ok_or("no QEMU stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut console = String::new();
    let mut stopped = false;
    let timed_out = loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                println!("{line}");
                console.push_str(&line);
                console.push('\n');
                if stop.is_some_and(|s| line.starts_with(s)) {
                    stopped = true;
                    // Our own child, by its handle.
                    let _ = child.kill();
                    break false;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
        }
    };
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    println!(
        "benchmark boot took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if timed_out {
        return Err(format!(
            "QEMU did not finish within {} s",
            DEADLINE.as_secs()
        ));
    }
    if stopped {
        return Ok(console);
    }
    if !status.success() || !console.contains("exit status: ok") {
        return Err(format!(
            "the benchmark boot failed ({status}); QEMU stderr: {stderr}"
        ));
    }
    Ok(console)
}

/// The engine image's text symbols, ascending: `(address, name)`.
fn symbols(engine: &Path) -> Result<Vec<(u64, String)>, String> {
    let out = Command::new(crate::build::llvm_tool("llvm-nm")?)
        .args(["-n", "-C"])
        .arg(engine)
        .output()
        .map_err(|e| format!("llvm-nm: {e}"))?;
    let mut v: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            let kind = w.next()?;
            let name = w.next()?;
            matches!(kind, "t" | "T").then(|| (addr, name.to_string()))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The address of symbol `name` in `syms`.
fn symbol(syms: &[(u64, String)], name: &str) -> Result<u64, String> {
    syms.iter()
        .find(|(_, n)| n == name)
        .map(|(a, _)| *a)
        .ok_or(format!("no symbol {name} in the engine image"))
}

/// A QEMU `-d in_asm,exec,nochain` log, reduced to what a profile needs:
/// the instructions of every translation block, and for every trap from a
/// lower EL (a run of blocks starting at the lower-EL synchronous vector)
/// the blocks it executed.
#[derive(Default)]
pub struct Trace {
    /// Block start → `(address, disassembly)` of each instruction.
    pub blocks: std::collections::HashMap<u64, Vec<(u64, String)>>,
    /// Per trap, the start addresses of the blocks executed, in order.
    pub traps: Vec<Vec<u64>>,
}

impl Trace {
    /// Parses the log; `entry` is the lower-EL synchronous vector.
    pub fn parse(log: impl BufRead, entry: u64) -> Trace {
        let mut t = Trace::default();
        let mut block: Option<Vec<(u64, String)>> = None;
        let flush = |t: &mut Trace, b: &mut Option<Vec<(u64, String)>>| {
            if let Some(b) = b.take().filter(|b| !b.is_empty())
                && let Some(&(start, _)) = b.first()
            {
                t.blocks.insert(start, b);
            }
        };
        for line in log.lines().map_while(Result::ok) {
            if line.starts_with("IN:") {
                flush(&mut t, &mut block);
                block = Some(Vec::new());
            } else if let Some(rest) = line.strip_prefix("0x")
                && let Some(b) = block.as_mut()
            {
                // `0x40201000:  d10c43ff  sub sp, sp, #0x310`
                let (addr, rest) = rest.split_once(':').unwrap_or((rest, ""));
                let addr = u64::from_str_radix(addr, 16).ok();
                // Drop the encoding word; keep the disassembly.
                let text = rest
                    .trim()
                    .split_once(char::is_whitespace)
                    .map(|x| x.1.trim().to_string());
                if let (Some(a), Some(x)) = (addr, text) {
                    b.push((a, x));
                }
            } else if line.starts_with("Trace ") {
                flush(&mut t, &mut block);
                // `Trace 0: 0x7f.. [flags/00000000402010a0/...]`
                let pc = line
                    .split('[')
                    .nth(1)
                    .and_then(|r| r.split('/').nth(1))
                    .and_then(|a| u64::from_str_radix(a, 16).ok());
                if let Some(pc) = pc {
                    if pc == entry {
                        t.traps.push(Vec::new());
                    }
                    if let Some(cur) = t.traps.last_mut() {
                        cur.push(pc);
                    }
                }
            } else if line.trim().is_empty() {
                flush(&mut t, &mut block);
            }
        }
        flush(&mut t, &mut block);
        t
    }

    /// Instructions a trap executed.
    pub fn count(&self, trap: &[u64]) -> usize {
        trap.iter()
            .map(|pc| self.blocks.get(pc).map_or(0, Vec::len))
            .sum()
    }
}

/// `cargo xtask bench --profile OP`: boots the benchmark under QEMU's
/// execution trace (EL2 text only), stops once OP is measured, finds a trap
/// that executed exactly OP's median EL2 instruction count, and prints where
/// its instructions went: runs of consecutive instructions per function, and
/// the most frequent instructions.
fn profile(op: &str) -> Result<(), String> {
    let (engine, host) = build_images()?;
    let syms = symbols(&engine)?;
    let start = symbol(&syms, "__image_start")?;
    let end = symbol(&syms, "__text_end")?;
    let entry = symbol(&syms, "isola_vectors")?.wrapping_add(0x400);
    let log = crate::cmd::root()
        .join("target")
        .join("aarch64-bench")
        .join("trace.log");
    let extra = [
        "-d".to_string(),
        "in_asm,exec,nochain".to_string(),
        "-D".to_string(),
        log.display().to_string(),
        "-dfilter".to_string(),
        format!("{start:#x}..{end:#x}"),
    ];
    let console = boot(
        "",
        &engine,
        &host,
        &extra,
        Some(&format!("host: bench {op} ")),
    )?;
    let report = parse(&console);
    let row = report
        .rows
        .iter()
        .find(|r| r.name == op)
        .ok_or(format!("{op} was not measured"))?;
    let want = usize::try_from(row.el2[0]).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let trace = Trace::parse(BufReader::new(file), entry);
    // `ISOLA_PROFILE_KEEP=1` keeps the trace for a closer look.
    if std::env::var_os("ISOLA_PROFILE_KEEP").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    // Only OP's own traps: the trace stops once OP is measured, so they are
    // its last `samples x per` (an earlier operation's trap can execute the
    // same count: the one-page `Donate`'s median equals a vCPU run's). Of
    // those, one that executed exactly the median; failing that (QEMU
    // retranslates a block that touches MMIO under -icount, so the trace
    // can show such a trap's blocks twice), the last one closest to it,
    // said so.
    let own = usize::try_from(row.samples.saturating_mul(row.per)).unwrap_or(usize::MAX);
    let recent = || trace.traps.iter().rev().take(own.max(1));
    let trap = recent()
        .find(|t| trace.count(t) == want)
        .or_else(|| recent().min_by_key(|t| trace.count(t).abs_diff(want)))
        .ok_or(format!("no traced trap (traps: {})", trace.traps.len()))?;
    let got = trace.count(trap);
    if got != want {
        println!(
            "\nno traced trap of exactly {want} instructions; the closest of the last 64 has {got}"
        );
    }
    println!("\n{op}: one trap of {got} EL2 instructions, by function (consecutive runs):");
    let name_of = |a: u64| {
        let i = syms.partition_point(|(s, _)| *s <= a);
        i.checked_sub(1)
            .and_then(|i| syms.get(i))
            .map_or("?", |(_, n)| n.as_str())
    };
    let mut runs: Vec<(usize, &str)> = Vec::new();
    let mut mnemonics: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for insn in trap.iter().filter_map(|pc| trace.blocks.get(pc)).flatten() {
        let f = name_of(insn.0);
        match runs.last_mut() {
            Some((n, g)) if *g == f => *n = n.saturating_add(1),
            _ => runs.push((1, f)),
        }
        let m = insn.1.split_whitespace().next().unwrap_or("");
        let e = mnemonics.entry(m).or_insert(0);
        *e = e.saturating_add(1);
    }
    for (n, f) in &runs {
        println!("{n:6}  {f}");
    }
    let mut top: Vec<_> = mnemonics.into_iter().collect();
    top.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let top: Vec<String> = top
        .iter()
        .take(12)
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    println!("most frequent: {}", top.join(", "));
    Ok(())
}

/// Runs the criterion scaling bench; `(variant, [(threads, speed-up)])`.
fn run_scaling() -> Result<Scaling, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || crate::cmd::root().join("target").join("perf"),
        PathBuf::from,
    );
    let mut c = crate::cmd::cargo();
    c.args(["bench", "-p", "isola-perf", "--bench", "scaling"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CRITERION_HOME", target.join("criterion"))
        .stdout(Stdio::piped());
    println!("running: {c:?}");
    let out = c.output().map_err(|e| format!("cargo bench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        return Err(format!("cargo bench exited with {}", out.status));
    }
    let series = parse_scaling(&text);
    if series.is_empty() {
        return Err("the scaling bench printed no speed-ups".into());
    }
    Ok(series)
}

/// `scaling <variant> <threads> <ns> <speed-up>` lines, grouped by variant.
pub fn parse_scaling(text: &str) -> Scaling {
    let mut out: Scaling = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [tag, variant, n, _ns, speedup] = w.as_slice() else {
            continue;
        };
        let (Ok(n), Ok(s)) = (n.parse::<f64>(), speedup.parse::<f64>()) else {
            continue;
        };
        if *tag != "scaling" {
            continue;
        }
        match out.iter_mut().find(|(v, _)| v == variant) {
            Some((_, pts)) => pts.push((n, s)),
            None => out.push(((*variant).to_string(), vec![(n, s)])),
        }
    }
    out
}

fn icount_svg(r: &Report) -> String {
    let bars: Vec<Bar> = r
        .rows
        .iter()
        .map(|row| Bar {
            label: row.name.clone(),
            value: row.el2[0] as f64,
            reference: reference(&row.name).map(|(v, s)| (v, s.to_string())),
        })
        .collect();
    svg::log_bars(
        "isola on QEMU 10 TCG, -icount shift=0 -smp 1: EL2 instructions per operation (median)",
        "EL2 instructions (log scale)",
        &bars,
    )
}

fn scaling_svg(series: &[(String, Vec<(f64, f64)>)], load: &str) -> String {
    let colors = ["#4878b0", "#c07020", "#30a040", "#903090"];
    let mut s: Vec<Series> = series
        .iter()
        .zip(colors.iter().cycle())
        .map(|((name, pts), c)| Series {
            name: name.clone(),
            color: (*c).to_string(),
            points: pts.clone(),
        })
        .collect();
    // The ideal: n threads, n times the work.
    let threads: Vec<f64> = series
        .first()
        .map(|(_, p)| p.iter().map(|q| q.0).collect())
        .unwrap_or_default();
    s.push(Series {
        name: "ideal (n)".to_string(),
        color: "#999999".to_string(),
        points: threads.iter().map(|&n| (n, n)).collect(),
    });
    svg::lines(
        "Mixed ownership work, threads on distinct VMs: speed-up over one thread",
        "threads",
        "speed-up (n x t(1) / t(n))",
        &s,
        None,
        &format!(
            "{} CPUs; {load}",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_skips_and_notes() {
        let console = "isola: boot\n\
            host: bench pmu check: null hypercall -> NotSupported, el2 149 el1 5 total 154\r\n\
            host: bench null-hypercall el2 149 149 150 total 152 152 153 samples 1001 per 1\n\
            host: bench mmio-exit skipped: guest setup: VmCreate -> NoMemory\n\
            host: bench broken el2 x 1 2 total 1 2 3 samples 1 per 1\n";
        let r = parse(console);
        assert_eq!(
            r.rows,
            vec![Row {
                name: "null-hypercall".into(),
                el2: [149, 149, 150],
                total: [152, 152, 153],
                samples: 1001,
                per: 1
            }]
        );
        assert_eq!(
            r.skipped,
            vec![(
                "mmio-exit".to_string(),
                "guest setup: VmCreate -> NoMemory".to_string()
            )]
        );
        assert_eq!(
            r.notes.len(),
            2,
            "the PMU check and the malformed line are kept as notes"
        );
        let t = table(&r);
        assert!(t.contains("| null-hypercall | 149 | 149 | 150 | 152 | 1001 x 1 | goal <= 40 EL2"));
        assert!(t.contains("| mmio-exit | not measured"));
    }

    #[test]
    fn traces_split_into_traps_and_count_instructions() {
        let log = "----------------\nIN: \n\
            0x40200c00:  14000100  b        #0x40201000\n\n\
            Trace 0: 0x7f00 [0000000000200008/0000000040200c00/00000061/ff020200] \n\
            ----------------\nIN: \n\
            0x40201000:  d10c43ff  sub      sp, sp, #0x310\n\
            0x40201004:  a90007e0  stp      x0, x1, [sp]\n\n\
            Trace 0: 0x7f10 [0000000000200008/0000000040201000/00000061/ff020200] \n\
            Trace 0: 0x7f00 [0000000000200008/0000000040200c00/00000061/ff020200] \n";
        let t = Trace::parse(log.as_bytes(), 0x4020_0c00);
        assert_eq!(
            t.traps,
            vec![vec![0x4020_0c00, 0x4020_1000], vec![0x4020_0c00]]
        );
        assert_eq!(t.count(&t.traps[0]), 3);
        assert_eq!(t.count(&t.traps[1]), 1);
        assert_eq!(
            t.blocks[&0x4020_1000][1],
            (0x4020_1004, "stp      x0, x1, [sp]".to_string())
        );
    }

    #[test]
    fn parses_scaling_lines() {
        let s = "noise\nscaling sharded 1 1000 1.000\nscaling sharded 2 1100 1.818\nscaling global-lock 1 900 1.000\nscaling x 2: no estimate\n";
        let p = parse_scaling(s);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            ("sharded".to_string(), vec![(1.0, 1.0), (2.0, 1.818)])
        );
        assert_eq!(p[1].1, vec![(1.0, 1.0)]);
    }
}
